//! Salesforce: each lead is upserted as a Lead on an External ID field that holds our lead key
//! (`PATCH /services/data/{version}/sobjects/Lead/{field}/{key}`), so pushing the same call again updates the
//! record it made instead of making another.
//!
//! Authentication is OAuth 2.0 against the org's My Domain (`crm.url`): the credential is the connected app's
//! `{"client_id", "client_secret"}` (client-credentials flow) or the same plus `"refresh_token"` (refresh-token
//! grant). The access token and the `instance_url` it names are kept per (My Domain, client id) and reused by every
//! push; a 401 from the API (`INVALID_SESSION_ID`: the session expired or was revoked) drops it, fetches one more
//! and repeats the request once.
//!
//! Answers: 201 created; 200 (`created: false`) or 204 (older versions, no body) an existing record, whose id is
//! read with `GET …?fields=Id` when the body does not carry it; 300 (several Leads hold the key) permanent. A
//! duplicate rule's 400 `DUPLICATES_DETECTED` follows `crm.salesforce.on_duplicate`: `link` answers the record the
//! rule matched (delivered, not created), `allow_save` repeats the upsert once with
//! `Sforce-Duplicate-Rule-Header: allowSave=true` when the rule allows it, `reject` fails for good. Token errors
//! (400/401 `invalid_client`, `invalid_grant`) are permanent 401s with Salesforce's description. 403
//! `REQUEST_LIMIT_EXCEEDED` (the org's API quota, `Sforce-Limit-Info`) and 429 are rate limits; 503 with a
//! `Retry-After` too; other 5xx, 408 and timeouts retryable; other 4xx (`REQUIRED_FIELD_MISSING`, `INVALID_FIELD`,
//! …) permanent with `errorCode: message`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::http::{retry_after, transport};
use crate::domain::crm::{CrmProvider, CrmSettings, DuplicatePolicy};
use crate::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};

/// One client and one token cache for every tenant's org; the org, its settings and time limit come with each push.
#[derive(Clone)]
pub struct SalesforceCrm {
    http: reqwest::Client,
    /// Access tokens by (My Domain URL, client id).
    tokens: Arc<Mutex<HashMap<(String, String), Token>>>,
}

impl SalesforceCrm {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http, tokens: Arc::default() }
    }
}

#[derive(Clone)]
struct Token {
    access_token: Secret,
    /// Where the org's API answers (the token response's `instance_url`).
    instance_url: String,
}

/// The credential secret: a connected app's client id and secret, and a refresh token for that grant.
#[derive(Deserialize)]
struct AppCredential {
    client_id: String,
    client_secret: String,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl AppCredential {
    fn parse(credential: &Secret) -> Result<Self, VendorError> {
        let unusable = || VendorError::Status {
            status: 401,
            message: "the Salesforce credential is not JSON {\"client_id\", \"client_secret\"[, \"refresh_token\"]}"
                .into(),
        };
        let app: Self = serde_json::from_str(credential.expose()).map_err(|_| unusable())?;
        if app.client_id.trim().is_empty() || app.client_secret.trim().is_empty() {
            return Err(unusable());
        }
        Ok(app)
    }
}

/// What one push needs to reach the org.
struct Org<'a> {
    login_url: &'a str,
    app: AppCredential,
    timeout: Duration,
}

impl Org<'_> {
    fn key(&self) -> (String, String) {
        (self.login_url.to_owned(), self.app.client_id.clone())
    }
}

