//! on-crm-retry over the embedded backends, driving the `crm-retry` chain the way Pub/Sub would (each published
//! message delivered when due, and again: Pub/Sub redelivers): a CRM that fails the first K pushes, one that is
//! down for a period, the circuit opening and closing, max attempts ending in a dead letter, the replay of that
//! dead letter once the CRM is fixed — each lead delivered exactly once.

#[path = "../../on-analysis/tests/support/mod.rs"]
mod support;

use callflow::domain::CallState;
use callflow::domain::delivery::CrmRetry;
use callflow::ports::StateStore;
use callflow::runtime::lead_delivery::{self, Outcome};
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

async fn first(h: &Harness, tenant: &str, call: &str) -> Outcome {
    let outcome = on_analysis::stage::process(&h.service, Ok(pubsub(&analysis_complete(tenant, call), call))).await;
    h.flush().await;
    outcome
}

async fn retry(h: &Harness, message: &Value, id: &str) -> Outcome {
    let outcome = on_crm_retry::stage::process(&h.service, Ok(pubsub(message, id))).await;
    if outcome.committed() {
        h.flush().await;
    }
    outcome
}

fn due(m: &Value) -> chrono::DateTime<chrono::Utc> {
    serde_json::from_value::<CrmRetry>(m.clone()).unwrap().not_before
}

/// Deliver pending `crm-retry` messages in time order, each when due and then again (a redelivery), until none
/// is left or the next is due after `until`. Returns the first deliveries' outcomes.
async fn drive(h: &Harness, until: Option<chrono::DateTime<chrono::Utc>>) -> Vec<Outcome> {
    let mut outcomes = vec![];
    for n in 0..1000 {
        let mut messages = h.published.take("crm-retry");
        messages.sort_by_key(due);
        let Some(next) = messages.first().cloned() else { return outcomes };
        if until.is_some_and(|u| due(&next) > u) {
            messages.into_iter().for_each(|m| h.published.put_back("crm-retry", m));
            return outcomes;
        }
        messages.into_iter().skip(1).for_each(|m| h.published.put_back("crm-retry", m));
        if due(&next) > h.clock.now_for_tests() {
            h.clock.set(due(&next));
        }
        let id = format!("d{n}");
        outcomes.push(retry(h, &next, &id).await);
        let again = retry(h, &next, &id).await;
        assert!(matches!(again.name(), "duplicate" | "not_needed"), "a redelivery does nothing: {again:?}");
    }
    panic!("the retry chain did not end");
}

