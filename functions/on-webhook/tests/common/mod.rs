//! Test harness: the real on-webhook router over the embedded adapters in a temp dir, with CallRail's API faked
//! by wiremock.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use on_webhook::{Service, Settings};
use serde_json::Value;
use tower::ServiceExt;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const ACME: &str = "acme-remodeling";
pub const ACME_ACCOUNT: &str = "ACC8154748ae6bd4e278a7cddd38a662f4f";
pub const ACME_KEY: &[u8] = b"072e77e426f92738a72fe23c4d1953b4";
pub const ACME_API_KEY: &str = "demo-acme-callrail-api-key";
pub const ACME_FORMS: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const BAYSIDE: &str = "bayside-baths";
pub const BAYSIDE_KEY: &[u8] = b"b7f1c2d9e4a5968f0c3d2e1b4a5f6e7d";
pub const BAYSIDE_OLD_KEY: &[u8] = b"5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d";

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap()
}

pub fn sign(key: &[u8], body: &[u8]) -> String {
    callflow::domain::signature::sign_callrail(key, body)
}

pub struct Harness {
    pub service: Service,
    pub dir: tempfile::TempDir,
    pub callrail: MockServer,
}

pub fn test_settings(data_dir: PathBuf, callrail_api: String) -> Settings {
    let eventarc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../eventarc");
    let mut s =
        Settings::from_lookup(|name| (name == "CALLFLOW_EVENTARC").then(|| eventarc.display().to_string())).unwrap();
    s.data_dir = data_dir;
    s.tenants_file = fixtures_dir().join("tenants.toml");
    s.callrail_api = callrail_api;
    s.callrail_api_timeout = Duration::from_millis(500);
    s.fetch_retry.max_attempts = 3;
    s.fetch_retry.base = Duration::from_millis(1);
    s.fetch_retry.max = Duration::from_millis(5);
    s
}

pub async fn harness() -> Harness {
    harness_with(|_| {}).await
}

pub async fn harness_with(adjust: impl FnOnce(&mut Settings)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let callrail = MockServer::start().await;
    let mut settings = test_settings(dir.path().to_owned(), callrail.uri());
    adjust(&mut settings);
    let service = Service::embedded(&settings).await.unwrap();
    Harness { service, dir, callrail }
}

impl Harness {
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = on_webhook::app(self.service.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    pub async fn post_callrail(&self, tenant: &str, body: &[u8], key: &[u8]) -> (StatusCode, Value) {
        self.send(callrail_request(tenant, body, Some(&sign(key, body)))).await
    }

    /// Rows in a table of the state database (read through a separate connection, as an operator would).
    pub fn count(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.dir.path().join("state.sqlite")).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    pub fn analytics(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(self.dir.path().join("analytics.sqlite")).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    pub fn call_state(&self, call: &str) -> Option<(String, Option<String>)> {
        let conn = rusqlite::Connection::open(self.dir.path().join("state.sqlite")).unwrap();
        conn.query_row("SELECT state, state_reason FROM calls WHERE call_id = ?1", [call], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .ok()
    }

    pub fn object_path(&self, tenant: &str, call: &str) -> PathBuf {
        self.dir.path().join("objects/recordings").join(tenant).join(format!("{call}.mp3"))
    }

    /// Serve a recording for `call`: recording.json pointing at an MP3 on the same fake.
    pub async fn serve_recording(&self, account: &str, api_key: &str, call: &str, audio: &'static [u8]) {
        Mock::given(method("GET"))
            .and(path(format!("/v3/a/{account}/calls/{call}/recording.json")))
            .and(header("authorization", format!("Token token=\"{api_key}\"").as_str()))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({ "url": format!("{}/audio/{call}.mp3", self.callrail.uri()) })),
            )
            .mount(&self.callrail)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/audio/{call}.mp3")))
            .respond_with(ResponseTemplate::new(200).insert_header("content-type", "audio/mpeg").set_body_bytes(audio))
            .mount(&self.callrail)
            .await;
    }
}

pub fn callrail_request(tenant: &str, body: &[u8], signature: Option<&str>) -> Request<Body> {
    let mut req = Request::post(format!("/webhooks/callrail/{tenant}")).header("content-type", "application/json");
    if let Some(sig) = signature {
        req = req.header("signature", sig);
    }
    req.body(Body::from(body.to_vec())).unwrap()
}

pub fn form_request(tenant: &str, secret: &str, id: &str, ts: i64, body: &[u8]) -> Request<Body> {
    let key = callflow::domain::signature::standard_webhooks_key(secret).unwrap();
    let sig = callflow::domain::signature::sign_standard_webhook(&key, id, ts, body);
    Request::post(format!("/webhooks/forms/{tenant}"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(Body::from(body.to_vec()))
        .unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
