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
use crate::domain::crm::{CrmProvider, CrmSettings};
use crate::domain::signature::{sign_standard_webhook, standard_webhooks_key};
use crate::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};

/// One client for every tenant's receiver; the URL and time limit come with each push.
#[derive(Clone)]
pub struct WebhookCrm {
    http: reqwest::Client,
}

impl WebhookCrm {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
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
    fn provider(&self) -> CrmProvider {
        CrmProvider::Webhook
    }

    async fn push(&self, target: &CrmSettings, lead: &LeadPush, credential: &Secret) -> Result<CrmRecord, VendorError> {
        let url = target.url.as_deref().ok_or_else(|| VendorError::Status {
            status: 400,
            message: "the tenant's crm.url (the receiving URL) is not set".into(),
        })?;
        let key = standard_webhooks_key(credential.expose()).map_err(|e| VendorError::Status {
            status: 401,
            message: format!("the signing secret is unusable: {e}"),
        })?;
        let body = serde_json::to_vec(&lead.document).map_err(|e| VendorError::Malformed(e.to_string()))?;
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign_standard_webhook(&key, &lead.idempotency_key, timestamp, &body);
        let resp = self
            .http
            .post(url)
            .timeout(Duration::from_millis(target.timeout_ms))
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
