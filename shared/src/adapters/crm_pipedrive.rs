//! Pipedrive: the caller as a person (found by phone, else created) and the call as a lead on that person, with
//! the tenant's mapped custom fields (Pipedrive's 40-character field keys). Auth: the API token as `x-api-token`.
//!
//! Exactly once: Pipedrive has no unique or external-id field to create a lead on, so a lead is found again by our
//! lead key, which its title carries (`{title} [callflow {lead_key}]`). Before creating one we look twice: the
//! leads search (`GET /v1/leads/search?term={lead_key}&fields=title`), which reads Pipedrive's search index and
//! so misses leads made in the last moments (the lag is unspecified, typically seconds); then, when the caller's
//! person exists, that person's leads read from the records themselves (`GET /v1/leads?person_id=…`), which does
//! not lag. So a second push finds the first one's lead, except when the person too is that recent: a new
//! caller's push retried within the index's lag (a create whose answer we never got, retried at once), or two
//! pushes of one lead running at once (the work lease rules that out unless it runs out mid-push), makes a second
//! person and lead. Only a person's first 10,000 leads are looked through.
//!
//! The person: `GET /api/v2/persons/search?fields=phone&exact_match=true` with the E.164 phone, the first match
//! reused; a person whose number was typed in another format in Pipedrive is not matched, and one is created
//! (`POST /api/v2/persons`, our phone as `+1…`, so our own persons match next time). A lead without a readable
//! phone always gets a new person: there is nothing to match it on (its lead is still found by the leads search).
//!
//! Answers: 429 rate limited, waiting `Retry-After` or else `x-ratelimit-reset` (seconds); 5xx, 408, timeouts and
//! connection failures retryable; 400, 401, 402, 403, 404 permanent with Pipedrive's `error` and `error_info`; a
//! 2xx we cannot read (not JSON, no `success: true`, no data) malformed. The record id is the lead's (a UUID).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::http::{retry_after, transport};
use crate::domain::crm::{CrmProvider, CrmSettings, Lead};
use crate::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};

pub const DEFAULT_BASE_URL: &str = "https://api.pipedrive.com";
/// A person's leads are listed this many at a time…
const LEADS_PAGE: u64 = 500;
/// …for at most this many pages.
const MAX_LEAD_PAGES: u64 = 20;

/// One client for every tenant's company; the token, base URL and time limit come with each push.
#[derive(Clone)]
pub struct PipedriveCrm {
    http: reqwest::Client,
}

impl PipedriveCrm {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

/// The requests of one push: the company's base URL, the token and the per-request time limit.
struct Company<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: &'a Secret,
    timeout: Duration,
}

impl Company<'_> {
    /// One request, its answer classified; a 2xx answer's `data` (which may be null: nothing found).
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(Value, Value), VendorError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout)
            .header("x-api-token", self.token.expose())
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
            s if s.is_success() => {
                let mut v: Value = serde_json::from_slice(&answer)
                    .map_err(|e| VendorError::Malformed(format!("Pipedrive's answer to {path} is not JSON: {e}")))?;
                if v.get("success") != Some(&Value::Bool(true)) {
                    return Err(VendorError::Malformed(format!(
                        "Pipedrive's answer to {path} is not a success: {}",
                        error_message(&answer)
                    )));
                }
                let Some(data) = v.get_mut("data").map(Value::take) else {
                    return Err(VendorError::Malformed(format!("Pipedrive's answer to {path} has no data")));
                };
                Ok((data, v.get("additional_data").cloned().unwrap_or(Value::Null)))
            }
            s => Err(VendorError::Status { status: s.as_u16(), message: error_message(&answer) }),
        }
    }
}

/// How long a 429 asks us to wait: `Retry-After`, else `x-ratelimit-reset` (seconds until the window resets).
fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers).or_else(|| {
        let secs = headers.get("x-ratelimit-reset")?.to_str().ok()?.trim().parse::<u64>().ok()?;
        Some(Duration::from_secs(secs))
    })
}

/// Pipedrive's error (`{"success":false,"error":…,"error_info":…}`), or the start of a body that is not one.
fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (v.get("error").and_then(Value::as_str), v.get("error_info").and_then(Value::as_str)) {
        (Some(error), Some(info)) if !info.is_empty() => format!("{error} ({info})"),
        (Some(error), _) => error.to_owned(),
        _ => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A search answer's items (`data.items[].item`); none when `data` is null.
fn search_items(data: &Value, what: &str) -> Result<Vec<Value>, VendorError> {
    match data {
        Value::Null => Ok(Vec::new()),
        d => match d.get("items") {
            Some(Value::Array(items)) => Ok(items.iter().map(|i| i["item"].clone()).collect()),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(_) => Err(VendorError::Malformed(format!("Pipedrive's {what} answer has no items list"))),
        },
    }
}

/// What a lead's title carries so the next push of the same call finds it.
fn lead_marker(lead: &Lead) -> String {
    format!("[callflow {}]", lead.lead_key)
}

fn carries(lead: &Value, marker: &str) -> bool {
    lead["title"].as_str().is_some_and(|t| t.contains(marker))
}

/// `POST /api/v2/persons`: the caller, with the phone and email we have.
fn new_person(lead: &Lead) -> Value {
    let name = match (&lead.name, &lead.phone) {
        (Some(name), _) => name.clone(),
        (None, Some(phone)) => format!("Caller {phone}"),
        (None, None) => "Unknown caller".to_owned(),
    };
    let mut person = json!({"name": name});
    if let Some(phone) = &lead.phone {
        person["phones"] = json!([{"value": phone, "primary": true, "label": "mobile"}]);
    }
    if let Some(email) = &lead.email {
        person["emails"] = json!([{"value": email, "primary": true, "label": "work"}]);
    }
    person
}

/// `POST /v1/leads`: the mapped custom fields, then the title (with our marker) and the person, which no mapping
/// may replace.
fn new_lead(lead: &LeadPush, person_id: &str) -> Value {
    let mut body = lead.properties.clone();
    body.insert("title".into(), Value::String(format!("{} {}", lead.lead.title(), lead_marker(&lead.lead))));
    let person = person_id.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::String(person_id.into()));
    body.insert("person_id".into(), person);
    Value::Object(body)
}

