//! CloudEvents intake in the three shapes events reach a function:
//! - binary mode (`ce-*` headers, body = data): what Eventarc sends;
//! - structured mode (`application/cloudevents+json`, the event as one JSON document);
//! - a raw Pub/Sub push envelope with no `ce-*` headers: what a plain push subscription and the emulator send.
//!
//! Parsing never rejects the request by itself: a function gets `Err(EventError)` and decides (a poison event is
//! dead-lettered and acknowledged, not answered 400, which Eventarc would redeliver for a day).

use std::collections::BTreeMap;

use axum::extract::{FromRequest, Request};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader, Data};
use http::HeaderMap;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::body::read_limited;

pub const STORAGE_FINALIZED: &str = "google.cloud.storage.object.v1.finalized";
pub const PUBSUB_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// Events larger than this are poison (Pub/Sub messages are at most 10 MB; our messages are small JSON).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    Binary,
    Structured,
    PubSubPush,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub mode: EventMode,
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    pub time: Option<DateTime<Utc>>,
    /// The event data as JSON bytes (StorageObjectData, MessagePublishedData, ...).
    pub data: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("event body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("not a CloudEvent: {0}")]
    Invalid(String),
    #[error("unexpected event type {got:?} (expected {expected})")]
    WrongType { got: String, expected: &'static str },
    #[error("event data is not valid {what}: {detail}")]
    BadData { what: &'static str, detail: String },
}

impl IncomingEvent {
    pub fn from_http(headers: &HeaderMap, body: Bytes) -> Result<Self, EventError> {
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if headers.contains_key("ce-specversion") || content_type.starts_with("application/cloudevents+json") {
            let mode = if headers.contains_key("ce-specversion") { EventMode::Binary } else { EventMode::Structured };
            let event = cloudevents::binding::http::to_event(headers, body.to_vec())
                .map_err(|e| EventError::Invalid(e.to_string()))?;
            let data = match event.data() {
                Some(Data::Json(v)) => Bytes::from(v.to_string()),
                Some(Data::String(s)) => Bytes::from(s.clone()),
                Some(Data::Binary(b)) => Bytes::from(b.clone()),
                None => Bytes::new(),
            };
            return Ok(Self {
                mode,
                id: event.id().to_owned(),
                source: event.source().to_string(),
                ty: event.ty().to_owned(),
                subject: event.subject().map(str::to_owned),
                time: event.time().copied(),
                data,
            });
        }
        // No CloudEvents markers: a Pub/Sub push envelope, or nothing we know.
        let push: MessagePublishedData = serde_json::from_slice(&body)
            .map_err(|e| EventError::Invalid(format!("neither ce-* headers nor a Pub/Sub push envelope: {e}")))?;
        let id = push
            .message
            .message_id
            .clone()
            .ok_or_else(|| EventError::Invalid("push message without messageId".into()))?;
        Ok(Self {
            mode: EventMode::PubSubPush,
            id,
            // A push envelope names the subscription, not the topic; it identifies the stream of events as well.
            source: format!("//pubsub.googleapis.com/{}", push.subscription),
            ty: PUBSUB_PUBLISHED.to_owned(),
            subject: None,
            time: push.message.publish_time,
            data: body,
        })
    }

    /// The CloudEvents identity of this event (`source` + `id`): redeliveries share it.
    pub fn dedupe_key(&self) -> String {
        format!("{}#{}", self.source, self.id)
    }

    pub fn storage_object(&self) -> Result<StorageObjectData, EventError> {
        self.expect_type(STORAGE_FINALIZED)?;
        serde_json::from_slice(&self.data)
            .map_err(|e| EventError::BadData { what: "StorageObjectData", detail: e.to_string() })
    }

    pub fn pubsub_message(&self) -> Result<MessagePublishedData, EventError> {
        self.expect_type(PUBSUB_PUBLISHED)?;
        serde_json::from_slice(&self.data)
            .map_err(|e| EventError::BadData { what: "MessagePublishedData", detail: e.to_string() })
    }

    fn expect_type(&self, expected: &'static str) -> Result<(), EventError> {
        if self.ty == expected { Ok(()) } else { Err(EventError::WrongType { got: self.ty.clone(), expected }) }
    }
}

/// Axum extractor: the event, or why it is not one. Never rejects, so the handler can dead-letter poison.
pub struct Incoming(pub Result<IncomingEvent, EventError>);

impl<S: Send + Sync> FromRequest<S> for Incoming {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let result = match read_limited(&parts.headers, body, MAX_EVENT_BYTES).await {
            Ok(bytes) => IncomingEvent::from_http(&parts.headers, bytes),
            Err(_) => Err(EventError::TooLarge(MAX_EVENT_BYTES)),
        };
        Ok(Self(result))
    }
}

/// int64 fields come as strings in some Google samples and as numbers in others.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| D::Error::custom("int64 out of range")),
        Some(Value::String(s)) => s.parse().map(Some).map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!("expected int64, got {other}"))),
    }
}

