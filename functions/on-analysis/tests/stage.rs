//! on-analysis over the embedded backends with the real custom-webhook connector, Slack and SendGrid notifiers
//! pointed at local fakes: a lead delivered once with its CRM record stored on the call; the spam gate, the review
//! band, the service area and the minimum score; notifications per rule, never blocking the push; retryable and
//! permanent CRM failures; an open circuit; duplicate and poison messages.

mod support;

use callflow::domain::CallState;
use callflow::domain::breaker::Admit;
use callflow::ports::StateStore;
use callflow::runtime::lead_delivery::Outcome;
use on_analysis::stage::process;
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

async fn crm_answers(h: &Harness, template: ResponseTemplate) {
    Mock::given(method("POST")).and(path("/leads")).respond_with(template).mount(&h.crm).await;
}

async fn notify_ok(h: &Harness) {
    Mock::given(method("POST"))
        .and(path_regex("^/slack/"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&h.notify)
        .await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&h.notify)
        .await;
}

async fn deliver(h: &Harness, tenant: &str, call: &str, id: &str) -> Outcome {
    let outcome = process(&h.service, Ok(pubsub(&analysis_complete(tenant, call), id))).await;
    if outcome.committed() {
        h.flush().await;
    }
    outcome
}

#[tokio::test]
async fn a_hot_lead_is_pushed_once_stored_on_the_call_and_announced() {
    let h = harness().await;
    crm_answers(&h, ResponseTemplate::new(201).set_body_json(json!({"id": "lead_829"}))).await;
    notify_ok(&h).await;
    h.analysed("acme", "CAL1", findings(86, 3, Some("97214"))).await;

    let outcome = deliver(&h, "acme", "CAL1", "m1").await;
    assert!(
        matches!(&outcome, Outcome::Delivered { record_id, created: true, .. } if record_id == "lead_829"),
        "{outcome:?}"
    );
    assert_eq!(h.state("acme", "CAL1").await.0, CallState::Delivered);
    let d = h.delivery("acme", "CAL1").await.unwrap();
    assert_eq!((d.provider.as_str(), d.record_id.as_str(), d.attempts, d.review), ("webhook", "lead_829", 1, false));

    let pushes = h.pushes().await;
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].headers.get("webhook-id").unwrap(), "acme:CAL1");
    let doc: Value = serde_json::from_slice(&pushes[0].body).unwrap();
    assert_eq!(doc["lead"]["phone"], "+15035550148");
    assert_eq!(doc["lead"]["project_type"], "kitchen");
    assert_eq!(doc["lead"]["lead_score"], 86);
    let slack = h.notifications("/slack/").await;
    assert_eq!(slack.len(), 1, "score 86 ≥ 80 wakes the hot-leads rule");
    let text = String::from_utf8_lossy(&slack[0].body);
    assert!(text.contains("Dana Whitfield") && text.contains("+15035550148"), "{text}");

    // The same message again, and another message for the same call: no second push, no second notice.
    for id in ["m1", "m2"] {
        let again = deliver(&h, "acme", "CAL1", id).await;
        assert_eq!(again.name(), "not_needed", "{again:?}");
    }
    assert_eq!(h.pushes().await.len(), 1);
    assert_eq!(h.notifications("/slack/").await.len(), 1);
}

#[tokio::test]
async fn concurrent_duplicates_push_once() {
    let h = harness().await;
    crm_answers(&h, ResponseTemplate::new(200).set_delay(std::time::Duration::from_millis(100))).await;
    h.analysed("acme", "CAL2", findings(60, 0, Some("97214"))).await;
    let runs = (0..5).map(|i| {
        let service = h.service.clone();
        async move { process(&service, Ok(pubsub(&analysis_complete("acme", "CAL2"), &format!("m{i}")))).await }
    });
    let outcomes = futures_join(runs).await;
    let delivered = outcomes.iter().filter(|o| matches!(o, Outcome::Delivered { .. })).count();
    assert_eq!(delivered, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(o.name(), "delivered" | "busy" | "duplicate" | "not_needed")),
        "{outcomes:?}"
    );
    assert_eq!(h.pushes().await.len(), 1);
}

