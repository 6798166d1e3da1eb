//! `callflow crm-receiver`: a lead receiver for the custom-webhook CRM, as a tenant would run one. It verifies
//! each lead's Standard Webhooks signature, keeps each `webhook-id` once (a redelivery gets 409 with the first
//! record's id, which the connector reads as "already delivered"), appends accepted leads to a JSON Lines file
//! and lists them at `GET /leads`. For onboarding checks and the demo; any Standard Webhooks receiver will do.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use callflow::domain::signature::{StandardWebhookHeaders, standard_webhooks_key, verify_standard_webhook};
use serde_json::{Value, json};

/// webhook-id → record id, and the leads in arrival order.
type Seen = (HashMap<String, String>, Vec<Value>);

#[derive(Clone)]
pub struct Receiver {
    key: Arc<Vec<u8>>,
    out: Arc<PathBuf>,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    pub fn new(secret: &str, out: PathBuf) -> anyhow::Result<Self> {
        let key = standard_webhooks_key(secret).map_err(|e| anyhow::anyhow!("the signing secret: {e}"))?;
        let mut seen = (HashMap::new(), Vec::new());
        // Keep dedupe across restarts: the file is the record.
        if let Ok(text) = std::fs::read_to_string(&out) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)?;
                let (Some(webhook_id), Some(id)) = (v["webhook_id"].as_str(), v["id"].as_str()) else { continue };
                seen.0.insert(webhook_id.to_owned(), id.to_owned());
                seen.1.push(v);
            }
        }
        Ok(Self { key: Arc::new(key), out: Arc::new(out), seen: Arc::new(Mutex::new(seen)) })
    }
}

pub fn app(receiver: Receiver) -> Router {
    Router::new().route("/leads", post(accept).get(list)).with_state(receiver)
}

async fn accept(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let signed = StandardWebhookHeaders {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
    };
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = verify_standard_webhook(&[r.key.as_slice()], &signed, &body, now, 300) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": format!("signature: {e}")}))).into_response();
    }
    let Ok(document) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "the body is not JSON"}))).into_response();
    };
    let webhook_id = signed.id.unwrap_or_default().to_owned();
    let mut seen = r.seen.lock().expect("receiver lock");
    if let Some(id) = seen.0.get(&webhook_id) {
        return (StatusCode::CONFLICT, axum::Json(json!({"id": id, "error": "already received"}))).into_response();
    }
    let id = format!("lead-{}", seen.1.len() + 1);
    let record = json!({"id": id, "webhook_id": webhook_id, "received_at": chrono::Utc::now(), "document": document});
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(r.out.as_ref())
        .and_then(|mut f| writeln!(f, "{record}").and_then(|()| f.sync_data()));
    if let Err(e) = written {
        tracing::error!(error = %e, "writing the lead failed");
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "cannot store the lead"})))
            .into_response();
    }
    seen.0.insert(webhook_id, id.clone());
    seen.1.push(record);
    (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
}

async fn list(State(r): State<Receiver>) -> axum::Json<Value> {
    axum::Json(Value::Array(r.seen.lock().expect("receiver lock").1.clone()))
}
