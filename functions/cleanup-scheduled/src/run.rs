//! One run: each asked-for job over every tenant, within the job's time budget, then its reports logged and
//! streamed as `cleanup_runs` rows.

use std::time::Instant;

use callflow::domain::cleanup::{Job, JobReport, RunRequest};
use callflow::domain::tenant::Tenant;
use callflow::ports::PortResult;
use serde_json::{Value, json};

use crate::Service;

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub dry_run: bool,
    pub reports: Vec<JobReport>,
}

impl RunReport {
    /// The answer to the trigger (and `callflow cleanup run --json`).
    pub fn summary(&self) -> Value {
        json!({ "run_id": self.run_id, "dry_run": self.dry_run, "jobs": self.reports })
    }

    /// The report of one job for one tenant.
    pub fn get(&self, job: Job, tenant: &str) -> Option<&JobReport> {
        self.reports.iter().find(|r| r.job == job && r.tenant_id == tenant)
    }
}

/// A job's limits in this run: when it must stop, and how many items it may take per tenant.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub deadline: Instant,
    pub items: usize,
}

impl Budget {
    pub fn spent(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// Run `request`'s jobs. Fails only when it cannot start (the tenant list); a job's failures are in its report.
pub async fn run(service: &Service, request: &RunRequest, run_id: &str) -> PortResult<RunReport> {
    let tenants = service.ports.tenants.list().await?;
    let mut reports = Vec::new();
    for job in &request.jobs {
        let budget = Budget { deadline: Instant::now() + service.settings.job_time, items: service.settings.max_items };
        for tenant in &tenants {
            let started = Instant::now();
            let mut report = if budget.spent() {
                let mut r = JobReport::new(*job, tenant.id.as_str(), request.dry_run);
                r.complete = false;
                r.note = Some("the job's time budget ran out before this tenant; the next run starts with it".into());
                r
            } else {
                one(service, *job, tenant, request.dry_run, budget).await
            };
            report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            log(&report);
            reports.push(report);
        }
    }
    // What the jobs committed to send: re-drive rows and crm-retry messages, intake rows of reconciled calls.
    let p = &service.ports;
    callflow::runtime::publish_outbox::flush(p.state.as_ref(), p.publisher.as_ref(), p.clock.as_ref(), 100).await;
    callflow::runtime::analytics_outbox::flush(p.state.as_ref(), p.analytics.as_ref(), p.clock.as_ref()).await;
    let now = service.ports.clock.now();
    let rows: Vec<_> = reports.iter().map(|r| r.row(run_id, now)).collect();
    if !rows.is_empty()
        && let Err(e) = service.ports.analytics.insert(&rows).await
    {
        // The log lines carry the same facts; a report row is not worth failing the run for.
        tracing::warn!(error = %e, rows = rows.len(), "cleanup_runs rows not streamed");
    }
    Ok(RunReport { run_id: run_id.to_owned(), dry_run: request.dry_run, reports })
}

async fn one(service: &Service, job: Job, tenant: &Tenant, dry_run: bool, budget: Budget) -> JobReport {
    match job {
        Job::Retention => crate::retention::run(service, tenant, dry_run, budget).await,
        Job::Erasure => crate::erasure::run(service, tenant, dry_run, budget).await,
        Job::StuckCalls => crate::stuck::run(service, tenant, dry_run, budget).await,
        Job::Reconciliation => crate::reconcile::run(service, tenant, dry_run, budget).await,
    }
}

fn log(r: &JobReport) {
    let counts = serde_json::to_string(&r.counts).unwrap_or_default();
    let errors = r.errors.join("; ");
    tracing::info!(
        metric = "cleanup_job",
        job = r.job.as_str(),
        tenant_id = %r.tenant_id,
        dry_run = r.dry_run,
        complete = r.complete,
        acted = r.acted(),
        counts = %counts,
        errors = %errors,
        note = r.note.as_deref().unwrap_or(""),
        duration_ms = r.duration_ms,
        "cleanup job done"
    );
}