async fn mount_failures_then_success(h: &Harness, failures: u64, failure: ResponseTemplate) {
    if failures > 0 {
        Mock::given(method("POST"))
            .and(path("/leads"))
            .respond_with(failure)
            .up_to_n_times(failures)
            .mount(&h.crm)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/leads"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "lead_1"})))
        .mount(&h.crm)
        .await;
}

#[tokio::test]
async fn a_crm_failing_the_first_k_pushes_gets_the_lead_exactly_once() {
    let h = harness().await;
    mount_failures_then_success(&h, 3, ResponseTemplate::new(503)).await;
    h.analysed("acme", "CAL1", findings(70, 0, Some("97214"))).await;
    let start = h.clock.now_for_tests();
    assert_eq!(first(&h, "acme", "CAL1").await.name(), "retry_scheduled");
    let names: Vec<_> = drive(&h, None).await.iter().map(Outcome::name).collect();
    assert_eq!(names, ["retry_scheduled", "retry_scheduled", "delivered"]);
    assert_eq!(h.state("acme", "CAL1").await.0, CallState::Delivered);
    assert_eq!(h.delivery("acme", "CAL1").await.unwrap().attempts, 4, "three failed pushes and the one that worked");
    let pushes = h.pushes().await;
    assert_eq!(pushes.len(), 4);
    assert!(pushes.iter().all(|p| p.headers.get("webhook-id").unwrap() == "acme:CAL1"), "one idempotency key");
    // Backoff from a 30 s base, doubling, half of it jitter: at least 15 + 30 + 60 s in all.
    let waited = h.clock.now_for_tests() - start;
    assert!(waited >= chrono::Duration::seconds(105), "{waited}");
}

#[tokio::test]
async fn an_early_message_is_sent_round_again_without_a_claim() {
    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine;
    use tower::ServiceExt;
    let h = harness().await;
    mount_failures_then_success(&h, 1, ResponseTemplate::new(500)).await;
    h.analysed("acme", "CAL2", findings(70, 0, Some("97214"))).await;
    first(&h, "acme", "CAL2").await;
    let message = h.published.take("crm-retry").remove(0);
    assert_eq!(retry(&h, &message, "early").await.name(), "not_yet");
    // Over HTTP: 503 with Retry-After, so the subscription redelivers it later.
    let body = json!({"message": {"data": base64::engine::general_purpose::STANDARD.encode(message.to_string()),
        "messageId": "early-http"}, "subscription": "projects/p/subscriptions/s"});
    let request =
        Request::post("/").header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
    let resp = on_crm_retry::app(h.service.clone()).oneshot(request).await.unwrap();
    assert_eq!(resp.status(), 503);
    let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(h.pushes().await.len(), 1, "no push before its time");
    h.clock.set(due(&message));
    assert_eq!(retry(&h, &message, "due").await.name(), "delivered");
}

#[tokio::test]
async fn a_crm_down_for_a_period_opens_the_circuit_and_every_lead_arrives_once_after_it_recovers() {
    let h = harness().await;
    let down = Mock::given(method("POST"))
        .and(path("/leads"))
        .respond_with(ResponseTemplate::new(502))
        .mount_as_scoped(&h.crm)
        .await;
    let calls: Vec<String> = (0..6).map(|i| format!("CALL{i}")).collect();
    for c in &calls {
        h.analysed("acme", c, findings(70, 0, Some("97214"))).await;
    }
    let mut firsts = vec![];
    for c in &calls {
        firsts.push(first(&h, "acme", c).await.name());
    }
    assert_eq!(firsts, ["retry_scheduled", "retry_scheduled", "retry_scheduled", "deferred", "deferred", "deferred"]);
    assert_eq!(h.pushes().await.len(), 3, "three failures open the circuit; the rest never reach the CRM");
    let (t, _) = ids("acme", "x");
    assert!(h.e.state.breaker(&t, "crm:webhook").await.unwrap().open_until.is_some(), "open, kept in the store");

    // Fifteen minutes of outage: probes fail and reopen the circuit, everything else is held back.
    let outage = drive(&h, Some(h.clock.now_for_tests() + chrono::Duration::minutes(15))).await;
    let deferred = outage.iter().filter(|o| o.name() == "deferred").count();
    let probes = h.pushes().await.len() - 3;
    assert!(deferred >= calls.len(), "held back without calling the CRM: {outage:?}");
    assert!(probes >= 1 && probes < outage.len() / 2, "{probes} pushes for {} retries", outage.len());
    assert!(outage.iter().all(|o| o.name() != "delivered" && o.name() != "dead_lettered"), "{outage:?}");

    drop(down);
    Mock::given(method("POST"))
        .and(path("/leads"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "lead"})))
        .mount(&h.crm)
        .await;
    let before = h.pushes().await.len();
    let recovery = drive(&h, None).await;
    for c in &calls {
        assert_eq!(h.state("acme", c).await.0, CallState::Delivered, "{c}");
    }
    let delivered = recovery.iter().filter(|o| o.name() == "delivered").count();
    assert_eq!(delivered, calls.len(), "each lead once: {recovery:?}");
    assert_eq!(h.pushes().await.len() - before, calls.len(), "no push after a lead was delivered");
    let b = h.e.state.breaker(&t, "crm:webhook").await.unwrap();
    assert_eq!((b.open_until, b.consecutive_failures), (None, 0), "closed again");
    let outcomes = analytics_outcomes(&h, "'on-analysis', 'on-crm-retry'");
    assert!(outcomes.iter().any(|o| o == "deferred"));
    assert_eq!(outcomes.iter().filter(|o| *o == "delivered").count(), calls.len());
    // Every transition counted: opened by the third failure, reopened by each failed probe, closed at recovery.
    let transitions = analytics_outcomes(&h, "'crm-breaker'");
    assert_eq!(transitions.last().map(String::as_str), Some("closed"), "{transitions:?}");
    assert_eq!(transitions.iter().filter(|t| *t == "closed").count(), 1);
    assert!(transitions.iter().filter(|t| *t == "opened").count() >= 2, "{transitions:?}");
}

