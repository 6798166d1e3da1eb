//! MessagePublishedData / a raw Pub/Sub push envelope (every internal event reaches a function this way), and the
//! message's base64 data. Input: the event data, which is also what a plain push subscription POSTs.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use callflow::runtime::cloudevent::{EventMode, IncomingEvent, PUBSUB_PUBLISHED};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn event(data: Bytes) -> IncomingEvent {
    IncomingEvent {
        mode: EventMode::Binary,
        id: "1".into(),
        source: "//pubsub.googleapis.com/projects/p/topics/t".into(),
        ty: PUBSUB_PUBLISHED.into(),
        subject: None,
        time: None,
        data,
    }
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Ok(msg) = event(body.clone()).pubsub_message() else { return };

    if let Ok(decoded) = msg.message.decoded_data() {
        assert_eq!(B64.encode(decoded), msg.message.data.as_deref().unwrap_or(""), "base64 is canonical");
    }
    assert!(msg.message.ordering_key.as_deref() != Some(""), "an empty ordering key is absent");

    // The same body POSTed by a push subscription (no ce-* headers): accepted exactly when it has a message id.
    match IncomingEvent::from_http(&HeaderMap::new(), body) {
        Ok(push) => {
            assert_eq!(push.mode, EventMode::PubSubPush);
            assert_eq!(Some(push.id.as_str()), msg.message.message_id.as_deref());
            assert_eq!(push.pubsub_message().as_ref(), Ok(&msg));
        }
        Err(e) => assert!(msg.message.message_id.is_none(), "push envelope with a message id rejected: {e}"),
    }

    // What we read, written back camelCase and then snake_case, reads the same.
    for snake in [false, true] {
        let (id_key, time_key) = if snake { ("message_id", "publish_time") } else { ("messageId", "publishTime") };
        let mut message = json!({
            "data": msg.message.data,
            "attributes": msg.message.attributes,
            "orderingKey": msg.message.ordering_key,
        });
        message[id_key] = json!(msg.message.message_id);
        message[time_key] = json!(msg.message.publish_time);
        let again = json!({
            "message": message,
            "subscription": msg.subscription,
            "deliveryAttempt": msg.delivery_attempt,
        });
        let bytes = Bytes::from(serde_json::to_vec(&again).unwrap());
        assert_eq!(event(bytes).pubsub_message().as_ref(), Ok(&msg), "round trip through {again}");
    }
});
