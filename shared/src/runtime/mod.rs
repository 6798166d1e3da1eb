//! The function runtime every callflow function is built on: configuration from the environment, JSON logs in
//! Cloud Logging's format with trace correlation, error mapping, body limits, CloudEvents intake in all three
//! shapes, `/healthz`, and a server that drains in-flight requests on SIGTERM.

pub mod analytics_outbox;
pub mod body;
pub mod cloudevent;
pub mod config;
pub mod embedded;
pub mod error;
pub mod google;
pub mod lead_delivery;
pub mod notify_outbox;
pub mod publish_outbox;
pub mod serve;
pub mod storage_stage;
pub mod telemetry;

pub use error::ApiError;
