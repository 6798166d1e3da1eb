//! Stuck calls: a call that has sat in `received`, `recording_stored`, `transcribed` or `analysed` past its
//! stage's limit gets the event that should have moved it again (the stages are idempotent, so a re-drive of a
//! call that was only slow costs nothing twice). Re-drives are counted and spaced by one claim per call and state
//! (`redrive:{state}`), held for the state's limit: its attempts are the re-drives, and another cannot start
//! before it runs out. After `max_redrives` the call is dead-lettered with the reason.

use std::collections::BTreeMap;

use callflow::domain::analytics::StageEvent;
use callflow::domain::cleanup::{CLEANUP_STAGE, Job, JobReport, Redrive, redrive_claim_key};
use callflow::domain::delivery::CrmRetry;
use callflow::domain::retention::Stuck;
use callflow::domain::tenant::Tenant;
use callflow::domain::work::{Completion, NewWork, PublishMessage, Transition, WorkKind};
use callflow::domain::{CallId, CallRecord, CallState};
use callflow::ports::{CallScan, Claim, NewObject, PortError, PortResult, StageClaim};
use serde_json::json;

use crate::Service;
use crate::run::Budget;

const PAGE: usize = 100;

/// The states a call waits in.
const WAITING: [CallState; 4] =
    [CallState::Received, CallState::RecordingStored, CallState::Transcribed, CallState::Analysed];

pub async fn run(service: &Service, tenant: &Tenant, dry_run: bool, budget: Budget) -> JobReport {
    let mut report = JobReport::new(Job::StuckCalls, tenant.id.as_str(), dry_run);
    let (p, policy) = (&service.ports, &service.settings.stuck);
    let now = p.clock.now();
    let shortest = WAITING.iter().filter_map(|s| policy.limit(*s)).min().unwrap_or_default();
    let cursor_name = "stuck-calls";
    // Stuck calls are few and the scan reads by state: one walk per run from where the last stopped.
    let mut after = match p.state.job_cursor(&tenant.id, cursor_name).await {
        Ok(c) => c.and_then(|c| CallId::parse(&c).ok()),
        Err(e) => {
            report.error(format!("cursor: {e}"));
            report.complete = false;
            return report;
        }
    };
    let mut items = budget.items;
    loop {
        if items == 0 || budget.spent() {
            report.complete = false;
            report.note = Some("the run's budget ran out; the next run resumes from the cursor".into());
            break;
        }
        let page = items.min(PAGE);
        let scan = CallScan {
            states: WAITING.to_vec(),
            updated_before: Some(now - chrono::Duration::from_std(shortest).unwrap_or_default()),
            after: after.clone(),
            limit: page,
            ..CallScan::default()
        };
        let calls = match p.state.scan_calls(&tenant.id, &scan).await {
            Ok(c) => c,
            Err(e) => {
                report.error(format!("scanning: {e}"));
                report.complete = false;
                break;
            }
        };
        items = items.saturating_sub(calls.len());
        report.count("scanned", calls.len() as u64);
        for call in &calls {
            if let Err(e) = check(service, call, dry_run, &mut report).await {
                // Tried again next run (the claim, if taken, runs out and is taken again).
                report.error(format!("{}: {e}", call.call_id));
            }
        }
        let finished = calls.len() < page;
        after = if finished { None } else { calls.last().map(|c| c.call_id.clone()) };
        if !dry_run
            && let Err(e) = p.state.set_job_cursor(&tenant.id, cursor_name, after.as_ref().map(CallId::as_str)).await
        {
            report.error(format!("cursor: {e}"));
            report.complete = false;
            break;
        }
        if finished {
            break;
        }
    }
    report
}

async fn check(service: &Service, call: &CallRecord, dry_run: bool, report: &mut JobReport) -> PortResult<()> {
    let (p, policy) = (&service.ports, &service.settings.stuck);
    let now = p.clock.now();
    if policy.check(call, now, 0) == Stuck::No {
        return Ok(());
    }
    report.count("stuck", 1);
    report.listed(call.call_id.as_str());
    if dry_run {
        return Ok(());
    }
    let limit = policy.limit(call.state).unwrap_or_default();
    let spacing = service.settings.redrive_spacing.unwrap_or(limit);
    let key = redrive_claim_key(call.state);
    let claim = match p.state.claim_stage(&call.tenant_id, &call.call_id, &key, spacing).await? {
        Claim::Claimed(claim) => claim,
        // Re-driven less than a limit ago: give that re-drive its time.
        Claim::Busy { .. } | Claim::Done => {
            report.count("waiting", 1);
            return Ok(());
        }
    };
    let redrives = claim.attempts - 1;
    let reason = match policy.check(call, now, redrives) {
        Stuck::No => return Ok(()),
        Stuck::GiveUp(reason) => reason,
        Stuck::Redrive => match Redrive::for_call(call) {
            Ok(redrive) => {
                redrive_once(service, call, &claim, &redrive).await?;
                tracing::info!(
                    tenant_id = %call.tenant_id,
                    call_id = %call.call_id,
                    state = %call.state,
                    redrive = redrive.name(),
                    attempt = claim.attempts,
                    "stuck call re-driven"
                );
                report.count("redriven", 1);
                return Ok(());
            }
            Err(why) => why,
        },
    };
    give_up(service, call, &claim, &reason).await?;
    tracing::warn!(tenant_id = %call.tenant_id, call_id = %call.call_id, reason = %reason, "stuck call dead-lettered");
    report.count("given_up", 1);
    Ok(())
}

