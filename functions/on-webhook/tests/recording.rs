//! The recording fetch against a fake of CallRail's API: success, missing recordings, rate limits, outages,
//! slowness and nonsense answers, each ending where a user would expect.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use callflow::domain::work::WorkKind;
use common::*;
use on_webhook::outbox::{FetchOutcome, process_fetch};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

const CALL: &str = "CALa1b2c3d4e5f60718293a4b5c6d7e8f90";

async fn accept_call(h: &Harness) {
    let (s, j) = h.post_callrail(ACME, &fixture("callrail/post-call-resource-ids.json"), ACME_KEY).await;
    assert_eq!(s, StatusCode::OK, "{j}");
}

/// Claim the call's fetch (waiting out its backoff) and run it once.
async fn fetch_once(h: &Harness) -> FetchOutcome {
    for _ in 0..200 {
        let mut items =
            h.service.ports.state.claim_work(&[WorkKind::FetchRecording], 1, Duration::from_secs(60)).await.unwrap();
        if let Some(item) = items.pop() {
            return process_fetch(&h.service, item).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no fetch became due");
}

fn recording_json(status: u16) -> Mock {
    Mock::given(method("GET"))
        .and(path(format!("/v3/a/{ACME_ACCOUNT}/calls/{CALL}/recording.json")))
        .respond_with(ResponseTemplate::new(status))
}

#[tokio::test]
async fn a_recording_is_streamed_into_the_bucket_with_its_metadata() {
    let h = harness().await;
    accept_call(&h).await;
    let audio: &'static [u8] = &[0x49, 0x44, 0x33, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3];
    h.serve_recording(ACME_ACCOUNT, ACME_API_KEY, CALL, audio).await;
    let outcome = fetch_once(&h).await;
    assert_eq!(outcome, FetchOutcome::Stored { object: format!("recordings/{ACME}/{CALL}.mp3"), bytes: 13 });
    assert_eq!(std::fs::read(h.object_path(ACME, CALL)).unwrap(), audio);
    let info = h.service.ports.objects.head("recordings", &format!("{ACME}/{CALL}.mp3")).await.unwrap().unwrap();
    assert_eq!((info.metadata["tenant_id"].as_str(), info.metadata["call_id"].as_str()), (ACME, CALL));
    assert_eq!(info.content_type, "audio/mpeg");
    assert_eq!(h.call_state(CALL).unwrap().0, "recording_stored");
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording'"), 0);
    on_webhook::outbox::drain_pass(&h.service).await;
    assert_eq!(h.analytics("SELECT COUNT(*) FROM calls WHERE outcome = 'recording_stored' AND bytes = 13"), 1);
}

#[tokio::test]
async fn no_recording_at_callrail_parks_the_call_with_that_reason() {
    let h = harness().await;
    accept_call(&h).await;
    recording_json(404).mount(&h.callrail).await;
    assert_eq!(fetch_once(&h).await, FetchOutcome::NoRecording);
    assert_eq!(h.call_state(CALL), Some(("skipped".into(), Some("no_recording".into()))));
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording'"), 0);
}

#[tokio::test]
async fn rate_limits_are_retried_honouring_retry_after() {
    let h = harness_with(|s| s.fetch_retry.max = Duration::from_secs(600)).await;
    accept_call(&h).await;
    let limited = ResponseTemplate::new(429).insert_header("retry-after", "7");
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(limited)
        .up_to_n_times(1)
        .mount(&h.callrail)
        .await;
    match fetch_once(&h).await {
        FetchOutcome::Retrying { after, error } => {
            assert!(after >= Duration::from_secs(7), "{after:?}");
            assert!(error.contains("rate limited"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing is lost while it waits: still queued, call still received.
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording' AND last_error IS NOT NULL"), 1);
    assert_eq!(h.call_state(CALL).unwrap().0, "received");
}

#[tokio::test]
async fn a_429_without_retry_after_then_success() {
    let h = harness().await;
    accept_call(&h).await;
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(1)
        .mount(&h.callrail)
        .await;
    h.serve_recording(ACME_ACCOUNT, ACME_API_KEY, CALL, b"ID3 ok").await;
    assert!(matches!(fetch_once(&h).await, FetchOutcome::Retrying { .. }));
    assert!(matches!(fetch_once(&h).await, FetchOutcome::Stored { .. }));
    assert_eq!(h.call_state(CALL).unwrap().0, "recording_stored");
}

#[tokio::test]
async fn a_lasting_outage_ends_in_a_dead_letter_after_the_attempt_budget() {
    let h = harness().await;
    accept_call(&h).await;
    recording_json(500).mount(&h.callrail).await;
    assert!(matches!(fetch_once(&h).await, FetchOutcome::Retrying { .. }));
    assert!(matches!(fetch_once(&h).await, FetchOutcome::Retrying { .. }));
    match fetch_once(&h).await {
        FetchOutcome::DeadLettered { reason } => {
            assert!(reason.contains("after 3 attempts") && reason.contains("500"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let (state, reason) = h.call_state(CALL).unwrap();
    assert_eq!(state, "dead_lettered");
    assert!(reason.unwrap().contains("500"));
    assert_eq!(h.count("SELECT COUNT(*) FROM dead_letters WHERE kind = 'fetch_recording' AND attempts = 3"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording'"), 0);
    assert_eq!(h.callrail.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_slow_api_times_out_and_is_retried() {
    let h = harness().await;
    accept_call(&h).await;
    let slow = ResponseTemplate::new(200)
        .set_delay(Duration::from_secs(3))
        .set_body_json(serde_json::json!({"url": "http://x"}));
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(slow)
        .up_to_n_times(1)
        .mount(&h.callrail)
        .await;
    h.serve_recording(ACME_ACCOUNT, ACME_API_KEY, CALL, b"ID3 after slow").await;
    let started = std::time::Instant::now();
    match fetch_once(&h).await {
        FetchOutcome::Retrying { error, .. } => assert!(error.contains("timed out"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout did not cut the call short");
    assert!(matches!(fetch_once(&h).await, FetchOutcome::Stored { .. }));
}

#[tokio::test]
async fn nonsense_from_callrail_is_dead_lettered_not_stored() {
    for (case, template) in [
        ("malformed json", ResponseTemplate::new(200).set_body_string("{\"url\": ")),
        ("no url", ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": 1}))),
        ("401", ResponseTemplate::new(401).set_body_string("HTTP Token: Access denied.")),
    ] {
        let h = harness().await;
        accept_call(&h).await;
        Mock::given(method("GET")).and(path_regex("recording.json$")).respond_with(template).mount(&h.callrail).await;
        assert!(matches!(fetch_once(&h).await, FetchOutcome::DeadLettered { .. }), "{case}");
        assert_eq!(h.call_state(CALL).unwrap().0, "dead_lettered", "{case}");
        assert!(!h.object_path(ACME, CALL).exists(), "{case}");
    }
    // An HTML page where the audio should be.
    let h = harness().await;
    accept_call(&h).await;
    let url = format!("{}/audio/{CALL}.mp3", h.callrail.uri());
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "url": url })))
        .mount(&h.callrail)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("/audio/"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("<html>login</html>", "text/html"))
        .mount(&h.callrail)
        .await;
    match fetch_once(&h).await {
        FetchOutcome::DeadLettered { reason } => assert!(reason.contains("text/html"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!h.object_path(ACME, CALL).exists());
}

#[tokio::test]
async fn the_background_worker_fetches_without_being_asked() {
    let h = harness().await;
    h.serve_recording(ACME_ACCOUNT, ACME_API_KEY, CALL, b"ID3 worker").await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(on_webhook::outbox::run(h.service.clone(), stop_rx));
    accept_call(&h).await;
    for _ in 0..200 {
        if h.call_state(CALL).unwrap().0 == "recording_stored" && h.count("SELECT COUNT(*) FROM outbox") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.call_state(CALL).unwrap().0, "recording_stored");
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox"), 0, "analytics rows were not flushed");
    assert_eq!(h.analytics("SELECT COUNT(*) FROM calls"), 2);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), worker).await.unwrap().unwrap();
}
