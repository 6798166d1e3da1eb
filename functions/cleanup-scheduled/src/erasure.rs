//! Erasure requests (GDPR/CCPA-style), made with `callflow erasure request --tenant T --phone P | --email E`: every
//! call of that caller (found by the normalised phone or email, including an email only the analysis heard) loses
//! its recording, transcript and the caller's personal data; a call still on its way through the chain is stopped
//! (`skipped`, reason `erased`) so no later stage brings the data back; each call gets an audit record naming what
//! went (never the values); the request is marked done and forgets the phone and email it named.

use callflow::domain::cleanup::{Job, JobReport};
use callflow::domain::retention::scrub;
use callflow::domain::tenant::Tenant;
use callflow::domain::work::{Completion, Transition};
use callflow::domain::{CallRecord, CallState};
use callflow::ports::{CallErasure, Claim, ErasureRecord, ErasureRequest, PortResult};

use crate::Service;
use crate::retention::delete_objects;
use crate::run::Budget;

/// Why a call an erasure stopped is `skipped`.
pub const REASON_ERASED: &str = "erased";

pub async fn run(service: &Service, tenant: &Tenant, dry_run: bool, budget: Budget) -> JobReport {
    let mut report = JobReport::new(Job::Erasure, tenant.id.as_str(), dry_run);
    let state = &service.ports.state;
    let requests = match state.erasure_requests(&tenant.id, true, budget.items).await {
        Ok(r) => r,
        Err(e) => {
            report.error(format!("reading erasure requests: {e}"));
            report.complete = false;
            return report;
        }
    };
    let mut items = budget.items;
    for request in &requests {
        if items == 0 || budget.spent() {
            report.complete = false;
            report.note = Some("the run's budget ran out; the remaining requests are carried out next run".into());
            break;
        }
        match erase(service, request, dry_run, &mut report).await {
            Ok(calls) => {
                items = items.saturating_sub(calls.max(1) as usize);
                report.count("requests", 1);
            }
            Err(e) => {
                // The request stays pending and is carried out again (every step is safe to repeat).
                report.error(format!("request {}: {e}", request.id));
                report.complete = false;
            }
        }
    }
    report
}

/// Carry out one request; the number of calls it erased.
async fn erase(service: &Service, request: &ErasureRequest, dry_run: bool, report: &mut JobReport) -> PortResult<u32> {
    let (p, s) = (&service.ports, &service.settings);
    let calls =
        p.state.calls_by_contact(&request.tenant_id, request.phone.as_deref(), request.email.as_deref()).await?;
    let mut erased_calls = 0u32;
    for call in &calls {
        report.count("scanned", 1);
        report.listed(call.call_id.as_str());
        if dry_run {
            report.count("calls_erased", 1);
            continue;
        }
        stop(service, request, call).await?;
        let recordings = delete_objects(service, &s.recordings_bucket, call, false).await?;
        let transcripts = delete_objects(service, &s.transcripts_bucket, call, false).await?;
        let (lead, fields) = scrub(&call.lead);
        let mut erased: Vec<String> = Vec::new();
        if recordings > 0 || call.recording_object.is_some() {
            erased.push("recording".into());
        }
        if transcripts > 0 {
            erased.push("transcript".into());
        }
        erased.extend(fields.iter().map(|f| format!("lead.{f}")));
        // What the analysis and the call's other texts lose is added by the state store, which sees them.
        if call.state == CallState::Delivered {
            // The CRM's copy is the tenant's to erase; the record says where it went, without the data.
            report.count("crm_copies", 1);
        }
        let record = ErasureRecord {
            tenant_id: call.tenant_id.clone(),
            call_id: call.call_id.clone(),
            request_id: request.id.clone(),
            erased,
            at: p.clock.now(),
        };
        p.state.erase_call(CallErasure { lead: Some(lead), recording: true }, record).await?;
        report.count("objects_deleted", recordings + transcripts);
        report.count("calls_erased", 1);
        erased_calls += 1;
    }
    if !dry_run {
        p.state.complete_erasure_request(&request.tenant_id, &request.id, p.clock.now(), erased_calls).await?;
    }
    Ok(erased_calls)
}

/// A call not yet at the end of the chain is moved to `skipped` (reason `erased`) first, so a stage that runs
/// later finds it finished and does not store the caller's data again.
async fn stop(service: &Service, request: &ErasureRequest, call: &CallRecord) -> PortResult<()> {
    if call.state.is_terminal() {
        return Ok(());
    }
    let state = &service.ports.state;
    let key = format!("erasure:{}", request.id);
    match state.claim_stage(&call.tenant_id, &call.call_id, &key, std::time::Duration::from_secs(300)).await? {
        Claim::Claimed(claim) => {
            let transition =
                Transition { to: CallState::Skipped, reason: Some(REASON_ERASED.into()), recording_object: None };
            let completion = Completion { transition: Some(transition), ..Completion::default() };
            state.finish_stage(&claim, completion).await?;
            Ok(())
        }
        Claim::Done => Ok(()),
        Claim::Busy { .. } => Err(callflow::ports::PortError::retryable("another run is erasing this call")),
    }
}
