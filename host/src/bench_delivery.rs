//! `callflow bench-delivery`: lead delivery's own cost and its recovery from a CRM outage, on the embedded
//! backends with the real custom-webhook connector (signed requests over HTTP) pointed at a local CRM that
//! answers at once.
//!
//! 1. Throughput: analysed calls (stored first, not timed) go through on-analysis as the router delivers them
//!    (the workflow, the breaker read and write in SQLite, the signed push, the commit with the CRM record and the
//!    analytics row, and the inline flush): pushes/s, latency percentiles, CPU per push, peak RSS.
//! 2. Recovery: a backlog of leads arrives while the CRM is down for ten minutes (the circuit opens; probes and
//!    retries follow the policy), then the CRM recovers. Messages are delivered when due on a simulated clock, so
//!    the figure is the policy's (breaker cool-down, backoff, jitter) plus the real processing time, without
//!    waiting for it in real time. Pub/Sub may add up to its subscription backoff to each early message.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::StatusCode;
use bytes::Bytes;
use callflow::domain::analysis::{
    ANALYSIS_SCHEMA_VERSION, Analysis, Budget, CallerDetails, Findings, Intent, ProjectType, Sentiment, Urgency, Usage,
};
use callflow::domain::delivery::CrmRetry;
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::work::{Completion, Transition};
use callflow::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{Claim, Clock, EventPublisher, PortResult, StateStore};
use callflow::runtime::cloudevent::IncomingEvent;
use callflow::runtime::embedded::Embedded;
use callflow::runtime::lead_delivery::{Delivery, Outcome};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::bench::{cpu_time, pct};

/// The CRM: answers at once, 201 while up and 503 while down.
#[derive(Clone, Default)]
struct FakeCrm {
    down: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
}

async fn serve_crm(crm: FakeCrm) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/leads",
        axum::routing::post(move || {
            let crm = crm.clone();
            async move {
                let n = crm.received.fetch_add(1, Ordering::Relaxed);
                if crm.down.load(Ordering::Relaxed) {
                    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "down"})))
                } else {
                    (StatusCode::CREATED, axum::Json(json!({"id": format!("lead-{n}")})))
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// A clock the recovery run moves.
struct SimClock(Mutex<DateTime<Utc>>);

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock")
    }
}

/// Keeps published `crm-retry` messages for the recovery run to deliver when due.
#[derive(Default)]
struct Held(Mutex<Vec<Value>>);

#[async_trait]
impl EventPublisher for Held {
    async fn publish(
        &self,
        _topic: &str,
        data: Bytes,
        _attributes: std::collections::BTreeMap<String, String>,
        _ordering_key: Option<&str>,
    ) -> PortResult<String> {
        let v: Value =
            serde_json::from_slice(&data).map_err(|e| callflow::ports::PortError::permanent(e.to_string()))?;
        self.0.lock().expect("held").push(v);
        Ok(String::new())
    }
}

fn message(data: &Value, id: &str) -> Result<IncomingEvent, callflow::runtime::cloudevent::EventError> {
    use base64::Engine;
    let body = json!({"message": {"data": base64::engine::general_purpose::STANDARD.encode(data.to_string()),
        "messageId": id}, "subscription": "projects/callflow-local/subscriptions/eventarc-analysis-complete"});
    IncomingEvent::from_http(&axum::http::HeaderMap::new(), Bytes::from(body.to_string()))
}

