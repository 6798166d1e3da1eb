//! Cloud Scheduler in the local router: `[[schedule]]` definitions fired by `fire_schedules` with explicit times.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use callflow::adapters::local_router::{Delivery, LocalRouter, RoutedEvent};
use callflow::adapters::sqlite::Durability;
use callflow::eventarc::Triggers;
use callflow::runtime::cloudevent::{Incoming, IncomingEvent};
use chrono::{DateTime, Datelike, TimeZone, Utc};

const TRIGGERS: &str = r#"
[[trigger]]
name = "tick"
destination = "fn-tick"
event_type = "google.cloud.pubsub.topic.v1.messagePublished"
topic = "ticks"
timeout_secs = 1
[trigger.retry]
min_backoff_secs = 10
max_backoff_secs = 80
max_delivery_attempts = 5
dead_letter_topic = "dead-letters"

[[trigger]]
name = "other"
destination = "fn-other"
event_type = "google.cloud.pubsub.topic.v1.messagePublished"
topic = "other"
timeout_secs = 1
[trigger.retry]
min_backoff_secs = 10
max_backoff_secs = 80
max_delivery_attempts = 5
dead_letter_topic = "dead-letters"

[[schedule]]
name = "tick"
cron = "*/15 * * * *"
topic = "ticks"
data = '{"jobs": ["retention", "erasure"]}'

[[schedule]]
name = "unhosted"
cron = "* * * * *"
topic = "other"
"#;

const ENVS: &str = r#"
[test]
project = "proj"
[test.topics]
ticks = "ticks-topic"
other = "other-topic"
dead-letters = "dl-topic"
"#;

fn triggers(definitions: &str) -> Triggers {
    callflow::eventarc::parse(definitions, "triggers.toml", ENVS, "environments.toml", "test").unwrap()
}

/// 1/1000 of real time for backoffs; schedules run on the `now` the tests pass.
fn router_with(dir: &std::path::Path, definitions: &str) -> Arc<LocalRouter> {
    let path = dir.join("router.sqlite");
    Arc::new(LocalRouter::open_scaled(&path, triggers(definitions), Durability::Full, 0.001).unwrap())
}

fn router(dir: &std::path::Path) -> Arc<LocalRouter> {
    router_with(dir, TRIGGERS)
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

/// A function that records what it receives and answers what it is told to (then 204).
#[derive(Clone, Default)]
struct TestFn {
    received: Arc<Mutex<Vec<IncomingEvent>>>,
    script: Arc<Mutex<Vec<StatusCode>>>,
}

impl TestFn {
    fn app(&self) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            "/",
            post(move |Incoming(event): Incoming| {
                let me = me.clone();
                async move {
                    me.received.lock().unwrap().push(event.expect("a CloudEvent"));
                    let mut script = me.script.lock().unwrap();
                    if script.is_empty() { StatusCode::NO_CONTENT } else { script.remove(0) }
                }
            }),
        )
    }
    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// The Pub/Sub message inside a recorded event.
fn message(event: &RoutedEvent) -> serde_json::Value {
    serde_json::from_slice::<serde_json::Value>(&event.body).unwrap()["message"].clone()
}

fn schedule_times(events: &[RoutedEvent]) -> Vec<String> {
    events.iter().map(|e| message(e)["attributes"]["schedule_time"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_schedule_fires_not_on_first_sight_then_once_per_due_slot() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    router.host("fn-tick", TestFn::default().app(), 4);
    assert_eq!(router.fire_schedules(at("2025-03-01T10:05:00Z")).await.unwrap(), 0, "first sight");
    assert!(router.pending().await.unwrap().is_empty());
    let last = router.schedule_last_fires().await.unwrap();
    assert_eq!(last, BTreeMap::from([("tick".to_owned(), at("2025-03-01T10:05:00Z"))]));

    assert_eq!(router.fire_schedules(at("2025-03-01T10:14:59Z")).await.unwrap(), 0, "not yet due");
    assert_eq!(router.fire_schedules(at("2025-03-01T10:15:00Z")).await.unwrap(), 1, "due at the slot");
    assert_eq!(router.fire_schedules(at("2025-03-01T10:15:00Z")).await.unwrap(), 0, "a slot fires once");
    assert_eq!(router.fire_schedules(at("2025-03-01T10:29:59Z")).await.unwrap(), 0);
    assert_eq!(router.fire_schedules(at("2025-03-01T10:30:02Z")).await.unwrap(), 1);
    let pending = router.pending().await.unwrap();
    assert_eq!(schedule_times(&pending), ["2025-03-01T10:15:00Z", "2025-03-01T10:30:00Z"]);
    assert!(pending.iter().all(|e| (e.trigger.as_str(), e.destination.as_str()) == ("tick", "fn-tick")));
    assert_eq!(router.schedule_last_fires().await.unwrap()["tick"], at("2025-03-01T10:30:00Z"));
}

#[tokio::test]
async fn a_long_outage_fires_once_for_the_latest_slot_not_once_per_missed_slot() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    router.host("fn-tick", TestFn::default().app(), 4);
    router.fire_schedules(at("2025-03-01T10:05:00Z")).await.unwrap();
    // Five hours later (twenty missed slots): one message, for the latest slot.
    assert_eq!(router.fire_schedules(at("2025-03-01T15:08:00Z")).await.unwrap(), 1);
    assert_eq!(router.fire_schedules(at("2025-03-01T15:14:00Z")).await.unwrap(), 0);
    assert_eq!(schedule_times(&router.pending().await.unwrap()), ["2025-03-01T15:00:00Z"]);
    assert_eq!(router.fire_schedules(at("2025-03-01T15:15:00Z")).await.unwrap(), 1);
    assert_eq!(router.pending().await.unwrap().len(), 2);
}

#[tokio::test]
async fn schedules_for_functions_not_hosted_here_do_not_fire() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    // Nothing hosted: nothing is even recorded.
    assert_eq!(router.fire_schedules(at("2025-03-01T10:05:00Z")).await.unwrap(), 0);
    assert!(router.schedule_last_fires().await.unwrap().is_empty());
    router.host("fn-tick", TestFn::default().app(), 4);
    router.fire_schedules(at("2025-03-01T10:05:00Z")).await.unwrap();
    // "unhosted" is due every minute, but fn-other does not exist here: no events pile up for it.
    assert_eq!(router.fire_schedules(at("2025-03-01T12:00:00Z")).await.unwrap(), 1);
    let pending = router.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].destination, "fn-tick");
    assert!(!router.schedule_last_fires().await.unwrap().contains_key("unhosted"));
    // Once fn-other is hosted, its schedule starts from then, without a burst.
    router.host("fn-other", TestFn::default().app(), 4);
    assert_eq!(router.fire_schedules(at("2025-03-01T12:00:30Z")).await.unwrap(), 0);
    assert_eq!(router.fire_schedules(at("2025-03-01T12:01:00Z")).await.unwrap(), 1);
    let message = message(&router.pending().await.unwrap()[1]);
    assert_eq!(message["attributes"]["schedule"], "unhosted");
    assert_eq!(message["data"], "", "no data: an empty body");
}

