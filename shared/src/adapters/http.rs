//! What every vendor HTTP client (reqwest) reads the same way: `Retry-After` in either of its forms, and a
//! transport failure with its cause chain but without the URL (URLs may carry signed tokens).

use std::time::Duration;

use crate::ports::VendorError;

/// The client every vendor connector shares: connection pools are per client, so one client serves every tenant.
/// Each request sets its own time limit; this one bounds connecting.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("callflow/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds (TLS roots load)")
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

/// A request that got no answer: timed out, or the connection failed (the cause chain says how).
pub fn transport(e: reqwest::Error) -> VendorError {
    if e.is_timeout() {
        return VendorError::Timeout;
    }
    VendorError::Transport(describe(e))
}

/// A transport failure with its cause chain, without the URL (a pre-signed URL carries a credential).
pub fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
