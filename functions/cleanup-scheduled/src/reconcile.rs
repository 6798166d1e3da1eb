//! Reconciliation: CallRail never retries a webhook, so a call whose webhook was lost (our outage, a network
//! fault, a bad deploy) would be lost too. Each tenant's calls of the last window (48 h) are listed through
//! CallRail's API, a page per request, within an hourly request budget; each listed call goes through the intake's
//! own transaction with the post-call webhook's dedupe key, so a call the webhook delivered is a duplicate and
//! changes nothing, and a missing one is created (and its recording fetched) exactly as the webhook would have,
//! marked `reconciled`. Calls of the last half hour are left to their webhook.

use callflow::domain::callrail::CallRailWebhook;
use callflow::domain::cleanup::{Job, JobReport, ReconcileCursor};
use callflow::domain::intake::{EventKind, IntakeEvent, IntakeOutcome};
use callflow::domain::tenant::Tenant;
use callflow::domain::{CallId, CallSource};
use callflow::ports::{CallListQuery, PortResult, VendorError};
use sha2::{Digest, Sha256};

use crate::Service;
use crate::run::Budget;

const CURSOR: &str = "reconciliation";

pub async fn run(service: &Service, tenant: &Tenant, dry_run: bool, budget: Budget) -> JobReport {
    let mut report = JobReport::new(Job::Reconciliation, tenant.id.as_str(), dry_run);
    let Some(cr) = tenant.callrail.as_ref() else {
        report.note = Some("no CallRail account".into());
        return report;
    };
    let Some(key_ref) = cr.api_key.as_ref() else {
        report.note = Some("no CallRail API key: calls whose webhook was lost cannot be found".into());
        return report;
    };
    let (p, settings) = (&service.ports, &service.settings.reconcile);
    let stored = match p.state.job_cursor(&tenant.id, CURSOR).await {
        Ok(c) => c,
        Err(e) => {
            report.error(format!("cursor: {e}"));
            report.complete = false;
            return report;
        }
    };
    let original = ReconcileCursor::parse(stored.as_deref());
    let mut cursor = original.clone();
    let now = p.clock.now();
    if let Some(until) = cursor.paused_until.filter(|u| *u > now) {
        report.complete = false;
        report.note = Some(format!("CallRail asked us to wait until {until}"));
        return report;
    }
    let Some(mut pass) = cursor.pass(now, settings) else {
        report.note = Some("the last pass is recent; the next starts within the hour".into());
        return report;
    };
    let api_key = match p.secrets.secret(key_ref).await {
        Ok(k) => k,
        Err(e) => {
            report.error(format!("CallRail API key: {e}"));
            report.complete = false;
            return report;
        }
    };
    let mut items = budget.items;
    loop {
        if items == 0 || budget.spent() {
            report.complete = false;
            report.note = Some("the run's budget ran out; the next run resumes at the same page".into());
            break;
        }
        if !cursor.budget.take(p.clock.now(), settings.requests_per_hour) {
            report.complete = false;
            report.note = Some(format!(
                "this hour's {} CallRail requests are spent; the pass resumes next hour",
                settings.requests_per_hour
            ));
            break;
        }
        report.count("requests", 1);
        let query =
            CallListQuery { start: pass.start, end: pass.end, page: pass.next_page, per_page: settings.per_page };
        let page = match p.callrail.list_calls(&cr.account_id, &api_key, &query).await {
            Ok(page) => page,
            Err(VendorError::RateLimited { retry_after }) => {
                let wait = retry_after.unwrap_or(std::time::Duration::from_secs(60));
                cursor.paused_until = Some(p.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default());
                report.count("rate_limited", 1);
                report.complete = false;
                report.note = Some(format!("CallRail answered 429; waiting {} s", wait.as_secs()));
                break;
            }
            Err(e) => {
                report.error(format!("listing page {}: {e}", pass.next_page));
                report.complete = false;
                break;
            }
        };
        report.count("pages", 1);
        items = items.saturating_sub(page.calls.len());
        let mut failed = false;
        for listed in &page.calls {
            report.count("listed", 1);
            if let Err(e) = ingest(service, tenant, listed, dry_run, &mut report).await {
                // The page is read again next run; the calls it ingested are duplicates then.
                report.error(format!("page {}: {e}", pass.next_page));
                failed = true;
                break;
            }
        }
        if failed {
            report.complete = false;
            break;
        }
        if page.calls.is_empty() || page.page >= page.total_pages {
            cursor.pass = None;
            break;
        }
        pass.next_page += 1;
        cursor.pass = Some(pass.clone());
    }
    // A dry run changes nothing but still spent requests of CallRail's budget: keep that count.
    let keep = if dry_run { ReconcileCursor { budget: cursor.budget.clone(), ..original } } else { cursor };
    if let Err(e) = p.state.set_job_cursor(&tenant.id, CURSOR, Some(&keep.encode())).await {
        report.error(format!("cursor: {e}"));
        report.complete = false;
    }
    report
}

/// One listed call through the intake: `Created` means the webhook never came. `callflow backfill` uses it too.
pub async fn ingest(
    service: &Service,
    tenant: &Tenant,
    listed: &serde_json::Value,
    dry_run: bool,
    report: &mut JobReport,
) -> PortResult<()> {
    let p = &service.ports;
    let payload: CallRailWebhook = match serde_json::from_value(listed.clone()) {
        Ok(c) => c,
        Err(e) => {
            report.error(format!("a listed call does not parse: {e}"));
            return Ok(());
        }
    };
    let Some(call_id) = payload.call_id().ok().and_then(|id| CallId::parse(id).ok()) else {
        report.error("a listed call has no usable id");
        return Ok(());
    };
    let companies = payload.company_ids().unwrap_or_default();
    if !tenant.owns_company(&companies) {
        // The account also tracks companies that are not this tenant's (an agency account): not ours to ingest.
        report.count("other_companies", 1);
        return Ok(());
    }
    if dry_run {
        if p.state.call(&tenant.id, &call_id).await?.is_none() {
            report.count("missing", 1);
            report.listed(call_id.as_str());
        } else {
            report.count("known", 1);
        }
        return Ok(());
    }
    let body = serde_json::to_vec(listed).expect("JSON values serialize");
    let mut lead = payload.lead_details();
    lead.reconciled = Some(true);
    let event = IntakeEvent {
        tenant_id: tenant.id.clone(),
        call_id: call_id.clone(),
        source: CallSource::Callrail,
        kind: EventKind::Reconciled,
        // The post-call webhook's key: whichever of the two comes second is a duplicate.
        dedupe_key: "post_call".into(),
        payload_sha256: hex::encode(Sha256::digest(&body)),
        payload_bytes: body.len() as u64,
        lead,
        received_at: p.clock.now(),
    };
    let result = p.state.record_intake(event).await?;
    match result.outcome {
        IntakeOutcome::Created => {
            report.count("ingested", 1);
            report.listed(call_id.as_str());
            tracing::info!(tenant_id = %tenant.id, call_id = %call_id, state = %result.call.state, "missed call reconciled");
        }
        IntakeOutcome::Duplicate => report.count("known", 1),
        // Known from a call-modified webhook only: the details merge, as a post-call webhook's would.
        IntakeOutcome::Updated | IntakeOutcome::Reopened => report.count("merged", 1),
    }
    Ok(())
}
