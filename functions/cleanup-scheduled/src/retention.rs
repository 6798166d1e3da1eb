//! Retention: per tenant and per kind of data (recordings, transcripts, the caller's personal data), the calls
//! created before the kind's cutoff lose it. Each kind walks the window of calls that became due since its last
//! finished pass, in call-id order, a page at a time, with its cursor saved after every page; so each call is
//! visited once per kind, and a run that stops early resumes in the next. Analytics rows carry no personal data
//! (by construction: `domain::analytics`), so they stay as they are.

use callflow::domain::cleanup::{Job, JobReport, RetentionCursor, RetentionKind};
use callflow::domain::retention::scrub;
use callflow::domain::tenant::Tenant;
use callflow::domain::{CallId, CallRecord, CallSource, CallState};
use callflow::ports::{CallErasure, CallScan, ErasureRecord, PortResult};

use crate::Service;
use crate::run::Budget;

/// Calls read per page.
const PAGE: usize = 100;

pub async fn run(service: &Service, tenant: &Tenant, dry_run: bool, budget: Budget) -> JobReport {
    let mut report = JobReport::new(Job::Retention, tenant.id.as_str(), dry_run);
    let retention = tenant.retention.resolve(tenant.retention_days);
    let now = service.ports.clock.now();
    let state = &service.ports.state;
    for kind in RetentionKind::ALL {
        // Each kind walks the same calls: each gets the whole item budget.
        let mut items = budget.items;
        let name = kind.cursor_name();
        let mut cursor = match state.job_cursor(&tenant.id, &name).await {
            Ok(stored) => RetentionCursor::parse(stored.as_deref()),
            Err(e) => {
                report.error(format!("{name} cursor: {e}"));
                report.complete = false;
                continue;
            }
        };
        let cutoff = kind.cutoff(&retention, now);
        while let Some(pass) = cursor.pass(cutoff) {
            if items == 0 || budget.spent() {
                report.complete = false;
                report.note = Some("the run's budget ran out; the next run resumes from the cursor".into());
                break;
            }
            let page = items.min(PAGE);
            let after = pass.after.as_deref().and_then(|a| CallId::parse(a).ok());
            let scan = CallScan {
                created_from: pass.from,
                created_before: Some(pass.upto),
                after,
                limit: page,
                ..CallScan::default()
            };
            let calls = match state.scan_calls(&tenant.id, &scan).await {
                Ok(c) => c,
                Err(e) => {
                    report.error(format!("scanning for {}: {e}", kind.as_str()));
                    report.complete = false;
                    break;
                }
            };
            items = items.saturating_sub(calls.len());
            report.count("scanned", calls.len() as u64);
            let mut last = None;
            let mut failed = false;
            for call in &calls {
                match retain(service, kind, call, dry_run, &mut report).await {
                    Ok(()) => last = Some(call.call_id.as_str()),
                    Err(e) => {
                        // Stop this kind before the failed call: the cursor stays before it, so it is tried again.
                        report.error(format!("{} {}: {e}", kind.as_str(), call.call_id));
                        report.complete = false;
                        failed = true;
                        break;
                    }
                }
            }
            let finished = !failed && calls.len() < page;
            cursor = cursor.advance(&pass, last, finished);
            if !dry_run && let Err(e) = state.set_job_cursor(&tenant.id, &name, Some(&cursor.encode())).await {
                report.error(format!("{name} cursor: {e}"));
                report.complete = false;
                break;
            }
            if failed || finished {
                break;
            }
        }
    }
    report
}

