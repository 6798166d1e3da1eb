//! Email notices through SendGrid's v3 Mail Send (`POST {base}/v3/mail/send`, `Authorization: Bearer <api key>`):
//! one personalization with every recipient, the notice's title as the subject, and the body twice — plain text,
//! then HTML with every value escaped (a caller's words are data, never markup).
//!
//! Answers: 202 accepted (any 2xx); 400 (validation), 401 (bad key), 403 (the key lacks `mail.send`, or the sender is
//! not verified), 413 (too large) permanent with SendGrid's `errors[].message`s joined; 429 rate limited, waiting as
//! `Retry-After` says or until `X-RateLimit-Reset` (epoch seconds); 5xx, 408 and timeouts retryable.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{retry_after, transport};
use crate::domain::workflow::{Notice, NoticeAddress};
use crate::ports::{Notifier, Secret, VendorError};

pub const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";

#[derive(Clone)]
pub struct SendGridNotifier {
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

impl SendGridNotifier {
    /// `base_url` is `DEFAULT_BASE_URL` in production (`https://api.eu.sendgrid.com` for EU-pinned accounts).
    pub fn new(http: reqwest::Client, base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { http, base_url, timeout: Duration::from_secs(10) }
    }

    /// The per-request time limit (10 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn plain(notice: &Notice) -> String {
    let mut out = notice.text.clone();
    if !notice.fields.is_empty() {
        out.push_str("\n\n");
        for (label, value) in &notice.fields {
            out.push_str(&format!("{label}: {value}\n"));
        }
    }
    out
}

fn html(notice: &Notice) -> String {
    let mut out = format!("<h2>{}</h2>\n", html_escape(&notice.title));
    if !notice.text.trim().is_empty() {
        out.push_str(&format!("<p>{}</p>\n", html_escape(&notice.text).replace('\n', "<br>")));
    }
    if !notice.fields.is_empty() {
        out.push_str("<table>\n");
        for (label, value) in &notice.fields {
            out.push_str(&format!(
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
                html_escape(label),
                html_escape(value)
            ));
        }
        out.push_str("</table>\n");
    }
    out
}

/// The Mail Send request for a notice.
fn mail(to: &[String], from: &str, notice: &Notice) -> Value {
    let to: Vec<Value> = to.iter().map(|email| json!({"email": email.trim()})).collect();
    // A subject is one line.
    let subject = notice.title.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut plain = plain(notice);
    if plain.trim().is_empty() {
        // SendGrid refuses empty content values.
        plain = subject.clone();
    }
    json!({
        "personalizations": [{"to": to}],
        "from": {"email": from.trim()},
        "subject": subject,
        "content": [
            {"type": "text/plain", "value": plain},
            {"type": "text/html", "value": html(notice)},
        ],
    })
}

#[derive(Deserialize)]
struct Errors {
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// SendGrid's `errors[]` as `field: message; …`, or the body itself when it is not that shape.
fn describe(body: &[u8]) -> String {
    let described = serde_json::from_slice::<Errors>(body).ok().map(|e| {
        e.errors
            .into_iter()
            .filter_map(|e| match (e.field.filter(|f| !f.is_empty()), e.message) {
                (Some(field), Some(message)) => Some(format!("{field}: {message}")),
                (None, Some(message)) => Some(message),
                (Some(field), None) => Some(field),
                (None, None) => None,
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    match described {
        Some(s) if !s.is_empty() => s,
        _ => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

/// `Retry-After`, else the wait until `X-RateLimit-Reset` (epoch seconds).
fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers).or_else(|| {
        let reset: i64 = headers.get("x-ratelimit-reset")?.to_str().ok()?.trim().parse().ok()?;
        let secs = reset - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(secs.max(0) as u64))
    })
}

#[async_trait]
impl Notifier for SendGridNotifier {
    async fn send(&self, address: &NoticeAddress, notice: &Notice, credential: &Secret) -> Result<(), VendorError> {
        let NoticeAddress::Email { to, from, .. } = address else {
            return Err(VendorError::Status {
                status: 400,
                message: format!("the SendGrid notifier cannot send to a {} address", address.channel()),
            });
        };
        if to.iter().all(|t| t.trim().is_empty()) || from.trim().is_empty() {
            return Err(VendorError::Status {
                status: 400,
                message: "the email notice has no recipient or sender".into(),
            });
        }
        let to: Vec<String> = to.iter().filter(|t| !t.trim().is_empty()).cloned().collect();
        let resp = self
            .http
            .post(format!("{}/v3/mail/send", self.base_url))
            .timeout(self.timeout)
            .bearer_auth(credential.expose().trim())
            .json(&mail(&to, from, notice))
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let wait = rate_limit_wait(resp.headers());
        let answer = resp.bytes().await.map_err(transport)?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::TOO_MANY_REQUESTS => Err(VendorError::RateLimited { retry_after: wait }),
            s => Err(VendorError::Status { status: s.as_u16(), message: describe(&answer) }),
        }
    }
}