/// google.events.cloud.storage.v1.StorageObjectData (the fields we use; unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageObjectData {
    pub bucket: String,
    pub name: String,
    #[serde(default, deserialize_with = "int64")]
    pub generation: Option<i64>,
    #[serde(default, deserialize_with = "int64")]
    pub metageneration: Option<i64>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    pub size: Option<i64>,
    #[serde(default)]
    pub md5_hash: Option<String>,
    #[serde(default)]
    pub crc32c: Option<String>,
    #[serde(default)]
    pub time_created: Option<DateTime<Utc>>,
    #[serde(default)]
    pub updated: Option<DateTime<Utc>>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// google.events.cloud.pubsub.v1.MessagePublishedData; also the shape of a raw push envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessagePublishedData {
    pub message: PubsubMessage,
    #[serde(default)]
    pub subscription: String,
    #[serde(default, rename = "deliveryAttempt")]
    pub delivery_attempt: Option<u32>,
}

/// A Pub/Sub message. Real deliveries may carry both the camelCase fields and snake_case duplicates
/// (`message_id`, `publish_time`), so both are read separately and merged; an alias would reject the pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PubsubMessage {
    pub data: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub message_id: Option<String>,
    pub publish_time: Option<DateTime<Utc>>,
    pub ordering_key: Option<String>,
}

#[derive(Deserialize)]
struct RawPubsubMessage {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    attributes: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
    #[serde(default, rename = "message_id")]
    message_id_snake: Option<String>,
    #[serde(default, rename = "publishTime")]
    publish_time: Option<DateTime<Utc>>,
    #[serde(default, rename = "publish_time")]
    publish_time_snake: Option<DateTime<Utc>>,
    #[serde(default, rename = "orderingKey")]
    ordering_key: Option<String>,
}

impl<'de> Deserialize<'de> for PubsubMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawPubsubMessage::deserialize(d)?;
        Ok(Self {
            data: raw.data,
            attributes: raw.attributes.unwrap_or_default(),
            message_id: raw.message_id.or(raw.message_id_snake),
            publish_time: raw.publish_time.or(raw.publish_time_snake),
            ordering_key: raw.ordering_key.filter(|k| !k.is_empty()),
        })
    }
}