impl PipedriveCrm {
    /// A lead carrying `marker` in the search index.
    async fn search_lead(&self, company: &Company<'_>, lead: &Lead) -> Result<Option<String>, VendorError> {
        let query =
            [("term", lead.lead_key.clone()), ("fields", "title".to_owned()), ("exact_match", "false".to_owned())];
        let (data, _) = company.send(Method::GET, "/v1/leads/search", &query, None).await?;
        let marker = lead_marker(lead);
        Ok(search_items(&data, "leads search")?.iter().find(|l| carries(l, &marker)).and_then(|l| id_of(&l["id"])))
    }

    /// The first person whose phone is exactly `phone`.
    async fn find_person(&self, company: &Company<'_>, phone: &str) -> Result<Option<String>, VendorError> {
        let query = [("term", phone.to_owned()), ("fields", "phone".to_owned()), ("exact_match", "true".to_owned())];
        let (data, _) = company.send(Method::GET, "/api/v2/persons/search", &query, None).await?;
        Ok(search_items(&data, "persons search")?.iter().find_map(|p| id_of(&p["id"])))
    }

    /// A lead of the person carrying `marker`, read from the records (no index lag).
    async fn person_lead(
        &self,
        company: &Company<'_>,
        person_id: &str,
        marker: &str,
    ) -> Result<Option<String>, VendorError> {
        let mut start = 0;
        for _ in 0..MAX_LEAD_PAGES {
            let query = [
                ("person_id", person_id.to_owned()),
                ("archived_status", "all".to_owned()),
                ("limit", LEADS_PAGE.to_string()),
                ("start", start.to_string()),
            ];
            let (data, more) = company.send(Method::GET, "/v1/leads", &query, None).await?;
            let leads = match &data {
                Value::Null => &Vec::new(),
                Value::Array(leads) => leads,
                _ => return Err(VendorError::Malformed("Pipedrive's leads list is not a list".into())),
            };
            if let Some(found) = leads.iter().find(|l| carries(l, marker)) {
                return Ok(id_of(&found["id"]));
            }
            let pagination = &more["pagination"];
            if pagination["more_items_in_collection"].as_bool() != Some(true) {
                break;
            }
            start = pagination["next_start"].as_u64().unwrap_or(start + LEADS_PAGE);
        }
        Ok(None)
    }

    async fn create_person(&self, company: &Company<'_>, lead: &Lead) -> Result<String, VendorError> {
        let (data, _) = company.send(Method::POST, "/api/v2/persons", &[], Some(&new_person(lead))).await?;
        id_of(&data["id"]).ok_or_else(|| VendorError::Malformed("Pipedrive's created person has no id".into()))
    }
}

#[async_trait]
impl CrmConnector for PipedriveCrm {
    fn provider(&self) -> CrmProvider {
        CrmProvider::Pipedrive
    }

    async fn push(&self, target: &CrmSettings, lead: &LeadPush, credential: &Secret) -> Result<CrmRecord, VendorError> {
        let company = Company {
            http: &self.http,
            base: target.url.as_deref().unwrap_or(DEFAULT_BASE_URL).trim_end_matches('/'),
            token: credential,
            timeout: Duration::from_millis(target.timeout_ms),
        };
        if let Some(id) = self.search_lead(&company, &lead.lead).await? {
            return Ok(CrmRecord { id, created: false });
        }
        let person = match &lead.lead.phone {
            Some(phone) => self.find_person(&company, phone).await?,
            None => None,
        };
        let person_id = match person {
            Some(person_id) => {
                if let Some(id) = self.person_lead(&company, &person_id, &lead_marker(&lead.lead)).await? {
                    return Ok(CrmRecord { id, created: false });
                }
                person_id
            }
            None => self.create_person(&company, &lead.lead).await?,
        };
        let (data, _) = company.send(Method::POST, "/v1/leads", &[], Some(&new_lead(lead, &person_id))).await?;
        let id =
            id_of(&data["id"]).ok_or_else(|| VendorError::Malformed("Pipedrive's created lead has no id".into()))?;
        Ok(CrmRecord { id, created: true })
    }
}
