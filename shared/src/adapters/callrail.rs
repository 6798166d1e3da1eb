//! CallRail API v3 client: `GET /v3/a/{account}/calls/{call}/recording.json` → `{"url": …}` → the MP3.
//! Authorization is `Token token="KEY"`. Errors are classified once here (429/5xx/timeouts retryable; 404 and
//! malformed answers permanent).

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde::Deserialize;

use crate::domain::CallId;
use crate::ports::{CallRailClient, RecordingDownload, Secret, VendorError};

pub const DEFAULT_BASE_URL: &str = "https://api.callrail.com";

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
        return Err(VendorError::RateLimited { retry_after: retry_after(&resp) });
    }
    let body = resp.text().await.unwrap_or_default();
    Err(VendorError::Status { status: status.as_u16(), message: body.chars().take(200).collect() })
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
}
