//! The local router's Eventarc semantics, against a test-only function that fails on command.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use callflow::adapters::dir_objects::DirObjectStore;
use callflow::adapters::local_router::{Delivery, LocalRouter, RoutedObjectStore};
use callflow::adapters::sqlite::Durability;
use callflow::eventarc::Triggers;
use callflow::ports::{EventPublisher, NewObject, ObjectStore};
use callflow::runtime::cloudevent::{Incoming, IncomingEvent};

const TRIGGERS: &str = r#"
[[trigger]]
name = "rec"
destination = "fn-storage"
event_type = "google.cloud.storage.object.v1.finalized"
bucket = "recordings"
timeout_secs = 1
[trigger.retry]
min_backoff_secs = 10
max_backoff_secs = 80
max_delivery_attempts = 5
dead_letter_topic = "dead-letters"

[[trigger]]
name = "news"
destination = "fn-pubsub"
event_type = "google.cloud.pubsub.topic.v1.messagePublished"
topic = "news"
timeout_secs = 1
[trigger.retry]
min_backoff_secs = 10
max_backoff_secs = 80
max_delivery_attempts = 5
dead_letter_topic = "dead-letters"
"#;

const ENVS: &str = r#"
[test]
project = "proj"
[test.buckets]
recordings = "rec-bucket"
transcripts = "tr-bucket"
[test.topics]
news = "news-topic"
quiet = "quiet-topic"
dead-letters = "dl-topic"
"#;

fn triggers() -> Triggers {
    callflow::eventarc::parse(TRIGGERS, "triggers.toml", ENVS, "environments.toml", "test").unwrap()
}

/// 1/1000 of real time: a 10 s backoff takes 10 ms.
fn router(dir: &std::path::Path) -> Arc<LocalRouter> {
    Arc::new(LocalRouter::open_scaled(&dir.join("router.sqlite"), triggers(), Durability::Full, 0.001).unwrap())
}

/// A function that records what it receives and answers what it is told to.
#[derive(Clone, Default)]
struct TestFn {
    received: Arc<Mutex<Vec<(Instant, IncomingEvent)>>>,
    /// Answer with these statuses first, then 204.
    script: Arc<Mutex<Vec<StatusCode>>>,
    /// Sleep this long on the first call (to exceed the trigger's timeout once).
    first_call_delay: Arc<Mutex<Option<Duration>>>,
    /// Effects applied, deduplicated on CloudEvents source + id as a real function must.
    effects: Arc<Mutex<HashSet<String>>>,
}

