//! The fault suite's bad inputs (issue 9): a table of malformed requests and events, each sent to its function in
//! the one-process host (embedded backends, the functions' own axum apps). Every row must get a clear 4xx, or — an
//! event that redelivery cannot fix — be acknowledged and kept as exactly one dead letter; after every row nothing
//! else in the data directory has changed (every table of `state.sqlite`, `analytics.sqlite` and `router.sqlite`
//! row for row, every file under `objects/`). The suite starts from a real call (its recording fetched and stored,
//! its finalize event waiting), so cross-tenant rows aim at something that exists; at the end that call goes
//! through every stage to the tenant's CRM, and a new webhook, a form and a cleanup run are accepted: the service
//! is still healthy.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use callflow::domain::signature::{sign_callrail, sign_standard_webhook, standard_webhooks_key};
use common::repo;
use serde_json::{Value, json};
use tower::ServiceExt;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ACME: &str = "acme-remodeling";
const BAYSIDE: &str = "bayside-baths";
const ACME_COMPANY: &str = "COM8154748ae6bd4e278a7cddd38a662f4f";
const BAYSIDE_COMPANY: &str = "COM0f6b0e3c2f3e4b1d9a7c5e2b4d6f8a10";
/// The call the suite starts from: accepted, its recording stored, its finalize event waiting in the router.
const SEEDED: &str = "CALa1b2c3d4e5f60718293a4b5c6d7e8f90";
/// The call id bad webhooks carry: one accepted by mistake would show up as a new call.
const FRESH: &str = "CALbadinput000000000000000000000001";
const STORAGE_FINALIZED: &str = "google.cloud.storage.object.v1.finalized";
const PUBSUB_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";
/// on-webhook's body limit.
const MIB: usize = 1024 * 1024;

fn secret(name: &str) -> String {
    std::fs::read_to_string(repo().join("fixtures/secrets").join(name)).unwrap().trim().to_owned()
}

fn settings(data: &Path, callrail: &str) -> callflow_host::Settings {
    // Every row comes from the same (absent) address: the per-address throttle of failed signatures would turn the
    // later 401s into 429s. It has its own test in on-webhook.
    common::host_settings(data, callrail, &[("CALLFLOW_AUTH_FAILURES_PER_MINUTE", "100000")])
}

/// CallRail's API (the recording of any call) and Acme's lead receiver (answering `crm`), on one fake.
async fn fake_callrail(crm: u16) -> MockServer {
    let mock = MockServer::start().await;
    let url = format!("{}/audio/{SEEDED}.mp3", mock.uri());
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "url": url })))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("/audio/"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(&b"ID3 bad inputs"[..], "audio/mpeg"))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/leads"))
        .respond_with(ResponseTemplate::new(crm).set_body_json(json!({"id": "lead-1"})))
        .mount(&mock)
        .await;
    mock
}

// ---------------------------------------------------------------------------------------------------------------
// The table's shape.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Webhook,
    Audio,
    Transcript,
    Analysis,
    CrmRetry,
    Cleanup,
}

