//! StorageObjectData (the finalized-object event on-audio-uploaded and the storage stages read), as the event data
//! of an Eventarc binary-mode event. Input: the event data (HTTP body).
#![no_main]

use bytes::Bytes;
use callflow::runtime::cloudevent::{EventMode, IncomingEvent, STORAGE_FINALIZED};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn event(data: Bytes) -> IncomingEvent {
    IncomingEvent {
        mode: EventMode::Binary,
        id: "1".into(),
        source: "//storage.googleapis.com/projects/_/buckets/b".into(),
        ty: STORAGE_FINALIZED.into(),
        subject: None,
        time: None,
        data,
    }
}

fn eventarc_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-type", STORAGE_FINALIZED),
        ("ce-source", "//storage.googleapis.com/projects/_/buckets/b"),
        ("ce-subject", "objects/a"),
        ("content-type", "application/json"),
    ] {
        h.insert(name, value.parse().unwrap());
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Ok(obj) = event(body.clone()).storage_object() else { return };

    // The same bytes delivered by Eventarc in binary mode give the same object.
    let ev = IncomingEvent::from_http(&eventarc_headers(), body).expect("a valid binary-mode event");
    assert_eq!(ev.storage_object().as_ref(), Ok(&obj));

    // What we read, written back in Google's shape (int64 as numbers, then as strings), reads the same.
    for strings in [false, true] {
        let int = |v: Option<i64>| match v {
            Some(n) if strings => json!(n.to_string()),
            other => json!(other),
        };
        let again = json!({
            "bucket": obj.bucket,
            "name": obj.name,
            "generation": int(obj.generation),
            "metageneration": int(obj.metageneration),
            "contentType": obj.content_type,
            "size": int(obj.size),
            "md5Hash": obj.md5_hash,
            "crc32c": obj.crc32c,
            "timeCreated": obj.time_created,
            "updated": obj.updated,
            "metadata": obj.metadata,
        });
        let bytes = Bytes::from(serde_json::to_vec(&again).unwrap());
        assert_eq!(event(bytes).storage_object().as_ref(), Ok(&obj), "round trip through {again}");
    }
});
