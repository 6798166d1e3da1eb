//! Draining the outbox: recording fetches, form texts and analytics rows that intake committed with each call.
//!
//! Cloud Run: work after the response needs CPU. on-webhook runs with CPU always allocated (instance-based
//! billing, `cpu_idle = false`, one warm instance), so this worker keeps draining between requests, exactly as in
//! the embedded mode. When an instance is scaled in with work pending, that work stays in the outbox (durable,
//! leased): any instance's worker takes it when the lease runs out, and `POST /internal/outbox/drain` (called by
//! Cloud Scheduler) drains due work inside a request, so nothing waits on a warm instance. That endpoint can only
//! do work that is already committed and due, so it needs no secret; it is rate-limited.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use callflow::domain::analytics::StageEvent;
use callflow::domain::work::{Completion, NewWork, Transition, WorkItem, WorkKind, not_before};
use callflow::domain::{CallRecord, CallState};
use callflow::ports::{NewObject, VendorError};
use callflow::runtime::ApiError;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Service;

const FETCH_LEASE: Duration = Duration::from_secs(600);
use callflow::runtime::analytics_outbox::BATCH as ANALYTICS_BATCH;
const IDLE_POLL: Duration = Duration::from_secs(5);
pub const STAGE: &str = "on-webhook";

/// How a fetch ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    Stored {
        object: String,
        bytes: u64,
    },
    /// A web form's text, stored as its transcript for on-transcript.
    FormTextStored {
        object: String,
    },
    NoRecording,
    Retrying {
        after: Duration,
        error: String,
    },
    DeadLettered {
        reason: String,
    },
    /// The call has moved past `received` (another fetch stored it, or an erasure stopped it): nothing to do.
    NotNeeded {
        state: CallState,
    },
    LeaseLost,
}

/// A fetch (or a form's text) is for a call still in `received`. One that moved on — a second fetch after a
/// re-drive, or a call an erasure request stopped — is finished without storing anything, so erased data does
/// not come back.
async fn not_needed(service: &Service, item: &WorkItem, call: &CallRecord) -> Option<FetchOutcome> {
    if call.state == CallState::Received {
        return None;
    }
    let outcome = FetchOutcome::NotNeeded { state: call.state };
    Some(finish(service, item, Completion::default(), outcome).await)
}

fn unit_random() -> f64 {
    rand::random::<f64>()
}

/// How a fetch ended, as the analytics row records it.
struct End<'a> {
    to: CallState,
    outcome: &'a str,
    reason: Option<&'a str>,
    bytes: Option<u64>,
}

/// The stage row for a fetch outcome, on the call as it will stand after the transition.
fn fetch_row(
    call: &CallRecord,
    item: &WorkItem,
    started: Instant,
    at: chrono::DateTime<chrono::Utc>,
    end: End<'_>,
) -> NewWork {
    let mut after = call.clone();
    after.state = end.to;
    let row = StageEvent {
        call: &after,
        stage: STAGE,
        outcome: end.outcome,
        event_kind: Some("fetch_recording"),
        at,
        stage_duration_ms: Some(started.elapsed().as_secs_f64() * 1e3),
        attempts: Some(item.attempts),
        bytes: end.bytes,
        cost_usd: None,
        reason: end.reason,
        engine: None,
        audio_secs: None,
    }
    .into_row(&item.id.to_string());
    row.work()
}

/// Fetch one call's recording into the recordings bucket and move the call on, or schedule a retry, or
/// dead-letter it. Completion and state change commit together; a crash before that leaves the item leased,
/// and it is fetched again (the object write is idempotent: same name, new generation).
pub async fn process_fetch(service: &Service, item: WorkItem) -> FetchOutcome {
    let span = tracing::info_span!(
        "fetch_recording",
        tenant_id = %item.tenant_id,
        call_id = %item.call_id,
        attempt = item.attempts
    );
    if item.kind == WorkKind::StoreFormText {
        return store_form_text(service, item).instrument(span).await;
    }
    fetch(service, item).instrument(span).await
}

/// The work kinds this worker does.
const KINDS: [WorkKind; 2] = [WorkKind::FetchRecording, WorkKind::StoreFormText];

