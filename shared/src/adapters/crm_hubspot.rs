//! HubSpot: the lead as a contact upserted on a unique contact property (`crm.hubspot.id_property`), and the call
//! logged on that contact as a call engagement (`crm.hubspot.log_call`). Auth: a private app token as `Bearer`.
//!
//! Exactly once, the contact: `POST /crm/v3/objects/contacts/batch/upsert` with `idProperty` creates or updates in
//! one step at HubSpot, so a second push of the same lead (a redelivery, or a retry after we crashed or lost the
//! answer) updates the contact the first one made (`new: false` → `created: false`). Its key is the caller's E.164
//! phone (`id_from = "phone"`: one contact per caller, each call logged on it) or our lead key (`"call_id"`: one
//! contact per call). A lead whose phone could not be read is keyed on its lead key even under `"phone"`: it gets
//! a contact of its own, since nothing matches it to the caller's.
//!
//! Exactly once, the call: HubSpot documents unique-value properties (what `idProperty` needs) for contacts,
//! companies, deals, tickets and custom objects, not for calls, so the engagement cannot be upserted. Instead each
//! call we log carries `[callflow lead {lead_key}]` in its body, and before logging on a contact that was not new,
//! we look for it among the contact's calls: `GET /crm/v4/objects/contacts/{id}/associations/calls`, then those
//! calls by id (`POST /crm/v3/objects/calls/batch/read`). Both read the records, not the search index (which lags
//! writes), and a call is created with its association in one request, so a call HubSpot has committed is found.
//! What is left: a create whose answer we never got (our time limit cut it) and that HubSpot commits only after
//! the next push has looked logs the call twice; so do two pushes of one lead running at once (the work lease
//! rules that out unless it runs out mid-push). Deleting the marker from a call's body in HubSpot makes the next
//! redelivery log the call again. Only a contact's first 25,000 associated calls are looked through.
//!
//! Answers: 429 rate limited, waiting `Retry-After`, or when that is missing and the window is used up
//! (`X-HubSpot-RateLimit-Remaining` or `-Secondly-Remaining` at 0) the window's length
//! (`X-HubSpot-RateLimit-Interval-Milliseconds`, a second); 5xx, 408, timeouts and connection failures retryable;
//! 400, 401, 403 permanent with HubSpot's `message` and `category`; a batch answer (200 or 207) whose input failed
//! permanent 400 with the error's message (e.g. `PROPERTY_DOESNT_EXIST`, `INVALID_EMAIL`); a 2xx we cannot read
//! malformed. The record id is the contact's.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::http::{retry_after, transport};
use crate::domain::crm::{CrmProvider, CrmSettings, HubSpotIdFrom, Lead};
use crate::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};

pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";
/// HubSpot-defined association type: call → contact.
const CALL_TO_CONTACT: u32 = 194;
/// Association pages of 500 looked through for an already logged call.
const MAX_ASSOCIATION_PAGES: usize = 50;

/// One client for every tenant's portal; the token, base URL and time limit come with each push.
#[derive(Clone)]
pub struct HubSpotCrm {
    http: reqwest::Client,
}

impl HubSpotCrm {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

/// The requests of one push: the portal's base URL, the token and the per-request time limit.
struct Portal<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: &'a Secret,
    timeout: Duration,
}

impl Portal<'_> {
    /// One request, its answer classified; a 2xx body as JSON.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, VendorError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout)
            .bearer_auth(self.token.expose())
            .header("accept", "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let resp = request.send().await.map_err(transport)?;
        let status = resp.status();
        let wait = rate_limit_wait(resp.headers());
        let answer = resp.bytes().await.map_err(transport)?;
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(VendorError::RateLimited { retry_after: wait }),
            s if s.is_success() => serde_json::from_slice(&answer)
                .map_err(|e| VendorError::Malformed(format!("HubSpot's answer is not JSON: {e}"))),
            s => Err(VendorError::Status { status: s.as_u16(), message: error_message(&answer) }),
        }
    }
}

/// How long a 429 asks us to wait: `Retry-After` when sent, else the rate-limit window when it is used up.
fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    retry_after(headers).or_else(|| {
        if number("x-hubspot-ratelimit-remaining") == Some(0) {
            number("x-hubspot-ratelimit-interval-milliseconds").map(Duration::from_millis)
        } else if number("x-hubspot-ratelimit-secondly-remaining") == Some(0) {
            Some(Duration::from_secs(1))
        } else {
            None
        }
    })
}

