//! The stage: one `analysis-complete` message → at most one lead per call. The message is read and checked
//! (poison is dead-lettered), the call must be `analysed` (a later state means a duplicate or late message),
//! the call's first push is claimed once (`crm:a:0`), and the shared delivery attempt does the rest.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use callflow::domain::delivery::{AnalysisComplete, FIRST_CLAIM};
use callflow::ports::Claim;
use callflow::runtime::cloudevent::{EventError, Incoming, IncomingEvent};
use callflow::runtime::lead_delivery::{self, Admitted, Attempt, Delivery, Outcome};
use callflow::runtime::storage_stage::{Deps, Early};
use tracing::Instrument;

pub const STAGE: &str = "on-analysis";

/// `POST /`: an `analysis-complete` message.
pub async fn handle(State(service): State<Delivery>, Incoming(event): Incoming) -> Response {
    let outcome = process(&service, event).await;
    if outcome.committed() {
        service.flush().await;
    }
    outcome.respond()
}

/// Handle one delivery (tests and benchmarks call this without HTTP).
pub async fn process(service: &Delivery, event: Result<IncomingEvent, EventError>) -> Outcome {
    let started = Instant::now();
    let p = &service.ports;
    let deps = Deps { tenants: p.tenants.as_ref(), state: p.state.as_ref(), clock: p.clock.as_ref() };
    let Admitted { tenant, call, .. } = match lead_delivery::admit::<AnalysisComplete>(&deps, STAGE, event).await {
        Ok(a) => a,
        Err(early) => return Outcome::Early(early),
    };
    let span = tracing::info_span!("deliver", tenant_id = %call.tenant_id, call_id = %call.call_id);
    async move {
        if let Err(early) = lead_delivery::ready(&call) {
            tracing::info!(outcome = early.name(), "no delivery");
            return Outcome::Early(early);
        }
        let claim = match p.state.claim_stage(&call.tenant_id, &call.call_id, FIRST_CLAIM, service.policy.lease).await {
            Ok(Claim::Claimed(claim)) => claim,
            Ok(Claim::Busy { until }) => return Outcome::Early(Early::Busy { until }),
            Ok(Claim::Done) => return Outcome::Early(Early::Duplicate),
            Err(e) => return Outcome::Early(Early::Retry { error: format!("claiming the delivery: {e}") }),
        };
        let attempt = Attempt::first(STAGE, &tenant, &call, claim, started);
        let outcome = lead_delivery::deliver(service, attempt).await;
        lead_delivery::log(&outcome, started);
        outcome
    }
    .instrument(span)
    .await
}