/// An API answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    instance_url: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// One entry of an API error body (an array of these; a few resources answer a single object).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    fields: Vec<String>,
    /// Salesforce spells it `duplicateResut`; accept the correct spelling too.
    #[serde(default, alias = "duplicateResut")]
    duplicate_result: Option<DuplicateResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DuplicateResult {
    #[serde(default)]
    allow_save: bool,
    #[serde(default)]
    duplicate_rule: String,
    #[serde(default)]
    match_results: Vec<MatchResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MatchResult {
    #[serde(default)]
    entity_type: String,
    #[serde(default)]
    match_records: Vec<MatchRecord>,
}

#[derive(Deserialize)]
struct MatchRecord {
    record: Value,
}

impl DuplicateResult {
    /// The record the rule matched, a Lead when it names one.
    fn matched_id(&self) -> Option<String> {
        let ids = |lead_only: bool| {
            self.match_results
                .iter()
                .filter(move |m| !lead_only || m.entity_type.eq_ignore_ascii_case("lead"))
                .flat_map(|m| &m.match_records)
                .filter_map(|r| r.record.get("Id").and_then(Value::as_str))
                .find(|id| !id.is_empty())
                .map(str::to_owned)
        };
        ids(true).or_else(|| ids(false))
    }
}

fn api_errors(body: &[u8]) -> Vec<ApiError> {
    serde_json::from_slice::<Vec<ApiError>>(body)
        .or_else(|_| serde_json::from_slice::<ApiError>(body).map(|e| vec![e]))
        .unwrap_or_default()
}

/// `errorCode: message (fields: …)` for each error, or the body itself when it is not Salesforce's shape.
fn describe(errors: &[ApiError], body: &[u8]) -> String {
    let described: Vec<String> = errors
        .iter()
        .filter(|e| !e.error_code.is_empty() || !e.message.is_empty())
        .map(|e| {
            let mut s =
                if e.error_code.is_empty() { e.message.clone() } else { format!("{}: {}", e.error_code, e.message) };
            if !e.fields.is_empty() {
                s.push_str(&format!(" (fields: {})", e.fields.join(", ")));
            }
            s
        })
        .collect();
    if described.is_empty() { String::from_utf8_lossy(body).chars().take(300).collect() } else { described.join("; ") }
}

/// A path segment with everything but unreserved characters percent-encoded (`:` in lead keys included).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn absent(body: &Map<String, Value>, field: &str) -> bool {
    match body.get(field) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    }
}

/// The Lead's fields: the mapped properties without the external id (it is in the URL), plus the two fields
/// Salesforce requires on every Lead when the mapping left them out.
fn lead_body(push: &LeadPush, external_id_field: &str) -> Map<String, Value> {
    let mut body = push.properties.clone();
    body.retain(|k, _| !k.eq_ignore_ascii_case(external_id_field));
    let name = push.lead.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
    if absent(&body, "LastName") {
        let last = push.lead.last_name.as_deref().map(str::trim).filter(|n| !n.is_empty());
        let last = last.or(name).unwrap_or("Unknown").to_owned();
        // A one-word name is the last name; as the first name too it would read "Dana Dana".
        if body.get("FirstName").and_then(Value::as_str) == Some(last.as_str()) {
            body.remove("FirstName");
        }
        body.insert("LastName".into(), Value::String(last));
    }
    if absent(&body, "Company") {
        body.insert("Company".into(), Value::String(name.unwrap_or("Unknown").to_owned()));
    }
    body
}

fn malformed(what: &str, e: impl std::fmt::Display) -> VendorError {
    VendorError::Malformed(format!("salesforce {what}: {e}"))
}

impl SalesforceCrm {
    fn cached(&self, org: &Org<'_>) -> Option<Token> {
        self.tokens.lock().expect("token cache lock").get(&org.key()).cloned()
    }

    /// Forget `stale` (unless another push already replaced it).
    fn forget(&self, org: &Org<'_>, stale: &Token) {
        let mut tokens = self.tokens.lock().expect("token cache lock");
        if tokens.get(&org.key()).is_some_and(|t| t.access_token.expose() == stale.access_token.expose()) {
            tokens.remove(&org.key());
        }
    }

