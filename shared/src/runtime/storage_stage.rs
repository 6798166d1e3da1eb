//! The front half every storage-triggered stage shares (on-audio-uploaded, on-transcript): read the event, check
//! the object against the naming contract, find the tenant and the call, check the call is where the stage can
//! act, and claim the object generation once. A poison event is kept as a dead letter and acknowledged; a late
//! one is acknowledged with no effect; a busy or failing one asks for a redelivery.

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::domain::stage_object::{self, Expected, ObjectFacts, Readiness, StageObject};
use crate::domain::tenant::Tenant;
use crate::domain::{CallRecord, CallState};
use crate::ports::{Claim, Clock, RefusedEvent, StageClaim, StateStore, TenantDirectory};
use crate::runtime::ApiError;
use crate::runtime::cloudevent::{EventError, IncomingEvent};

/// What a stage accepts and what it claims.
pub struct StageSpec<'a> {
    /// The function, e.g. `on-transcript` (dead letters are kept under `event:{stage}`).
    pub stage: &'static str,
    pub expected: Expected<'a>,
    /// The state the stage moves calls to: calls at or past it are not worked on again.
    pub to: CallState,
    /// Claims are `{claim_prefix}:{generation}`.
    pub claim_prefix: &'static str,
    pub lease: Duration,
}

pub struct Deps<'a> {
    pub tenants: &'a dyn TenantDirectory,
    pub state: &'a dyn StateStore,
    pub clock: &'a dyn Clock,
}

/// An event the stage now holds the claim for.
pub struct Admitted {
    pub tenant: Arc<Tenant>,
    pub call: CallRecord,
    pub object: StageObject,
    pub claim: StageClaim,
}

/// How a delivery ends before the stage's own work.
#[derive(Debug, Clone, PartialEq)]
pub enum Early {
    /// This generation was already handled.
    Duplicate,
    /// The call is past this stage (or ended): acknowledged with no effect.
    NotNeeded { why: String },
    /// Poison, kept as a dead letter.
    Refused { reason: String },
    /// Another delivery holds the claim.
    Busy { until: DateTime<Utc> },
    /// A retryable failure.
    Retry { error: String },
}

impl Early {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::NotNeeded { .. } => "not_needed",
            Self::Refused { .. } => "refused",
            Self::Busy { .. } => "busy",
            Self::Retry { .. } => "retry",
        }
    }
}

/// 200 with the outcome's name: the delivery is done (Eventarc acks 2xx; never 202, see the handbook).
pub fn acknowledge(outcome: &'static str) -> Response {
    axum::Json(json!({ "outcome": outcome })).into_response()
}

/// The answer for an early end: acknowledged, or 503 so the delivery comes again with the trigger's backoff.
pub fn respond(early: &Early) -> Response {
    match early {
        Early::Busy { until } => {
            tracing::info!(until = %until, "another delivery holds this object");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "this object is being worked on by another delivery",
            )
            .into_response()
        }
        Early::Retry { error } => ApiError::unavailable(error).into_response(),
        acked => acknowledge(acked.name()),
    }
}

/// The event as the dead letter keeps it.
fn raw(event: &IncomingEvent, data: Value) -> Value {
    json!({"id": event.id, "source": event.source, "type": event.ty, "subject": event.subject, "data": data})
}

/// Keep a poison event as a dead letter. If even that fails, ask for a redelivery: an event is never dropped
/// unrecorded.
pub async fn refuse(
    deps: &Deps<'_>,
    stage: &str,
    claimed: (String, String),
    key: String,
    event: Value,
    reason: String,
) -> Early {
    tracing::warn!(reason = %reason, tenant_id = %claimed.0, "refused an event");
    let refused = RefusedEvent {
        stage: stage.into(),
        tenant_id: claimed.0,
        call_id: claimed.1,
        event_key: key,
        event,
        reason: reason.clone(),
    };
    match deps.state.dead_letter_event(refused).await {
        Ok(_) => Early::Refused { reason },
        Err(e) => Early::Retry { error: format!("recording a refused event: {e}") },
    }
}

/// Everything up to and including the claim.
pub async fn admit(
    spec: &StageSpec<'_>,
    deps: &Deps<'_>,
    event: Result<IncomingEvent, EventError>,
) -> Result<Admitted, Early> {
    let none = || (String::new(), String::new());
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            // An unreadable event has no identity to dedupe on.
            let key = format!("unreadable@{}", deps.clock.now().timestamp_nanos_opt().unwrap_or_default());
            return Err(refuse(deps, spec.stage, none(), key, json!({}), e.to_string()).await);
        }
    };
    let data = match event.storage_object() {
        Ok(d) => d,
        Err(e) => {
            let kept = raw(&event, Value::String(String::from_utf8_lossy(&event.data).into_owned()));
            return Err(refuse(deps, spec.stage, none(), event.dedupe_key(), kept, e.to_string()).await);
        }
    };
    let facts = ObjectFacts {
        bucket: &data.bucket,
        name: &data.name,
        generation: data.generation,
        content_type: data.content_type.as_deref(),
        size: data.size,
        metadata: &data.metadata,
    };
    let key = format!("{}/{}#{}", data.bucket, data.name, data.generation.unwrap_or_default());
    let kept = raw(&event, serde_json::from_slice::<Value>(&event.data).unwrap_or_default());
    let object = match stage_object::check(&facts, &spec.expected) {
        Ok(o) => o,
        Err(r) => return Err(refuse(deps, spec.stage, (r.tenant_id, r.call_id), key, kept, r.reason).await),
    };
    let claimed = || (object.tenant_id.to_string(), object.call_id.to_string());
    let tenant = match deps.tenants.tenant(&object.tenant_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(refuse(deps, spec.stage, claimed(), key, kept, "unknown tenant".into()).await),
        Err(e) => return Err(Early::Retry { error: format!("tenant directory: {e}") }),
    };
    let call = match deps.state.call(&object.tenant_id, &object.call_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(refuse(deps, spec.stage, claimed(), key, kept, "no such call".into()).await),
        Err(e) => return Err(Early::Retry { error: format!("state store: {e}") }),
    };
    match stage_object::readiness(&call, spec.to) {
        Readiness::Ready => {}
        Readiness::Past(state) => {
            tracing::info!(state = %state, "late event: the call is past this stage");
            return Err(Early::NotNeeded { why: format!("the call is already {state}") });
        }
        Readiness::Foreign(why) => return Err(refuse(deps, spec.stage, claimed(), key, kept, why.into()).await),
    }
    let stage_key = format!("{}:{}", spec.claim_prefix, object.generation);
    match deps.state.claim_stage(&object.tenant_id, &object.call_id, &stage_key, spec.lease).await {
        Ok(Claim::Claimed(claim)) => Ok(Admitted { tenant, call, object, claim }),
        Ok(Claim::Busy { until }) => Err(Early::Busy { until }),
        Ok(Claim::Done) => Err(Early::Duplicate),
        Err(e) => Err(Early::Retry { error: format!("claiming the object: {e}") }),
    }
}