impl PubsubMessage {
    pub fn decoded_data(&self) -> Result<Vec<u8>, EventError> {
        B64.decode(self.data.as_deref().unwrap_or(""))
            .map_err(|e| EventError::BadData { what: "base64 message data", detail: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/google-cloudevents");

    fn fixture(name: &str) -> Bytes {
        Bytes::from(std::fs::read(format!("{FIXTURES}/{name}")).unwrap())
    }

    /// The `binary_*` samples are the body of a binary-mode event; the headers are what Eventarc sends with it.
    fn eventarc_headers(ty: &str, source: &str, subject: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0".parse().unwrap());
        h.insert("ce-id", "1234567890".parse().unwrap());
        h.insert("ce-type", ty.parse().unwrap());
        h.insert("ce-source", source.parse().unwrap());
        h.insert("ce-time", "2020-04-23T07:38:57.230Z".parse().unwrap());
        if let Some(s) = subject {
            h.insert("ce-subject", s.parse().unwrap());
        }
        h.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    #[test]
    fn eventarc_storage_samples_parse_in_binary_mode() {
        for name in ["binary_storage_StorageObjectData-simple.json", "binary_storage_StorageObjectData-complex.json"] {
            let headers = eventarc_headers(
                STORAGE_FINALIZED,
                "//storage.googleapis.com/projects/_/buckets/sample-bucket",
                Some("objects/folder/Test.cs"),
            );
            let ev = IncomingEvent::from_http(&headers, fixture(name)).unwrap();
            assert_eq!(ev.mode, EventMode::Binary);
            assert_eq!(ev.subject.as_deref(), Some("objects/folder/Test.cs"));
            let obj = ev.storage_object().unwrap();
            assert_eq!(obj.bucket, "sample-bucket", "{name}");
            assert!(obj.generation.is_some_and(|g| g > 0), "{name}");
            assert!(obj.size.is_some(), "{name}");
            assert!(ev.pubsub_message().is_err(), "a storage event is not a Pub/Sub one");
        }
    }

    #[test]
    fn eventarc_pubsub_samples_parse_in_binary_mode_and_as_push_envelopes() {
        for name in
            ["binary_pubsub_MessagePublishedData-simple.json", "binary_pubsub_MessagePublishedData-complex.json"]
        {
            let headers = eventarc_headers(PUBSUB_PUBLISHED, "//pubsub.googleapis.com/projects/p/topics/t", None);
            let ev = IncomingEvent::from_http(&headers, fixture(name)).unwrap();
            let msg = ev.pubsub_message().unwrap();
            assert!(msg.message.message_id.is_some(), "{name}");
            msg.message.decoded_data().unwrap();
            // The same body without ce-* headers is what a plain push subscription delivers.
            let raw = IncomingEvent::from_http(&HeaderMap::new(), fixture(name)).unwrap();
            assert_eq!(raw.mode, EventMode::PubSubPush);
            assert_eq!(raw.id, msg.message.message_id.unwrap());
            assert_eq!(raw.pubsub_message().unwrap().message, ev.pubsub_message().unwrap().message);
        }
    }

    #[test]
    fn structured_mode_samples_parse() {
        for (name, ty) in [
            ("structured_pubsub_MessagePublishedData.json", PUBSUB_PUBLISHED),
            ("structured_storage_StorageObjectDataWorkflows.json", STORAGE_FINALIZED),
        ] {
            let body = fixture(name);
            let mut headers = HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, "application/cloudevents+json".parse().unwrap());
            let ev = IncomingEvent::from_http(&headers, body).unwrap();
            assert_eq!((ev.mode, ev.ty.as_str()), (EventMode::Structured, ty));
            if ty == STORAGE_FINALIZED {
                ev.storage_object().unwrap();
            } else {
                ev.pubsub_message().unwrap();
            }
        }
    }

    #[test]
    fn raw_pubsub_push_envelope_parses() {
        let body = br#"{"message":{"data":"eyJzY2hlbWFfdmVyc2lvbiI6MX0=","attributes":{"tenant_id":"acme"},
            "messageId":"2070443601311540","publishTime":"2021-02-26T19:13:55.749Z"},
            "subscription":"projects/p/subscriptions/on-analysis","deliveryAttempt":3}"#;
        let ev = IncomingEvent::from_http(&HeaderMap::new(), Bytes::from_static(body)).unwrap();
        assert_eq!(ev.mode, EventMode::PubSubPush);
        assert_eq!(ev.dedupe_key(), "//pubsub.googleapis.com/projects/p/subscriptions/on-analysis#2070443601311540");
        let msg = ev.pubsub_message().unwrap();
        assert_eq!(msg.delivery_attempt, Some(3));
        assert_eq!(msg.message.decoded_data().unwrap(), br#"{"schema_version":1}"#);
        assert_eq!(msg.message.attributes["tenant_id"], "acme");
    }

    #[test]
    fn real_deliveries_with_snake_case_duplicates_and_type_fields_parse() {
        let body = br#"{"message":{"attributes":{},"data":"e30=","messageId":"9","message_id":"9",
            "publishTime":"2024-01-01T00:00:00Z","publish_time":"2024-01-01T00:00:00Z"},
            "subscription":"projects/p/subscriptions/s","@type":"type.googleapis.com/google.pubsub.v1.PubsubMessage"}"#;
        let ev = IncomingEvent::from_http(&HeaderMap::new(), Bytes::from_static(body)).unwrap();
        let msg = ev.pubsub_message().unwrap().message;
        assert_eq!((msg.message_id.as_deref(), msg.decoded_data().unwrap()), (Some("9"), b"{}".to_vec()));
        let snake_only =
            br#"{"message":{"data":"","message_id":"7","publish_time":"2024-01-01T00:00:00Z"},"subscription":"s"}"#;
        let ev = IncomingEvent::from_http(&HeaderMap::new(), Bytes::from_static(snake_only)).unwrap();
        assert_eq!(ev.id, "7");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [&b""[..], b"{}", b"[1,2]", b"{\"message\":{}}", b"\xff\xfe"] {
            assert!(IncomingEvent::from_http(&HeaderMap::new(), Bytes::copy_from_slice(body)).is_err());
        }
        let mut headers = HeaderMap::new();
        headers.insert("ce-specversion", "1.0".parse().unwrap());
        assert!(IncomingEvent::from_http(&headers, Bytes::from_static(b"{}")).is_err(), "missing ce-id etc.");
    }

    #[tokio::test]
    async fn the_extractor_never_rejects_and_bounds_the_body() {
        use axum::body::Body;
        use tower::ServiceExt;
        async fn handler(Incoming(event): Incoming) -> String {
            match event {
                Ok(ev) => format!("ok {:?} {}", ev.mode, ev.id),
                Err(e) => format!("err {e}"),
            }
        }
        let app = axum::Router::new().route("/", axum::routing::post(handler));
        let call = |body: Vec<u8>| {
            let app = app.clone();
            async move {
                let resp = app.oneshot(http::Request::post("/").body(Body::from(body)).unwrap()).await.unwrap();
                assert_eq!(resp.status(), http::StatusCode::OK, "the extractor must not answer for the handler");
                let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
                String::from_utf8(bytes.to_vec()).unwrap()
            }
        };
        let push = std::fs::read(format!("{FIXTURES}/binary_pubsub_MessagePublishedData-simple.json")).unwrap();
        assert!(call(push).await.starts_with("ok PubSubPush"));
        assert_eq!(
            call(vec![b' '; MAX_EVENT_BYTES + 1]).await,
            format!("err event body exceeds {MAX_EVENT_BYTES} bytes")
        );
        assert!(call(b"not json".to_vec()).await.starts_with("err not a CloudEvent"));
    }
}