/// A web form's text becomes its transcript (the finalize event wakes on-transcript, which moves it on).
async fn store_form_text(service: &Service, item: WorkItem) -> FetchOutcome {
    let started = Instant::now();
    let call = match service.ports.state.call(&item.tenant_id, &item.call_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return dead_letter(service, &item, None, "call record is missing", started).await,
        Err(e) => return retry(service, &item, &e.message, None).await,
    };
    if let Some(done) = not_needed(service, &item, &call).await {
        return done;
    }
    let language = match service.ports.tenants.tenant(&item.tenant_id).await {
        Ok(Some(t)) => t.transcription.language.clone(),
        Ok(None) => return dead_letter(service, &item, Some(&call), "tenant is no longer configured", started).await,
        Err(e) => return retry(service, &item, &e.message, None).await,
    };
    let transcript = callflow::domain::transcript::Transcript::from_form(
        item.tenant_id.as_str(),
        item.call_id.as_str(),
        &call.lead,
        &language,
    );
    let body = bytes::Bytes::from(serde_json::to_vec(&transcript).expect("transcripts serialize"));
    let name = format!("{}/{}.json", item.tenant_id, item.call_id);
    let metadata = BTreeMap::from([
        ("tenant_id".to_owned(), item.tenant_id.to_string()),
        ("call_id".to_owned(), item.call_id.to_string()),
        ("source".to_owned(), "form".to_owned()),
        ("engine".to_owned(), transcript.engine.clone()),
        ("cost_usd".to_owned(), "0".to_owned()),
    ]);
    let object = NewObject {
        bucket: &service.settings.transcripts_bucket,
        name: &name,
        content_type: "application/json",
        metadata,
        max_bytes: service.settings.max_body_bytes as u64 * 2,
    };
    match service.ports.objects.put(object, Box::pin(futures::stream::once(async move { Ok(body) }))).await {
        Ok(info) => {
            let object = format!("{}/{}", info.bucket, info.name);
            finish(service, &item, Completion::default(), FetchOutcome::FormTextStored { object }).await
        }
        Err(e) if e.retryable => retry(service, &item, &format!("storing the form text: {e}"), None).await,
        Err(e) => dead_letter(service, &item, Some(&call), &format!("storing the form text: {e}"), started).await,
    }
}

