//! Slack notices through an incoming webhook. The credential is the webhook URL itself (it is the secret: it never
//! appears in an error or a log; `http::transport` drops URLs from transport errors). The message is Block Kit: a
//! header with the title, a section with the text, and the fields as labelled mrkdwn pairs; `text` carries the same
//! as a fallback for notifications. Text is escaped (`&`, `<`, `>`) so a caller's words cannot form links or
//! mentions.
//!
//! Answers: 200 `ok` sent; 400 `invalid_payload`/`no_text`, 403 `action_prohibited`/`invalid_token`, 404
//! `channel_not_found`/`no_service` (the webhook was removed), 410 `channel_is_archived` permanent with Slack's word
//! for it; 429 rate limited with its `Retry-After`; 5xx, 408 and timeouts retryable. A credential that is not an
//! https URL (plain http only to localhost, for tests) is refused without sending.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::http::{retry_after, transport};
use crate::domain::workflow::{Notice, NoticeAddress};
use crate::ports::{Notifier, Secret, VendorError};

/// Slack's limits: header text 150 characters, section text 3000, ten fields of 2000 per section.
const HEADER_MAX: usize = 150;
const TEXT_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const FIELDS_PER_SECTION: usize = 10;

#[derive(Clone)]
pub struct SlackNotifier {
    http: reqwest::Client,
    timeout: Duration,
}

impl SlackNotifier {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http, timeout: Duration::from_secs(10) }
    }

    /// The per-request time limit (10 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Escape the three characters Slack's mrkdwn treats as control characters.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The webhook message for a notice.
fn message(notice: &Notice) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": cut(&notice.title, HEADER_MAX), "emoji": true}
    })];
    if !notice.text.trim().is_empty() {
        blocks
            .push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&escape(&notice.text), TEXT_MAX)}}));
    }
    for chunk in notice.fields.chunks(FIELDS_PER_SECTION) {
        let fields: Vec<Value> = chunk
            .iter()
            .map(|(label, value)| {
                let text = format!("*{}*\n{}", escape(label), escape(value));
                json!({"type": "mrkdwn", "text": cut(&text, FIELD_MAX)})
            })
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    let fallback = if notice.text.trim().is_empty() {
        escape(&notice.title)
    } else {
        format!("{}: {}", escape(&notice.title), escape(&notice.text))
    };
    json!({"text": cut(&fallback, TEXT_MAX), "blocks": blocks})
}

/// The webhook URL, when it is one we may post to.
fn webhook_url(credential: &Secret) -> Result<reqwest::Url, VendorError> {
    let refuse =
        |why: &str| VendorError::Status { status: 400, message: format!("the Slack webhook credential {why}") };
    let url = reqwest::Url::parse(credential.expose().trim()).map_err(|_| refuse("is not a URL"))?;
    let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => Ok(url),
        "http" if local => Ok(url),
        _ => Err(refuse("is not an https URL")),
    }
}

/// What Slack's error words mean, for whoever reads the dead letter.
fn explain(word: &str) -> Option<&'static str> {
    Some(match word {
        "invalid_payload" => "Slack could not read the message",
        "no_text" => "the message had no text",
        "action_prohibited" => "a workspace admin restricted posting to this channel",
        "invalid_token" => "the webhook's token is no longer valid",
        "channel_not_found" => "the webhook's channel no longer exists",
        "no_service" => "the webhook was removed or its app uninstalled",
        "channel_is_archived" => "the webhook's channel is archived",
        _ => return None,
    })
}

#[async_trait]
impl Notifier for SlackNotifier {
    async fn send(&self, address: &NoticeAddress, notice: &Notice, credential: &Secret) -> Result<(), VendorError> {
        if !matches!(address, NoticeAddress::Slack { .. }) {
            return Err(VendorError::Status {
                status: 400,
                message: format!("the Slack notifier cannot send to a {} address", address.channel()),
            });
        }
        let url = webhook_url(credential)?;
        let resp = self.http.post(url).timeout(self.timeout).json(&message(notice)).send().await.map_err(transport)?;
        let status = resp.status();
        let wait = retry_after(resp.headers());
        let answer = resp.bytes().await.map_err(transport)?;
        let word: String = String::from_utf8_lossy(&answer).trim().chars().take(300).collect();
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::TOO_MANY_REQUESTS => Err(VendorError::RateLimited { retry_after: wait }),
            s => Err(VendorError::Status {
                status: s.as_u16(),
                message: match explain(&word) {
                    Some(meaning) => format!("{word}: {meaning}"),
                    None => word,
                },
            }),
        }
    }
}
