//! on-analysis: an `analysis-complete` message becomes the tenant's lead — spam gate, service area and minimum
//! score from the tenant's workflow, then one push to their CRM (behind its circuit breaker), the CRM record
//! stored on the call (`delivered`), and the notifications the rules ask for. A retryable failure hands the lead
//! to on-crm-retry through a `crm-retry` message; a permanent one dead-letters it and alerts the tenant.

pub mod stage;

use axum::Router;
use axum::routing::post;
use callflow::runtime::ApiError;
use callflow::runtime::config::Common;
use callflow::runtime::lead_delivery::{Delivery, Policy};

/// The trigger whose deliveries this function receives (eventarc/triggers.toml).
pub const TRIGGER: &str = "analysis-complete";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: Common,
    pub policy: Policy,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let common = Common::from_lookup(&var)?;
        common.trigger(TRIGGER)?;
        let policy = Policy::from_lookup(&common, &var)?;
        Ok(Self { common, policy })
    }
}

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