async fn fetch(service: &Service, item: WorkItem) -> FetchOutcome {
    let started = Instant::now();
    let call = match service.ports.state.call(&item.tenant_id, &item.call_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return dead_letter(service, &item, None, "call record is missing", started).await,
        Err(e) => return retry(service, &item, &e.message, None).await,
    };
    if let Some(done) = not_needed(service, &item, &call).await {
        return done;
    }
    let tenant = match service.ports.tenants.tenant(&item.tenant_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return dead_letter(service, &item, Some(&call), "tenant is no longer configured", started).await,
        Err(e) => return retry(service, &item, &e.message, None).await,
    };
    let Some(cr) = tenant.callrail.as_ref() else {
        return dead_letter(service, &item, Some(&call), "tenant has no CallRail settings", started).await;
    };
    let Some(key_ref) = cr.api_key.as_ref() else {
        return dead_letter(service, &item, Some(&call), "tenant has no CallRail API key", started).await;
    };
    // A missing key may be fixed by an operator: retry within the budget, then dead-letter.
    let api_key = match service.ports.secrets.secret(key_ref).await {
        Ok(k) => k,
        Err(e) => return retry(service, &item, &format!("CallRail API key: {e}"), None).await,
    };
    let download = match service.ports.callrail.recording(&cr.account_id, &item.call_id, &api_key).await {
        Ok(d) => d,
        Err(VendorError::NotFound) => {
            let reason = callflow::domain::intake::REASON_NO_RECORDING;
            let now = service.ports.clock.now();
            let completion = Completion {
                transition: Some(Transition {
                    to: CallState::Skipped,
                    reason: Some(reason.into()),
                    recording_object: None,
                }),
                follow_up: vec![fetch_row(
                    &call,
                    &item,
                    started,
                    now,
                    End { to: CallState::Skipped, outcome: "no_recording", reason: Some(reason), bytes: None },
                )],
                dead_letter: None,
                analysis: None,
                delivery: None,
            };
            return finish(service, &item, completion, FetchOutcome::NoRecording).await;
        }
        Err(e) if e.is_retryable() => return retry(service, &item, &e.to_string(), e.retry_after()).await,
        Err(e) => return dead_letter(service, &item, Some(&call), &format!("CallRail: {e}"), started).await,
    };
    let content_type = download.content_type.clone().unwrap_or_else(|| "audio/mpeg".into());
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !(media.starts_with("audio/") || media == "application/octet-stream") {
        let reason = format!("CallRail served {media:?} instead of audio");
        return dead_letter(service, &item, Some(&call), &reason, started).await;
    }
    if download.content_length.is_some_and(|n| n > service.settings.max_recording_bytes) {
        return dead_letter(service, &item, Some(&call), "recording exceeds the size limit", started).await;
    }
    let name = format!("{}/{}.mp3", item.tenant_id, item.call_id);
    let metadata = BTreeMap::from([
        ("tenant_id".to_owned(), item.tenant_id.to_string()),
        ("call_id".to_owned(), item.call_id.to_string()),
        ("source".to_owned(), "callrail".to_owned()),
    ]);
    let object = NewObject {
        bucket: &service.settings.recordings_bucket,
        name: &name,
        content_type: if media == "application/octet-stream" { "audio/mpeg" } else { &media },
        metadata,
        max_bytes: service.settings.max_recording_bytes,
    };
    match service.ports.objects.put(object, download.body).await {
        Ok(info) => {
            let location = format!("{}/{}", info.bucket, info.name);
            let now = service.ports.clock.now();
            let completion = Completion {
                transition: Some(Transition {
                    to: CallState::RecordingStored,
                    reason: None,
                    recording_object: Some(location.clone()),
                }),
                follow_up: vec![fetch_row(
                    &call,
                    &item,
                    started,
                    now,
                    End {
                        to: CallState::RecordingStored,
                        outcome: "recording_stored",
                        reason: None,
                        bytes: Some(info.size),
                    },
                )],
                dead_letter: None,
                analysis: None,
                delivery: None,
            };
            let outcome = FetchOutcome::Stored { object: location, bytes: info.size };
            finish(service, &item, completion, outcome).await
        }
        Err(e) if e.retryable => retry(service, &item, &format!("storing recording: {e}"), None).await,
        Err(e) => dead_letter(service, &item, Some(&call), &format!("storing recording: {e}"), started).await,
    }
}

async fn finish(service: &Service, item: &WorkItem, completion: Completion, outcome: FetchOutcome) -> FetchOutcome {
    match service.ports.state.complete_work(item, completion).await {
        Ok(true) => {
            tracing::info!(outcome = ?outcome, "recording fetch finished");
            service.work_added.notify_one();
            outcome
        }
        Ok(false) => FetchOutcome::LeaseLost,
        // Not recorded: the lease runs out and the item is fetched again; storing the object twice is harmless.
        Err(e) => FetchOutcome::Retrying { after: FETCH_LEASE, error: e.message },
    }
}

async fn retry(service: &Service, item: &WorkItem, error: &str, floor: Option<Duration>) -> FetchOutcome {
    let policy = service.settings.fetch_retry;
    let Some(delay) = policy.next_delay(item.attempts, unit_random(), floor) else {
        let reason = format!("recording fetch failed after {} attempts: {error}", item.attempts);
        let call = service.ports.state.call(&item.tenant_id, &item.call_id).await.ok().flatten();
        return dead_letter(service, item, call.as_ref(), &reason, Instant::now()).await;
    };
    tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "recording fetch failed; will retry");
    let at = not_before(service.ports.clock.now(), delay);
    match service.ports.state.retry_work(item, at, error).await {
        Ok(()) => FetchOutcome::Retrying { after: delay, error: error.to_owned() },
        Err(e) => FetchOutcome::Retrying { after: FETCH_LEASE, error: e.message },
    }
}

