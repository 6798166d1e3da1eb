//! The storage watcher: each object generation in a watched bucket becomes one finalize event, once — across
//! polls and across restarts of the watcher — and objects in other buckets are not watched.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use callflow::adapters::dir_objects::DirObjectStore;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::sqlite::Durability;
use callflow::adapters::storage_watcher::StorageWatcher;
use callflow::ports::{NewObject, ObjectStore};

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn put(store: &DirObjectStore, bucket: &str, name: &str, body: &'static [u8]) -> i64 {
    let object = NewObject {
        bucket,
        name,
        content_type: "audio/mpeg",
        metadata: BTreeMap::from([("tenant_id".to_owned(), "acme".to_owned())]),
        max_bytes: 1 << 20,
    };
    let stream: callflow::ports::ByteStream = Box::pin(futures::stream::iter([Ok(Bytes::from_static(body))]));
    store.put(object, stream).await.unwrap().generation
}

#[tokio::test]
async fn every_generation_is_announced_once_across_polls_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let triggers = callflow::eventarc::load(&repo().join("eventarc"), "emulators").unwrap();
    let router = Arc::new(LocalRouter::open(&dir.path().join("router.sqlite"), triggers, Durability::Full).unwrap());
    let store = Arc::new(DirObjectStore::new(dir.path().join("objects")));
    let open = || StorageWatcher::open(&dir.path().join("watcher.sqlite"), store.clone(), router.clone()).unwrap();

    let watcher = open();
    assert_eq!(watcher.buckets(), ["callflow-recordings", "callflow-transcripts"]);
    let first = put(&store, "callflow-recordings", "acme/CAL1.mp3", b"one").await;
    let two = put(&store, "callflow-recordings", "acme/CAL2.mp3", b"two").await;
    put(&store, "elsewhere", "acme/CAL3.mp3", b"not watched").await;
    assert_eq!(watcher.poll_once().await.unwrap(), 2);
    assert_eq!(watcher.poll_once().await.unwrap(), 0, "a second pass announces nothing again");
    drop(watcher);

    // A restart remembers what was announced, and catches up on what was finalized while it was down.
    let second = put(&store, "callflow-recordings", "acme/CAL1.mp3", b"one, again").await;
    assert!(second > first);
    let watcher = open();
    assert_eq!(watcher.poll_once().await.unwrap(), 1, "only the new generation");
    assert_eq!(watcher.poll_once().await.unwrap(), 0);

    let events = router.pending().await.unwrap();
    let mut seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
            (body["name"].as_str().unwrap().to_owned(), body["generation"].as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("acme/CAL1.mp3".to_owned(), first.to_string()),
            ("acme/CAL1.mp3".to_owned(), second.to_string()),
            ("acme/CAL2.mp3".to_owned(), two.to_string()),
        ]
    );
    assert!(events.iter().all(|e| e.destination == "on-audio-uploaded" && e.ce_type.ends_with("finalized")));
}