async fn analysed(state: &dyn StateStore, tenant: &str, call: &str) -> anyhow::Result<()> {
    let (t, c) = (TenantId::parse(tenant)?, CallId::parse(call)?);
    state
        .record_intake(IntakeEvent {
            tenant_id: t.clone(),
            call_id: c.clone(),
            source: CallSource::Callrail,
            kind: EventKind::PostCall,
            dedupe_key: "post_call".into(),
            payload_sha256: "00".into(),
            payload_bytes: 2048,
            lead: LeadDetails {
                answered: Some(true),
                duration_secs: Some(180),
                customer_phone: Some("(503) 555-0148".into()),
                customer_name: Some("Dana Whitfield".into()),
                recording_url: Some("https://api.callrail.com/rec".into()),
                ..LeadDetails::default()
            },
            received_at: Utc::now(),
        })
        .await?;
    let Claim::Claimed(claim) = state.claim_stage(&t, &c, "analyse:1", Duration::from_secs(60)).await? else {
        anyhow::bail!("could not claim {call}");
    };
    let findings = Findings {
        intent: Intent::NewLead,
        project_type: ProjectType::Kitchen,
        lead_score: 72,
        score_reasons: vec!["wants an estimate".into()],
        urgency: Urgency::Soon,
        budget: Budget::Medium,
        sentiment: Sentiment::Positive,
        spam_likelihood: 2,
        summary: "Wants a kitchen remodel with an island; asked for an estimate next week.".into(),
        caller: CallerDetails {
            name: Some("Dana Whitfield".into()),
            email: Some("dana@example.com".into()),
            zip: Some("97214".into()),
            callback_time: None,
        },
    };
    let analysis = Analysis {
        schema_version: ANALYSIS_SCHEMA_VERSION,
        analyzer: "rules/1".into(),
        fallback_reason: None,
        findings,
        usage: Usage::default(),
        redactions: 0,
    };
    let completion = Completion {
        transition: Some(Transition { to: CallState::Analysed, reason: None, recording_object: None }),
        analysis: Some(analysis),
        ..Completion::default()
    };
    anyhow::ensure!(state.finish_stage(&claim, completion).await?, "lost the claim on {call}");
    Ok(())
}

