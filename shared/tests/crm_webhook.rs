//! The custom-webhook CRM connector against a receiver that verifies Standard Webhooks signatures as a tenant's
//! endpoint would: delivered with the receiver's id (or ours), 409 as already delivered, the same `webhook-id` on
//! a redelivery, 429 with and without Retry-After (seconds and HTTP date), 401, 400 with its message, 500, a slow
//! receiver cut by the timeout, a refused connection, an unusable secret.

use std::time::Duration;

use callflow::adapters::crm_webhook::WebhookCrm;
use callflow::adapters::http;
use callflow::domain::crm::{CrmSettings, Lead};
use callflow::domain::signature::{StandardWebhookHeaders, standard_webhooks_key, verify_standard_webhook};
use callflow::domain::{CallId, TenantId};
use callflow::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Matches only requests whose Standard Webhooks signature verifies with the tenant's secret.
struct Signed;

impl Match for Signed {
    fn matches(&self, request: &Request) -> bool {
        let header = |n: &str| request.headers.get(n).and_then(|v| v.to_str().ok());
        let key = standard_webhooks_key(SECRET).unwrap();
        let headers = StandardWebhookHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
        };
        verify_standard_webhook(&[&key], &headers, &request.body, chrono::Utc::now().timestamp(), 300).is_ok()
    }
}

fn lead() -> LeadPush {
    let lead: Lead = serde_json::from_str(include_str!("../../fixtures/crm/lead.json")).unwrap();
    LeadPush {
        tenant_id: TenantId::parse("acme").unwrap(),
        call_id: CallId::parse("CAL1").unwrap(),
        idempotency_key: "callflow:acme:CAL1".into(),
        properties: serde_json::Map::new(),
        document: json!({"schema_version": 1, "call_id": "CAL1", "project_type": "kitchen", "lead_score": 82}),
        lead,
    }
}

fn target(url: String, timeout: Duration) -> CrmSettings {
    serde_json::from_value(json!({
        "provider": "webhook", "credential": "env:UNUSED", "url": url, "timeout_ms": timeout.as_millis() as u64
    }))
    .unwrap()
}

/// One push to the server's `/leads` with the given time limit.
async fn push(server: &MockServer, timeout: Duration, secret: &Secret) -> Result<CrmRecord, VendorError> {
    let target = target(format!("{}/leads", server.uri()), timeout);
    WebhookCrm::new(http::client()).push(&target, &lead(), secret).await
}

async fn answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/leads")).and(Signed).respond_with(template).mount(&server).await;
    server
}

#[tokio::test]
async fn a_signed_lead_is_delivered_and_a_redelivery_carries_the_same_id() {
    let server = answering(ResponseTemplate::new(201).set_body_json(json!({"id": "lead_829"}))).await;
    let record = push(&server, Duration::from_secs(5), &Secret::new(SECRET)).await.unwrap();
    assert_eq!((record.id.as_str(), record.created), ("lead_829", true));
    push(&server, Duration::from_secs(5), &Secret::new(SECRET)).await.unwrap();
    let sent = server.received_requests().await.unwrap();
    assert_eq!(sent.len(), 2);
    let ids: Vec<&str> = sent.iter().map(|r| r.headers.get("webhook-id").unwrap().to_str().unwrap()).collect();
    assert_eq!(ids, ["callflow:acme:CAL1", "callflow:acme:CAL1"], "receivers dedupe on it");
    let body: serde_json::Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(body["project_type"], "kitchen");
}

#[tokio::test]
async fn an_empty_2xx_uses_our_id_and_409_is_already_delivered() {
    let server = answering(ResponseTemplate::new(204)).await;
    let record = push(&server, Duration::from_secs(5), &Secret::new(SECRET)).await.unwrap();
    assert_eq!((record.id.as_str(), record.created), ("callflow:acme:CAL1", true));
    let server = answering(ResponseTemplate::new(409).set_body_json(json!({"id": 829, "error": "duplicate"}))).await;
    let record = push(&server, Duration::from_secs(5), &Secret::new(SECRET)).await.unwrap();
    assert_eq!((record.id.as_str(), record.created), ("829", false));
}

#[tokio::test]
async fn failures_are_classified_for_retry_or_dead_letter() {
    let date = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
    let cases: Vec<(ResponseTemplate, &str, bool)> = vec![
        (ResponseTemplate::new(429).insert_header("retry-after", "30"), "RateLimited(30)", true),
        (ResponseTemplate::new(429).insert_header("retry-after", date.as_str()), "RateLimited(date)", true),
        (ResponseTemplate::new(429), "RateLimited(none)", true),
        (ResponseTemplate::new(500).set_body_string("upstream exploded"), "500", true),
        (ResponseTemplate::new(401).set_body_string("bad signature"), "401", false),
        (ResponseTemplate::new(400).set_body_json(json!({"error": "phone is required"})), "400", false),
    ];
    for (template, what, retryable) in cases {
        let server = answering(template).await;
        let err = push(&server, Duration::from_secs(5), &Secret::new(SECRET)).await.unwrap_err();
        match (&err, what) {
            (VendorError::RateLimited { retry_after: Some(d) }, "RateLimited(30)") => {
                assert_eq!(*d, Duration::from_secs(30))
            }
            (VendorError::RateLimited { retry_after: Some(d) }, "RateLimited(date)") => {
                assert!(*d > Duration::from_secs(100) && *d <= Duration::from_secs(120), "{d:?}")
            }
            (VendorError::RateLimited { retry_after: None }, "RateLimited(none)") => {}
            (VendorError::Status { status: 500, message }, "500") => assert!(message.contains("exploded")),
            (VendorError::Status { status: 401, .. }, "401") => {}
            (VendorError::Status { status: 400, message }, "400") => assert!(message.contains("phone is required")),
            other => panic!("{what}: unexpected {other:?}"),
        }
        assert_eq!(err.is_retryable(), retryable, "{what}");
    }
}

#[tokio::test]
async fn slow_receivers_time_out_and_refused_connections_are_retryable() {
    let server = answering(ResponseTemplate::new(200).set_delay(Duration::from_secs(3))).await;
    let started = std::time::Instant::now();
    let err = push(&server, Duration::from_millis(300), &Secret::new(SECRET)).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let target = target(format!("http://{closed}/leads"), Duration::from_secs(2));
    let err = WebhookCrm::new(http::client()).push(&target, &lead(), &Secret::new(SECRET)).await.unwrap_err();
    assert!(matches!(err, VendorError::Transport(_)) && err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn an_unusable_secret_is_a_permanent_error_and_sends_nothing() {
    let server = answering(ResponseTemplate::new(200)).await;
    let err = push(&server, Duration::from_secs(5), &Secret::new("whsec_!!!")).await.unwrap_err();
    assert!(matches!(err, VendorError::Status { status: 401, .. }) && !err.is_retryable(), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
    let no_url: CrmSettings = serde_json::from_value(json!({"provider": "webhook", "credential": "env:W"})).unwrap();
    let err = WebhookCrm::new(http::client()).push(&no_url, &lead(), &Secret::new(SECRET)).await.unwrap_err();
    assert!(matches!(err, VendorError::Status { status: 400, .. }) && !err.is_retryable(), "{err:?}");
}
