//! Adapters: one module per backend. The embedded family (SQLite, a directory, local files) needs no servers.

pub mod bigquery;
pub mod callrail;
pub mod dir_objects;
pub mod gcs;
pub mod local_router;
pub mod local_secrets;
pub mod pocketsphinx;
pub mod pubsub;
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