impl TestFn {
    fn app(&self) -> axum::Router {
        let me = self.clone();
        axum::Router::new().route(
            "/",
            post(move |Incoming(event): Incoming| {
                let me = me.clone();
                async move {
                    let event = event.expect("the router's events parse with the shared extractor");
                    me.received.lock().unwrap().push((Instant::now(), event.clone()));
                    let delay = me.first_call_delay.lock().unwrap().take();
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                    let status = {
                        let mut script = me.script.lock().unwrap();
                        if script.is_empty() { StatusCode::NO_CONTENT } else { script.remove(0) }
                    };
                    if status.is_success() {
                        me.effects.lock().unwrap().insert(event.dedupe_key());
                    }
                    status
                }
            }),
        )
    }
    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

async fn drive(router: &LocalRouter, until: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !until() {
        assert!(Instant::now() < deadline, "timed out");
        router.deliver_due().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn put(store: &dyn ObjectStore, bucket: &str, name: &str, bytes: &'static [u8]) -> callflow::ports::ObjectInfo {
    let meta = BTreeMap::from([("tenant_id".to_owned(), "acme".to_owned())]);
    let object = NewObject { bucket, name, content_type: "audio/mpeg", metadata: meta, max_bytes: 1 << 20 };
    store.put(object, Box::pin(futures::stream::iter([Ok(Bytes::from_static(bytes))]))).await.unwrap()
}

#[tokio::test]
async fn storage_events_are_what_eventarc_sends_once_per_generation_and_filtered_by_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let f = TestFn::default();
    router.host("fn-storage", f.app(), 4);
    let store = RoutedObjectStore::new(Arc::new(DirObjectStore::new(dir.path().join("objects"))), router.clone());
    let info = put(&store, "rec-bucket", "acme/CAL1.mp3", b"ID3 one").await;
    put(&store, "tr-bucket", "acme/CAL1.json", b"{}").await; // no trigger on this bucket
    // The same generation announced again is still one event.
    assert_eq!(router.object_finalized(&info).await.unwrap(), 0);
    assert_eq!(router.pending().await.unwrap().len(), 1);

    drive(&router, || f.count() == 1).await;
    let (_, ev) = f.received.lock().unwrap()[0].clone();
    assert_eq!(ev.source, "//storage.googleapis.com/projects/_/buckets/rec-bucket");
    assert_eq!(ev.subject.as_deref(), Some("objects/acme/CAL1.mp3"));
    assert!(ev.time.is_some());
    let obj = ev.storage_object().unwrap();
    assert_eq!((obj.bucket.as_str(), obj.name.as_str()), ("rec-bucket", "acme/CAL1.mp3"));
    assert_eq!((obj.generation, obj.size), (Some(info.generation), Some(7)));
    assert_eq!(obj.metadata["tenant_id"], "acme");
    assert_eq!(obj.md5_hash.as_deref(), Some(info.md5_base64.as_str()));

    // A new generation of the same object is a new event.
    let again = put(&store, "rec-bucket", "acme/CAL1.mp3", b"ID3 two").await;
    assert!(again.generation > info.generation);
    drive(&router, || f.count() == 2).await;
    let (_, ev2) = f.received.lock().unwrap()[1].clone();
    assert_ne!(ev2.id, ev.id);
    assert!(router.pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn pubsub_events_carry_the_message_and_the_triggers_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let f = TestFn::default();
    router.host("fn-pubsub", f.app(), 4);
    let attrs = BTreeMap::from([("tenant_id".to_owned(), "acme".to_owned())]);
    let id = router
        .publish("news-topic", Bytes::from_static(br#"{"schema_version":1}"#), attrs, Some("CAL1"))
        .await
        .unwrap();
    // A topic nobody listens to drops the message (as Pub/Sub does); an unknown topic is an error.
    router.publish("quiet-topic", Bytes::from_static(b"{}"), BTreeMap::new(), None).await.unwrap();
    assert!(router.publish("no-such-topic", Bytes::new(), BTreeMap::new(), None).await.is_err());
    assert_eq!(router.pending().await.unwrap().len(), 1);

    drive(&router, || f.count() == 1).await;
    let (_, ev) = f.received.lock().unwrap()[0].clone();
    assert_eq!(
        (ev.id.as_str(), ev.source.as_str()),
        (id.as_str(), "//pubsub.googleapis.com/projects/proj/topics/news-topic")
    );
    let msg = ev.pubsub_message().unwrap();
    assert_eq!(msg.subscription, "projects/proj/subscriptions/news");
    assert_eq!(msg.message.decoded_data().unwrap(), br#"{"schema_version":1}"#);
    assert_eq!(msg.message.attributes["tenant_id"], "acme");
    assert_eq!(
        (msg.message.message_id.as_deref(), msg.message.ordering_key.as_deref()),
        (Some(id.as_str()), Some("CAL1"))
    );
}

#[tokio::test]
async fn failures_are_retried_with_growing_delays_then_dead_lettered_and_can_be_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let f = TestFn::default();
    *f.script.lock().unwrap() = vec![StatusCode::INTERNAL_SERVER_ERROR; 5];
    router.host("fn-pubsub", f.app(), 4);
    router.publish("news-topic", Bytes::from_static(b"{}"), BTreeMap::new(), None).await.unwrap();
    drive(&router, || f.count() == 5).await;
    let dead = loop {
        let d = router.dead_letters().await.unwrap();
        if !d.is_empty() {
            break d;
        }
        router.deliver_due().await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].attempts, dead[0].last_status), (5, Some(500)));
    assert!(dead[0].reason.contains("500") && dead[0].reason.contains("after 5 attempts"), "{}", dead[0].reason);
    assert!(router.pending().await.unwrap().is_empty());
    // Backoff 10, 20, 40, 80 ms (scaled), each with up to half jitter: every gap at least half its step.
    let times: Vec<Instant> = f.received.lock().unwrap().iter().map(|(t, _)| *t).collect();
    for (i, pair) in times.windows(2).enumerate() {
        let floor = Duration::from_millis(5 << i);
        assert!(pair[1] - pair[0] >= floor, "gap {i} was {:?}, expected at least {floor:?}", pair[1] - pair[0]);
    }
    assert!(times[4] - times[3] > times[1] - times[0], "delays did not grow");
    // No more attempts after the dead letter.
    tokio::time::sleep(Duration::from_millis(100)).await;
    router.deliver_due().await;
    assert_eq!(f.count(), 5);

    // The operator fixed the function: replay delivers it.
    assert_eq!(router.replay(None).await.unwrap(), 1);
    assert!(router.dead_letters().await.unwrap().is_empty());
    drive(&router, || f.count() == 6).await;
    assert_eq!(f.effects.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_202_and_a_timeout_are_not_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let f = TestFn::default();
    *f.script.lock().unwrap() = vec![StatusCode::ACCEPTED];
    router.host("fn-pubsub", f.app(), 4);
    router.publish("news-topic", Bytes::from_static(b"{}"), BTreeMap::new(), None).await.unwrap();
    let first = router.deliver_due().await;
    assert!(matches!(first[..], [Delivery::Retrying { status: Some(202), .. }]), "{first:?}");
    assert!(
        router.pending().await.unwrap()[0].last_error.as_deref().unwrap().contains("202 is not an acknowledgement")
    );
    drive(&router, || f.count() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_reaches_the_function_which_does_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let f = TestFn::default();
    // The first attempt succeeds, but only after the trigger's 1 s timeout: the router retries.
    *f.first_call_delay.lock().unwrap() = Some(Duration::from_millis(1500));
    router.host("fn-pubsub", f.app(), 4);
    router.publish("news-topic", Bytes::from_static(b"{}"), BTreeMap::new(), None).await.unwrap();
    let first = router.deliver_due().await;
    assert!(matches!(first[..], [Delivery::Retrying { status: None, .. }]), "{first:?}");
    drive(&router, || f.count() == 2 && router_is_empty(&router)).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // let the timed-out first call finish
    let received = f.received.lock().unwrap();
    assert_eq!(received[0].1.dedupe_key(), received[1].1.dedupe_key(), "a redelivery keeps source and id");
    assert_eq!(f.effects.lock().unwrap().len(), 1, "the function applied the event once");
}

fn router_is_empty(router: &LocalRouter) -> bool {
    futures::executor::block_on(router.pending()).unwrap().is_empty()
}

#[tokio::test]
async fn undelivered_events_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let router = router(dir.path());
        router.publish("news-topic", Bytes::from_static(b"{\"n\":1}"), BTreeMap::new(), None).await.unwrap();
        router.publish("news-topic", Bytes::from_static(b"{\"n\":2}"), BTreeMap::new(), None).await.unwrap();
        // Nothing hosts fn-pubsub here: the events wait, they are not dropped or dead-lettered.
        assert!(router.deliver_due().await.is_empty());
        assert_eq!(router.unhosted_triggers().len(), 2);
    }
    // A crash mid-delivery: an event claimed by a function that never answers before the process dies.
    {
        let router = router(dir.path());
        let hang = axum::Router::new().route("/", post(|| async { std::future::pending::<StatusCode>().await }));
        router.host("fn-pubsub", hang, 1);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(router.clone().run(stop_rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        run.abort(); // the process dies; the claimed event's lease is still held in the file
        drop(stop_tx);
    }
    let router = router(dir.path());
    assert_eq!(router.release_leases().await.unwrap(), 1);
    let f = TestFn::default();
    router.host("fn-pubsub", f.app(), 4);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(router.clone().run(stop_rx));
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.count() < 2 {
        assert!(Instant::now() < deadline, "events were lost across the restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_tx.send(true).unwrap();
    run.await.unwrap();
    assert!(router.pending().await.unwrap().is_empty(), "acks recorded on the way out");
    let bodies: HashSet<Vec<u8>> = f
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.pubsub_message().unwrap().message.decoded_data().unwrap())
        .collect();
    assert_eq!(bodies, HashSet::from([b"{\"n\":1}".to_vec(), b"{\"n\":2}".to_vec()]));
}

#[tokio::test]
async fn concurrency_is_bounded_per_function() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path());
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (i, p) = (in_flight.clone(), peak.clone());
    let app = axum::Router::new().route(
        "/",
        post(move || {
            let (i, p) = (i.clone(), p.clone());
            async move {
                let now = i.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                i.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }
        }),
    );
    router.host("fn-pubsub", app, 3);
    for _ in 0..12 {
        router.publish("news-topic", Bytes::from_static(b"{}"), BTreeMap::new(), None).await.unwrap();
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(router.clone().run(stop_rx));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !router.pending().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(true).unwrap();
    run.await.unwrap();
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
}