async fn futures_join<F: std::future::Future<Output = Outcome> + Send + 'static>(
    runs: impl Iterator<Item = F>,
) -> Vec<Outcome> {
    let handles: Vec<_> = runs.map(tokio::spawn).collect();
    let mut out = vec![];
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_workflow_gates_spam_area_and_score_and_flags_the_review_band() {
    let h = harness().await;
    crm_answers(&h, ResponseTemplate::new(201)).await;
    notify_ok(&h).await;
    h.analysed("acme", "SPAM", findings(10, 92, None)).await;
    h.analysed("acme", "FAR", findings(70, 0, Some("10001"))).await;
    h.analysed("acme", "LOW", findings(12, 0, Some("97214"))).await;
    h.analysed("acme", "MAYBE", findings(55, 60, Some("98660"))).await;

    assert_eq!(deliver(&h, "acme", "SPAM", "s").await.name(), "spam");
    assert_eq!(h.state("acme", "SPAM").await, (CallState::Spam, Some("spam likelihood 92 ≥ 80".into())));
    assert_eq!(deliver(&h, "acme", "FAR", "f").await.name(), "skipped");
    assert_eq!(h.state("acme", "FAR").await, (CallState::Skipped, Some("outside the service area".into())));
    assert_eq!(deliver(&h, "acme", "LOW", "l").await.name(), "skipped");
    assert_eq!(h.state("acme", "LOW").await.1.as_deref(), Some("lead score 12 below the minimum 20"));
    assert_eq!(h.pushes().await.len(), 0, "nothing pushed for spam, out of area or below the minimum");

    assert_eq!(deliver(&h, "acme", "MAYBE", "m").await.name(), "delivered");
    let doc: Value = serde_json::from_slice(&h.pushes().await[0].body).unwrap();
    assert_eq!(doc["lead"]["review"], true);
    assert_eq!(doc["lead"]["tags"], json!(["possible-spam", "review"]));
    assert!(h.delivery("acme", "MAYBE").await.unwrap().review);
    assert!(h.notifications("/slack/").await.is_empty(), "score 55 does not wake the hot-leads rule");
}

#[tokio::test]
async fn a_tenant_without_a_crm_still_gets_its_notifications() {
    let h = harness().await;
    notify_ok(&h).await;
    h.analysed("solo", "CAL3", findings(40, 0, None)).await;
    assert_eq!(deliver(&h, "solo", "CAL3", "m").await.name(), "no_crm");
    assert_eq!(h.state("solo", "CAL3").await, (CallState::Skipped, Some("no CRM configured".into())));
    assert_eq!(h.notifications("/slack/").await.len(), 1);
}

#[tokio::test]
async fn a_failing_notifier_neither_blocks_nor_repeats_the_push() {
    let h = harness().await;
    crm_answers(&h, ResponseTemplate::new(201)).await;
    Mock::given(method("POST"))
        .and(path_regex("^/slack/"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&h.notify)
        .await;
    h.analysed("acme", "CAL4", findings(90, 0, Some("97214"))).await;
    assert_eq!(deliver(&h, "acme", "CAL4", "m").await.name(), "delivered");
    assert_eq!(h.notifications("/slack/").await.len(), 1, "tried once");
    // Later flushes retry the notice (when due), never the push.
    h.flush().await;
    assert_eq!(h.pushes().await.len(), 1);
    let pending = h.e.state.pending_work().await.unwrap();
    assert!(pending.iter().any(|(_, _, kind, attempts)| kind == "notify" && *attempts == 1), "{pending:?}");
}

#[tokio::test]
async fn a_retryable_failure_schedules_a_crm_retry_with_the_vendors_wait() {
    let h = harness().await;
    crm_answers(&h, ResponseTemplate::new(429).insert_header("retry-after", "120")).await;
    h.analysed("acme", "CAL5", findings(70, 0, Some("97214"))).await;
    let now = h.clock.now_for_tests();
    let outcome = deliver(&h, "acme", "CAL5", "m").await;
    let Outcome::RetryScheduled { attempts: 1, not_before, .. } = outcome else { panic!("{outcome:?}") };
    assert!(not_before >= now + chrono::Duration::seconds(120), "Retry-After is honoured: {not_before} vs {now}");
    assert_eq!(h.state("acme", "CAL5").await.0, CallState::Analysed, "still waiting for its CRM");
    let messages = h.published.take("crm-retry");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["seq"], 1);
    assert_eq!(messages[0]["attempts"], 1);
    assert_eq!(messages[0]["chain"], "a");
    assert!(messages[0]["last_error"].as_str().unwrap().contains("rate limited"));
}

#[tokio::test]
async fn a_permanent_refusal_is_dead_lettered_with_the_vendors_message_and_the_tenant_alerted() {
    let h = harness().await;
    crm_answers(&h, ResponseTemplate::new(400).set_body_json(json!({"error": "email is invalid"}))).await;
    notify_ok(&h).await;
    h.analysed("acme", "CAL6", findings(70, 0, Some("97214"))).await;
    let outcome = deliver(&h, "acme", "CAL6", "m").await;
    assert!(matches!(&outcome, Outcome::DeadLettered { reason } if reason.contains("email is invalid")), "{outcome:?}");
    let (state, reason) = h.state("acme", "CAL6").await;
    assert_eq!(state, CallState::DeadLettered);
    assert!(reason.unwrap().contains("webhook refused the lead"));
    let letters = h.e.state.dead_letters(Some("acme"), 10).await.unwrap();
    assert!(
        letters.iter().any(|d| d.kind == "crm" && d.call_id == "CAL6" && d.reason.contains("email is invalid")),
        "{letters:?}"
    );
    let mail = h.notifications("/v3/mail/send").await;
    assert_eq!(mail.len(), 1, "the crm-down rule emails the tenant");
    let body: Value = serde_json::from_slice(&mail[0].body).unwrap();
    assert_eq!(body["personalizations"][0]["to"][0]["email"], "ops@acme.example");
    assert!(h.published.take("crm-retry").is_empty());
}

#[tokio::test]
async fn an_open_circuit_defers_without_calling_the_crm() {
    let h = harness().await;
    crm_answers(&h, ResponseTemplate::new(201)).await;
    let (t, _) = ids("acme", "X");
    let now = h.clock.now_for_tests();
    let policy = h.service.policy.breaker;
    for _ in 0..3 {
        h.e.state.breaker_record(&t, "crm:webhook", false, now, &policy).await.unwrap();
    }
    assert_eq!(h.e.state.breaker_admit(&t, "crm:webhook", now, &policy).await.unwrap(), Admit::Reject);
    h.analysed("acme", "CAL7", findings(70, 0, Some("97214"))).await;
    let outcome = deliver(&h, "acme", "CAL7", "m").await;
    let Outcome::Deferred { until } = outcome else { panic!("{outcome:?}") };
    assert!(until >= now + chrono::Duration::seconds(60), "after the cool-down: {until}");
    assert!(h.pushes().await.is_empty());
    let messages = h.published.take("crm-retry");
    assert_eq!(
        (messages[0]["attempts"].as_u64(), messages[0]["seq"].as_u64()),
        (Some(0), Some(1)),
        "not a failed attempt"
    );
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_once_and_acknowledged() {
    let h = harness().await;
    h.analysed("acme", "CAL8", findings(70, 0, None)).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"hello": 1}), "not an analysis-complete message"),
        (json!({"schema_version": 9, "tenant_id": "acme", "call_id": "CAL8"}), "schema_version 9"),
        (analysis_complete("nobody", "CAL8"), "unknown tenant"),
        (analysis_complete("acme", "NOPE"), "no such call"),
        (analysis_complete("acme", "../etc"), "malformed"),
    ];
    for (i, (data, why)) in cases.iter().enumerate() {
        for _ in 0..2 {
            let outcome = process(&h.service, Ok(pubsub(data, &format!("poison{i}")))).await;
            assert_eq!(outcome.name(), "refused", "{why}: {outcome:?}");
        }
    }
    let letters = h.e.state.dead_letters(None, 50).await.unwrap();
    for (_, why) in &cases {
        let n = letters.iter().filter(|d| d.kind == "event:on-analysis" && d.reason.contains(why)).count();
        assert_eq!(n, 1, "{why}: kept once though delivered twice: {letters:?}");
    }
    assert_eq!(h.state("acme", "CAL8").await.0, CallState::Analysed, "nothing changed");
}

#[tokio::test]
async fn wrong_event_types_and_methods_are_refused_over_http() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let h = harness().await;
    let storage = Request::post("/")
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "//storage.googleapis.com/projects/_/buckets/recordings")
        .header("ce-type", "google.cloud.storage.object.v1.finalized")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"bucket":"recordings","name":"acme/CAL1.mp3"}"#))
        .unwrap();
    let resp = on_analysis::app(h.service.clone()).oneshot(storage).await.unwrap();
    assert_eq!(resp.status(), 200, "poison is acknowledged, not retried for a day");
    let letters = h.e.state.dead_letters(None, 10).await.unwrap();
    assert!(letters[0].reason.contains("google.cloud.storage.object.v1.finalized"), "{letters:?}");
    let get = Request::get("/").body(Body::empty()).unwrap();
    assert_eq!(on_analysis::app(h.service.clone()).oneshot(get).await.unwrap().status(), 405);
}
