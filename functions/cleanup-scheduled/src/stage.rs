//! The trigger: a Pub/Sub message on `scheduled` delivered by Eventarc (or a push subscription), or Cloud
//! Scheduler's HTTP target (`X-CloudScheduler: true`). Either names the run by its schedule slot and may carry a
//! body `{"jobs": [...], "dry_run": false}`; then one run of the jobs, answered with its report.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use callflow::domain::cleanup::{CLEANUP_STAGE, RunRequest};
use callflow::ports::RefusedEvent;
use callflow::runtime::ApiError;
use callflow::runtime::body::read_limited;
use callflow::runtime::cloudevent::{EventError, IncomingEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::Service;

/// A run request is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// Why a trigger is refused. A Pub/Sub message that is refused is acknowledged (redelivering it cannot help) and
/// kept as a dead letter; an HTTP call from Cloud Scheduler is answered 400 (the job's own log shows it).
#[derive(Debug)]
pub struct Refused {
    pub reason: String,
    /// The event as kept for the dead letter (None: an HTTP call).
    pub event: Option<(String, serde_json::Value)>,
}

/// A run to do, and its id: the schedule slot it stands for, so a redelivered trigger names the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub run_id: String,
    pub request: RunRequest,
}

fn slot_id(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Read the trigger from an HTTP request's headers and body.
pub fn read(headers: &HeaderMap, body: bytes::Bytes, now: DateTime<Utc>) -> Result<Trigger, Refused> {
    if is_scheduler(headers) {
        // Cloud Scheduler's HTTP target: the slot is in X-CloudScheduler-ScheduleTime.
        let slot = headers
            .get("x-cloudscheduler-scheduletime")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(now, |t| t.to_utc());
        let request = RunRequest::parse(&body).map_err(|reason| Refused { reason, event: None })?;
        return Ok(Trigger { run_id: slot_id(slot), request });
    }
    let event = IncomingEvent::from_http(headers, body).map_err(|e| refused_event(&e, None))?;
    let message = event.pubsub_message().map_err(|e| refused_event(&e, Some(&event)))?;
    let data = message.message.decoded_data().map_err(|e| refused_event(&e, Some(&event)))?;
    let request = RunRequest::parse(&data).map_err(|reason| Refused {
        reason,
        event: Some((event.dedupe_key(), json!({"id": event.id, "source": event.source, "type": event.ty}))),
    })?;
    // The local router sets `schedule_time`; Cloud Scheduler's Pub/Sub target cannot (its attributes are fixed),
    // so the message's publish time stands for the slot there.
    let slot = message
        .message
        .attributes
        .get("schedule_time")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc())
        .or(message.message.publish_time)
        .or(event.time)
        .unwrap_or(now);
    Ok(Trigger { run_id: slot_id(slot), request })
}

fn is_scheduler(headers: &HeaderMap) -> bool {
    headers.get("x-cloudscheduler").and_then(|v| v.to_str().ok()) == Some("true")
}

fn refused_event(e: &EventError, event: Option<&IncomingEvent>) -> Refused {
    let kept = event.map(|ev| {
        let data = String::from_utf8_lossy(&ev.data).chars().take(4096).collect::<String>();
        (ev.dedupe_key(), json!({"id": ev.id, "source": ev.source, "type": ev.ty, "data": data}))
    });
    Refused { reason: e.to_string(), event: kept.or_else(|| Some((String::new(), json!({})))) }
}

/// `POST /`.
pub async fn handle(State(service): State<Service>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let now = service.ports.clock.now();
    let body = match read_limited(&parts.headers, body, MAX_BODY).await {
        Ok(b) => b,
        // Cloud Scheduler's HTTP call is answered; an oversize message is acknowledged and kept, as every event
        // function does (Pub/Sub would redeliver it to no avail).
        Err(e) if is_scheduler(&parts.headers) => return e.into_response(),
        Err(_) => {
            let reason = format!("event body exceeds {MAX_BODY} bytes");
            return refuse(&service, Refused { reason, event: Some((String::new(), json!({}))) }, now).await;
        }
    };
    let trigger = match read(&parts.headers, body, now) {
        Ok(t) => t,
        Err(refused) => return refuse(&service, refused, now).await,
    };
    match crate::run::run(&service, &trigger.request, &trigger.run_id).await {
        Ok(report) => Json(report.summary()).into_response(),
        // Nothing could start (the tenant directory or the state store is down): 503, so the message comes again.
        Err(e) => ApiError::unavailable(&e.message).into_response(),
    }
}

async fn refuse(service: &Service, refused: Refused, now: DateTime<Utc>) -> Response {
    tracing::warn!(reason = %refused.reason, "cleanup trigger refused");
    let Some((key, event)) = refused.event else { return ApiError::bad_request(refused.reason).into_response() };
    let key =
        if key.is_empty() { format!("unreadable@{}", now.timestamp_nanos_opt().unwrap_or_default()) } else { key };
    let letter = RefusedEvent {
        stage: CLEANUP_STAGE.into(),
        tenant_id: String::new(),
        call_id: String::new(),
        event_key: key,
        event,
        reason: refused.reason.clone(),
    };
    if let Err(e) = service.ports.state.dead_letter_event(letter).await {
        return ApiError::unavailable(&format!("keeping the refused trigger: {e}")).into_response();
    }
    callflow::runtime::storage_stage::acknowledge("refused")
}
