//! The trigger over HTTP: a Pub/Sub message on `scheduled` (push envelope or Eventarc's CloudEvent) and Cloud
//! Scheduler's HTTP target both start a run named by its schedule slot; a redelivered slot writes no second report
//! row; poison messages are acknowledged and kept as dead letters once, a bad HTTP body is a 400.

mod support;

use axum::body::Body;
use axum::http::Request;
use base64::Engine;
use serde_json::{Value, json};
use support::{Backend, Harness};
use tower::ServiceExt;

const SLOT: &str = "2026-11-22T06:15:00Z";

async fn send(h: &Harness, request: Request<Body>) -> (u16, Value) {
    let resp = cleanup_scheduled::app(h.service.clone()).oneshot(request).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn push(data: &[u8], id: &str, attributes: Value) -> Request<Body> {
    let envelope = json!({
        "message": {"data": base64::engine::general_purpose::STANDARD.encode(data), "messageId": id,
                    "publishTime": "2026-11-22T06:15:00.412Z", "attributes": attributes},
        "subscription": "projects/callflow-local/subscriptions/eventarc-cleanup-scheduled"
    });
    Request::post("/").header("content-type", "application/json").body(Body::from(envelope.to_string())).unwrap()
}

fn rows(h: &Harness, run_id: &str) -> i64 {
    let c = rusqlite::Connection::open(h.dir.path().join("analytics.sqlite")).unwrap();
    c.query_row("SELECT count(*) FROM cleanup_runs WHERE run_id = ?1", [run_id], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn a_scheduled_message_runs_every_job_for_every_tenant_once_per_slot() {
    let h = support::harness(Backend::Embedded, &[]).await.unwrap();
    let body = br#"{"jobs": ["retention", "erasure", "stuck-calls", "reconciliation"]}"#;
    let attributes = json!({"schedule": "cleanup", "schedule_time": SLOT});
    let (status, report) = send(&h, push(body, "m1", attributes.clone())).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["run_id"], SLOT);
    let jobs: Vec<(String, String)> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job"].as_str().unwrap().to_owned(), j["tenant_id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(jobs.len(), 8, "four jobs × two tenants: {jobs:?}");
    assert_eq!(jobs[0], ("retention".to_owned(), "acme".to_owned()));
    assert_eq!(rows(&h, SLOT), 8, "a row per job and tenant");
    // Pub/Sub redelivers: the same slot, the same rows.
    assert_eq!(send(&h, push(body, "m1", attributes)).await.0, 200);
    assert_eq!(rows(&h, SLOT), 8);
    // Cloud Scheduler's Pub/Sub target cannot set attributes: the publish time names the slot.
    let (_, report) = send(&h, push(b"", "m2", json!({}))).await;
    assert_eq!(report["run_id"], "2026-11-22T06:15:00Z");
}

#[tokio::test]
async fn eventarcs_cloudevent_and_cloud_schedulers_http_target_are_both_accepted() {
    let h = support::harness(Backend::Embedded, &[]).await.unwrap();
    let data = json!({
        "message": {"data": base64::engine::general_purpose::STANDARD.encode(br#"{"jobs": ["stuck-calls"]}"#),
                    "messageId": "ce1", "attributes": {"schedule_time": "2026-11-22T06:30:00Z"}},
        "subscription": "projects/p/subscriptions/eventarc-cleanup-scheduled"
    });
    let binary = Request::post("/")
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "ce1")
        .header("ce-source", "//pubsub.googleapis.com/projects/p/topics/scheduled")
        .header("ce-type", "google.cloud.pubsub.topic.v1.messagePublished")
        .body(Body::from(data.to_string()))
        .unwrap();
    let (status, report) = send(&h, binary).await;
    assert_eq!((status, report["run_id"].as_str()), (200, Some("2026-11-22T06:30:00Z")), "{report}");
    assert_eq!(report["jobs"].as_array().unwrap().len(), 2);

    let scheduler = Request::post("/")
        .header("content-type", "application/json")
        .header("x-cloudscheduler", "true")
        .header("x-cloudscheduler-jobname", "cleanup")
        .header("x-cloudscheduler-scheduletime", "2026-11-22T06:45:00Z")
        .body(Body::from(r#"{"jobs": ["erasure"], "dry_run": true}"#))
        .unwrap();
    let (status, report) = send(&h, scheduler).await;
    assert_eq!((status, report["run_id"].as_str()), (200, Some("2026-11-22T06:45:00Z")), "{report}");
    assert_eq!(report["dry_run"], true);
    assert!(report["jobs"].as_array().unwrap().iter().all(|j| j["job"] == "erasure"));

    let bad =
        Request::post("/").header("x-cloudscheduler", "true").body(Body::from(r#"{"jobs": ["vacuum"]}"#)).unwrap();
    let (status, error) = send(&h, bad).await;
    assert_eq!(status, 400);
    assert!(error.to_string().contains("vacuum"), "{error}");
}

#[tokio::test]
async fn poison_triggers_are_acknowledged_and_kept_once() {
    let h = support::harness(Backend::Embedded, &[]).await.unwrap();
    let (status, _) = send(&h, push(b"not json", "p1", json!({}))).await;
    assert_eq!(status, 200, "redelivering it cannot help");
    assert_eq!(send(&h, push(b"not json", "p1", json!({}))).await.0, 200);
    let storage = Request::post("/")
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "s1")
        .header("ce-source", "//storage.googleapis.com/projects/_/buckets/recordings")
        .header("ce-type", "google.cloud.storage.object.v1.finalized")
        .body(Body::from(r#"{"bucket": "recordings", "name": "acme/CAL1.mp3"}"#))
        .unwrap();
    assert_eq!(send(&h, storage).await.0, 200);
    let letters = h.state.dead_letters(None, 10).await.unwrap();
    let kinds: Vec<_> = letters.iter().map(|d| (d.kind.as_str(), d.reason.as_str())).collect();
    assert_eq!(letters.len(), 2, "one per poison event: {kinds:?}");
    assert!(letters.iter().all(|d| d.kind == "event:cleanup-scheduled"));
    assert!(letters[0].reason.contains("not a cleanup request"), "{kinds:?}");
    assert!(letters[1].reason.contains("unexpected event type"), "{kinds:?}");
    assert_eq!(rows(&h, SLOT), 0, "no run");

    let get = Request::get("/").body(Body::empty()).unwrap();
    assert_eq!(send(&h, get).await.0, 405);
    let huge = Request::post("/").header("x-cloudscheduler", "true").body(Body::from(vec![b' '; 100_000])).unwrap();
    assert_eq!(send(&h, huge).await.0, 413);
}
