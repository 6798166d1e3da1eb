//! Operator commands for cleanup: erasure requests (`callflow erasure request|list`) and a cleanup run now
//! (`callflow cleanup run`). They use whichever backends the environment names — the embedded ones by default,
//! Spanner and GCS (emulators included) with `CALLFLOW_ENVIRONMENT` — through cleanup-scheduled's own service.

use callflow::domain::TenantId;
use callflow::domain::cleanup::{Job, RunRequest, erasure_target};
use callflow::ports::ErasureRequest;
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum ErasureAction {
    /// Ask for a caller's data to be erased (GDPR/CCPA-style): their recordings, transcripts and personal details
    /// on every call of theirs. The next cleanup run (every 15 minutes) carries it out; `callflow cleanup run --job
    /// erasure` does it now.
    Request {
        #[arg(long)]
        tenant: String,
        /// The caller's phone, any common format (kept as E.164 until the erasure is done).
        #[arg(long, required_unless_present = "email")]
        phone: Option<String>,
        /// The caller's email.
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A tenant's erasure requests and the erasure log (what was erased from which call, when; never the data).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CleanupAction {
    /// Run cleanup jobs now, as the schedule does: retention, erasure, stuck-calls, reconciliation.
    Run {
        /// A job to run (repeatable); all four when absent.
        #[arg(long = "job", value_parser = parse_job)]
        jobs: Vec<Job>,
        /// List what would be removed, re-driven or ingested, and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

fn parse_job(s: &str) -> Result<Job, String> {
    Job::parse(s).ok_or_else(|| {
        let names: Vec<_> = Job::ALL.iter().map(|j| j.as_str()).collect();
        format!("unknown job {s:?}; one of {}", names.join(", "))
    })
}

async fn service() -> anyhow::Result<cleanup_scheduled::Service> {
    let settings = cleanup_scheduled::Settings::from_env()?;
    cleanup_scheduled::Service::connect(&settings).await
}

async fn tenant(service: &cleanup_scheduled::Service, raw: &str) -> anyhow::Result<TenantId> {
    let id = TenantId::parse(raw)?;
    anyhow::ensure!(service.ports.tenants.tenant(&id).await?.is_some(), "no tenant {raw} in the tenants file");
    Ok(id)
}

pub async fn erasure(action: ErasureAction) -> anyhow::Result<()> {
    let service = service().await?;
    let state = &service.ports.state;
    match action {
        ErasureAction::Request { tenant: raw, phone, email, json } => {
            let tenant_id = tenant(&service, &raw).await?;
            let (phone, email) = erasure_target(phone.as_deref(), email.as_deref()).map_err(anyhow::Error::msg)?;
            let request = ErasureRequest {
                tenant_id,
                id: format!("era-{}", uuid::Uuid::now_v7().simple()),
                phone,
                email,
                requested_at: chrono::Utc::now(),
                completed_at: None,
                calls_erased: None,
            };
            state.request_erasure(&request).await?;
            if json {
                println!("{}", json!({"id": request.id, "tenant_id": raw, "requested_at": request.requested_at}));
            } else {
                println!("erasure request {} recorded for {raw}; the next cleanup run carries it out", request.id);
            }
            Ok(())
        }
        ErasureAction::List { tenant: raw, json } => {
            let tenant_id = tenant(&service, &raw).await?;
            let requests = state.erasure_requests(&tenant_id, false, 1000).await?;
            let log = state.erasures(&tenant_id, 1000).await?;
            if json {
                let requests: Vec<_> = requests
                    .iter()
                    .map(|r| {
                        json!({"id": r.id, "requested_at": r.requested_at, "completed_at": r.completed_at,
                               "calls_erased": r.calls_erased, "pending": r.completed_at.is_none()})
                    })
                    .collect();
                let log: Vec<_> = log
                    .iter()
                    .map(|e| json!({"call_id": e.call_id, "request_id": e.request_id, "erased": e.erased, "at": e.at}))
                    .collect();
                println!("{}", json!({"requests": requests, "erasures": log}));
                return Ok(());
            }
            println!("erasure requests ({}):", requests.len());
            for r in &requests {
                match r.completed_at {
                    Some(at) => println!(
                        "  {}  requested {}  done {at}: {} call(s) erased",
                        r.id,
                        r.requested_at,
                        r.calls_erased.unwrap_or(0)
                    ),
                    None => println!("  {}  requested {}  pending", r.id, r.requested_at),
                }
            }
            println!("erasure log ({}):", log.len());
            for e in &log {
                println!("  {}  {}  {}: {}", e.at, e.call_id, e.request_id, e.erased.join(", "));
            }
            Ok(())
        }
    }
}

pub async fn cleanup(action: CleanupAction) -> anyhow::Result<()> {
    let CleanupAction::Run { jobs, dry_run, json } = action;
    let service = service().await?;
    // The schedule's order, whatever order they were named in.
    let jobs = Job::ALL.into_iter().filter(|j| jobs.is_empty() || jobs.contains(j)).collect();
    let request = RunRequest { jobs, dry_run };
    // Unique per run (its rows are kept once per run id), and sortable by time.
    let run_id = format!("manual-{}", uuid::Uuid::now_v7().simple());
    let report = cleanup_scheduled::run::run(&service, &request, &run_id).await?;
    if json {
        println!("{}", report.summary());
        return Ok(());
    }
    println!("cleanup run {run_id}{}", if dry_run { " (dry run: nothing changed)" } else { "" });
    for r in &report.reports {
        let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = if r.complete { "done" } else { "more next run" };
        println!("  {:<15} {:<20} {state:<14} {}", r.job.as_str(), r.tenant_id, counts.join(" "));
        if let Some(note) = &r.note {
            println!("  {:<15} {:<20} note: {note}", "", "");
        }
        for e in &r.errors {
            println!("  {:<15} {:<20} error: {e}", "", "");
        }
        if dry_run && !r.calls.is_empty() {
            println!("  {:<15} {:<20} calls: {}", "", "", r.calls.join(" "));
        }
    }
    Ok(())
}