impl Target {
    fn stage(self) -> &'static str {
        match self {
            Self::Webhook => "on-webhook",
            Self::Audio => "on-audio-uploaded",
            Self::Transcript => "on-transcript",
            Self::Analysis => "on-analysis",
            Self::CrmRetry => "on-crm-retry",
            Self::Cleanup => "cleanup-scheduled",
        }
    }

    fn app(self, host: &callflow_host::Host) -> axum::Router {
        match self {
            Self::Webhook => on_webhook::app(host.webhook.clone()),
            Self::Audio => on_audio_uploaded::app(host.audio.clone()),
            Self::Transcript => on_transcript::app(host.transcript.clone()),
            Self::Analysis => on_analysis::app(host.delivery.clone()),
            Self::CrmRetry => on_crm_retry::app(host.delivery.clone()),
            Self::Cleanup => cleanup_scheduled::app(host.cleanup.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An error answer: the status and the error document's code (`{"error":{"code":…,"message":…}}`).
    Error(u16, &'static str),
    /// An event that redelivery cannot fix: 200 `{"outcome":"refused"}` and one dead letter `event:{stage}` whose
    /// reason mentions this.
    DeadLetter(&'static str),
}

struct Row {
    name: String,
    target: Target,
    request: Request<Body>,
    expect: Expect,
}

fn row(target: Target, name: impl Into<String>, request: Request<Body>, expect: Expect) -> Row {
    Row { name: name.into(), target, request, expect }
}

/// A request, header by header (raw bytes allowed, repeats kept).
struct Req {
    method: &'static str,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Req {
    fn new(method: &'static str, uri: impl Into<String>) -> Self {
        Self { method, uri: uri.into(), headers: Vec::new() }
    }
    fn post(uri: impl Into<String>) -> Self {
        Self::new("POST", uri)
    }
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }
    fn json(self) -> Self {
        self.header("content-type", "application/json")
    }
    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }
    fn replace(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.without(name).header(name, value)
    }
    fn body(self, body: impl Into<Body>) -> Request<Body> {
        let mut req = Request::builder().method(self.method).uri(self.uri);
        for (name, value) in &self.headers {
            req = req.header(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
        }
        req.body(body.into()).unwrap()
    }
    fn empty(self) -> Request<Body> {
        self.body(Body::empty())
    }
}

/// A fresh event or message id, so no two rows are the same event (a dead letter is kept once per event).
fn next_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(1);
    format!("bad-input-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

// ---------------------------------------------------------------------------------------------------------------
// on-webhook: CallRail.

/// CallRail's post-call webhook for the call id bad rows use, changed by `f`.
fn hook(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let fixture = std::fs::read(repo().join("fixtures/callrail/post-call-resource-ids.json")).unwrap();
    let mut json: Value = serde_json::from_slice(&fixture).unwrap();
    json["resource_id"] = FRESH.into();
    f(&mut json);
    serde_json::to_vec(&json).unwrap()
}

/// A small webhook as raw text (for JSON no serializer would write).
fn raw_hook(call: &str) -> String {
    format!(r#"{{"resource_id": "{call}", "company_resource_id": "{ACME_COMPANY}", "answered": true}}"#)
}

fn callrail(tenant: &str) -> Req {
    Req::post(format!("/webhooks/callrail/{tenant}")).json()
}

/// Signed with `key`, posted to Acme.
fn signed(body: impl Into<Vec<u8>>, key: &[u8]) -> Request<Body> {
    let body = body.into();
    callrail(ACME).header("signature", sign_callrail(key, &body)).body(body)
}

/// A body over on-webhook's limit, as a stream of chunks with no Content-Length.
fn streamed(bytes: Vec<u8>) -> Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    Body::from_stream(futures::stream::iter(chunks))
}

fn huge_hook() -> Vec<u8> {
    let mut huge =
        format!(r#"{{"resource_id": "{FRESH}", "company_resource_id": "{ACME_COMPANY}", "pad": ""#).into_bytes();
    huge.resize(MIB + 10, b'x');
    huge.extend_from_slice(b"\"}");
    huge
}

fn callrail_rows(acme: &[u8], bayside: &[u8], old_bayside: &[u8]) -> Vec<Row> {
    use Expect::Error;
    use Target::Webhook as W;
    let body = hook(|_| {});
    let good = sign_callrail(acme, &body);
    let unauthorized = Error(401, "unauthorized");
    let bad = Error(400, "bad_request");
    let forbidden = Error(403, "forbidden");
    let not_found = Error(404, "not_found");
    let unsupported = Error(415, "unsupported_media_type");
    let too_large = Error(413, "payload_too_large");
    let mut tampered = body.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    let bayside_hook = std::fs::read(repo().join("fixtures/callrail/post-call-bayside.json")).unwrap();
    let nested = |depth: usize| {
        format!(
            r#"{{"resource_id": "{FRESH}", "company_resource_id": "{ACME_COMPANY}", "pad": {}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };

    vec![
        // Signatures.
        row(W, "signature: missing", callrail(ACME).body(body.clone()), unauthorized),
        row(W, "signature: empty", callrail(ACME).header("signature", "").body(body.clone()), unauthorized),
        row(
            W,
            "signature: not base64",
            callrail(ACME).header("signature", "not-base64!!").body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "signature: base64 of the wrong length (an HMAC-SHA256)",
            callrail(ACME).header("signature", b64([7u8; 32])).body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "signature: hex instead of base64",
            callrail(ACME).header("signature", "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d").body(body.clone()),
            unauthorized,
        ),
        row(W, "signature: wrong key", signed(body.clone(), b"not acme's key"), unauthorized),
        row(W, "signature: Bayside's key on Acme's path", signed(body.clone(), bayside), unauthorized),
        row(W, "signature: Bayside's rotated-out key on Acme's path", signed(body.clone(), old_bayside), unauthorized),
        row(
            W,
            "signature: over a different body (one bit flipped after signing)",
            callrail(ACME).header("signature", &good).body(tampered),
            unauthorized,
        ),
        row(
            W,
            "signature: over the body without its trailing newline",
            callrail(ACME).header("signature", &good).body([body.as_slice(), b"\n"].concat()),
            unauthorized,
        ),
        row(
            W,
            "signature: in a header of another name",
            callrail(ACME).header("x-callrail-signature", &good).body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "signature: Standard Webhooks headers instead of CallRail's",
            callrail(ACME)
                .header("webhook-id", "msg_1")
                .header("webhook-timestamp", chrono::Utc::now().timestamp().to_string())
                .header("webhook-signature", format!("v1,{good}"))
                .body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "signature: prefixed with a scheme (sha1=)",
            callrail(ACME).header("signature", format!("sha1={good}")).body(body.clone()),
            unauthorized,
        ),
        // Cross-tenant and tenant paths.
        row(W, "cross-tenant: Bayside's company signed by Acme on Acme's path", signed(bayside_hook, acme), forbidden),
        row(
            W,
            "cross-tenant: Acme's company signed by Bayside on Bayside's path",
            callrail(BAYSIDE).header("signature", sign_callrail(bayside, &body)).body(body.clone()),
            forbidden,
        ),
        row(
            W,
            "cross-tenant: Acme's own signed webhook replayed on Bayside's path",
            callrail(BAYSIDE).header("signature", &good).body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "cross-tenant: Acme's company id in lower case",
            signed(hook(|j| j["company_resource_id"] = ACME_COMPANY.to_lowercase().into()), acme),
            forbidden,
        ),
        row(
            W,
            "cross-tenant: an unknown company",
            signed(hook(|j| j["company_resource_id"] = "COM000000000000000000000000000000000".into()), acme),
            forbidden,
        ),
        row(W, "tenant: unknown", callrail("no-such-tenant").header("signature", &good).body(body.clone()), not_found),
        row(
            W,
            "tenant: ..%2f traversal",
            callrail("..%2fbayside-baths").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(W, "tenant: %2e%2e", callrail("%2e%2e").header("signature", &good).body(body.clone()), not_found),
        row(
            W,
            "tenant: upper case",
            callrail("ACME-REMODELING").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "tenant: mixed case",
            callrail("Acme-Remodeling").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "tenant: NUL appended",
            callrail("acme-remodeling%00").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "tenant: space appended",
            callrail("acme-remodeling%20").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "tenant: a Cyrillic look-alike letter",
            callrail("acme-remodel%D1%96ng").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "tenant: 64 characters",
            callrail(&"a".repeat(64)).header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(W, "tenant: not UTF-8 (%ff)", callrail("acme%ff").header("signature", &good).body(body.clone()), not_found),
        row(
            W,
            "form tenant: not UTF-8 (%c3%28)",
            Req::post("/webhooks/forms/acme%c3%28").json().body(body.clone()),
            not_found,
        ),
        row(W, "tenant: leading dash", callrail("-acme").header("signature", &good).body(body.clone()), not_found),
        row(
            W,
            "tenant: two tenants in one segment",
            callrail("acme-remodeling;bayside-baths").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "path: trailing slash",
            callrail("acme-remodeling/").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "path: dot segments",
            callrail("bayside-baths/../acme-remodeling").header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(W, "path: no tenant", callrail("").header("signature", &good).body(body.clone()), not_found),
        row(
            W,
            "path: another provider",
            Req::post(format!("/webhooks/stripe/{ACME}")).json().header("signature", &good).body(body.clone()),
            not_found,
        ),
        row(
            W,
            "method: GET",
            Req::new("GET", format!("/webhooks/callrail/{ACME}")).empty(),
            Error(405, "method_not_allowed"),
        ),
        row(
            W,
            "method: PUT with a valid signature",
            Req::new("PUT", format!("/webhooks/callrail/{ACME}")).json().header("signature", &good).body(body.clone()),
            Error(405, "method_not_allowed"),
        ),
        row(
            W,
            "method: GET on the outbox drain",
            Req::new("GET", "/internal/outbox/drain").empty(),
            Error(405, "method_not_allowed"),
        ),
        // Content types and sizes.
        row(
            W,
            "content type: missing",
            callrail(ACME).without("content-type").header("signature", &good).body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: text/plain",
            callrail(ACME).replace("content-type", "text/plain").header("signature", &good).body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: a form",
            callrail(ACME)
                .replace("content-type", "application/x-www-form-urlencoded")
                .header("signature", &good)
                .body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: application/jsonp",
            callrail(ACME).replace("content-type", "application/jsonp").header("signature", &good).body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: application/json-patch+json",
            callrail(ACME)
                .replace("content-type", "application/json-patch+json")
                .header("signature", &good)
                .body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: a list (application/json, text/plain)",
            callrail(ACME)
                .replace("content-type", "application/json, text/plain")
                .header("signature", &good)
                .body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: text/plain with application/json as a parameter",
            callrail(ACME)
                .replace("content-type", "text/plain; application/json")
                .header("signature", &good)
                .body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: not ASCII",
            callrail(ACME)
                .replace("content-type", b"application/j\xc3\xa9son")
                .header("signature", &good)
                .body(body.clone()),
            unsupported,
        ),
        row(
            W,
            "content type: odd parameters pass, the missing signature does not",
            callrail(ACME)
                .replace("content-type", "Application/JSON ; charset=\"utf-8\";;boundary=x")
                .body(body.clone()),
            unauthorized,
        ),
        row(W, "body: empty, unsigned", callrail(ACME).body(Body::empty()), unauthorized),
        row(W, "body: empty, signed", signed(Vec::new(), acme), bad),
        row(W, "body: whitespace, signed", signed(&b" \r\n\t "[..], acme), bad),
        row(W, "body: over 1 MiB with its Content-Length", signed(huge_hook(), acme), too_large),
        {
            let huge = huge_hook();
            let sig = sign_callrail(acme, &huge);
            row(
                W,
                "body: over 1 MiB, chunked without a length",
                callrail(ACME).header("signature", sig).header("transfer-encoding", "chunked").body(streamed(huge)),
                too_large,
            )
        },
        {
            let huge = huge_hook();
            let sig = sign_callrail(acme, &huge);
            row(
                W,
                "body: over 1 MiB behind an understated Content-Length",
                callrail(ACME).header("signature", sig).header("content-length", "100").body(streamed(huge)),
                too_large,
            )
        },
        row(
            W,
            "body: a Content-Length of 2^63 on a small body",
            callrail(ACME)
                .header("signature", &good)
                .header("content-length", "9223372036854775807")
                .body(body.clone()),
            too_large,
        ),
        row(
            W,
            "body: gzip-encoded (never decoded, never JSON)",
            {
                let gz = [&[0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03][..], b"\xcb\x48\xcd\xc9\xc9\x07\x00"].concat();
                callrail(ACME).header("content-encoding", "gzip").header("signature", sign_callrail(acme, &gz)).body(gz)
            },
            bad,
        ),
        // Encodings and JSON edge cases, every one correctly signed.
        row(
            W,
            "encoding: invalid UTF-8 in a string",
            signed(
                [
                    &b"{\"resource_id\": \"CAL\xff\xfe\", \"company_resource_id\": \""[..],
                    ACME_COMPANY.as_bytes(),
                    b"\"}",
                ]
                .concat(),
                acme,
            ),
            bad,
        ),
        row(
            W,
            "encoding: UTF-16",
            signed(raw_hook(FRESH).encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>(), acme),
            bad,
        ),
        row(
            W,
            "encoding: a UTF-8 byte-order mark",
            signed([&b"\xef\xbb\xbf"[..], raw_hook(FRESH).as_bytes()].concat(), acme),
            bad,
        ),
        row(W, "JSON: an array", signed(&b"[]"[..], acme), bad),
        row(W, "JSON: an array holding the webhook", signed(format!("[{}]", raw_hook(FRESH)), acme), bad),
        row(W, "JSON: null", signed(&b"null"[..], acme), bad),
        row(W, "JSON: a number", signed(&b"42"[..], acme), bad),
        row(W, "JSON: a string", signed(format!("\"{FRESH}\""), acme), bad),
        row(W, "JSON: true", signed(&b"true"[..], acme), bad),
        row(W, "JSON: truncated", signed(&raw_hook(FRESH).as_bytes()[..40], acme), bad),
        row(
            W,
            "JSON: 100,000 arrays deep",
            signed(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)), acme),
            bad,
        ),
        row(
            W,
            "JSON: 100,000 objects deep (and so no call id)",
            signed(format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000)), acme),
            bad,
        ),
        row(
            W,
            "JSON: the webhook 10,000 arrays deep",
            signed(format!("{}{}{}", "[".repeat(10_000), raw_hook(FRESH), "]".repeat(10_000)), acme),
            bad,
        ),
        row(
            W,
            "JSON: nested 200 deep inside a field read as a call id",
            signed(
                nested(200).replace("\"pad\"", "\"id\"").replace(&format!("\"resource_id\": \"{FRESH}\", "), ""),
                acme,
            ),
            bad,
        ),
        row(
            W,
            "JSON: nested 200 deep inside changes",
            signed(
                format!(
                    r#"{{"resource_id": "{FRESH}", "company_resource_id": "{ACME_COMPANY}", "changes": {}{}}}"#,
                    "[".repeat(200),
                    "]".repeat(200)
                ),
                acme,
            ),
            bad,
        ),
        row(
            W,
            "JSON: duplicate call id keys",
            signed(
                format!(r#"{{"resource_id": "{FRESH}", "resource_id": "CALother", "company_id": "155920786"}}"#),
                acme,
            ),
            bad,
        ),
        row(
            W,
            "JSON: duplicate company keys (Bayside's, then Acme's)",
            signed(
                format!(
                    r#"{{"resource_id": "{FRESH}", "company_id": "{BAYSIDE_COMPANY}", "company_id": "155920786"}}"#
                ),
                acme,
            ),
            bad,
        ),
        row(W, "JSON: trailing garbage", signed(format!("{} xyz", raw_hook(FRESH)), acme), bad),
        row(W, "JSON: two objects", signed(format!("{}{}", raw_hook(FRESH), raw_hook("CALsecond")), acme), bad),
        row(W, "JSON: a trailing comma", signed(raw_hook(FRESH).replace('}', ",}"), acme), bad),
        row(W, "JSON: single quotes", signed(raw_hook(FRESH).replace('"', "'"), acme), bad),
        row(W, "JSON: a comment", signed(format!("/* hi */ {}", raw_hook(FRESH)), acme), bad),
        row(W, "JSON: NaN", signed(raw_hook(FRESH).replace("true", "NaN"), acme), bad),
        row(W, "JSON: a lone surrogate escape", signed(raw_hook("CAL\\ud800"), acme), bad),
        // Call and company ids.
        row(W, "call id: missing", signed(hook(|j| drop(j.as_object_mut().unwrap().remove("resource_id"))), acme), bad),
        row(W, "call id: null", signed(hook(|j| j["resource_id"] = Value::Null), acme), bad),
        row(W, "call id: empty", signed(hook(|j| j["resource_id"] = "".into()), acme), bad),
        row(W, "call id: blank", signed(hook(|j| j["resource_id"] = "   ".into()), acme), bad),
        row(
            W,
            "call id: path traversal",
            signed(hook(|j| j["resource_id"] = "CAL/../../bayside-baths/x".into()), acme),
            bad,
        ),
        row(
            W,
            "call id: percent-encoded traversal",
            signed(hook(|j| j["resource_id"] = "..%2f..%2fetc".into()), acme),
            bad,
        ),
        row(W, "call id: a file name", signed(hook(|j| j["resource_id"] = "CAL1.mp3".into()), acme), bad),
        row(W, "call id: NUL", signed(hook(|j| j["resource_id"] = "CAL\u{0}1".into()), acme), bad),
        row(W, "call id: not ASCII", signed(hook(|j| j["resource_id"] = "CALé1".into()), acme), bad),
        row(
            W,
            "call id: 65 characters",
            signed(hook(|j| j["resource_id"] = format!("CAL{}", "a".repeat(62)).into()), acme),
            bad,
        ),
        row(W, "call id: a fraction", signed(hook(|j| j["resource_id"] = json!(1.5)), acme), bad),
        row(
            W,
            "call id: a number beyond 64 bits",
            signed(raw_hook("x").replace("\"x\"", "123456789012345678901234567890"), acme),
            bad,
        ),
        row(W, "call id: 1e400", signed(raw_hook("x").replace("\"x\"", "1e400"), acme), bad),
        row(
            W,
            "company: missing",
            signed(
                hook(|j| {
                    j.as_object_mut().unwrap().remove("company_resource_id");
                }),
                acme,
            ),
            bad,
        ),
        row(W, "company: null", signed(hook(|j| j["company_resource_id"] = Value::Null), acme), bad),
        // Header tricks.
        row(
            W,
            "headers: two signatures, the first forged",
            callrail(ACME)
                .header("signature", sign_callrail(b"forged", &body))
                .header("signature", &good)
                .body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "headers: a space inside the signature",
            callrail(ACME).header("signature", format!("{} {}", &good[..10], &good[10..])).body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "headers: the signature with bytes that are not ASCII",
            callrail(ACME).header("signature", [good.as_bytes(), b"\xff"].concat()).body(body.clone()),
            unauthorized,
        ),
        row(
            W,
            "headers: two content types, text/plain first",
            Req::post(format!("/webhooks/callrail/{ACME}"))
                .header("content-type", "text/plain")
                .header("content-type", "application/json")
                .header("signature", &good)
                .body(body.clone()),
            unsupported,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// on-webhook: forms (Standard Webhooks).

struct Form {
    acme: Vec<u8>,
    bayside: Vec<u8>,
    body: Vec<u8>,
    now: i64,
}

impl Form {
    /// Headers for `body` signed with `key` as message `id` at `ts`.
    fn signed(&self, tenant: &str, key: &[u8], id: &str, ts: i64, body: &[u8]) -> Req {
        Req::post(format!("/webhooks/forms/{tenant}"))
            .json()
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign_standard_webhook(key, id, ts, body))
    }
    fn acme(&self, id: &str) -> Req {
        self.signed(ACME, &self.acme, id, self.now, &self.body)
    }
    fn acme_body(&self, id: &str, body: &[u8]) -> Request<Body> {
        self.signed(ACME, &self.acme, id, self.now, body).body(body.to_vec())
    }
}

fn form_rows(f: &Form) -> Vec<Row> {
    use Expect::Error;
    use Target::Webhook as W;
    let unauthorized = Error(401, "unauthorized");
    let bad = Error(400, "bad_request");
    let body = || f.body.clone();
    let sig_of = |id: &str, ts: i64, body: &[u8]| sign_standard_webhook(&f.acme, id, ts, body);
    let other_body = br#"{"phone": "+15035550100", "message": "I am not the message that was signed"}"#;
    vec![
        row(W, "form: webhook-id missing", f.acme("msg_f1").without("webhook-id").body(body()), unauthorized),
        row(
            W,
            "form: webhook-timestamp missing",
            f.acme("msg_f2").without("webhook-timestamp").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: webhook-signature missing",
            f.acme("msg_f3").without("webhook-signature").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: webhook-signature empty",
            f.acme("msg_f4").replace("webhook-signature", "").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: stale timestamp (5 min 1 s old)",
            f.signed(ACME, &f.acme, "msg_f5", f.now - 301, &f.body).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: timestamp 10 minutes ahead",
            f.signed(ACME, &f.acme, "msg_f6", f.now + 600, &f.body).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: timestamp in milliseconds",
            f.signed(ACME, &f.acme, "msg_f7", f.now * 1000, &f.body).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: timestamp not a number",
            f.acme("msg_f8").replace("webhook-timestamp", "yesterday").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: timestamp the largest 64-bit number",
            f.acme("msg_f8c").replace("webhook-timestamp", i64::MAX.to_string()).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: timestamp negative",
            f.acme("msg_f8d").replace("webhook-timestamp", "-1").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: timestamp beyond 64 bits",
            f.acme("msg_f8e").replace("webhook-timestamp", "99999999999999999999").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: timestamp changed after signing",
            f.acme("msg_f9").replace("webhook-timestamp", (f.now - 1).to_string()).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: replayed id and signature with a different body",
            f.acme("msg_f10").body(other_body.to_vec()),
            unauthorized,
        ),
        row(
            W,
            "form: id changed after signing",
            f.acme("msg_f11").replace("webhook-id", "msg_f11b").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: Bayside's secret on Acme's path",
            f.signed(ACME, &f.bayside, "msg_f12", f.now, &f.body).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: Acme's secret on Bayside's path",
            f.signed(BAYSIDE, &f.acme, "msg_f13", f.now, &f.body).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: the secret's text (whsec_…) used as the key",
            f.signed(ACME, secret("acme-forms-secret").as_bytes(), "msg_f14", f.now, &f.body).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: v1a (asymmetric) scheme",
            f.acme("msg_f15").replace("webhook-signature", format!("v1a,{}", b64([9u8; 64]))).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: v2 scheme with the right MAC",
            f.acme("msg_f16")
                .replace("webhook-signature", sig_of("msg_f16", f.now, &f.body).replacen("v1,", "v2,", 1))
                .body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: no scheme, bare MAC",
            f.acme("msg_f17")
                .replace("webhook-signature", sig_of("msg_f17", f.now, &f.body).trim_start_matches("v1,"))
                .body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: bad base64",
            f.acme("msg_f18").replace("webhook-signature", "v1,@@not*base64@@").body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: truncated MAC",
            f.acme("msg_f19").replace("webhook-signature", format!("v1,{}", b64([1u8; 16]))).body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: several signatures, none right",
            f.acme("msg_f20")
                .replace("webhook-signature", format!("v1,{} v1,{}", b64([1u8; 32]), b64([2u8; 32])))
                .body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: two signature headers, the first wrong",
            f.acme("msg_f21")
                .without("webhook-signature")
                .header("webhook-signature", format!("v1,{}", b64([3u8; 32])))
                .header("webhook-signature", sig_of("msg_f21", f.now, &f.body))
                .body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: CallRail's Signature header instead",
            Req::post(format!("/webhooks/forms/{ACME}"))
                .json()
                .header("signature", sign_callrail(&f.acme, &f.body))
                .body(body()),
            unauthorized,
        ),
        row(
            W,
            "form: content type text/plain",
            f.acme("msg_f22").replace("content-type", "text/plain").body(body()),
            Error(415, "unsupported_media_type"),
        ),
        row(
            W,
            "form: unknown tenant",
            f.signed("nobody", &f.acme, "msg_f23", f.now, &f.body).body(body()),
            Error(404, "not_found"),
        ),
        row(
            W,
            "form: tenant ..%2facme-remodeling",
            f.signed("..%2facme-remodeling", &f.acme, "msg_f24", f.now, &f.body).body(body()),
            Error(404, "not_found"),
        ),
        row(
            W,
            "form: GET",
            Req::new("GET", format!("/webhooks/forms/{ACME}")).empty(),
            Error(405, "method_not_allowed"),
        ),
        {
            let mut huge = br#"{"phone": "+15035550100", "message": ""#.to_vec();
            huge.resize(MIB + 1, b'y');
            huge.extend_from_slice(b"\"}");
            row(W, "form: body over 1 MiB", f.acme_body("msg_f25", &huge), Error(413, "payload_too_large"))
        },
        // Correctly signed, and still not a lead.
        row(W, "form: signed, empty body", f.acme_body("msg_f26", b""), bad),
        row(W, "form: signed, a JSON array", f.acme_body("msg_f27", br#"[{"phone": "+15035550100"}]"#), bad),
        row(W, "form: signed, URL-encoded fields", f.acme_body("msg_f28", b"name=Ann&phone=%2B15035550100"), bad),
        row(
            W,
            "form: signed, neither phone nor email",
            f.acme_body("msg_f29", br#"{"name": "Anon", "message": "hi"}"#),
            bad,
        ),
        row(W, "form: signed, blank phone and email", f.acme_body("msg_f30", br#"{"phone": "  ", "email": ""}"#), bad),
        row(W, "form: signed, phone as an array", f.acme_body("msg_f31", br#"{"phone": ["+15035550100"]}"#), bad),
        row(
            W,
            "form: signed, a name over 512 bytes",
            f.acme_body("msg_f32", format!(r#"{{"phone": "+15035550100", "name": "{}"}}"#, "n".repeat(600)).as_bytes()),
            bad,
        ),
        row(
            W,
            "form: signed, a message over 8 KiB",
            f.acme_body(
                "msg_f33",
                format!(r#"{{"phone": "+15035550100", "message": "{}"}}"#, "m".repeat(9000)).as_bytes(),
            ),
            bad,
        ),
        row(
            W,
            "form: signed, duplicate phone keys",
            f.acme_body("msg_f34", br#"{"phone": "+15035550100", "phone": "+15035550101"}"#),
            bad,
        ),
        row(W, "form: signed, a BOM", f.acme_body("msg_f35", b"\xef\xbb\xbf{\"phone\": \"+15035550100\"}"), bad),
        row(W, "form: signed, trailing garbage", f.acme_body("msg_f36", br#"{"phone": "+15035550100"} and more"#), bad),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// Events: storage (on-audio-uploaded, on-transcript).

/// A binary-mode CloudEvent as Eventarc sends it.
fn binary(ty: &str, source: &str, subject: Option<&str>) -> Req {
    let mut req = Req::post("/")
        .header("ce-specversion", "1.0")
        .header("ce-id", next_id())
        .header("ce-source", source)
        .header("ce-type", ty)
        .header("ce-time", "2026-11-20T16:20:00Z")
        .json();
    if let Some(s) = subject {
        req = req.header("ce-subject", s);
    }
    req
}

fn bucket_source(bucket: &str) -> String {
    format!("//storage.googleapis.com/projects/_/buckets/{bucket}")
}

/// A storage finalize event for `data` (its bucket and name also make the source and subject).
fn storage(data: &Value) -> Request<Body> {
    let (bucket, name) = (data["bucket"].as_str().unwrap_or("x"), data["name"].as_str().unwrap_or("x"));
    // Eventarc's subject is the object's name; one no header can carry (a NUL) is left out.
    let subject = format!("objects/{name}");
    let subject = HeaderValue::from_str(&subject).is_ok().then_some(subject.as_str());
    binary(STORAGE_FINALIZED, &bucket_source(bucket), subject).body(data.to_string())
}

fn changed(template: &Value, f: impl FnOnce(&mut Value)) -> Value {
    let mut data = template.clone();
    f(&mut data);
    data
}

/// Rows every event-driven function shares: not an event at all, a malformed or the wrong kind of event, method
/// and path. `right_data` is data the function would read; each row has one thing wrong.
fn common_event_rows(target: Target, right_data: &Value, wrong_type: &str) -> Vec<Row> {
    use Expect::{DeadLetter, Error};
    let t = target.stage();
    let right_type =
        if matches!(target, Target::Audio | Target::Transcript) { STORAGE_FINALIZED } else { PUBSUB_PUBLISHED };
    let data = || right_data.to_string();
    let not_an_event = || DeadLetter("not a CloudEvent");
    let structured =
        json!({"specversion": "1.0", "id": next_id(), "source": "//x", "type": right_type, "data_base64": "@@@"});
    vec![
        row(
            target,
            format!("{t}: not a CloudEvent (plain JSON)"),
            Req::post("/").json().body(r#"{"a": 1}"#),
            not_an_event(),
        ),
        row(target, format!("{t}: not a CloudEvent (empty body)"), Req::post("/").empty(), not_an_event()),
        row(
            target,
            format!("{t}: not a CloudEvent (binary garbage)"),
            Req::post("/").body(&b"\xff\xfe\x00?"[..]),
            not_an_event(),
        ),
        row(
            target,
            format!("{t}: ce-specversion without ce-id, ce-type, ce-source"),
            Req::post("/").header("ce-specversion", "1.0").json().body(data()),
            not_an_event(),
        ),
        row(
            target,
            format!("{t}: an unknown ce-specversion"),
            binary(right_type, "//x", None).replace("ce-specversion", "9.9").body(data()),
            not_an_event(),
        ),
        row(
            target,
            format!("{t}: ce-time not a time"),
            binary(right_type, "//x", None).replace("ce-time", "yesterday").body(data()),
            not_an_event(),
        ),
        row(
            target,
            format!("{t}: structured mode, bad data_base64"),
            Req::post("/").header("content-type", "application/cloudevents+json").body(structured.to_string()),
            not_an_event(),
        ),
        row(
            target,
            format!("{t}: the wrong ce-type ({wrong_type})"),
            binary(wrong_type, "//x", None).body(data()),
            DeadLetter("unexpected event type"),
        ),
        row(
            target,
            format!("{t}: a made-up ce-type"),
            binary("com.example.evil.v1", "//x", None).body(data()),
            DeadLetter("unexpected event type"),
        ),
        row(target, format!("{t}: GET"), Req::new("GET", "/").empty(), Error(405, "method_not_allowed")),
        row(target, format!("{t}: PUT"), Req::new("PUT", "/").json().body(data()), Error(405, "method_not_allowed")),
        row(target, format!("{t}: another path"), Req::post("/events").json().body(data()), Error(404, "not_found")),
    ]
}

fn audio_rows(recording: &Value) -> Vec<Row> {
    use Expect::DeadLetter;
    use Target::Audio as A;
    let ch = |f: &dyn Fn(&mut Value)| storage(&changed(recording, |d| f(d)));
    let name = |d: &mut Value, tenant: &str, call: &str, ext: &str| {
        d["name"] = format!("{tenant}/{call}.{ext}").into();
        d["metadata"]["tenant_id"] = tenant.into();
        d["metadata"]["call_id"] = call.into();
    };
    let mut rows = common_event_rows(A, recording, PUBSUB_PUBLISHED);
    rows.extend([
        row(
            A,
            "audio: storage deleted, not finalized",
            binary("google.cloud.storage.object.v1.deleted", &bucket_source("recordings"), None)
                .body(recording.to_string()),
            DeadLetter("unexpected event type"),
        ),
        row(A, "audio: the transcripts bucket", ch(&|d| d["bucket"] = "transcripts".into()), DeadLetter("bucket")),
        row(A, "audio: someone else's bucket", ch(&|d| d["bucket"] = "evil-bucket".into()), DeadLetter("bucket")),
        row(
            A,
            "audio: the right bucket named only in ce-source",
            binary(STORAGE_FINALIZED, &bucket_source("recordings"), None)
                .body(changed(recording, |d| d["bucket"] = "evil-bucket".into()).to_string()),
            DeadLetter("bucket"),
        ),
        row(
            A,
            "audio: cross-tenant prefix (Bayside's path to Acme's call)",
            ch(&|d| name(d, BAYSIDE, SEEDED, "mp3")),
            DeadLetter("no such call"),
        ),
        row(
            A,
            "audio: metadata names another tenant",
            ch(&|d| d["metadata"]["tenant_id"] = BAYSIDE.into()),
            DeadLetter("does not match"),
        ),
        row(
            A,
            "audio: metadata names another call",
            ch(&|d| d["metadata"]["call_id"] = "CALother".into()),
            DeadLetter("does not match"),
        ),
        row(A, "audio: no metadata", ch(&|d| d["metadata"] = json!({})), DeadLetter("has no tenant_id")),
        row(
            A,
            "audio: traversal in the name",
            ch(&|d| d["name"] = format!("{ACME}/../{BAYSIDE}/{SEEDED}.mp3").into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(
            A,
            "audio: ../../etc/passwd",
            ch(&|d| d["name"] = "../../etc/passwd.mp3".into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(
            A,
            "audio: percent-encoded traversal",
            ch(&|d| d["name"] = format!("{ACME}/..%2f{SEEDED}.mp3").into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(
            A,
            "audio: absolute name",
            ch(&|d| d["name"] = format!("/{ACME}/{SEEDED}.mp3").into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(
            A,
            "audio: nested name",
            ch(&|d| d["name"] = format!("{ACME}/x/{SEEDED}.mp3").into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(
            A,
            "audio: no tenant prefix",
            ch(&|d| d["name"] = format!("{SEEDED}.mp3").into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(
            A,
            "audio: upper-case tenant",
            ch(&|d| name(d, "ACME-REMODELING", SEEDED, "mp3")),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(A, "audio: not an audio extension", ch(&|d| name(d, ACME, SEEDED, "exe")), DeadLetter("extension")),
        row(
            A,
            "audio: an HTML content type",
            ch(&|d| d["contentType"] = "text/html".into()),
            DeadLetter("content type"),
        ),
        row(
            A,
            "audio: no content type",
            ch(&|d| drop(d.as_object_mut().unwrap().remove("contentType"))),
            DeadLetter("content type"),
        ),
        row(A, "audio: empty object", ch(&|d| d["size"] = "0".into()), DeadLetter("empty")),
        row(A, "audio: negative size", ch(&|d| d["size"] = "-5".into()), DeadLetter("empty")),
        row(
            A,
            "audio: over the size limit",
            ch(&|d| d["size"] = (1u64 << 40).to_string().into()),
            DeadLetter("byte limit"),
        ),
        row(
            A,
            "audio: no generation",
            ch(&|d| drop(d.as_object_mut().unwrap().remove("generation"))),
            DeadLetter("no generation"),
        ),
        row(
            A,
            "audio: generation not a number",
            ch(&|d| d["generation"] = "abc".into()),
            DeadLetter("StorageObjectData"),
        ),
        row(
            A,
            "audio: generation beyond 64 bits",
            ch(&|d| d["generation"] = "99999999999999999999".into()),
            DeadLetter("StorageObjectData"),
        ),
        row(A, "audio: generation zero", ch(&|d| d["generation"] = "0".into()), DeadLetter("no generation")),
        row(A, "audio: size a fraction", ch(&|d| d["size"] = "1.5".into()), DeadLetter("StorageObjectData")),
        row(
            A,
            "audio: metadata a list",
            ch(&|d| d["metadata"] = json!(["tenant_id", ACME])),
            DeadLetter("StorageObjectData"),
        ),
        row(
            A,
            "audio: NUL in the name",
            ch(&|d| d["name"] = format!("{ACME}/{SEEDED}\u{0}.mp3").into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(A, "audio: unknown tenant", ch(&|d| name(d, "nobody", SEEDED, "mp3")), DeadLetter("unknown tenant")),
        row(A, "audio: unknown call", ch(&|d| name(d, ACME, "CALghost", "mp3")), DeadLetter("no such call")),
        row(
            A,
            "audio: data not StorageObjectData",
            storage(&json!({"hello": "world"})),
            DeadLetter("StorageObjectData"),
        ),
        row(
            A,
            "audio: data a JSON array",
            binary(STORAGE_FINALIZED, &bucket_source("recordings"), None).body("[1, 2]"),
            DeadLetter("StorageObjectData"),
        ),
        row(
            A,
            "audio: data not JSON",
            binary(STORAGE_FINALIZED, &bucket_source("recordings"), None)
                .replace("content-type", "text/plain")
                .body("not json"),
            DeadLetter("StorageObjectData"),
        ),
        row(
            A,
            "audio: event over 1 MiB",
            binary(STORAGE_FINALIZED, &bucket_source("recordings"), None).body(vec![b' '; MIB + 1]),
            DeadLetter("exceeds"),
        ),
    ]);
    rows
}

fn transcript_rows(transcript: &Value, recording: &Value) -> Vec<Row> {
    use Expect::DeadLetter;
    use Target::Transcript as T;
    let ch = |f: &dyn Fn(&mut Value)| storage(&changed(transcript, |d| f(d)));
    let mut rows = common_event_rows(T, transcript, PUBSUB_PUBLISHED);
    rows.extend([
        row(T, "transcript: the recording's own event", storage(recording), DeadLetter("bucket")),
        row(
            T,
            "transcript: audio in the transcripts bucket",
            ch(&|d| d["name"] = format!("{ACME}/{SEEDED}.mp3").into()),
            DeadLetter("extension"),
        ),
        row(T, "transcript: text/plain", ch(&|d| d["contentType"] = "text/plain".into()), DeadLetter("content type")),
        row(
            T,
            "transcript: over 16 MiB",
            ch(&|d| d["size"] = (17u64 << 20).to_string().into()),
            DeadLetter("byte limit"),
        ),
        row(
            T,
            "transcript: cross-tenant prefix",
            ch(&|d| {
                d["name"] = format!("{BAYSIDE}/{SEEDED}.json").into();
                d["metadata"]["tenant_id"] = BAYSIDE.into();
            }),
            DeadLetter("no such call"),
        ),
        row(
            T,
            "transcript: metadata names another tenant",
            ch(&|d| d["metadata"]["tenant_id"] = BAYSIDE.into()),
            DeadLetter("does not match"),
        ),
        row(
            T,
            "transcript: traversal in the name",
            ch(&|d| d["name"] = format!("{ACME}/../{SEEDED}.json").into()),
            DeadLetter("is not {tenant}/{call}"),
        ),
        row(
            T,
            "transcript: unknown tenant",
            ch(&|d| {
                d["name"] = format!("nobody/{SEEDED}.json").into();
                d["metadata"]["tenant_id"] = "nobody".into();
            }),
            DeadLetter("unknown tenant"),
        ),
    ]);
    rows
}

// ---------------------------------------------------------------------------------------------------------------
// Events: Pub/Sub (on-analysis, on-crm-retry, cleanup-scheduled).

/// A plain push envelope around `data` (already encoded as the message's `data` field).
fn envelope_raw(data: Value, attributes: Value) -> Value {
    json!({
        "message": {
            "data": data, "messageId": next_id(), "publishTime": "2026-11-20T16:20:00Z", "attributes": attributes
        },
        "subscription": "projects/callflow-local/subscriptions/eventarc-bad-inputs"
    })
}

fn push(data: impl AsRef<[u8]>) -> Request<Body> {
    Req::post("/").json().body(envelope_raw(b64(data).into(), json!({})).to_string())
}

fn push_json(data: &Value) -> Request<Body> {
    push(data.to_string())
}

fn analysis_complete(tenant: &str, call: &str) -> Value {
    json!({
        "schema_version": 1, "tenant_id": tenant, "call_id": call, "transcript_generation": "1", "analyzer": "rules/1"
    })
}

fn crm_retry(tenant: &str, call: &str) -> Value {
    json!({
        "schema_version": 1, "tenant_id": tenant, "call_id": call, "chain": "a", "seq": 1, "attempts": 1,
        "not_before": "2026-01-01T00:00:00Z", "first_failed_at": "2026-01-01T00:00:00Z", "last_error": "500"
    })
}

fn message_rows(target: Target, message: fn(&str, &str) -> Value, what: &'static str) -> Vec<Row> {
    use Expect::DeadLetter;
    let t = target.stage();
    let good = message(ACME, "CALghost");
    let with = |f: &dyn Fn(&mut Value)| push_json(&changed(&good, |d| f(d)));
    let mut rows = common_event_rows(target, &envelope_raw(b64(good.to_string()).into(), json!({})), STORAGE_FINALIZED);
    rows.extend([
        row(
            target,
            format!("{t}: bad base64 data"),
            Req::post("/").json().body(envelope_raw("@@not base64@@".into(), json!({})).to_string()),
            DeadLetter("base64"),
        ),
        row(
            target,
            format!("{t}: bad base64 data in a binary-mode CloudEvent"),
            binary(PUBSUB_PUBLISHED, "//pubsub.googleapis.com/projects/callflow-local/topics/x", None)
                .body(envelope_raw("%%%".into(), json!({})).to_string()),
            DeadLetter("base64"),
        ),
        row(target, format!("{t}: data not JSON"), push("not json at all"), DeadLetter(what)),
        row(target, format!("{t}: data empty"), push(""), DeadLetter(what)),
        row(target, format!("{t}: data JSON null"), push("null"), DeadLetter(what)),
        row(target, format!("{t}: data another message"), push_json(&json!({"hello": 1})), DeadLetter(what)),
        row(
            target,
            format!("{t}: data with a BOM"),
            push([&b"\xef\xbb\xbf"[..], good.to_string().as_bytes()].concat()),
            DeadLetter(what),
        ),
        row(
            target,
            format!("{t}: schema_version from the future"),
            with(&|d| d["schema_version"] = 2.into()),
            DeadLetter("newer"),
        ),
        row(
            target,
            format!("{t}: schema_version negative"),
            with(&|d| d["schema_version"] = (-1).into()),
            DeadLetter(what),
        ),
        row(
            target,
            format!("{t}: schema_version a string"),
            with(&|d| d["schema_version"] = "1".into()),
            DeadLetter(what),
        ),
        row(
            target,
            format!("{t}: unknown tenant"),
            push_json(&message("nobody", SEEDED)),
            DeadLetter("unknown tenant"),
        ),
        row(target, format!("{t}: unknown call"), push_json(&message(ACME, "CALghost")), DeadLetter("no such call")),
        row(
            target,
            format!("{t}: cross-tenant (Acme's call under Bayside)"),
            push_json(&message(BAYSIDE, SEEDED)),
            DeadLetter("no such call"),
        ),
        row(
            target,
            format!("{t}: attributes name Acme's call, data Bayside's"),
            Req::post("/").json().body(
                envelope_raw(
                    b64(message(BAYSIDE, SEEDED).to_string()).into(),
                    json!({"tenant_id": ACME, "call_id": SEEDED}),
                )
                .to_string(),
            ),
            DeadLetter("no such call"),
        ),
        row(
            target,
            format!("{t}: tenant id with traversal"),
            push_json(&message("../acme-remodeling", SEEDED)),
            DeadLetter("malformed"),
        ),
        row(
            target,
            format!("{t}: tenant id upper case"),
            push_json(&message("ACME-REMODELING", SEEDED)),
            DeadLetter("malformed"),
        ),
        row(
            target,
            format!("{t}: call id with traversal"),
            push_json(&message(ACME, "../../etc/passwd")),
            DeadLetter("malformed"),
        ),
        row(
            target,
            format!("{t}: call id too long"),
            push_json(&message(ACME, &"C".repeat(65))),
            DeadLetter("malformed"),
        ),
        row(
            target,
            format!("{t}: duplicate tenant keys"),
            push(format!(
                r#"{{"schema_version": 1, "tenant_id": "{BAYSIDE}", "tenant_id": "{ACME}", "call_id": "{SEEDED}"}}"#
            )),
            DeadLetter(what),
        ),
        row(
            target,
            format!("{t}: push envelope without a messageId"),
            Req::post("/")
                .json()
                .body(json!({"message": {"data": b64(good.to_string())}, "subscription": "s"}).to_string()),
            DeadLetter("messageId"),
        ),
        row(
            target,
            format!("{t}: push envelope, publishTime not a time"),
            Req::post("/").json().body(
                json!({"message": {"data": b64(good.to_string()), "messageId": next_id(), "publishTime": "noon"}})
                    .to_string(),
            ),
            DeadLetter("not a CloudEvent"),
        ),
        row(
            target,
            format!("{t}: push envelope, deliveryAttempt negative"),
            Req::post("/").json().body(
                json!({"message": {"data": b64(good.to_string()), "messageId": next_id()}, "deliveryAttempt": -1})
                    .to_string(),
            ),
            DeadLetter("not a CloudEvent"),
        ),
        row(
            target,
            format!("{t}: push envelope whose message is a string"),
            Req::post("/").json().body(json!({"message": "hello", "subscription": "s"}).to_string()),
            DeadLetter("not a CloudEvent"),
        ),
        row(
            target,
            format!("{t}: event over 1 MiB"),
            Req::post("/").json().body(envelope_raw(b64(vec![b'x'; MIB]).into(), json!({})).to_string()),
            DeadLetter("exceeds"),
        ),
    ]);
    rows
}

fn crm_retry_rows() -> Vec<Row> {
    use Expect::DeadLetter;
    use Target::CrmRetry as R;
    let mut rows = message_rows(R, crm_retry, "not an crm-retry message");
    rows.extend([
        row(
            R,
            "on-crm-retry: an analysis-complete message",
            push_json(&analysis_complete(ACME, SEEDED)),
            DeadLetter("not an crm-retry message"),
        ),
        row(
            R,
            "on-crm-retry: not_before not a time",
            push_json(&changed(&crm_retry(ACME, SEEDED), |d| d["not_before"] = "tomorrow".into())),
            DeadLetter("not an crm-retry message"),
        ),
        row(
            R,
            "on-crm-retry: seq negative",
            push_json(&changed(&crm_retry(ACME, SEEDED), |d| d["seq"] = (-1).into())),
            DeadLetter("not an crm-retry message"),
        ),
    ]);
    rows
}

fn cleanup_rows() -> Vec<Row> {
    use Expect::{DeadLetter, Error};
    use Target::Cleanup as C;
    let not_run = "not a cleanup request";
    let run = json!({"jobs": ["retention"], "dry_run": true});
    let mut rows = common_event_rows(C, &envelope_raw(b64(run.to_string()).into(), json!({})), STORAGE_FINALIZED);
    let scheduler = || Req::post("/").json().header("x-cloudscheduler", "true");
    rows.extend([
        row(
            C,
            "cleanup-scheduled: bad base64 data",
            Req::post("/").json().body(envelope_raw("@@@".into(), json!({})).to_string()),
            DeadLetter("base64"),
        ),
        row(C, "cleanup-scheduled: data not JSON", push("not json"), DeadLetter(not_run)),
        row(C, "cleanup-scheduled: an unknown job", push_json(&json!({"jobs": ["vacuum"]})), DeadLetter(not_run)),
        row(C, "cleanup-scheduled: an unknown field", push_json(&json!({"jobz": ["retention"]})), DeadLetter(not_run)),
        row(C, "cleanup-scheduled: dry_run a string", push_json(&json!({"dry_run": "yes"})), DeadLetter(not_run)),
        row(C, "cleanup-scheduled: jobs not a list", push_json(&json!({"jobs": "retention"})), DeadLetter(not_run)),
        row(
            C,
            "cleanup-scheduled: a message from another topic (analysis-complete)",
            push_json(&analysis_complete(ACME, SEEDED)),
            DeadLetter(not_run),
        ),
        row(
            C,
            "cleanup-scheduled: X-CloudScheduler: TRUE is not Cloud Scheduler",
            Req::post("/").json().header("x-cloudscheduler", "TRUE").body(run.to_string()),
            DeadLetter("not a CloudEvent"),
        ),
        row(
            C,
            "cleanup-scheduled: Cloud Scheduler, unknown job",
            scheduler().body(r#"{"jobs": ["vacuum"]}"#),
            Error(400, "bad_request"),
        ),
        row(
            C,
            "cleanup-scheduled: Cloud Scheduler, body not JSON",
            scheduler().body("run everything"),
            Error(400, "bad_request"),
        ),
        row(
            C,
            "cleanup-scheduled: a Pub/Sub message over 64 KiB",
            push_json(&json!({"jobs": ["retention"], "pad": "x".repeat(70_000)})),
            DeadLetter("exceeds"),
        ),
        row(
            C,
            "cleanup-scheduled: Cloud Scheduler, over 64 KiB",
            scheduler().body(vec![b' '; 100_000]),
            Error(413, "payload_too_large"),
        ),
    ]);
    rows
}

// ---------------------------------------------------------------------------------------------------------------
// What is stored.

/// Every row of every table of the three databases (dead letters of the state store apart) and every file
/// under `objects/`, with its size.
#[derive(Debug, PartialEq)]
struct Stored {
    rows: BTreeMap<String, Vec<String>>,
    objects: BTreeMap<String, u64>,
}

fn rows_of(db: &Path, skip: &[&str], out: &mut BTreeMap<String, Vec<String>>) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let file = db.file_name().unwrap().to_string_lossy().into_owned();
    for table in tables.into_iter().filter(|t| !skip.contains(&t.as_str())) {
        let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| Ok((0..n).map(|i| text(r.get_ref(i).unwrap())).collect::<Vec<_>>().join("|")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.insert(format!("{file}:{table}"), rows);
    }
}

fn text(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("blob {} bytes {:x?}", b.len(), &b[..b.len().min(16)]),
    }
}

fn files(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            files(root, &entry.path(), out);
        } else {
            out.insert(entry.path().strip_prefix(root).unwrap().display().to_string(), meta.len());
        }
    }
}

fn stored(data: &Path) -> Stored {
    let mut rows = BTreeMap::new();
    rows_of(&data.join("state.sqlite"), &["dead_letters"], &mut rows);
    rows_of(&data.join("analytics.sqlite"), &[], &mut rows);
    rows_of(&data.join("router.sqlite"), &[], &mut rows);
    let mut objects = BTreeMap::new();
    files(&data.join("objects"), &data.join("objects"), &mut objects);
    Stored { rows, objects }
}

/// The state store's dead letters: kind and reason.
fn dead_letters(data: &Path) -> Vec<(String, String)> {
    let c =
        rusqlite::Connection::open_with_flags(data.join("state.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    c.prepare("SELECT kind, reason FROM dead_letters ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// What changed between two snapshots, briefly.
fn diff(before: &Stored, after: &Stored) -> String {
    let mut out = Vec::new();
    for (table, rows) in &after.rows {
        let old = before.rows.get(table).map(Vec::as_slice).unwrap_or_default();
        if old != rows.as_slice() {
            let added: Vec<_> = rows.iter().filter(|r| !old.contains(r)).collect();
            out.push(format!("{table}: {} → {} rows, new or changed: {added:?}", old.len(), rows.len()));
        }
    }
    for (file, size) in &after.objects {
        if before.objects.get(file) != Some(size) {
            out.push(format!("object {file} ({size} bytes)"));
        }
    }
    for file in before.objects.keys().filter(|f| !after.objects.contains_key(*f)) {
        out.push(format!("object {file} removed"));
    }
    out.join("; ")
}

// ---------------------------------------------------------------------------------------------------------------
// The suite.

struct Answer {
    status: u16,
    allow: Option<String>,
    body: Value,
    text: String,
}

/// One request to one function. A panic in the function is an answer too: the suite reports it.
async fn send(host: &callflow_host::Host, target: Target, request: Request<Body>) -> Answer {
    let app = target.app(host);
    let resp = match tokio::spawn(app.oneshot(request)).await {
        Ok(resp) => resp.unwrap(),
        Err(e) => {
            let why = e.try_into_panic().ok();
            let why = why.as_ref().and_then(|p| {
                p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            });
            return Answer {
                status: 0,
                allow: None,
                body: Value::Null,
                text: format!("the function panicked: {why:?}"),
            };
        }
    };
    let status = resp.status().as_u16();
    let allow = resp.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = axum::body::to_bytes(resp.into_body(), MIB).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).chars().take(300).collect();
    Answer { status, allow, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text }
}

/// What is wrong with one row's outcome, if anything.
fn check(
    target: Target,
    expect: Expect,
    answer: &Answer,
    baseline: &Stored,
    now: &Stored,
    letters: &[(String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    match expect {
        Expect::Error(status, code) => {
            if (answer.status, answer.body["error"]["code"].as_str()) != (status, Some(code)) {
                problems.push(format!("expected {status} {code}, got {} {:?}", answer.status, answer.text));
            }
            if answer.body["error"]["message"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("no error message: {}", answer.body));
            }
            if status == 405 && answer.allow.as_deref() != Some("POST") {
                problems.push(format!("405 without Allow: POST ({:?})", answer.allow));
            }
            if !letters.is_empty() {
                problems.push(format!("dead letters kept for a request answered {status}: {letters:?}"));
            }
        }
        Expect::DeadLetter(why) => {
            if (answer.status, answer.body["outcome"].as_str()) != (200, Some("refused")) {
                problems.push(format!("expected 200 refused, got {} {:?}", answer.status, answer.text));
            }
            let kind = format!("event:{}", target.stage());
            match letters {
                [(k, reason)] if *k == kind && reason.contains(why) => {}
                [(k, reason)] => {
                    problems.push(format!("dead letter {k} {reason:?}, expected {kind} mentioning {why:?}"))
                }
                other => problems.push(format!("expected one dead letter, got {}: {other:?}", other.len())),
            }
        }
    }
    if now != baseline {
        problems.push(format!("something was stored: {}", diff(baseline, now)));
    }
    problems
}

/// The suite's starting point: the host, a call whose recording is stored and whose finalize event waits.
struct Suite {
    dir: tempfile::TempDir,
    mock: MockServer,
    host: callflow_host::Host,
    /// The waiting recording event's StorageObjectData.
    recording: Value,
}

async fn suite() -> Suite {
    suite_with(201).await
}

async fn suite_with(crm: u16) -> Suite {
    let dir = tempfile::tempdir().unwrap();
    let mock = fake_callrail(crm).await;
    let host = callflow_host::Host::open(settings(dir.path(), &mock.uri())).await.unwrap();
    // The seeded call carries CallRail's transcript, so the chain at the end needs no speech engine.
    let fixture = std::fs::read(repo().join("fixtures/callrail/post-call-resource-ids.json")).unwrap();
    let mut json: Value = serde_json::from_slice(&fixture).unwrap();
    json["transcription"] = "Agent: Acme Remodeling.\nCaller: I need my kitchen cabinets replaced.".into();
    let body = serde_json::to_vec(&json).unwrap();
    let key = secret("acme-callrail-signing-key");
    let answer = send(&host, Target::Webhook, signed(body, key.as_bytes())).await;
    assert_eq!((answer.status, answer.body["call_id"].as_str()), (200, Some(SEEDED)), "{}", answer.body);
    on_webhook::outbox::drain_pass(&host.webhook).await;
    on_webhook::outbox::drain_pass(&host.webhook).await;
    let events = host.router.pending().await.unwrap();
    assert_eq!(events.len(), 1, "the recording's finalize event: {events:?}");
    assert_eq!(events[0].destination, "on-audio-uploaded");
    let recording: Value = serde_json::from_slice(&events[0].body).unwrap();
    assert_eq!(recording["name"], format!("{ACME}/{SEEDED}.mp3"));
    Suite { dir, mock, host, recording }
}

fn table(s: &Suite) -> Vec<Row> {
    let (acme, bayside, old) = (
        secret("acme-callrail-signing-key"),
        secret("bayside-callrail-signing-key"),
        secret("bayside-callrail-signing-key-old"),
    );
    let form = Form {
        acme: standard_webhooks_key(&secret("acme-forms-secret")).unwrap(),
        bayside: standard_webhooks_key(&secret("bayside-forms-secret")).unwrap(),
        body: std::fs::read(repo().join("fixtures/forms/estimate-request.json")).unwrap(),
        now: chrono::Utc::now().timestamp(),
    };
    // A transcript's finalize event for the seeded call, as it would look (no transcript exists yet).
    let transcript = json!({
        "bucket": "transcripts", "name": format!("{ACME}/{SEEDED}.json"), "generation": "1763655600000001",
        "metageneration": "1", "contentType": "application/json", "size": "512",
        "metadata": {"tenant_id": ACME, "call_id": SEEDED, "engine": "callrail", "schema_version": "1"}
    });
    let mut rows = callrail_rows(acme.as_bytes(), bayside.as_bytes(), old.as_bytes());
    rows.extend(form_rows(&form));
    rows.extend(audio_rows(&s.recording));
    rows.extend(transcript_rows(&transcript, &s.recording));
    rows.extend(message_rows(Target::Analysis, analysis_complete, "not an analysis-complete message"));
    rows.extend(crm_retry_rows());
    rows.extend(cleanup_rows());
    rows
}

#[tokio::test]
async fn every_bad_input_gets_a_clear_4xx_or_one_dead_letter_and_nothing_is_stored() {
    let started = Instant::now();
    let s = suite().await;
    let data = s.dir.path();
    let baseline = stored(data);
    assert!(dead_letters(data).is_empty());
    let rows = table(&s);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut letters_so_far = 0;
    let total = rows.len();
    let mut before = stored(data);
    for Row { name, target, request, expect } in rows {
        *counts.entry(target.stage()).or_default() += 1;
        let answer = send(&s.host, target, request).await;
        let all = dead_letters(data);
        let after = stored(data);
        let problems = check(target, expect, &answer, &before, &after, &all[letters_so_far..]);
        // Compared row by row, so one row's leftovers are blamed on it alone.
        before = after;
        letters_so_far = all.len();
        failures.extend(problems.into_iter().map(|p| format!("{name}: {p}")));
    }
    assert!(failures.is_empty(), "{} of {total} rows failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(stored(data), baseline, "{}", diff(&baseline, &stored(data)));
    assert!(total >= 60, "{total} rows");
    eprintln!("{total} bad inputs ({counts:?}), {letters_so_far} dead letters, in {:?}", started.elapsed());
    still_healthy(&s).await;
    eprintln!("bad inputs and the healthy chain after them: {:?}", started.elapsed());
}

/// After every bad input: the seeded call goes through every stage to Acme's CRM, and a new webhook, a form and
/// a cleanup run are accepted.
async fn still_healthy(s: &Suite) {
    let host = &s.host;
    for _ in 0..10 {
        if host.router.pending().await.unwrap().is_empty() {
            break;
        }
        host.router.deliver_due().await;
    }
    assert!(host.router.pending().await.unwrap().is_empty(), "every event delivered");
    assert!(host.router.dead_letters().await.unwrap().is_empty(), "the router gave up on nothing");
    let (tenant, call) =
        (callflow::domain::TenantId::parse(ACME).unwrap(), callflow::domain::CallId::parse(SEEDED).unwrap());
    let record =
        callflow::ports::StateStore::call(host.embedded.state.as_ref(), &tenant, &call).await.unwrap().unwrap();
    assert_eq!(record.state, callflow::domain::CallState::Delivered, "{:?}", record.state_reason);
    let leads = s.mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/crm/leads").count();
    assert_eq!(leads, 1, "one lead");

    let key = secret("acme-callrail-signing-key");
    let answer = send(host, Target::Webhook, signed(hook(|_| {}), key.as_bytes())).await;
    assert_eq!((answer.status, answer.body["duplicate"].as_bool()), (200, Some(false)), "{}", answer.body);
    let form_key = standard_webhooks_key(&secret("acme-forms-secret")).unwrap();
    let body = std::fs::read(repo().join("fixtures/forms/estimate-request.json")).unwrap();
    let now = chrono::Utc::now().timestamp();
    let form = Req::post(format!("/webhooks/forms/{ACME}"))
        .json()
        .header("webhook-id", "msg_healthy")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", sign_standard_webhook(&form_key, "msg_healthy", now, &body))
        .body(body);
    let answer = send(host, Target::Webhook, form).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let run = Req::post("/")
        .json()
        .header("x-cloudscheduler", "true")
        .header("x-cloudscheduler-scheduletime", "2026-11-22T06:45:00Z")
        .body(r#"{"jobs": ["retention"], "dry_run": true}"#);
    let answer = send(host, Target::Cleanup, run).await;
    assert_eq!((answer.status, answer.body["dry_run"].as_bool()), (200, Some(true)), "{}", answer.body);
}

/// A deviation from README's table the main suite found (fixed): a tenant path that is not UTF-8 was answered by
/// axum's path extractor with a plain-text 400, not README's JSON 404.
#[tokio::test]
async fn a_tenant_path_that_is_not_utf8_is_an_unknown_tenant() {
    let s = suite().await;
    let key = secret("acme-callrail-signing-key");
    let body = hook(|_| {});
    let sig = sign_callrail(key.as_bytes(), &body);
    for (target, request) in [
        (Target::Webhook, callrail("acme%ff").header("signature", &sig).body(body.clone())),
        (Target::Webhook, Req::post("/webhooks/forms/acme%c3%28").json().body(body.clone())),
    ] {
        let answer = send(&s.host, target, request).await;
        assert_eq!(
            (answer.status, answer.body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "README: unknown tenant (or not a valid tenant id) → 404 not_found; got {} {:?}",
            answer.status,
            answer.text
        );
    }
}

/// Found by this suite (fixed; this is its regression test): `webhook-timestamp` was subtracted from the clock unchecked
/// (`shared/src/domain/signature.rs`, `(now - ts_num).abs() > tolerance_secs`). With overflow checks (debug and
/// test builds) a timestamp of i64::MIN panics the handler: no answer, the connection dropped. Without them
/// (release) the subtraction wraps, and a timestamp of `i64::MIN + now` comes out as i64::MIN, whose `abs()` is
/// i64::MIN again: the five-minute tolerance is passed. Both are pre-signature, unauthenticated input.
#[tokio::test]
async fn a_form_timestamp_near_the_end_of_i64_is_stale_not_a_panic() {
    let s = suite().await;
    let key = standard_webhooks_key(&secret("acme-forms-secret")).unwrap();
    let body = std::fs::read(repo().join("fixtures/forms/estimate-request.json")).unwrap();
    let baseline = stored(s.dir.path());
    let now = chrono::Utc::now().timestamp();
    let mut failures = Vec::new();
    for (what, ts) in [("i64::MIN", i64::MIN), ("i64::MIN + now, correctly signed", i64::MIN + now)] {
        let id = format!("msg_overflow_{ts}");
        let request = Req::post(format!("/webhooks/forms/{ACME}"))
            .json()
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign_standard_webhook(&key, &id, ts, &body))
            .body(body.clone());
        let answer = send(&s.host, Target::Webhook, request).await;
        if (answer.status, answer.body["error"]["code"].as_str()) != (401, Some("unauthorized")) {
            failures.push(format!("{what}: expected 401 unauthorized, got {} {:?}", answer.status, answer.text));
        }
        if stored(s.dir.path()) != baseline {
            failures.push(format!("{what}: something was stored: {}", diff(&baseline, &stored(s.dir.path()))));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The seeded call taken to `analysed` by hand (its recording's event to on-audio-uploaded, then the transcript's
/// to on-transcript), its analysis-complete message left waiting.
async fn analysed(s: &Suite) {
    for (destination, target) in [("on-audio-uploaded", Target::Audio), ("on-transcript", Target::Transcript)] {
        let events = s.host.router.pending().await.unwrap();
        let event = events.iter().find(|e| e.destination == destination).expect("the event");
        let answer = send(&s.host, target, callflow::adapters::local_router::LocalRouter::request(event)).await;
        assert_eq!(answer.status, 200, "{destination}: {}", answer.text);
    }
    let (tenant, call) =
        (callflow::domain::TenantId::parse(ACME).unwrap(), callflow::domain::CallId::parse(SEEDED).unwrap());
    let record = callflow::ports::StateStore::call(s.host.embedded.state.as_ref(), &tenant, &call).await.unwrap();
    assert_eq!(record.unwrap().state, callflow::domain::CallState::Analysed);
}

/// Found by this suite (fixed; this is its regression test): on-crm-retry did arithmetic on a message's counters
/// and dates unchecked
/// (`shared/src/runtime/lead_delivery.rs`): `attempts: 4294967295` overflows `failed_before + 1` when the push is
/// delivered (a panic with overflow checks; 0 attempts recorded without), and a `first_failed_at` at chrono's
/// last representable second overflows `first_failed_at + max_age` in `RetrySchedule::after_failure` when the push
/// fails (chrono panics in every build). Only something that can publish on `crm-retry` can send these. In the
/// first case the lead has already reached the CRM when the commit panics, so the call never becomes `delivered`;
/// the embedded router runs each delivery in its own task, so the event comes back after its lease and panics
/// again. Expected: answered (2xx or 503), never a panic.
#[tokio::test]
async fn a_crm_retry_with_extreme_counters_or_dates_is_answered_not_a_panic() {
    let mut failures = Vec::new();
    for (crm, what, change) in [
        (201, "attempts u32::MAX, the push delivered", json!({"attempts": u32::MAX})),
        (
            503,
            "first_failed_at at chrono's end, the push failing",
            json!({"first_failed_at": "+262142-12-31T23:59:59Z"}),
        ),
    ] {
        let s = suite_with(crm).await;
        analysed(&s).await;
        let mut message = crm_retry(ACME, SEEDED);
        message["not_before"] = "2020-01-01T00:00:00Z".into();
        for (k, v) in change.as_object().unwrap() {
            message[k] = v.clone();
        }
        let answer = send(&s.host, Target::CrmRetry, push_json(&message)).await;
        if !matches!(answer.status, 200..=299 | 503) {
            failures.push(format!("{what}: got {} {:?}", answer.status, answer.text));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