async fn dead_letter(
    service: &Service,
    item: &WorkItem,
    call: Option<&CallRecord>,
    reason: &str,
    started: Instant,
) -> FetchOutcome {
    tracing::error!(reason = %reason, "recording fetch dead-lettered");
    let now = service.ports.clock.now();
    let follow_up = call
        .map(|c| {
            let end = End { to: CallState::DeadLettered, outcome: "dead_lettered", reason: Some(reason), bytes: None };
            vec![fetch_row(c, item, started, now, end)]
        })
        .unwrap_or_default();
    let completion = Completion {
        transition: Some(Transition {
            to: CallState::DeadLettered,
            reason: Some(reason.to_owned()),
            recording_object: None,
        }),
        follow_up,
        dead_letter: Some(reason.to_owned()),
        analysis: None,
        delivery: None,
    };
    finish(service, item, completion, FetchOutcome::DeadLettered { reason: reason.to_owned() }).await
}

/// Send due analytics rows to the sink in one batch. Returns how many were delivered.
pub async fn flush_analytics(service: &Service) -> usize {
    let p = &service.ports;
    callflow::runtime::analytics_outbox::flush(p.state.as_ref(), p.analytics.as_ref(), p.clock.as_ref()).await
}

/// Process every due item once, waiting for the fetches (bounded concurrency). Used by the drain endpoint and
/// by tests; the background worker uses the same pieces without waiting on slow downloads.
pub async fn drain_pass(service: &Service) -> (usize, Vec<FetchOutcome>) {
    let mut analytics = 0;
    loop {
        let n = flush_analytics(service).await;
        analytics += n;
        if n < ANALYTICS_BATCH {
            break;
        }
    }
    let limit = service.settings.fetch_concurrency.max(1);
    let items = service.ports.state.claim_work(&KINDS, 10 * limit, FETCH_LEASE).await.unwrap_or_default();
    let outcomes = futures::stream::iter(items)
        .map(|item| process_fetch(service, item))
        .buffer_unordered(limit)
        .collect::<Vec<_>>()
        .await;
    analytics += flush_analytics(service).await;
    (analytics, outcomes)
}

/// `POST /internal/outbox/drain`: drain due work inside this request (Cloud Scheduler's backstop).
pub async fn drain_endpoint(State(service): State<Service>) -> Result<Json<Value>, ApiError> {
    let now_ms = service.ports.clock.now().timestamp_millis().max(0) as u64;
    let last = service.last_drain_ms.swap(now_ms, Ordering::Relaxed);
    if now_ms.saturating_sub(last) < 1_000 {
        return Err(ApiError::too_many_requests(1));
    }
    let (analytics, fetches) = drain_pass(&service).await;
    Ok(Json(json!({ "analytics_rows": analytics, "recording_fetches": fetches.len() })))
}

/// The background worker: claims fetches as permits free up and flushes analytics, sleeping until the next
/// item is due or a commit wakes it. Stops claiming when `stop` turns true, then waits for in-flight fetches.
pub async fn run(service: Service, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(service.settings.fetch_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut last_prune = Instant::now();
    while !*stop.borrow() {
        while tasks.try_join_next().is_some() {}
        let mut busy = flush_analytics(&service).await > 0;
        let free = permits.available_permits();
        if free > 0 {
            match service.ports.state.claim_work(&KINDS, free, FETCH_LEASE).await {
                Ok(items) => {
                    busy |= !items.is_empty();
                    for item in items {
                        let permit = permits.clone().acquire_owned().await.expect("semaphore is never closed");
                        let svc = service.clone();
                        tasks.spawn(async move {
                            process_fetch(&svc, item).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "claiming recording fetches failed"),
            }
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            service.auth_failures.retain_recent();
            last_prune = Instant::now();
        }
        if busy {
            continue;
        }
        let due = service
            .ports
            .state
            .next_due(&[WorkKind::FetchRecording, WorkKind::StoreFormText, WorkKind::Analytics])
            .await
            .ok()
            .flatten();
        let wait = due
            .map(|at| (at - service.ports.clock.now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(IDLE_POLL)
            .clamp(Duration::from_millis(5), IDLE_POLL);
        tokio::select! {
            () = service.work_added.notified() => {}
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    flush_analytics(&service).await;
}
