//! Messages committed with a state change are published from the outbox: a failed publish is retried later, a
//! published message is not published again, and what reaches the topic is what was committed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::sqlite::{Durability, SqliteStateStore};
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::work::{Completion, PublishMessage};
use callflow::domain::{CallId, CallSource, LeadDetails, TenantId};
use callflow::ports::{Claim, EventPublisher, PortError, PortResult, StateStore, SystemClock};
use callflow::runtime::publish_outbox::flush;

/// Pub/Sub having a bad moment: the first `fail` publishes answer 503.
struct Flaky {
    fail: usize,
    calls: AtomicUsize,
    inner: Arc<LocalRouter>,
}

#[async_trait]
impl EventPublisher for Flaky {
    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: BTreeMap<String, String>,
        ordering_key: Option<&str>,
    ) -> PortResult<String> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
            return Err(PortError::retryable("pubsub: 503 Service Unavailable"));
        }
        self.inner.publish(topic, data, attributes, ordering_key).await
    }
}

#[tokio::test]
async fn committed_messages_are_published_once_even_after_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let state = SqliteStateStore::open(&dir.path().join("state.sqlite"), Durability::Full).unwrap();
    let eventarc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eventarc");
    let triggers = callflow::eventarc::load(&eventarc, "embedded").unwrap();
    let router = Arc::new(LocalRouter::open(&dir.path().join("router.sqlite"), triggers, Durability::Full).unwrap());
    let (tenant, call) = (TenantId::parse("acme").unwrap(), CallId::parse("CALpub").unwrap());
    state
        .record_intake(IntakeEvent {
            tenant_id: tenant.clone(),
            call_id: call.clone(),
            source: CallSource::Callrail,
            kind: EventKind::PostCall,
            dedupe_key: "post_call".into(),
            payload_sha256: "00".into(),
            payload_bytes: 1,
            lead: LeadDetails::default(),
            received_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let message = PublishMessage {
        topic: "analysis-complete".into(),
        data: serde_json::json!({"schema_version": 1, "tenant_id": "acme", "call_id": "CALpub"}),
        attributes: BTreeMap::from([("tenant_id".to_owned(), "acme".to_owned())]),
    };
    let Claim::Claimed(claim) = state.claim_stage(&tenant, &call, "analyse:1", Duration::from_secs(60)).await.unwrap()
    else {
        panic!("claimable")
    };
    let done = Completion { follow_up: vec![message.work()], ..Completion::default() };
    assert!(state.finish_stage(&claim, done).await.unwrap());

    let flaky = Flaky { fail: 1, calls: AtomicUsize::new(0), inner: router.clone() };
    assert_eq!(flush(&state, &flaky, &SystemClock, 10).await, 0, "the first attempt fails");
    assert_eq!(flush(&state, &flaky, &SystemClock, 10).await, 0, "and waits for its backoff");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(flush(&state, &flaky, &SystemClock, 10).await, 1);
    assert_eq!(flush(&state, &flaky, &SystemClock, 10).await, 0, "published once");
    let events = router.pending().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].trigger, "analysis-complete");
    let body: serde_json::Value = serde_json::from_slice(&events[0].body).unwrap();
    let data =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body["message"]["data"].as_str().unwrap())
            .unwrap();
    let data: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(data, message.data);
    assert_eq!(body["message"]["attributes"]["tenant_id"], "acme");
}