/// HubSpot's error (`{"status":"error","message":…,"category":…}`), or the start of a body that is not one.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("message").and_then(Value::as_str).is_some() => described(&v),
        _ => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

/// An error object's message, after its category when it has one.
fn described(error: &Value) -> String {
    let message = error.get("message").and_then(Value::as_str).unwrap_or("(no message)");
    match error.get("category").and_then(Value::as_str) {
        Some(category) => format!("{category}: {message}"),
        None => message.to_owned(),
    }
}

/// HubSpot ids come as strings, association targets as numbers.
fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first result of a one-input batch answer, or the error HubSpot reported for the input.
fn batch_result(answer: &Value, what: &str) -> Result<Value, VendorError> {
    if let Some(first) = answer.get("results").and_then(Value::as_array).and_then(|r| r.first()) {
        return Ok(first.clone());
    }
    match answer.get("errors").and_then(Value::as_array).and_then(|e| e.first()) {
        Some(error) => Err(VendorError::Status { status: 400, message: described(error) }),
        None => Err(VendorError::Malformed(format!("HubSpot's {what} answer has neither results nor errors"))),
    }
}

/// The value the contact is upserted on (see the module's doc for the phone-less fallback).
fn contact_key(target: &CrmSettings, lead: &Lead) -> String {
    match (target.hubspot.id_from, &lead.phone) {
        (HubSpotIdFrom::Phone, Some(phone)) => phone.clone(),
        _ => lead.lead_key.clone(),
    }
}

