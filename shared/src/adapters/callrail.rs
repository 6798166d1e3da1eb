//! CallRail API v3 client: `GET /v3/a/{account}/calls/{call}/recording.json` → `{"url": …}` → the MP3, and
//! `GET /v3/a/{account}/calls.json` (Listing All Calls) for reconciling calls whose webhook never arrived.
//! Authorization is `Token token="KEY"`. Errors are classified once here (429/5xx/408/timeouts retryable; 401/403
//! with CallRail's message, 404 and malformed answers permanent).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::domain::CallId;
use crate::ports::{CallListQuery, CallPage, CallRailClient, RecordingDownload, Secret, VendorError};

pub const DEFAULT_BASE_URL: &str = "https://api.callrail.com";

/// Listing All Calls serves at most this many calls per page.
pub const MAX_PER_PAGE: u32 = 250;

/// The call fields the intake reads (`CallRailWebhook::parse`, `call_id()`, `company_ids()`, `lead_details()`)
/// that Listing All Calls does not return unless asked for with `fields=`. Its default set already has `id`
/// (`CAL…`), answered, voicemail, direction, duration, start_time, customer_name, customer_phone_number,
/// customer_city, customer_state, customer_country, tracking_phone_number, recording and recording_duration.
/// `company_id` (`COM…`) is requested because the intake refuses a call without a company (it decides the
/// tenant); the rest because the lead carries them.
pub const LIST_FIELDS: &[&str] = &[
    "company_id",
    "call_type",
    "source_name",
    "tags",
    "lead_status",
    "transcription",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "landing_page_url",
    "referring_url",
];

#[derive(Clone)]
pub struct HttpCallRail {
    http: reqwest::Client,
    base_url: String,
    api_timeout: Duration,
    download_timeout: Duration,
}

#[derive(Deserialize)]
struct RecordingJson {
    url: Option<String>,
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    super::http::retry_after(resp.headers())
}

/// The error without its URL: the audio URL is pre-signed and must not reach a log.
fn transport(e: reqwest::Error) -> VendorError {
    super::http::transport(e)
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, VendorError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(VendorError::NotFound);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // CallRail documents no Retry-After (1,000 requests/hour, 10,000/day per account): None lets the caller
        // back off on its own schedule.
        return Err(VendorError::RateLimited { retry_after: retry_after(&resp) });
    }
    let body = resp.bytes().await.unwrap_or_default();
    Err(VendorError::Status { status: status.as_u16(), message: error_message(&body) })
}

/// CallRail's error (`{"error": "…"}`, or `{"errors": […]}`), or the start of a body that is not one.
fn error_message(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let found = v.as_ref().and_then(|v| {
        v.get("error").and_then(text).or_else(|| {
            let errors: Vec<String> = v.get("errors")?.as_array()?.iter().filter_map(text).collect();
            (!errors.is_empty()).then(|| errors.join("; "))
        })
    });
    found.unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// The window as CallRail's `start_date`/`end_date` (ISO 8601, UTC, whole seconds), widened outwards to whole
/// seconds and with `end` sent as is although CallRail may include it: a call at a window's edge may be listed by
/// both neighbours (the intake dedupes it), but never by neither.
fn date_window(start: DateTime<Utc>, end: DateTime<Utc>) -> (String, String) {
    let floor = |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t);
    let ceil = |t: DateTime<Utc>| {
        if t.timestamp_subsec_nanos() == 0 { t } else { DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap_or(t) }
    };
    let iso = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    (iso(floor(start)), iso(ceil(end)))
}

