//! The custom-webhook "CRM": the lead as JSON, POSTed to the tenant's URL and signed with Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), so a tenant can receive
//! leads anywhere and verify them with any Standard Webhooks library. `webhook-id` is the lead's idempotency key:
//! a redelivered push carries the same id, which receivers use to drop duplicates (the spec asks them to).
//!
//! Answers: 2xx delivered (the record id from the body's `id` when it has one, else the webhook id); 409 means the
//! receiver already has it (delivered, not created); 429 rate limited with its `Retry-After`; 5xx, 408 and
//! timeouts retryable; other 4xx (401, 403, 400 validation) permanent with the receiver's message.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::Value;

use super::http::{retry_after, transport};
use crate::domain::signature::{sign_standard_webhook, standard_webhooks_key};
use crate::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};

pub const PROVIDER: &str = "webhook";

#[derive(Clone)]
pub struct WebhookCrm {
    http: reqwest::Client,
    url: String,
}

impl WebhookCrm {
    pub fn new(url: impl Into<String>, timeout: Duration) -> anyhow::Result<Self> {
        let url = url.into();
        anyhow::ensure!(
            url.starts_with("https://") || url.starts_with("http://"),
            "webhook URL {url:?} is not http(s)"
        );
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("callflow/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, url })
    }
}

fn record_id(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match v.get("id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl CrmConnector for WebhookCrm {
    fn provider(&self) -> &'static str {
        PROVIDER
    }

    async fn push(&self, lead: &LeadPush, credential: &Secret) -> Result<CrmRecord, VendorError> {
        let key = standard_webhooks_key(credential.expose()).map_err(|e| VendorError::Status {
            status: 401,
            message: format!("the signing secret is unusable: {e}"),
        })?;
        let body = serde_json::to_vec(&lead.document).map_err(|e| VendorError::Malformed(e.to_string()))?;
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign_standard_webhook(&key, &lead.idempotency_key, timestamp, &body);
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &lead.idempotency_key)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let answer = resp.bytes().await.map_err(transport)?;
        let id = || record_id(&answer).unwrap_or_else(|| lead.idempotency_key.clone());
        match status {
            s if s.is_success() => Ok(CrmRecord { id: id(), created: true }),
            StatusCode::CONFLICT => Ok(CrmRecord { id: id(), created: false }),
            StatusCode::TOO_MANY_REQUESTS => Err(VendorError::RateLimited { retry_after: wait }),
            s => Err(VendorError::Status {
                status: s.as_u16(),
                message: String::from_utf8_lossy(&answer).chars().take(300).collect(),
            }),
        }
    }
}
