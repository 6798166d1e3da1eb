//! The object store's contract, against the directory store and against Cloud Storage's emulator through the
//! production adapter (official client for data, JSON API for metadata): objects round-trip with metadata and
//! checksums, generations grow, an oversize body changes nothing, listings page by tenant prefix, deletes are
//! idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use callflow::adapters::dir_objects::DirObjectStore;
use callflow::adapters::gcs::GcsObjectStore;
use callflow::ports::{ByteStream, NewObject, ObjectStore};

fn body(chunks: &[&'static [u8]]) -> ByteStream {
    let chunks: Vec<_> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
    Box::pin(futures::stream::iter(chunks))
}

fn object<'a>(bucket: &'a str, name: &'a str, max_bytes: u64) -> NewObject<'a> {
    NewObject {
        bucket,
        name,
        content_type: "audio/mpeg",
        metadata: BTreeMap::from([
            ("tenant_id".to_owned(), "acme".to_owned()),
            ("call_id".to_owned(), "CAL1".to_owned()),
        ]),
        max_bytes,
    }
}

async fn contract(store: Arc<dyn ObjectStore>, bucket: &str) {
    // Round trip: what head and get describe is what put returned.
    let put = store.put(object(bucket, "acme/CAL1.mp3", 1 << 20), body(&[b"hello ", b"world"])).await.unwrap();
    assert_eq!((put.bucket.as_str(), put.name.as_str(), put.size), (bucket, "acme/CAL1.mp3", 11));
    assert_eq!(put.md5_base64, "XrY7u+Ae7tCTyyK7j1rNww==", "MD5 of the content, base64 as GCS reports it");
    assert_eq!(put.crc32c_base64, "yZRlqg==", "CRC32C of the content, big-endian base64 as GCS reports it");
    assert_eq!(put.content_type, "audio/mpeg");
    assert_eq!(put.metadata["call_id"], "CAL1");
    let head = store.head(bucket, "acme/CAL1.mp3").await.unwrap().expect("head finds the object");
    assert_eq!(
        (head.generation, head.size, &head.md5_base64, &head.crc32c_base64, &head.metadata, &head.content_type),
        (put.generation, put.size, &put.md5_base64, &put.crc32c_base64, &put.metadata, &put.content_type)
    );
    let (info, data) = store.get(bucket, "acme/CAL1.mp3").await.unwrap().expect("get finds the object");
    assert_eq!((&data[..], info.generation), (&b"hello world"[..], put.generation));

    // A new write of the same name is a new, larger generation.
    let again = store.put(object(bucket, "acme/CAL1.mp3", 1 << 20), body(&[b"again"])).await.unwrap();
    assert!(again.generation > put.generation, "{} > {}", again.generation, put.generation);
    assert_eq!(&store.get(bucket, "acme/CAL1.mp3").await.unwrap().unwrap().1[..], b"again");

    // Oversize: refused as permanent, and the live object is untouched.
    let err = store.put(object(bucket, "acme/CAL1.mp3", 8), body(&[b"far too ", b"large"])).await.unwrap_err();
    assert!(!err.retryable, "oversize is permanent: {err}");
    let live = store.head(bucket, "acme/CAL1.mp3").await.unwrap().unwrap();
    assert_eq!((live.generation, live.size), (again.generation, 5));

    // Listing by tenant prefix, in pages, never shows another tenant's objects.
    for name in ["acme/CAL2.mp3", "acme/CAL3.mp3", "bayside/CAL1.mp3", "acmex/CAL9.mp3"] {
        store.put(object(bucket, name, 1 << 20), body(&[b"x"])).await.unwrap();
    }
    let (mut names, mut token, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = store.list(bucket, "acme/", token.as_deref(), 2).await.unwrap();
        assert!(page.objects.len() <= 2);
        names.extend(page.objects.into_iter().map(|o| o.name));
        pages += 1;
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(names, ["acme/CAL1.mp3", "acme/CAL2.mp3", "acme/CAL3.mp3"]);
    assert!(pages >= 2, "three objects in pages of two take two pages");
    assert!(store.list(bucket, "nobody/", None, 10).await.unwrap().objects.is_empty());

    // Delete: gone for head, get and list; deleting again is not an error.
    assert!(store.delete(bucket, "acme/CAL2.mp3").await.unwrap());
    assert!(store.head(bucket, "acme/CAL2.mp3").await.unwrap().is_none());
    assert!(store.get(bucket, "acme/CAL2.mp3").await.unwrap().is_none());
    assert!(!store.delete(bucket, "acme/CAL2.mp3").await.unwrap());
    let left: Vec<_> =
        store.list(bucket, "acme/", None, 10).await.unwrap().objects.into_iter().map(|o| o.name).collect();
    assert_eq!(left, ["acme/CAL1.mp3", "acme/CAL3.mp3"]);
}

#[tokio::test]
async fn the_directory_store_honours_the_object_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(Arc::new(DirObjectStore::new(dir.path())), "callflow-recordings").await;
}

/// A fresh bucket on the emulator `scripts/emulators start` runs; skipped without one unless
/// CALLFLOW_EMULATORS=required.
async fn gcs_bucket() -> Option<(Arc<dyn ObjectStore>, String)> {
    let Some(host) = std::env::var("STORAGE_EMULATOR_HOST").ok().filter(|h| !h.is_empty()) else {
        assert!(
            std::env::var("CALLFLOW_EMULATORS").as_deref() != Ok("required"),
            "CALLFLOW_EMULATORS=required but STORAGE_EMULATOR_HOST is not set: run scripts/emulators start"
        );
        eprintln!("skipped: no GCS emulator (eval \"$(scripts/emulators env)\" after scripts/emulators start)");
        return None;
    };
    let bucket = format!("contract-{}", uuid::Uuid::new_v4().simple());
    let host = if host.contains("://") { host } else { format!("http://{host}") };
    let created = reqwest::Client::new()
        .post(format!("{host}/storage/v1/b?project=callflow-emulators"))
        .json(&serde_json::json!({ "name": bucket }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "create bucket: {}", created.status());
    Some((Arc::new(GcsObjectStore::connect().await.unwrap()), bucket))
}

#[tokio::test]
async fn cloud_storage_honours_the_object_contract() {
    if let Some((store, bucket)) = gcs_bucket().await {
        contract(store, &bucket).await;
    }
}
