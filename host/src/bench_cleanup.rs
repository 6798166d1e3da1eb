//! `callflow bench-cleanup`: one cleanup run on the embedded backends (fsync on) over CALLS calls made 40 days ago,
//! each with a recording, a transcript and a caller; nine in ten delivered, one in ten still in `received` (so
//! stuck): erasure requests for REQUESTS of the callers, the stuck-calls job re-driving the stuck ones, then
//! retention removing recordings, transcripts and personal data from all of them. Prints each job's items, time and rate, the CPU the run took
//! and the peak RSS. Seeding is not timed.

use std::time::Instant;

use callflow::adapters::sqlite::Durability;
use callflow::domain::cleanup::{Job, RunRequest};
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::work::{Completion, Transition};
use callflow::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{Claim, ErasureRequest, NewObject, ObjectStore, StateStore};

const TENANTS: &str = r#"
[[tenant]]
id = "bench"
name = "Bench Remodeling"
retention_days = 30
[tenant.callrail]
account_id = "ACC1"
company_ids = ["COM1"]
"#;

pub async fn run(calls: usize, requests: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tenants_file = dir.path().join("tenants.toml");
    std::fs::write(&tenants_file, TENANTS)?;
    let vars = [
        ("CALLFLOW_DATA_DIR", dir.path().join("data").display().to_string()),
        ("CALLFLOW_TENANTS", tenants_file.display().to_string()),
        ("CALLFLOW_CLEANUP_MAX_ITEMS", (calls + requests).to_string()),
        ("CALLFLOW_CLEANUP_JOB_SECS", "220".to_owned()),
    ];
    let settings = cleanup_scheduled::Settings::from_lookup(|name| {
        vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok())
    })?;
    let c = &settings.common;
    let e = callflow::runtime::embedded::Embedded::open(
        &c.data_dir,
        &c.tenants_file,
        c.triggers.clone(),
        Durability::Full,
    )?;
    let service = cleanup_scheduled::Service::with_embedded(&e, &settings)?;
    let tenant = TenantId::parse("bench")?;
    let made = chrono::Utc::now() - chrono::Duration::days(40);
    let seeding = Instant::now();
    for i in 0..calls {
        let call = format!("CAL{i:08}");
        let lead = LeadDetails {
            answered: Some(true),
            duration_secs: Some(120),
            customer_name: Some(format!("Caller {i}")),
            customer_phone: Some(format!("+1503{:07}", i)),
            customer_email: Some(format!("caller{i}@example.com")),
            recording_url: Some(format!("https://api.callrail.com/v3/a/ACC1/calls/{call}/recording.json")),
            utm_source: Some("google".into()),
            ..LeadDetails::default()
        };
        let event = IntakeEvent {
            tenant_id: tenant.clone(),
            call_id: CallId::parse(&call)?,
            source: CallSource::Callrail,
            kind: EventKind::PostCall,
            dedupe_key: "post_call".into(),
            payload_sha256: String::new(),
            payload_bytes: 0,
            lead,
            received_at: made,
        };
        let call_id = event.call_id.clone();
        e.state.record_intake(event).await?;
        // Nine in ten went through the chain (their recording named on the call); one in ten is stuck in
        // `received`, its recording found by listing.
        if i % 10 != 0 {
            let lease = std::time::Duration::from_secs(60);
            let Claim::Claimed(claim) = e.state.claim_stage(&tenant, &call_id, "bench", lease).await? else {
                anyhow::bail!("claiming {call}");
            };
            let transition = Transition {
                to: CallState::Delivered,
                reason: None,
                recording_object: Some(format!("{}/bench/{call}.mp3", settings.recordings_bucket)),
            };
            e.state.finish_stage(&claim, Completion { transition: Some(transition), ..Completion::default() }).await?;
        }
        for (bucket, ext, body) in [
            (&settings.recordings_bucket, "mp3", &b"ID3 recording bytes"[..]),
            (&settings.transcripts_bucket, "json", &br#"{"text": "hello"}"#[..]),
        ] {
            let name = format!("bench/{call}.{ext}");
            let object = NewObject {
                bucket,
                name: &name,
                content_type: if ext == "mp3" { "audio/mpeg" } else { "application/json" },
                metadata: Default::default(),
                max_bytes: 1 << 20,
            };
            let body = bytes::Bytes::from_static(body);
            e.objects.put(object, Box::pin(futures::stream::once(async move { Ok(body) }))).await?;
        }
    }
    for i in 0..requests.min(calls) {
        let request = ErasureRequest {
            tenant_id: tenant.clone(),
            id: format!("era-{i:06}"),
            phone: Some(format!("+1503{:07}", i * (calls / requests.max(1)).max(1))),
            email: None,
            requested_at: chrono::Utc::now(),
            completed_at: None,
            calls_erased: None,
        };
        e.state.request_erasure(&request).await?;
    }
    println!(
        "seeded {calls} calls (recording, transcript, caller) and {requests} erasure requests in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let request = RunRequest { jobs: vec![Job::Erasure, Job::StuckCalls, Job::Retention], dry_run: false };
    let cpu = crate::bench::cpu_time();
    let started = Instant::now();
    let report = cleanup_scheduled::run::run(&service, &request, "bench").await?;
    let (wall, cpu) = (started.elapsed(), crate::bench::cpu_time() - cpu);
    println!("job             items                      time      rate");
    for r in &report.reports {
        let items = r.acted();
        let secs = r.duration_ms / 1000.0;
        let what = match r.job {
            Job::Erasure => format!("{} requests, {} calls", r.get("requests"), r.get("calls_erased")),
            Job::StuckCalls => format!("{} calls re-driven", r.get("redriven")),
            _ => format!("{} removals, {} objects", items, r.get("objects_deleted")),
        };
        let rate = if r.job == Job::Erasure { r.get("requests") } else { items } as f64 / secs.max(1e-9);
        println!(
            "{:<15} {what:<26} {secs:>6.2} s  {rate:>8.0}/s{}",
            r.job.as_str(),
            if r.complete { "" } else { " (incomplete)" }
        );
        if !r.errors.is_empty() {
            println!("  errors: {}", r.errors.join("; "));
        }
    }
    println!("run             {:>33.2} s, cpu {:.2} s", wall.as_secs_f64(), cpu.as_secs_f64());
    println!("peak rss        {:>10.1} MB", crate::bench_stage::peak_rss_mb());
    let left = service.ports.objects.list(&settings.recordings_bucket, "bench/", None, 10).await?.objects.len();
    anyhow::ensure!(left == 0, "{left} recordings left after retention");
    Ok(())
}