/// A page of Listing All Calls: `{"page", "per_page", "total_pages", "total_records", "calls": [...]}`. The calls
/// are kept as sent: each is judged by the intake (the webhook's parser), so one odd call does not fail the page.
fn call_page(body: &[u8]) -> Result<CallPage, VendorError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| VendorError::Malformed(format!("calls.json is not JSON: {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(VendorError::Malformed("calls.json is not a JSON object".into()));
    };
    let number = |o: &serde_json::Map<String, Value>, key: &str| {
        o.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| VendorError::Malformed(format!("calls.json has no `{key}` number")))
    };
    let page = number(&o, "page")?;
    let total_pages = number(&o, "total_pages")?;
    let total_records = number(&o, "total_records")?;
    let calls = match o.remove("calls") {
        Some(Value::Array(calls)) => calls,
        _ => return Err(VendorError::Malformed("calls.json has no `calls` array".into())),
    };
    let small = |n: u64, key: &str| {
        u32::try_from(n).map_err(|_| VendorError::Malformed(format!("calls.json `{key}` is out of range: {n}")))
    };
    Ok(CallPage { calls, page: small(page, "page")?, total_pages: small(total_pages, "total_pages")?, total_records })
}

impl HttpCallRail {
    pub fn new(base_url: impl Into<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("callflow/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_timeout: Duration::from_secs(15),
            download_timeout: Duration::from_secs(300),
        })
    }

    pub fn with_timeouts(mut self, api: Duration, download: Duration) -> Self {
        self.api_timeout = api;
        self.download_timeout = download;
        self
    }
}

#[async_trait]
impl CallRailClient for HttpCallRail {
    async fn recording(
        &self,
        account_id: &str,
        call_id: &CallId,
        api_key: &Secret,
    ) -> Result<RecordingDownload, VendorError> {
        let url = format!("{}/v3/a/{account_id}/calls/{call_id}/recording.json", self.base_url);
        let resp = self
            .http
            .get(&url)
            .header("Authorization", format!("Token token=\"{}\"", api_key.expose()))
            .timeout(self.api_timeout)
            .send()
            .await
            .map_err(transport)?;
        let resp = check(resp).await?;
        let bytes = resp.bytes().await.map_err(transport)?;
        let meta: RecordingJson =
            serde_json::from_slice(&bytes).map_err(|e| VendorError::Malformed(format!("recording.json: {e}")))?;
        let audio_url = meta
            .url
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| VendorError::Malformed("recording.json has no usable url".into()))?;
        // The audio URL is a pre-signed link: no API key goes with it.
        let audio = self.http.get(&audio_url).timeout(self.download_timeout).send().await.map_err(transport)?;
        let audio = check(audio).await?;
        let content_type =
            audio.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_length = audio.content_length();
        let body = audio.bytes_stream().map_err(|e| {
            let kind = if e.is_timeout() { std::io::ErrorKind::TimedOut } else { std::io::ErrorKind::Other };
            std::io::Error::new(kind, e.without_url().to_string())
        });
        Ok(RecordingDownload { content_type, content_length, body: Box::pin(body) })
    }

    async fn list_calls(
        &self,
        account_id: &str,
        api_key: &Secret,
        query: &CallListQuery,
    ) -> Result<CallPage, VendorError> {
        let url = format!("{}/v3/a/{account_id}/calls.json", self.base_url);
        let (start_date, end_date) = date_window(query.start, query.end);
        let page = query.page.max(1).to_string();
        let per_page = query.per_page.clamp(1, MAX_PER_PAGE).to_string();
        let fields = LIST_FIELDS.join(",");
        // Offset pagination (`page`), which reports `total_pages`/`total_records`; CallRail also offers relative
        // pagination for this endpoint, which has no totals.
        let params: [(&str, &str); 7] = [
            ("start_date", &start_date),
            ("end_date", &end_date),
            ("page", &page),
            ("per_page", &per_page),
            ("fields", &fields),
            ("sort", "start_time"),
            ("order", "asc"),
        ];
        let resp = self
            .http
            .get(&url)
            .query(&params)
            .header("Authorization", format!("Token token=\"{}\"", api_key.expose()))
            .timeout(self.api_timeout)
            .send()
            .await
            .map_err(transport)?;
        let resp = check(resp).await?;
        let body = resp.bytes().await.map_err(transport)?;
        call_page(&body)
    }
}
