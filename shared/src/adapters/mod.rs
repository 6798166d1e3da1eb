//! Adapters: one module per backend. The embedded family (SQLite, a directory, local files) needs no servers.

pub mod bigquery;
pub mod callrail;
pub mod crm_hubspot;
pub mod crm_pipedrive;
pub mod crm_salesforce;
pub mod crm_webhook;
pub mod dir_objects;
pub mod gcs;
pub mod gemini;
pub mod http;
pub mod local_router;
pub mod local_secrets;
pub mod notify_sendgrid;
pub mod notify_slack;
pub mod pocketsphinx;
pub mod pubsub;
pub mod pubsub_dead_letters;
pub mod secret_manager;
pub mod spanner;
pub mod speech;
pub mod sqlite;
pub mod storage_watcher;
pub mod tenants_file;

/// The base URL of the emulator an environment variable names (`host:port` or a URL, the emulators' own
/// convention), or `None` when it is unset or empty: then the adapter talks to Google Cloud.
pub fn emulator_url(var: &str) -> Option<String> {
    let host = std::env::var(var).ok().filter(|h| !h.is_empty())?;
    let url = if host.contains("://") { host } else { format!("http://{host}") };
    Some(url.trim_end_matches('/').to_owned())
}

/// One reading of the official Google clients' errors for every adapter built on them (Speech-to-Text, Vertex
/// AI): 429 → rate limited (with Retry-After when sent), 404 → not found, other statuses kept, deadline →
/// timeout, connection trouble → transport (retryable). The HTTP status is read first: an error body that is not
/// Google's JSON (a proxy's HTML 502, an empty 429) arrives as a transport-kind error that still has its status.
pub fn google_vendor_error(e: &google_cloud_gax::error::Error) -> crate::ports::VendorError {
    use crate::ports::VendorError;
    use google_cloud_gax::error::rpc::Code;
    if e.is_timeout() {
        return VendorError::Timeout;
    }
    let status = e.http_status_code().or_else(|| {
        // A failed long-running operation carries a gRPC status rather than an HTTP one.
        e.status().map(|s| match s.code {
            Code::ResourceExhausted => 429,
            Code::Unavailable | Code::Internal => 503,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            _ => 400,
        })
    });
    match status {
        Some(429) => {
            let retry_after = e
                .http_headers()
                .and_then(|h| h.get("retry-after"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            VendorError::RateLimited { retry_after }
        }
        Some(404) => VendorError::NotFound,
        Some(status) => VendorError::Status {
            status,
            message: e.status().map(|s| s.message.clone()).unwrap_or_else(|| e.to_string()),
        },
        // A refused connection is `is_connect`; a connection broken mid-answer `is_io`.
        None if e.is_connect() || e.is_io() || e.is_transport() => VendorError::Transport(e.to_string()),
        None => VendorError::Malformed(e.to_string()),
    }
}
