//! The Slack and SendGrid notifiers against servers answering as those services do: the message shapes (Block Kit,
//! Mail Send personalizations, the bearer key, escaped caller text), each documented error and how it is classified,
//! 429 with and without a wait, 5xx, a slow service cut by the time limit, a webhook URL kept out of errors, and an
//! address for the other channel refused without sending.

use std::time::Duration;

use callflow::adapters::http;
use callflow::adapters::notify_sendgrid::SendGridNotifier;
use callflow::adapters::notify_slack::SlackNotifier;
use callflow::domain::tenant::SecretRef;
use callflow::domain::workflow::{Notice, NoticeAddress};
use callflow::ports::{Notifier, Secret, VendorError};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const HOOK_PATH: &str = "/services/T0001/B0001/XXXXsecretXXXX";
const API_KEY: &str = "SG.test-key.abcdef";

fn notice() -> Notice {
    Notice {
        title: "Hot lead: Dana Whitfield — kitchen (82)".into(),
        text: "Caller said <script>alert(1)</script> & wants an estimate".into(),
        fields: vec![("Score".into(), "82".into()), ("Phone".into(), "+15035550148".into())],
    }
}

fn slack() -> NoticeAddress {
    NoticeAddress::Slack { webhook: SecretRef("env:SLACK_HOOK".into()) }
}

fn email() -> NoticeAddress {
    NoticeAddress::Email {
        to: vec!["sales@acme.example".into(), "owner@acme.example".into()],
        from: "leads@callflow.example".into(),
        api_key: SecretRef("env:SENDGRID".into()),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn server_answering(verb: &str, at: &str, answer: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method(verb)).and(path(at)).respond_with(answer).mount(&server).await;
    server
}

async fn slack_send(server: &MockServer, timeout: Duration) -> Result<(), VendorError> {
    let hook = Secret::new(format!("{}{HOOK_PATH}", server.uri()));
    SlackNotifier::new(http::client()).with_timeout(timeout).send(&slack(), &notice(), &hook).await
}

async fn sendgrid_send(server: &MockServer, timeout: Duration) -> Result<(), VendorError> {
    SendGridNotifier::new(http::client(), server.uri())
        .with_timeout(timeout)
        .send(&email(), &notice(), &Secret::new(API_KEY))
        .await
}

#[tokio::test]
async fn slack_gets_a_header_the_escaped_text_and_the_fields() {
    let server = server_answering("POST", HOOK_PATH, ResponseTemplate::new(200).set_body_string("ok")).await;
    slack_send(&server, secs(5)).await.unwrap();
    let sent = server.received_requests().await.unwrap();
    assert_eq!(sent.len(), 1);
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["text"], "Hot lead: Dana Whitfield — kitchen (82)");
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert_eq!(blocks[1]["text"]["text"], "Caller said &lt;script&gt;alert(1)&lt;/script&gt; &amp; wants an estimate");
    let fields: Vec<&str> =
        blocks[2]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(fields, ["*Score*\n82", "*Phone*\n+15035550148"]);
    let fallback = body["text"].as_str().unwrap();
    assert!(fallback.contains("Dana Whitfield") && !fallback.contains("<script>"), "{fallback}");
}

