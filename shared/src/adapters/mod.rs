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