pub async fn run(leads: usize, concurrency: usize, backlog: usize) -> anyhow::Result<()> {
    let crm = FakeCrm::default();
    let crm_url = serve_crm(crm.clone()).await?;
    let dir = tempfile::tempdir()?;
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(dir.path().join("secret"), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    std::fs::write(
        &tenants,
        format!(
            "[[tenant]]\nid = \"acme\"\nname = \"Acme\"\n[tenant.crm]\nprovider = \"webhook\"\n\
             credential = \"file:secret\"\nurl = \"{crm_url}/leads\"\n"
        ),
    )?;
    let vars = [
        ("CALLFLOW_DATA_DIR", dir.path().join("data").display().to_string()),
        ("CALLFLOW_TENANTS", tenants.display().to_string()),
    ];
    let lookup =
        |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok());
    let settings = on_analysis::Settings::from_lookup(lookup)?;
    let c = &settings.common;
    let e = Embedded::open(&c.data_dir, &c.tenants_file, c.triggers.clone(), c.durability)?;

    // 1. Throughput with the CRM up.
    for i in 0..leads {
        analysed(e.state.as_ref(), "acme", &format!("CALpush{i:06}")).await?;
    }
    while callflow::runtime::analytics_outbox::flush(
        e.state.as_ref(),
        e.analytics.as_ref(),
        &callflow::ports::SystemClock,
    )
    .await
        > 0
    {}
    let service = Delivery::with_embedded(&e, settings.policy.clone());
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let results: Vec<(&'static str, u64)> = futures::stream::iter(0..leads)
        .map(|i| {
            let service = service.clone();
            async move {
                let started = Instant::now();
                let data = json!({"schema_version": 1, "tenant_id": "acme", "call_id": format!("CALpush{i:06}")});
                let outcome = on_analysis::stage::process(&service, message(&data, &format!("m{i}"))).await;
                if outcome.committed() {
                    service.flush().await;
                }
                (outcome.name(), started.elapsed().as_micros() as u64)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let (wall, cpu) = (t0.elapsed(), cpu_time().saturating_sub(cpu0));
    let delivered = results.iter().filter(|(o, _)| *o == "delivered").count();
    anyhow::ensure!(
        delivered == leads,
        "{} of {leads} leads were not delivered: {:?}",
        leads - delivered,
        &results[..3]
    );
    anyhow::ensure!(crm.received.load(Ordering::Relaxed) == leads, "the CRM did not get one push per lead");
    let mut latencies: Vec<u64> = results.iter().map(|(_, us)| *us).collect();
    latencies.sort_unstable();
    println!("lead delivery (on-analysis), embedded backends, signed pushes to a local CRM that answers at once");
    println!("leads {leads}, concurrency {concurrency}");
    println!("throughput      {:>10.0} pushes/s", leads as f64 / wall.as_secs_f64());
    println!(
        "latency ms      p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        pct(&latencies, 50.0),
        pct(&latencies, 95.0),
        pct(&latencies, 99.0),
        pct(&latencies, 100.0)
    );
    println!("cpu per push    {:>10.0} µs (function and CRM fake together)", cpu.as_micros() as f64 / leads as f64);
    println!("peak rss        {:>10.1} MB", crate::bench_stage::peak_rss_mb());

    // 2. Recovery: the same service on a simulated clock, the retry messages held and delivered when due.
    let clock = Arc::new(SimClock(Mutex::new(Utc::now())));
    let held = Arc::new(Held::default());
    let mut ports = service.ports.clone();
    ports.clock = clock.clone();
    ports.publisher = held.clone();
    let sim = Delivery { ports, policy: service.policy.clone() };
    for i in 0..backlog {
        analysed(e.state.as_ref(), "acme", &format!("CALdown{i:06}")).await?;
    }
    crm.down.store(true, Ordering::Relaxed);
    let pushed_before = crm.received.load(Ordering::Relaxed);
    let step = |msg: Value, id: String| {
        let sim = sim.clone();
        async move {
            let outcome = on_crm_retry::stage::process(&sim, message(&msg, &id)).await;
            if outcome.committed() {
                sim.flush().await;
            }
            outcome
        }
    };
    for i in 0..backlog {
        let data = json!({"schema_version": 1, "tenant_id": "acme", "call_id": format!("CALdown{i:06}")});
        let outcome = on_analysis::stage::process(&sim, message(&data, &format!("d{i}"))).await;
        if outcome.committed() {
            sim.flush().await;
        }
    }
    let due = |m: &Value| serde_json::from_value::<CrmRetry>(m.clone()).map(|r| r.not_before).unwrap_or_default();
    let drive = |until: Option<DateTime<Utc>>| {
        let (held, clock) = (held.clone(), clock.clone());
        async move {
            let mut outcomes: Vec<Outcome> = vec![];
            let mut last = None;
            for n in 0.. {
                let next = {
                    let mut all = held.0.lock().expect("held");
                    all.sort_by_key(due);
                    match all.first() {
                        Some(m) if until.is_none_or(|u| due(m) <= u) => Some(all.remove(0)),
                        _ => None,
                    }
                };
                let Some(next) = next else { break };
                {
                    let mut now = clock.0.lock().expect("clock");
                    *now = (*now).max(due(&next));
                }
                let outcome = step(next, format!("r{n}")).await;
                if matches!(outcome, Outcome::Delivered { .. }) {
                    last = Some(clock.now());
                }
                outcomes.push(outcome);
            }
            (outcomes, last)
        }
    };
    let outage_end = clock.now() + chrono::Duration::minutes(10);
    let (during, _) = drive(Some(outage_end)).await;
    *clock.0.lock().expect("clock") = outage_end;
    let pushes_during = crm.received.load(Ordering::Relaxed) - pushed_before;
    crm.down.store(false, Ordering::Relaxed);
    let recovered_at = clock.now();
    let t1 = Instant::now();
    let (after, last) = drive(None).await;
    let drain_wall = t1.elapsed();
    let delivered = after.iter().filter(|o| matches!(o, Outcome::Delivered { .. })).count();
    anyhow::ensure!(delivered == backlog, "{delivered} of {backlog} leads delivered after the recovery");
    let drained = last.map_or(0.0, |l| (l - recovered_at).num_milliseconds() as f64 / 1000.0);
    let deferred = during.iter().filter(|o| o.name() == "deferred").count();
    println!();
    println!("recovery: {backlog} leads arrive while the CRM is down for 10 minutes, then it recovers");
    println!(
        "policy          breaker {} failures / {} s cool-down; backoff {} s doubling to {} s, half jitter",
        sim.policy.breaker.threshold,
        sim.policy.breaker.cool_down_secs,
        sim.policy.schedule.policy.base.as_secs(),
        sim.policy.schedule.policy.max.as_secs()
    );
    println!(
        "during outage   {} retries handled, {deferred} held back by the open circuit, {pushes_during} pushes reached the CRM",
        during.len()
    );
    println!("drained after   {drained:>10.1} s (simulated clock: the policy's waits), every lead once");
    println!("drain work      {:>10.0} ms wall for {} deliveries", drain_wall.as_secs_f64() * 1e3, after.len());
    Ok(())
}