/// Send the event that should have moved the call. Work for a worker (a fetch, a form's text, a crm-retry
/// message) is committed through a one-off claim of its own, so it is enqueued once per re-drive; an object is
/// rewritten in place, whose new generation's finalize event is the re-drive.
async fn redrive_once(service: &Service, call: &CallRecord, claim: &StageClaim, redrive: &Redrive) -> PortResult<()> {
    let (p, s) = (&service.ports, &service.settings);
    let n = claim.attempts;
    let work = match redrive {
        Redrive::FetchRecording { recording_url } => {
            Some(NewWork { kind: WorkKind::FetchRecording, payload: json!({ "recording_url": recording_url }) })
        }
        Redrive::StoreFormText => Some(NewWork { kind: WorkKind::StoreFormText, payload: json!({}) }),
        Redrive::NewCrmChain => {
            let retry = CrmRetry::redrive(call.tenant_id.as_str(), call.call_id.as_str(), n, p.clock.now());
            let message = PublishMessage {
                topic: s.crm_retry_topic.clone(),
                data: serde_json::to_value(&retry).expect("messages serialize"),
                attributes: BTreeMap::from([
                    ("tenant_id".to_owned(), retry.tenant_id.clone()),
                    ("call_id".to_owned(), retry.call_id),
                ]),
            };
            Some(message.work())
        }
        Redrive::RewriteRecording => {
            let name = call.recording_object.as_deref().and_then(|o| o.split_once('/')).map(|(_, n)| n.to_owned());
            rewrite(service, &s.recordings_bucket, call, name, n).await?;
            None
        }
        Redrive::RewriteTranscript => {
            rewrite(service, &s.transcripts_bucket, call, Some(format!("{}/{}.json", call.tenant_id, call.call_id)), n)
                .await?;
            None
        }
    };
    let row = StageEvent {
        call,
        stage: CLEANUP_STAGE,
        outcome: "redriven",
        event_kind: Some(redrive.name()),
        at: p.clock.now(),
        stage_duration_ms: None,
        attempts: Some(n),
        bytes: None,
        cost_usd: None,
        reason: None,
        engine: None,
        audio_secs: None,
    }
    .into_row(&format!("{}:{n}", call.state.as_str()));
    let key = format!("{}:{n}", claim.key);
    let one_off =
        match p.state.claim_stage(&call.tenant_id, &call.call_id, &key, std::time::Duration::from_secs(60)).await? {
            Claim::Claimed(c) => c,
            // This re-drive's work was committed by an earlier try.
            Claim::Done | Claim::Busy { .. } => return Ok(()),
        };
    let completion = Completion { follow_up: work.into_iter().chain([row.work()]).collect(), ..Completion::default() };
    p.state.finish_stage(&one_off, completion).await?;
    if matches!(redrive, Redrive::NewCrmChain) {
        callflow::runtime::publish_outbox::flush(p.state.as_ref(), p.publisher.as_ref(), p.clock.as_ref(), 10).await;
    }
    Ok(())
}

/// Write the object again with its own bytes and metadata: a new generation, so a new finalize event.
async fn rewrite(service: &Service, bucket: &str, call: &CallRecord, name: Option<String>, n: u32) -> PortResult<()> {
    let objects = &service.ports.objects;
    let name = match name {
        Some(n) => n,
        // The recording's name was not kept: find it by the naming contract.
        None => {
            let prefix = format!("{}/{}.", call.tenant_id, call.call_id);
            let page = objects.list(bucket, &prefix, None, 10).await?;
            page.objects
                .into_iter()
                .next()
                .map(|o| o.name)
                .ok_or_else(|| PortError::permanent("no object to rewrite"))?
        }
    };
    let Some((info, body)) = objects.get(bucket, &name).await? else {
        return Err(PortError::permanent(format!("{bucket}/{name} is gone; nothing to re-drive from")));
    };
    let mut metadata = info.metadata.clone();
    metadata.insert("redrive".into(), n.to_string());
    let object =
        NewObject { bucket, name: &name, content_type: &info.content_type, metadata, max_bytes: body.len() as u64 };
    objects.put(object, Box::pin(futures::stream::once(async move { Ok(body) }))).await?;
    Ok(())
}

/// Dead-letter the call with the reason (kind `redrive`), in the transaction that finishes the re-drive claim.
async fn give_up(service: &Service, call: &CallRecord, claim: &StageClaim, reason: &str) -> PortResult<()> {
    let p = &service.ports;
    let transition =
        Transition { to: CallState::DeadLettered, reason: Some(reason.to_owned()), recording_object: None };
    let mut after = call.clone();
    after.state = CallState::DeadLettered;
    let row = StageEvent {
        call: &after,
        stage: CLEANUP_STAGE,
        outcome: "dead_lettered",
        event_kind: Some("stuck"),
        at: p.clock.now(),
        stage_duration_ms: None,
        attempts: Some(claim.attempts - 1),
        bytes: None,
        cost_usd: None,
        reason: Some(reason),
        engine: None,
        audio_secs: None,
    }
    .into_row(call.state.as_str());
    let completion = Completion {
        transition: Some(transition),
        dead_letter: Some(reason.to_owned()),
        follow_up: vec![row.work()],
        ..Completion::default()
    };
    p.state.finish_stage(claim, completion).await?;
    Ok(())
}
