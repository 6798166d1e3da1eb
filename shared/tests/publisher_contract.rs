//! The event publisher's contract, against the local router and against Pub/Sub's emulator: what one publishes,
//! a subscriber of the topic receives with the same id, data, attributes and ordering key; a topic that does not
//! exist is a permanent error.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine;
use bytes::Bytes;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::pubsub::PubSubPublisher;
use callflow::adapters::sqlite::Durability;
use callflow::ports::EventPublisher;
use callflow::runtime::cloudevent::Incoming;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Received {
    id: String,
    data: Vec<u8>,
    attributes: BTreeMap<String, String>,
    ordering_key: Option<String>,
}

/// Publish three messages and check what a subscriber gets; then the unknown topic.
async fn contract<F, Fut>(publisher: Arc<dyn EventPublisher>, topic: &str, receive: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Received>>,
{
    let mut sent = Vec::new();
    for (i, key) in [(1, None), (2, Some("CAL2")), (3, Some("CAL2"))] {
        let data = format!(r#"{{"schema_version":1,"n":{i}}}"#);
        let attrs = BTreeMap::from([("tenant_id".to_owned(), "acme".to_owned()), ("n".to_owned(), i.to_string())]);
        let id = publisher.publish(topic, Bytes::from(data.clone()), attrs.clone(), key).await.unwrap();
        sent.push(Received { id, data: data.into_bytes(), attributes: attrs, ordering_key: key.map(str::to_owned) });
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < sent.len() {
        assert!(Instant::now() < deadline, "received {} of {}", got.len(), sent.len());
        got.extend(receive().await);
    }
    sent.sort();
    got.sort();
    assert_eq!(got, sent);
    let err = publisher.publish("no-such-topic", Bytes::from_static(b"{}"), BTreeMap::new(), None).await.unwrap_err();
    assert!(!err.retryable, "an unknown topic is permanent: {err}");
}

#[tokio::test]
async fn the_local_router_honours_the_publisher_contract() {
    let dir = tempfile::tempdir().unwrap();
    let triggers =
        callflow::eventarc::load(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eventarc"), "embedded")
            .unwrap();
    let router = Arc::new(LocalRouter::open(&dir.path().join("router.sqlite"), triggers, Durability::Full).unwrap());
    let inbox: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = inbox.clone();
    router.host(
        "on-analysis",
        axum::Router::new().route(
            "/",
            post(move |Incoming(ev): Incoming| {
                let sink = sink.clone();
                async move {
                    let m = ev.unwrap().pubsub_message().unwrap().message;
                    sink.lock().unwrap().push(Received {
                        id: m.message_id.clone().unwrap(),
                        data: m.decoded_data().unwrap(),
                        attributes: m.attributes.clone(),
                        ordering_key: m.ordering_key,
                    });
                    StatusCode::NO_CONTENT
                }
            }),
        ),
        4,
    );
    let r = router.clone();
    contract(router, "analysis-complete", move || {
        let (r, inbox) = (r.clone(), inbox.clone());
        async move {
            r.deliver_due().await;
            std::mem::take(&mut *inbox.lock().unwrap())
        }
    })
    .await;
}

#[tokio::test]
async fn pubsub_honours_the_publisher_contract() {
    let Some(host) = std::env::var("PUBSUB_EMULATOR_HOST").ok().filter(|h| !h.is_empty()) else {
        assert!(
            std::env::var("CALLFLOW_EMULATORS").as_deref() != Ok("required"),
            "CALLFLOW_EMULATORS=required but PUBSUB_EMULATOR_HOST is not set: run scripts/emulators start"
        );
        eprintln!("skipped: no Pub/Sub emulator (eval \"$(scripts/emulators env)\" after scripts/emulators start)");
        return;
    };
    let project = "callflow-emulators";
    let topic = format!("t-{}", uuid::Uuid::new_v4().simple());
    let base = format!("http://{host}/v1/projects/{project}");
    let http = reqwest::Client::new();
    http.put(format!("{base}/topics/{topic}")).send().await.unwrap().error_for_status().unwrap();
    http.put(format!("{base}/subscriptions/{topic}-sub"))
        .json(&serde_json::json!({ "topic": format!("projects/{project}/topics/{topic}"), "enableMessageOrdering": true }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let publisher = Arc::new(PubSubPublisher::connect(project).await.unwrap());
    let pull = format!("{base}/subscriptions/{topic}-sub");
    contract(publisher, &topic, move || {
        let (http, pull) = (http.clone(), pull.clone());
        async move {
            let resp: serde_json::Value = http
                .post(format!("{pull}:pull"))
                .json(&serde_json::json!({ "maxMessages": 10 }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut out = Vec::new();
            let mut acks = Vec::new();
            for r in resp["receivedMessages"].as_array().cloned().unwrap_or_default() {
                acks.push(r["ackId"].as_str().unwrap().to_owned());
                let m = &r["message"];
                let b64 = base64::engine::general_purpose::STANDARD;
                out.push(Received {
                    id: m["messageId"].as_str().unwrap().to_owned(),
                    data: b64.decode(m["data"].as_str().unwrap_or("")).unwrap(),
                    attributes: serde_json::from_value(m["attributes"].clone()).unwrap_or_default(),
                    ordering_key: m["orderingKey"].as_str().filter(|k| !k.is_empty()).map(str::to_owned),
                });
            }
            if !acks.is_empty() {
                http.post(format!("{pull}:acknowledge"))
                    .json(&serde_json::json!({ "ackIds": acks }))
                    .send()
                    .await
                    .unwrap();
            }
            out
        }
    })
    .await;
}
