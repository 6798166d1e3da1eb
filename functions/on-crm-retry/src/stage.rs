//! The stage: one `crm-retry` message → one more push, once. An early message is answered 503 (not claimed); a
//! due one claims its step of the call's chain (`crm:{chain}:{seq}`) and runs the shared delivery attempt, whose
//! commit enqueues the chain's next step, the delivery, or the dead letter.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use callflow::domain::delivery::CrmRetry;
use callflow::ports::Claim;
use callflow::runtime::cloudevent::{EventError, Incoming, IncomingEvent};
use callflow::runtime::lead_delivery::{self, Admitted, Attempt, Delivery, Outcome};
use callflow::runtime::storage_stage::{Deps, Early};
use tracing::Instrument;

pub const STAGE: &str = "on-crm-retry";

/// A message this close to its time is worked on now rather than sent round again.
const EARLY_TOLERANCE: chrono::Duration = chrono::Duration::seconds(1);

/// `POST /`: a `crm-retry` message.
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
    let Admitted { message, tenant, call } = match lead_delivery::admit::<CrmRetry>(&deps, STAGE, event).await {
        Ok(a) => a,
        Err(early) => return Outcome::Early(early),
    };
    let span = tracing::info_span!(
        "retry",
        tenant_id = %call.tenant_id,
        call_id = %call.call_id,
        chain = %message.chain,
        seq = message.seq
    );
    async move {
        if let Err(early) = lead_delivery::ready(&call) {
            tracing::info!(outcome = early.name(), "no delivery");
            return Outcome::Early(early);
        }
        if message.not_before > p.clock.now() + EARLY_TOLERANCE {
            return Outcome::NotYet { until: message.not_before };
        }
        let key = message.claim_key();
        let claim = match p.state.claim_stage(&call.tenant_id, &call.call_id, &key, service.policy.lease).await {
            Ok(Claim::Claimed(claim)) => claim,
            Ok(Claim::Busy { until }) => return Outcome::Early(Early::Busy { until }),
            Ok(Claim::Done) => return Outcome::Early(Early::Duplicate),
            Err(e) => return Outcome::Early(Early::Retry { error: format!("claiming the retry: {e}") }),
        };
        let attempt = Attempt::retry(STAGE, &tenant, &call, claim, &message, started);
        let outcome = lead_delivery::deliver(service, attempt).await;
        lead_delivery::log(&outcome, started);
        outcome
    }
    .instrument(span)
    .await
}