#[tokio::test]
async fn a_fired_slot_is_not_fired_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let router = router(dir.path());
        router.host("fn-tick", TestFn::default().app(), 4);
        router.fire_schedules(at("2025-03-01T10:05:00Z")).await.unwrap();
    }
    {
        // First sight survives a restart: no fire at the restart, the slot after it fires.
        let router = router(dir.path());
        router.host("fn-tick", TestFn::default().app(), 4);
        assert_eq!(router.fire_schedules(at("2025-03-01T10:10:00Z")).await.unwrap(), 0);
        assert_eq!(router.fire_schedules(at("2025-03-01T10:15:01Z")).await.unwrap(), 1);
    }
    let router = router(dir.path());
    router.host("fn-tick", TestFn::default().app(), 4);
    assert_eq!(router.fire_schedules(at("2025-03-01T10:15:01Z")).await.unwrap(), 0, "fired before the restart");
    assert_eq!(router.fire_schedules(at("2025-03-01T10:29:00Z")).await.unwrap(), 0);
    assert_eq!(router.fire_schedules(at("2025-03-01T10:30:00Z")).await.unwrap(), 1);
    assert_eq!(schedule_times(&router.pending().await.unwrap()), ["2025-03-01T10:15:00Z", "2025-03-01T10:30:00Z"]);
}

#[tokio::test]
async fn a_scheduled_message_is_delivered_like_any_pubsub_event_with_retries() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let f = TestFn::default();
    *f.script.lock().unwrap() = vec![StatusCode::INTERNAL_SERVER_ERROR];
    router.host("fn-tick", f.app(), 4);
    router.fire_schedules(at("2025-03-01T10:05:00Z")).await.unwrap();
    router.fire_schedules(at("2025-03-01T10:15:00Z")).await.unwrap();
    let first = router.deliver_due().await;
    assert!(matches!(first[..], [Delivery::Retrying { status: Some(500), .. }]), "{first:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.count() < 2 {
        assert!(Instant::now() < deadline, "not redelivered");
        router.deliver_due().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(router.pending().await.unwrap().is_empty());
    let received = f.received.lock().unwrap().clone();
    assert_eq!(received[0].id, received[1].id, "a redelivery keeps the id");
    let ev = &received[1];
    assert_eq!(ev.ty, "google.cloud.pubsub.topic.v1.messagePublished");
    assert_eq!(ev.source, "//pubsub.googleapis.com/projects/proj/topics/ticks-topic");
    let msg = ev.pubsub_message().unwrap();
    assert_eq!(msg.subscription, "projects/proj/subscriptions/tick");
    assert_eq!(msg.message.decoded_data().unwrap(), br#"{"jobs":["retention","erasure"]}"#);
    assert_eq!(
        msg.message.attributes,
        BTreeMap::from([
            ("schedule".to_owned(), "tick".to_owned()),
            ("schedule_time".to_owned(), "2025-03-01T10:15:00Z".to_owned()),
        ])
    );
    assert_eq!(msg.message.message_id.as_deref(), Some(ev.id.as_str()));
}

#[tokio::test]
async fn the_run_loop_fires_due_schedules() {
    let dir = tempfile::tempdir().unwrap();
    // Yearly, so that the loop's own clock finds exactly one due slot.
    let router = router_with(dir.path(), &TRIGGERS.replace("*/15 * * * *", "0 0 1 1 *"));
    let f = TestFn::default();
    router.host("fn-tick", f.app(), 4);
    let long_ago = Utc::now() - chrono::Duration::days(800);
    router.fire_schedules(long_ago).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(router.clone().run(stop_rx));
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.count() < 1 {
        assert!(Instant::now() < deadline, "the loop did not fire the schedule");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_tx.send(true).unwrap();
    run.await.unwrap();
    assert_eq!(f.count(), 1, "two years missed, one message");
    let slot = router.schedule_last_fires().await.unwrap()["tick"];
    let this_new_year = Utc.with_ymd_and_hms(Utc::now().year(), 1, 1, 0, 0, 0).unwrap();
    assert_eq!(slot, this_new_year, "the latest slot, not the first missed one");
    let attrs = f.received.lock().unwrap()[0].pubsub_message().unwrap().message.attributes;
    assert_eq!(attrs["schedule_time"], slot.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
}