#[tokio::test]
async fn slack_errors_are_classified_with_slacks_word_for_them() {
    let permanent = [
        (400, "invalid_payload"),
        (400, "no_text"),
        (403, "action_prohibited"),
        (403, "invalid_token"),
        (404, "channel_not_found"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ];
    for (status, word) in permanent {
        let server = server_answering("POST", HOOK_PATH, ResponseTemplate::new(status).set_body_string(word)).await;
        let err = slack_send(&server, secs(5)).await.unwrap_err();
        match &err {
            VendorError::Status { status: s, message } => {
                assert_eq!(*s, status);
                assert!(message.starts_with(word), "{message}");
                assert!(!message.contains("secret"), "the webhook URL stays out of errors: {message}");
            }
            other => panic!("{word}: unexpected {other:?}"),
        }
        assert!(!err.is_retryable(), "{word}");
    }

    let server =
        server_answering("POST", HOOK_PATH, ResponseTemplate::new(429).insert_header("retry-after", "12")).await;
    let err = slack_send(&server, secs(5)).await.unwrap_err();
    assert!(matches!(err, VendorError::RateLimited { retry_after: Some(d) } if d == secs(12)), "{err:?}");
    let server = server_answering("POST", HOOK_PATH, ResponseTemplate::new(429)).await;
    let err = slack_send(&server, secs(5)).await.unwrap_err();
    assert!(matches!(err, VendorError::RateLimited { retry_after: None }), "{err:?}");
    let server = server_answering("POST", HOOK_PATH, ResponseTemplate::new(500).set_body_string("rollup_error")).await;
    let err = slack_send(&server, secs(5)).await.unwrap_err();
    assert!(matches!(&err, VendorError::Status { status: 500, .. }) && err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn slack_that_is_slow_or_unreachable_is_retryable_and_the_url_stays_secret() {
    let server = server_answering("POST", HOOK_PATH, ResponseTemplate::new(200).set_delay(secs(3))).await;
    let started = std::time::Instant::now();
    let err = slack_send(&server, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout) && err.is_retryable(), "{err:?}");
    assert!(started.elapsed() < secs(2));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let hook = Secret::new(format!("http://{closed}{HOOK_PATH}"));
    let err = SlackNotifier::new(http::client()).send(&slack(), &notice(), &hook).await.unwrap_err();
    assert!(matches!(err, VendorError::Transport(_)) && err.is_retryable(), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn slack_refuses_plain_http_webhooks_and_email_addresses_without_sending() {
    let notifier = SlackNotifier::new(http::client());
    for hook in ["http://hooks.slack.example/services/T0001/B0001/XXXXsecretXXXX", "not a url at all"] {
        let err = notifier.send(&slack(), &notice(), &Secret::new(hook)).await.unwrap_err();
        match &err {
            VendorError::Status { status: 400, message } => assert!(!message.contains("secret"), "{message}"),
            other => panic!("{hook}: unexpected {other:?}"),
        }
        assert!(!err.is_retryable());
    }

    let server = server_answering("POST", HOOK_PATH, ResponseTemplate::new(200).set_body_string("ok")).await;
    let hook = Secret::new(format!("{}{HOOK_PATH}", server.uri()));
    let err = notifier.send(&email(), &notice(), &hook).await.unwrap_err();
    assert!(matches!(&err, VendorError::Status { status: 400, message } if message.contains("email")), "{err:?}");
    assert!(!err.is_retryable());
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn sendgrid_gets_every_recipient_the_bearer_key_and_escaped_html() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .and(header("authorization", format!("Bearer {API_KEY}").as_str()))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    sendgrid_send(&server, secs(5)).await.unwrap();
    let sent = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(
        body["personalizations"],
        json!([{"to": [{"email": "sales@acme.example"}, {"email": "owner@acme.example"}]}])
    );
    assert_eq!(body["from"], json!({"email": "leads@callflow.example"}));
    assert_eq!(body["subject"], "Hot lead: Dana Whitfield — kitchen (82)");
    assert_eq!(body["content"][0]["type"], "text/plain", "SendGrid wants plain text first");
    let plain = body["content"][0]["value"].as_str().unwrap();
    assert!(plain.contains("<script>alert(1)</script>") && plain.contains("Phone: +15035550148"), "{plain}");
    assert_eq!(body["content"][1]["type"], "text/html");
    let html = body["content"][1]["value"].as_str().unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; wants"), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("+15035550148"), "{html}");
}

#[tokio::test]
async fn sendgrid_errors_are_classified_with_its_messages() {
    let errors = |entries: Value| json!({ "errors": entries });
    let permanent = [
        (
            400,
            errors(json!([
                {"message": "The from email does not contain a valid address.", "field": "from.email", "help": "http://sendgrid.com/docs"},
                {"message": "The subject is required.", "field": "subject", "help": null}
            ])),
            "from.email: The from email does not contain a valid address.; subject: The subject is required.",
        ),
        (
            401,
            errors(
                json!([{"message": "The provided authorization grant is invalid, expired, or revoked", "field": null, "help": null}]),
            ),
            "The provided authorization grant is invalid, expired, or revoked",
        ),
        (
            403,
            errors(
                json!([{"message": "The from address does not match a verified Sender Identity.", "field": "from", "help": null}]),
            ),
            "from: The from address does not match a verified Sender Identity.",
        ),
        (413, errors(json!([{"message": "Payload Too Large", "field": null}])), "Payload Too Large"),
    ];
    for (status, body, expected) in permanent {
        let server = server_answering("POST", "/v3/mail/send", ResponseTemplate::new(status).set_body_json(body)).await;
        let err = sendgrid_send(&server, secs(5)).await.unwrap_err();
        match &err {
            VendorError::Status { status: s, message } => assert_eq!((*s, message.as_str()), (status, expected)),
            other => panic!("{status}: unexpected {other:?}"),
        }
        assert!(!err.is_retryable(), "{status}");
    }

    let reset = (chrono::Utc::now().timestamp() + 60).to_string();
    let cases = [
        (ResponseTemplate::new(429).insert_header("retry-after", "20"), Some((20, 20))),
        (ResponseTemplate::new(429).insert_header("x-ratelimit-reset", reset.as_str()), Some((55, 60))),
        (ResponseTemplate::new(429), None),
    ];
    for (answer, wait) in cases {
        let server = server_answering("POST", "/v3/mail/send", answer).await;
        let err = sendgrid_send(&server, secs(5)).await.unwrap_err();
        match (&err, wait) {
            (VendorError::RateLimited { retry_after: None }, None) => {}
            (VendorError::RateLimited { retry_after: Some(d) }, Some((lo, hi))) => {
                assert!(*d >= secs(lo) && *d <= secs(hi), "{d:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_retryable());
    }

    for status in [500, 503] {
        let server = server_answering("POST", "/v3/mail/send", ResponseTemplate::new(status)).await;
        let err = sendgrid_send(&server, secs(5)).await.unwrap_err();
        assert!(matches!(&err, VendorError::Status { status: s, .. } if *s == status) && err.is_retryable(), "{err:?}");
    }
}

#[tokio::test]
async fn sendgrid_that_is_slow_is_cut_by_the_time_limit() {
    let server = server_answering("POST", "/v3/mail/send", ResponseTemplate::new(202).set_delay(secs(3))).await;
    let started = std::time::Instant::now();
    let err = sendgrid_send(&server, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout) && err.is_retryable(), "{err:?}");
    assert!(started.elapsed() < secs(2));
}

#[tokio::test]
async fn sendgrid_refuses_slack_addresses_and_empty_recipients_without_sending() {
    let server = server_answering("POST", "/v3/mail/send", ResponseTemplate::new(202)).await;
    let notifier = SendGridNotifier::new(http::client(), format!("{}/", server.uri()));
    let err = notifier.send(&slack(), &notice(), &Secret::new(API_KEY)).await.unwrap_err();
    assert!(matches!(&err, VendorError::Status { status: 400, message } if message.contains("slack")), "{err:?}");
    assert!(!err.is_retryable());
    let nobody =
        NoticeAddress::Email { to: vec![], from: "leads@callflow.example".into(), api_key: SecretRef("env:SG".into()) };
    let err = notifier.send(&nobody, &notice(), &Secret::new(API_KEY)).await.unwrap_err();
    assert!(matches!(err, VendorError::Status { status: 400, .. }) && !err.is_retryable(), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
    // The trailing slash on the base is not doubled.
    notifier.send(&email(), &notice(), &Secret::new(API_KEY)).await.unwrap();
    assert_eq!(server.received_requests().await.unwrap()[0].url.path(), "/v3/mail/send");
}
