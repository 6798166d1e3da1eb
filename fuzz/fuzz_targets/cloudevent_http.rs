//! A function's event intake, `IncomingEvent::from_http`, on arbitrary headers and body (binary mode, structured
//! mode, raw Pub/Sub push), then the typed views a function asks for.
//!
//! Input: HTTP-like header lines `name: value`, a blank line, then the body. An input that starts with a newline
//! has no headers; one without a blank line is all body. Header lines that are not a valid name/value are dropped;
//! repeated names are all kept (`append`).
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use callflow::runtime::cloudevent::{EventError, EventMode, IncomingEvent, PUBSUB_PUBLISHED, STORAGE_FINALIZED};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn split(data: &[u8]) -> (&[u8], &[u8]) {
    if let Some(rest) = data.strip_prefix(b"\n") {
        return (&[], rest);
    }
    match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&[], data),
    }
}

fn headers(block: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(name, value);
        }
    }
    map
}

fuzz_target!(|data: &[u8]| {
    let (block, body) = split(data);
    let headers = headers(block);
    let body = Bytes::copy_from_slice(body);
    let result = IncomingEvent::from_http(&headers, body.clone());
    assert_eq!(IncomingEvent::from_http(&headers, body.clone()), result, "from_http is a function of its input");
    let Ok(event) = result else { return };

    let binary = headers.contains_key("ce-specversion");
    let structured = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/cloudevents+json"));
    let expected_mode = if binary {
        EventMode::Binary
    } else if structured {
        EventMode::Structured
    } else {
        EventMode::PubSubPush
    };
    assert_eq!(event.mode, expected_mode);
    assert_eq!(event.dedupe_key(), format!("{}#{}", event.source, event.id));
    if event.mode == EventMode::Binary && !structured {
        assert_eq!(event.data, body, "binary mode: the data is the body");
    }
    if event.mode == EventMode::PubSubPush {
        assert_eq!(event.data, body, "push: the data is the envelope");
        assert_eq!(event.ty, PUBSUB_PUBLISHED);
        assert!(event.source.starts_with("//pubsub.googleapis.com/"));
        let push = event.pubsub_message().expect("an accepted push envelope parses again");
        assert_eq!(push.message.message_id.as_deref(), Some(event.id.as_str()));
        assert_eq!(push.message.publish_time, event.time);
    }

    // The typed views: each either the right type's data or an error, never a panic.
    match event.storage_object() {
        Err(EventError::WrongType { got, .. }) => assert!(got == event.ty && event.ty != STORAGE_FINALIZED),
        Err(_) => assert_eq!(event.ty, STORAGE_FINALIZED),
        Ok(obj) => {
            assert_eq!(event.ty, STORAGE_FINALIZED);
            let _ = (obj.bucket.len(), obj.name.len());
        }
    }
    match event.pubsub_message() {
        Err(EventError::WrongType { got, .. }) => assert!(got == event.ty && event.ty != PUBSUB_PUBLISHED),
        Err(_) => assert_eq!(event.ty, PUBSUB_PUBLISHED),
        Ok(msg) => {
            assert_eq!(event.ty, PUBSUB_PUBLISHED);
            if let Ok(decoded) = msg.message.decoded_data() {
                assert_eq!(B64.encode(decoded), msg.message.data.as_deref().unwrap_or(""), "base64 is canonical");
            }
        }
    }
});