/// Remove one kind of data from one call (or, in a dry run, count what would go).
async fn retain(
    service: &Service,
    kind: RetentionKind,
    call: &CallRecord,
    dry_run: bool,
    report: &mut JobReport,
) -> PortResult<()> {
    let (p, s) = (&service.ports, &service.settings);
    let now = p.clock.now();
    let request_id = format!("retention:{}", kind.as_str());
    let record = |erased: Vec<String>| ErasureRecord {
        tenant_id: call.tenant_id.clone(),
        call_id: call.call_id.clone(),
        request_id: request_id.clone(),
        erased,
        at: now,
    };
    match kind {
        RetentionKind::Recordings => {
            if call.source == CallSource::Form {
                return Ok(());
            }
            // The stored recording is named on the call; only a call still in `received` (its fetch may have
            // stored the object without moving the call yet) needs a listing by the naming contract.
            let deleted = match (&call.recording_object, call.state) {
                (Some(location), _) => {
                    let name = location.split_once('/').map_or(location.as_str(), |(_, name)| name);
                    delete_one(service, &s.recordings_bucket, name, dry_run).await?
                }
                (None, CallState::Received) => delete_objects(service, &s.recordings_bucket, call, dry_run).await?,
                (None, _) => 0,
            };
            if deleted == 0 && call.recording_object.is_none() {
                return Ok(());
            }
            report.count("objects_deleted", deleted);
            report.count("recordings", 1);
            report.listed(call.call_id.as_str());
            if !dry_run {
                let erasure = CallErasure { lead: None, recording: true };
                p.state.erase_call(erasure, record(vec!["recording".into()])).await?;
            }
        }
        RetentionKind::Transcripts => {
            // One name per call, whoever wrote it (on-audio-uploaded, or on-webhook for a form's text).
            let name = format!("{}/{}.json", call.tenant_id, call.call_id);
            let deleted = delete_one(service, &s.transcripts_bucket, &name, dry_run).await?;
            if deleted == 0 {
                return Ok(());
            }
            report.count("objects_deleted", deleted);
            report.count("transcripts", 1);
            report.listed(call.call_id.as_str());
            if !dry_run {
                p.state.erase_call(CallErasure::default(), record(vec!["transcript".into()])).await?;
            }
        }
        RetentionKind::Pii => {
            let (lead, fields) = scrub(&call.lead);
            let heard = p
                .state
                .analysis(&call.tenant_id, &call.call_id)
                .await?
                .is_some_and(|a| a.findings.caller != callflow::domain::analysis::CallerDetails::default());
            if fields.is_empty() && !heard {
                return Ok(());
            }
            let mut erased: Vec<String> = fields.iter().map(|f| format!("lead.{f}")).collect();
            if heard {
                erased.push("analysis.caller".into());
            }
            report.count("pii", 1);
            report.listed(call.call_id.as_str());
            if !dry_run {
                p.state.erase_call(CallErasure { lead: Some(lead), recording: false }, record(erased)).await?;
            }
        }
    }
    Ok(())
}

/// Delete one object (in a dry run: see whether it is there); 1 when there was one.
async fn delete_one(service: &Service, bucket: &str, name: &str, dry_run: bool) -> PortResult<u64> {
    let objects = &service.ports.objects;
    let found =
        if dry_run { objects.head(bucket, name).await?.is_some() } else { objects.delete(bucket, name).await? };
    Ok(u64::from(found))
}

/// Delete every object of the call in `bucket` (`{tenant}/{call}.{ext}`; whatever extension it was stored with),
/// returning how many there were. Deleting what is already gone is not an error, so this is safe to repeat.
pub async fn delete_objects(service: &Service, bucket: &str, call: &CallRecord, dry_run: bool) -> PortResult<u64> {
    let prefix = format!("{}/{}.", call.tenant_id, call.call_id);
    let objects = &service.ports.objects;
    let mut deleted = 0;
    let mut token: Option<String> = None;
    loop {
        let page = objects.list(bucket, &prefix, token.as_deref(), 100).await?;
        for o in &page.objects {
            // `{call}.` as a prefix would also match a call id that extends this one with a dot; ids have none.
            if dry_run || objects.delete(bucket, &o.name).await? {
                deleted += 1;
            }
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    Ok(deleted)
}