    async fn token(&self, org: &Org<'_>) -> Result<Token, VendorError> {
        if let Some(token) = self.cached(org) {
            return Ok(token);
        }
        let app = &org.app;
        let mut form = vec![("client_id", app.client_id.as_str()), ("client_secret", app.client_secret.as_str())];
        match &app.refresh_token {
            Some(refresh) => form.extend([("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())]),
            None => form.push(("grant_type", "client_credentials")),
        }
        let resp = self
            .http
            .post(format!("{}/services/oauth2/token", org.login_url))
            .timeout(org.timeout)
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(transport)?;
        match status {
            s if s.is_success() => {
                let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| malformed("token answer", e))?;
                if answer.access_token.is_empty() {
                    return Err(malformed("token answer", "empty access_token"));
                }
                let instance_url =
                    answer.instance_url.filter(|u| u.starts_with("http")).unwrap_or_else(|| org.login_url.to_owned());
                let token = Token {
                    access_token: Secret::new(answer.access_token),
                    instance_url: instance_url.trim_end_matches('/').to_owned(),
                };
                self.tokens.lock().expect("token cache lock").insert(org.key(), token.clone());
                Ok(token)
            }
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED => {
                let message = match serde_json::from_slice::<TokenError>(&body) {
                    Ok(e) => match e.error_description {
                        Some(d) if !d.is_empty() => format!("token refused: {}: {d}", e.error),
                        _ => format!("token refused: {}", e.error),
                    },
                    Err(_) => format!(
                        "token refused: {}",
                        String::from_utf8_lossy(&body).chars().take(300).collect::<String>()
                    ),
                };
                Err(VendorError::Status { status: 401, message })
            }
            StatusCode::TOO_MANY_REQUESTS => Err(VendorError::RateLimited { retry_after: wait }),
            s => Err(VendorError::Status {
                status: s.as_u16(),
                message: format!("token: {}", String::from_utf8_lossy(&body).chars().take(300).collect::<String>()),
            }),
        }
    }

    /// Send an API request built for the current token; on a 401 (the session expired) fetch a new token and send
    /// it once more.
    async fn call(
        &self,
        org: &Org<'_>,
        build: impl Fn(&Token) -> reqwest::RequestBuilder,
    ) -> Result<Answer, VendorError> {
        let mut token = self.token(org).await?;
        let mut refreshed = false;
        loop {
            let resp = build(&token)
                .timeout(org.timeout)
                .bearer_auth(token.access_token.expose())
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(transport)?;
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                self.forget(org, &token);
                token = self.token(org).await?;
                refreshed = true;
                continue;
            }
            return Ok(Answer { status, headers, body });
        }
    }

    fn lead_url(token: &Token, target: &CrmSettings, key: &str) -> String {
        let sf = &target.salesforce;
        format!(
            "{}/services/data/{}/sobjects/Lead/{}/{}",
            token.instance_url,
            segment(&sf.api_version),
            segment(&sf.external_id_field),
            segment(key)
        )
    }

    /// The id of the Lead holding `key` (after an upsert that answered without one).
    async fn lead_id(&self, org: &Org<'_>, target: &CrmSettings, key: &str) -> Result<String, VendorError> {
        let answer =
            self.call(org, |t| self.http.get(Self::lead_url(t, target, key)).query(&[("fields", "Id")])).await?;
        if !answer.status.is_success() {
            return Err(error(&answer));
        }
        let v: Value = serde_json::from_slice(&answer.body).map_err(|e| malformed("lead", e))?;
        v.get("Id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| malformed("lead", "no Id"))
    }
}

/// The classification of a failed API answer (duplicates are handled before this).
fn error(answer: &Answer) -> VendorError {
    let errors = api_errors(&answer.body);
    let message = describe(&errors, &answer.body);
    let limit_exceeded = errors.iter().any(|e| e.error_code == "REQUEST_LIMIT_EXCEEDED");
    match answer.status {
        StatusCode::FORBIDDEN if limit_exceeded => {
            let usage = answer.headers.get("sforce-limit-info").and_then(|v| v.to_str().ok()).unwrap_or("unknown");
            tracing::warn!(usage, %message, "salesforce: the org's API request limit is exceeded");
            VendorError::RateLimited { retry_after: None }
        }
        StatusCode::TOO_MANY_REQUESTS => VendorError::RateLimited { retry_after: retry_after(&answer.headers) },
        StatusCode::SERVICE_UNAVAILABLE if retry_after(&answer.headers).is_some() => {
            VendorError::RateLimited { retry_after: retry_after(&answer.headers) }
        }
        StatusCode::MULTIPLE_CHOICES => VendorError::Status {
            status: 300,
            message: format!(
                "several Leads hold this external id; merge them in Salesforce: {}",
                String::from_utf8_lossy(&answer.body).chars().take(300).collect::<String>()
            ),
        },
        s => VendorError::Status { status: s.as_u16(), message },
    }
}

#[async_trait]
impl CrmConnector for SalesforceCrm {
    fn provider(&self) -> CrmProvider {
        CrmProvider::Salesforce
    }

    async fn push(&self, target: &CrmSettings, lead: &LeadPush, credential: &Secret) -> Result<CrmRecord, VendorError> {
        let login_url = target.url.as_deref().map(|u| u.trim_end_matches('/')).ok_or_else(|| VendorError::Status {
            status: 400,
            message: "the tenant's crm.url (the org's My Domain URL) is not set".into(),
        })?;
        let org = Org {
            login_url,
            app: AppCredential::parse(credential)?,
            timeout: Duration::from_millis(target.timeout_ms),
        };
        let key = lead.lead.lead_key.as_str();
        let body = serde_json::to_vec(&lead_body(lead, &target.salesforce.external_id_field))
            .map_err(|e| VendorError::Malformed(e.to_string()))?;
        let mut allow_save = false;
        loop {
            let answer = self
                .call(&org, |t| {
                    let request = self
                        .http
                        .patch(Self::lead_url(t, target, key))
                        .header("content-type", "application/json")
                        .body(body.clone());
                    if allow_save { request.header("Sforce-Duplicate-Rule-Header", "allowSave=true") } else { request }
                })
                .await?;
            match answer.status {
                StatusCode::CREATED | StatusCode::OK => {
                    let v: Value = serde_json::from_slice(&answer.body).map_err(|e| malformed("upsert answer", e))?;
                    let created =
                        v.get("created").and_then(Value::as_bool).unwrap_or(answer.status == StatusCode::CREATED);
                    let id = match v.get("id").and_then(Value::as_str).filter(|id| !id.is_empty()) {
                        Some(id) => id.to_owned(),
                        None if answer.status == StatusCode::CREATED => {
                            return Err(malformed("upsert answer", "no record id"));
                        }
                        None => self.lead_id(&org, target, key).await?,
                    };
                    return Ok(CrmRecord { id, created });
                }
                StatusCode::NO_CONTENT => {
                    return Ok(CrmRecord { id: self.lead_id(&org, target, key).await?, created: false });
                }
                StatusCode::BAD_REQUEST => {
                    let errors = api_errors(&answer.body);
                    let Some((dup, message)) = errors
                        .iter()
                        .find(|e| e.error_code == "DUPLICATES_DETECTED")
                        .map(|e| (e.duplicate_result.as_ref(), e.message.as_str()))
                    else {
                        return Err(error(&answer));
                    };
                    let rule = dup.map(|d| d.duplicate_rule.as_str()).filter(|r| !r.is_empty()).unwrap_or("(unnamed)");
                    let refuse = |why: &str| VendorError::Status {
                        status: 400,
                        message: format!("DUPLICATES_DETECTED: {message} (duplicate rule {rule}{why})"),
                    };
                    match target.salesforce.on_duplicate {
                        DuplicatePolicy::Link => {
                            let id = dup.and_then(DuplicateResult::matched_id);
                            return id
                                .map(|id| CrmRecord { id, created: false })
                                .ok_or_else(|| refuse("; it named no matching record to link"));
                        }
                        DuplicatePolicy::AllowSave if allow_save => {
                            return Err(refuse("; still refused with allowSave=true"));
                        }
                        DuplicatePolicy::AllowSave if dup.is_some_and(|d| d.allow_save) => allow_save = true,
                        DuplicatePolicy::AllowSave => return Err(refuse("; the rule does not allow saving")),
                        DuplicatePolicy::Reject => return Err(refuse("")),
                    }
                }
                _ => return Err(error(&answer)),
            }
        }
    }
}
