//! on-analysis: an `analysis-complete` message becomes the tenant's lead — spam gate, service area and minimum
//! score from the tenant's workflow, then one push to their CRM (behind its circuit breaker), the CRM record
//! stored on the call (`delivered`), and the notifications the rules ask for. A retryable failure hands the lead
//! to on-crm-retry through a `crm-retry` message; a permanent one dead-letters it and alerts the tenant.

pub mod stage;

use axum::Router;
use axum::routing::post;
use callflow::runtime::ApiError;
use callflow::runtime::lead_delivery::Delivery;
/// The environment this function reads (the same as its sibling's).
pub use callflow::runtime::lead_delivery::Settings;

/// The trigger whose deliveries this function receives (eventarc/triggers.toml).
pub const TRIGGER: &str = "analysis-complete";

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
