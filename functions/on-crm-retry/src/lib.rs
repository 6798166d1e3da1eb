//! on-crm-retry: a `crm-retry` message is one more push of a lead whose push failed. Not before its time: an
//! early message is answered 503 so Pub/Sub redelivers it with the subscription's backoff (Pub/Sub has no delayed
//! delivery, and re-publishing would multiply messages; the message stays durable in Pub/Sub meanwhile). Then
//! the same attempt as on-analysis's: the circuit breaker per (tenant, CRM) in the state store, the push, and one
//! commit — delivered, the next retry with exponential backoff and jitter, or, after the maximum attempts or
//! age, a dead letter that can be replayed once the tenant has fixed their CRM.

pub mod stage;

use axum::Router;
use axum::routing::post;
use callflow::runtime::ApiError;
use callflow::runtime::lead_delivery::Delivery;
/// The environment this function reads (the same as its sibling's).
pub use callflow::runtime::lead_delivery::Settings;

/// The trigger whose deliveries this function receives (eventarc/triggers.toml).
pub const TRIGGER: &str = "crm-retry";

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Eventarc (or a Pub/Sub push subscription) delivers to `/`.
pub fn app(service: Delivery) -> Router {
    Router::new().route("/", post(stage::handle).fallback(method_not_allowed)).fallback(no_route).with_state(service)
}