fn analytics_outcomes(h: &Harness, stages: &str) -> Vec<String> {
    let db = rusqlite::Connection::open(h.dir.path().join("data/analytics.sqlite")).unwrap();
    let sql = format!("SELECT outcome FROM calls WHERE stage IN ({stages}) ORDER BY event_time, rowid");
    let mut stmt = db.prepare(&sql).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

#[tokio::test]
async fn max_attempts_end_in_a_dead_letter_that_replays_once_the_crm_is_fixed() {
    let h = harness_with(&[("CALLFLOW_CRM_MAX_ATTEMPTS", "3"), ("CALLFLOW_CRM_BREAKER_FAILURES", "50")]).await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .respond_with(ResponseTemplate::new(202))
        .mount(&h.notify)
        .await;
    let broken = Mock::given(method("POST"))
        .and(path("/leads"))
        .respond_with(ResponseTemplate::new(500).set_body_string("database is read-only"))
        .mount_as_scoped(&h.crm)
        .await;
    h.analysed("acme", "CAL9", findings(70, 0, Some("97214"))).await;
    first(&h, "acme", "CAL9").await;
    let outcomes = drive(&h, None).await;
    let names: Vec<_> = outcomes.iter().map(Outcome::name).collect();
    assert_eq!(names, ["retry_scheduled", "dead_lettered"]);
    let (state, reason) = h.state("acme", "CAL9").await;
    assert_eq!(state, CallState::DeadLettered);
    assert!(reason.unwrap().contains("gave up after 3 attempts"));
    assert_eq!(h.notifications("/v3/mail/send").await.len(), 1, "the tenant is told");
    let letter = h.e.state.dead_letters(Some("acme"), 10).await.unwrap().into_iter().find(|d| d.kind == "crm").unwrap();
    assert!(letter.reason.contains("database is read-only"), "{letter:?}");

    drop(broken);
    Mock::given(method("POST"))
        .and(path("/leads"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "lead_9"})))
        .mount(&h.crm)
        .await;
    let now = h.clock.now_for_tests();
    let policy = h.service.policy.clone();
    assert!(lead_delivery::replay(h.e.state.as_ref(), &policy, &letter, now).await.unwrap());
    assert!(!lead_delivery::replay(h.e.state.as_ref(), &policy, &letter, now).await.unwrap(), "replayed once only");
    assert_eq!(h.state("acme", "CAL9").await.0, CallState::Analysed);
    h.flush().await;
    let names: Vec<_> = drive(&h, None).await.iter().map(Outcome::name).collect();
    assert_eq!(names, ["delivered"]);
    assert_eq!(h.delivery("acme", "CAL9").await.unwrap().record_id, "lead_9");
    let replayed = h.e.state.dead_letters(Some("acme"), 10).await.unwrap();
    assert!(replayed.iter().any(|d| d.id == letter.id && d.replayed_at.is_some()));
    // Every push is a `crm_deliveries` row: three that failed, then the one after the replay.
    h.flush().await;
    let db = rusqlite::Connection::open(h.dir.path().join("data/analytics.sqlite")).unwrap();
    let mut stmt =
        db.prepare("SELECT stage, provider, outcome, attempt FROM crm_deliveries ORDER BY event_time, rowid").unwrap();
    let pushes: Vec<(String, String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let seen: Vec<(&str, &str, &str, i64)> =
        pushes.iter().map(|(s, p, o, a)| (s.as_str(), p.as_str(), o.as_str(), *a)).collect();
    assert_eq!(
        seen,
        [
            ("on-analysis", "webhook", "retry_scheduled", 1),
            ("on-crm-retry", "webhook", "retry_scheduled", 2),
            ("on-crm-retry", "webhook", "dead_lettered", 3),
            ("on-crm-retry", "webhook", "delivered", 1),
        ]
    );
}

#[tokio::test]
async fn a_retry_for_a_delivered_call_does_nothing() {
    let h = harness().await;
    mount_failures_then_success(&h, 0, ResponseTemplate::new(500)).await;
    h.analysed("acme", "CAL3", findings(70, 0, Some("97214"))).await;
    assert_eq!(first(&h, "acme", "CAL3").await.name(), "delivered");
    let stale = serde_json::to_value(CrmRetry::replay("acme", "CAL3", "x", h.clock.now_for_tests())).unwrap();
    assert_eq!(retry(&h, &stale, "stale").await.name(), "not_needed");
    assert_eq!(h.pushes().await.len(), 1);
}

#[test]
fn a_backoff_longer_than_the_subscription_can_wait_is_refused_at_start() {
    let eventarc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../eventarc");
    let settings = |max: &str| {
        let vars =
            [("CALLFLOW_EVENTARC", eventarc.display().to_string()), ("CALLFLOW_CRM_BACKOFF_MAX_SECS", max.into())];
        on_crm_retry::Settings::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
    };
    assert!(settings("3600").is_ok());
    let err = settings("7200").unwrap_err().to_string();
    assert!(err.contains("CALLFLOW_CRM_BACKOFF_MAX_SECS=7200") && err.contains("20 deliveries"), "{err}");
}