/// What a logged call carries to be recognised by the next push of its lead.
fn call_marker(lead: &Lead) -> String {
    format!("[callflow lead {}]", lead.lead_key)
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The call's notes as HubSpot shows them (rich text): summary, score, project, tags, the review flag, our marker.
fn call_body(lead: &Lead) -> String {
    let mut lines = vec![
        lead.summary.clone(),
        format!(
            "Lead score {} ({}); project: {}; intent: {}; urgency: {}; budget: {}",
            lead.lead_score, lead.score_band, lead.project_type, lead.intent, lead.urgency, lead.budget
        ),
    ];
    if !lead.tags.is_empty() {
        lines.push(format!("Tags: {}", lead.tags.join(", ")));
    }
    if lead.review {
        lines.push("Flagged for review: look at this lead before acting on it.".into());
    }
    if let Some(when) = &lead.callback_time {
        lines.push(format!("Callback: {when}"));
    }
    lines.push(call_marker(lead));
    lines.iter().map(|l| escape_html(l)).collect::<Vec<_>>().join("<br>")
}

/// When the call started, in UTC with milliseconds (HubSpot's format), or now when the lead does not say.
fn call_timestamp(lead: &Lead) -> String {
    let started = lead.started_at.as_deref().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    let at = started.map(|t| t.with_timezone(&chrono::Utc)).unwrap_or_else(chrono::Utc::now);
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `POST /crm/v3/objects/calls`: the call engagement, associated with the contact.
fn call_engagement(lead: &Lead, contact_id: &str) -> Value {
    let mut properties = Map::new();
    let mut set = |name: &str, value: String| {
        properties.insert(name.to_owned(), Value::String(value));
    };
    set("hs_timestamp", call_timestamp(lead));
    set("hs_call_title", lead.title());
    set("hs_call_body", call_body(lead));
    set("hs_call_status", "COMPLETED".into());
    set("hs_call_direction", "INBOUND".into());
    if let Some(secs) = lead.duration_secs {
        set("hs_call_duration", (u64::from(secs) * 1000).to_string());
    }
    if let Some(phone) = &lead.phone {
        set("hs_call_from_number", phone.clone());
    }
    if let Some(url) = &lead.recording_url {
        set("hs_call_recording_url", url.clone());
    }
    json!({
        "properties": properties,
        "associations": [{
            "to": {"id": contact_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": CALL_TO_CONTACT}],
        }],
    })
}

/// Marks an error from logging the call, so a person reading it knows the contact itself was written.
fn logging_call(e: VendorError) -> VendorError {
    match e {
        VendorError::Status { status, message } => {
            VendorError::Status { status, message: format!("logging the call on the contact: {message}") }
        }
        other => other,
    }
}

impl HubSpotCrm {
    /// The contact's id and whether this push created it.
    async fn upsert_contact(
        &self,
        portal: &Portal<'_>,
        target: &CrmSettings,
        lead: &LeadPush,
    ) -> Result<(String, bool), VendorError> {
        let id_property = &target.hubspot.id_property;
        let key = contact_key(target, &lead.lead);
        let mut properties = lead.properties.clone();
        properties.insert(id_property.clone(), Value::String(key.clone()));
        let body = json!({"inputs": [{"idProperty": id_property, "id": key, "properties": properties}]});
        let answer = portal.send(Method::POST, "/crm/v3/objects/contacts/batch/upsert", &[], Some(&body)).await?;
        let contact = batch_result(&answer, "contact upsert")?;
        let id = id_of(&contact["id"])
            .ok_or_else(|| VendorError::Malformed("HubSpot's upserted contact has no id".into()))?;
        // Without `new` we do not claim to have created it.
        Ok((id, contact.get("new").and_then(Value::as_bool).unwrap_or(false)))
    }

    /// The id of a call on the contact that carries `marker`, newest first.
    async fn find_logged_call(
        &self,
        portal: &Portal<'_>,
        contact_id: &str,
        marker: &str,
    ) -> Result<Option<String>, VendorError> {
        let path = format!("/crm/v4/objects/contacts/{contact_id}/associations/calls");
        let mut calls: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_ASSOCIATION_PAGES {
            let mut query = vec![("limit", "500".to_owned())];
            if let Some(after) = after.take() {
                query.push(("after", after));
            }
            let page = portal.send(Method::GET, &path, &query, None).await?;
            let results = page["results"]
                .as_array()
                .ok_or_else(|| VendorError::Malformed("HubSpot's associations answer has no results".into()))?;
            calls.extend(results.iter().filter_map(|r| id_of(&r["toObjectId"])));
            after = page["paging"]["next"]["after"].as_str().map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        // Ids grow with time: the newest calls, the likeliest to be ours, are read first.
        calls.sort_by_key(|id| std::cmp::Reverse(id.parse::<u64>().unwrap_or(0)));
        for chunk in calls.chunks(100) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let body = json!({"properties": ["hs_call_body"], "inputs": inputs});
            let answer = portal.send(Method::POST, "/crm/v3/objects/calls/batch/read", &[], Some(&body)).await?;
            let results = answer["results"]
                .as_array()
                .ok_or_else(|| VendorError::Malformed("HubSpot's calls batch read has no results".into()))?;
            let ours = results
                .iter()
                .find(|call| call["properties"]["hs_call_body"].as_str().is_some_and(|b| b.contains(marker)));
            if let Some(call) = ours {
                return Ok(id_of(&call["id"]));
            }
        }
        Ok(None)
    }

    /// Log the call on the contact unless an earlier push did; the call's id.
    async fn log_call(
        &self,
        portal: &Portal<'_>,
        lead: &Lead,
        contact_id: &str,
        contact_is_new: bool,
    ) -> Result<String, VendorError> {
        // A contact made by this push has no calls yet, ours included.
        if !contact_is_new && let Some(id) = self.find_logged_call(portal, contact_id, &call_marker(lead)).await? {
            return Ok(id);
        }
        let body = call_engagement(lead, contact_id);
        let answer = portal.send(Method::POST, "/crm/v3/objects/calls", &[], Some(&body)).await?;
        id_of(&answer["id"]).ok_or_else(|| VendorError::Malformed("HubSpot's created call has no id".into()))
    }
}

#[async_trait]
impl CrmConnector for HubSpotCrm {
    fn provider(&self) -> CrmProvider {
        CrmProvider::Hubspot
    }

    async fn push(&self, target: &CrmSettings, lead: &LeadPush, credential: &Secret) -> Result<CrmRecord, VendorError> {
        let portal = Portal {
            http: &self.http,
            base: target.url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/'),
            token: credential,
            timeout: Duration::from_millis(target.timeout_ms),
        };
        let (contact_id, created) = self.upsert_contact(&portal, target, lead).await?;
        if target.hubspot.log_call {
            let call_id = self.log_call(&portal, &lead.lead, &contact_id, created).await.map_err(logging_call)?;
            tracing::debug!(contact = %contact_id, call = %call_id, "hubspot: call logged on the contact");
        }
        Ok(CrmRecord { id: contact_id, created })
    }
}
