//! `callflow bench-chain`: calls through all six stages of the one-process host on embedded defaults (SQLite with
//! fsync, the object directory, the durable local router), with the vendors faked at zero latency by real clients
//! over loopback HTTP (`vendors.rs`: CallRail's API, Speech-to-Text, Gemini, the tenant's custom-webhook CRM).
//! Signed CallRail webhooks come from a load generator on its own thread; the fakes run on theirs. Their CPU is
//! left out of the figures (read per thread from /proc), the rest of the process is callflow.
//!
//! 1. Stage by stage (CPU per call per stage): the router's functions are unhosted, so events wait; the webhooks
//!    are sent and their recordings fetched, then each stage is hosted in turn and runs the whole backlog. Each
//!    stage's process CPU, its share of the router and the state store included, over the calls it handled. One
//!    lead in 50 fails its first push, so on-crm-retry delivers those; one webhook in 100 is never sent, so the
//!    cleanup run's reconciliation finds those calls in CallRail's listing and ingests them.
//! 2. Throughput: a burst of calls with every stage hosted; calls/s from the first webhook to the last call's end.
//! 3. Latency at a fixed rate (open loop, from each webhook's scheduled time to its lead at the CRM).
//!
//! Every call is checked at the end of each part: its terminal state (a robocall `spam`, a lead `delivered`) and
//! exactly one lead at the CRM per lead call.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use callflow::domain::{CallId, CallState, TenantId};
use callflow::ports::{CallScan, StateStore};
use callflow_host::vendors::{self, Vendor, Vendors};
use callflow_host::{Host, Settings};
use serde_json::Value;

use crate::bench::pct;
use crate::bench_stage::peak_rss_mb;

const TENANT: &str = "acme-remodeling";
const ACCOUNT: &str = "ACC8154748ae6bd4e278a7cddd38a662f4f";
/// CPU seconds per thread name of this process, from /proc/self/task (clock ticks of 10 ms).
fn cpu_by_thread() -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(name).or_default() += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

/// CPU seconds of callflow itself: the process less the vendor fakes and the load generator.
fn callflow_cpu() -> f64 {
    let threads = cpu_by_thread();
    let all: f64 = threads.values().sum();
    all - threads.get("vendor-fakes").copied().unwrap_or(0.0) - threads.get("loadgen").copied().unwrap_or(0.0)
}

/// A signed post-call webhook for a new call, from the fixture payload.
fn webhook(template: &Value, call_id: &str, n: usize, started: chrono::DateTime<chrono::Utc>) -> Value {
    let mut body = template.clone();
    body["resource_id"] = call_id.into();
    body["id"] = (800_000_000 + n).into();
    body["customer_phone_number"] = format!("+1512555{:04}", n % 10_000).into();
    body["duration"] = "45".into();
    body["recording_duration"] = "44".into();
    body["start_time"] = started.to_rfc3339().into();
    body
}

/// How the load generator sends.
#[derive(Clone, Copy)]
enum Pace {
    /// As fast as `n` connections go; a call's time is when its request started.
    Burst(usize),
    /// Open loop at this many calls/s; a call's time is when it was due.
    Rate(f64),
}

/// Sends the webhooks from a thread of its own ("loadgen"); returns each call's send time and status.
async fn send(url: String, key: Vec<u8>, calls: Vec<(String, Bytes)>, pace: Pace) -> Vec<(String, Instant, u16)> {
    let handle = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("loadgen runtime");
            rt.block_on(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
                let one = |(id, body): (String, Bytes), at: Instant| {
                    let (client, url) = (client.clone(), url.clone());
                    let sig = callflow::domain::signature::sign_callrail(&key, &body);
                    async move {
                        let status = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("signature", sig)
                            .body(body)
                            .send()
                            .await
                            .map_or(0, |r| r.status().as_u16());
                        (id, at, status)
                    }
                };
                use futures::StreamExt;
                match pace {
                    Pace::Burst(n) => {
                        futures::stream::iter(calls)
                            .map(|c| one(c, Instant::now()))
                            .buffer_unordered(n)
                            .collect::<Vec<_>>()
                            .await
                    }
                    Pace::Rate(r) => {
                        let start = Instant::now();
                        let mut tasks = Vec::with_capacity(calls.len());
                        for (i, c) in calls.into_iter().enumerate() {
                            let due = start + Duration::from_secs_f64(i as f64 / r);
                            tokio::time::sleep_until(due.into()).await;
                            tasks.push(tokio::spawn(one(c, due)));
                        }
                        futures::future::join_all(tasks).await.into_iter().flatten().collect()
                    }
                }
            })
        })
        .expect("loadgen thread");
    tokio::task::spawn_blocking(move || handle.join().expect("loadgen")).await.expect("join loadgen")
}

async fn count(state: &dyn StateStore, states: &[CallState]) -> usize {
    let scan = CallScan { states: states.to_vec(), limit: 1_000_000, ..CallScan::default() };
    state.scan_calls(&TenantId::parse(TENANT).expect("tenant"), &scan).await.map_or(0, |c| c.len())
}

/// Waits until `cheap()` holds (a counter of the fakes, polled every 5 ms), then until `exact()` does (a scan of
/// the state store, which costs CPU that would be counted as the stage's, so it runs only at the end).
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    cheap: impl Fn() -> bool,
    mut exact: impl FnMut() -> F,
) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < limit, "bench-chain: {what} did not happen within {limit:?}");
        if cheap() && exact().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const TERMINAL: [CallState; 4] = [CallState::Delivered, CallState::Spam, CallState::Skipped, CallState::DeadLettered];

struct Bench {
    host: Arc<Host>,
    vendors: Arc<Vendors>,
    webhook_url: String,
    key: Vec<u8>,
    template: Value,
    made: usize,
}

impl Bench {
    /// `n` new calls: (call id, signed body); also listed in CallRail's API, as the real account would list them.
    fn calls(&mut self, n: usize) -> Vec<(String, Bytes)> {
        let started = chrono::Utc::now() - chrono::Duration::hours(2);
        (0..n)
            .map(|_| {
                self.made += 1;
                let id = format!("CAL{:032x}", 0xbe9c_0000_0000_u64 + self.made as u64);
                let body = webhook(&self.template, &id, self.made, started);
                self.vendors.list_call(ACCOUNT, {
                    let mut listed = body.clone();
                    listed["id"] = id.clone().into();
                    listed
                });
                (id, Bytes::from(body.to_string()))
            })
            .collect()
    }

    /// Every one of `calls` in its right terminal state, and one lead at the CRM for each lead call.
    async fn check(&self, calls: &[String]) -> anyhow::Result<()> {
        let tenant = TenantId::parse(TENANT)?;
        let leads = self.vendors.crm_leads();
        let mut per_call: HashMap<&str, u32> = HashMap::new();
        for lead in leads.values() {
            *per_call.entry(lead.call_id.as_str()).or_default() += lead.created;
        }
        for id in calls {
            let call = self.host.embedded.state.call(&tenant, &CallId::parse(id)?).await?;
            let state = call.map(|c| c.state);
            let lead = vendors::script_of(id) != "spam";
            let want = if lead { CallState::Delivered } else { CallState::Spam };
            anyhow::ensure!(state == Some(want), "call {id}: {state:?}, expected {want:?}");
            let created = per_call.get(id.as_str()).copied().unwrap_or(0);
            anyhow::ensure!(created == u32::from(lead), "call {id}: {created} leads created at the CRM");
        }
        Ok(())
    }

    fn lead_latencies(&self, sent: &[(String, Instant, u16)]) -> Vec<u64> {
        let created: HashMap<String, Instant> =
            self.vendors.crm_leads().into_values().filter_map(|l| Some((l.call_id, l.first_created?))).collect();
        let mut out: Vec<u64> = sent
            .iter()
            .filter_map(|(id, at, _)| created.get(id).map(|t| t.saturating_duration_since(*at).as_micros() as u64))
            .collect();
        out.sort_unstable();
        out
    }
}

async fn setup(dir: &Path) -> anyhow::Result<Bench> {
    let vendors = Vendors::new();
    let vendor_url = vendors::serve_on_own_thread(vendors.clone())?;
    let fixtures = std::env::current_dir()?.join("fixtures");
    let secret = |name: &str| format!("file:{}", fixtures.join("secrets").join(name).display());
    let tenants = dir.join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenant]]\nid = \"{TENANT}\"\nname = \"Acme Remodeling\"\n\n[tenant.callrail]\naccount_id = \"{ACCOUNT}\"\n\
             company_ids = [\"COM8154748ae6bd4e278a7cddd38a662f4f\"]\nsigning_keys = [\"{}\"]\napi_key = \"{}\"\n\n\
             [tenant.crm]\nprovider = \"webhook\"\ncredential = \"{}\"\nurl = \"{vendor_url}/crm/leads\"\n",
            secret("acme-callrail-signing-key"),
            secret("acme-callrail-api-key"),
            secret("acme-crm-webhook-secret"),
        ),
    )?;
    let vars: Vec<(&str, String)> = vec![
        ("CALLFLOW_DATA_DIR", dir.join("data").display().to_string()),
        ("CALLFLOW_TENANTS", tenants.display().to_string()),
        ("CALLFLOW_CALLRAIL_API", vendor_url.clone()),
        ("CALLFLOW_TRANSCRIBER", "google".into()),
        ("CALLFLOW_SPEECH_ENDPOINT", vendor_url.clone()),
        ("CALLFLOW_ANALYZER", "gemini".into()),
        ("CALLFLOW_GEMINI_ENDPOINT", vendor_url.clone()),
        // A failed first push is retried by on-crm-retry after a second, not the default 30 s.
        ("CALLFLOW_CRM_BACKOFF_SECS", "1".into()),
    ];
    let settings = Settings::from_lookup(|name| {
        vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok())
    })?;
    let host = Arc::new(Host::open(settings).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let webhook_url = format!("http://{}/webhooks/callrail/{TENANT}", listener.local_addr()?);
    tokio::spawn(axum::serve(listener, on_webhook::app(host.webhook.clone())).into_future());
    let key = std::fs::read(fixtures.join("secrets/acme-callrail-signing-key"))?;
    let key = String::from_utf8(key)?.trim().as_bytes().to_vec();
    let template: Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("callrail/post-call-resource-ids.json"))?)?;
    Ok(Bench { host, vendors, webhook_url, key, template, made: 0 })
}

fn ms(us: f64) -> String {
    format!("{:.0} µs", us)
}

pub async fn run(calls: usize, rate: u32, seconds: u64, concurrency: usize) -> anyhow::Result<()> {
    // In $TMPDIR (the data directory of embedded defaults is ./.data; any local disk will do).
    let dir = tempfile::Builder::new().prefix("callflow-bench-chain-").tempdir()?;
    let mut b = setup(dir.path()).await?;
    let state = b.host.embedded.state.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (outbox_stop_tx, outbox_stop_rx) = tokio::sync::watch::channel(false);
    let mut outbox = tokio::spawn(on_webhook::outbox::run(b.host.webhook.clone(), outbox_stop_rx));
    tokio::spawn(b.host.router.clone().run(stop_rx.clone()));
    tokio::spawn({
        let host = b.host.clone();
        async move { host.publish_leftovers(stop_rx).await }
    });
    let limit = Duration::from_secs(120 + calls as u64 / 20);
    let lead_calls = |ids: &[String]| ids.iter().filter(|id| vendors::script_of(id) != "spam").count();

    // --- 1. Stage by stage ------------------------------------------------------------------------------------
    println!("bench-chain: embedded defaults (SQLite fsync on), vendors faked at zero latency over loopback HTTP");
    println!("1. stage by stage: {calls} calls, each stage running the whole backlog alone");
    b.vendors.fail_first_crm_push_every(50);
    for name in Host::ROUTED {
        b.host.router.unhost(name);
    }
    let all = b.calls(calls);
    let ids: Vec<String> = all.iter().map(|(id, _)| id.clone()).collect();
    // One webhook in 100 never arrives (CallRail does not retry): reconciliation is to find those calls.
    let (sent, missed): (Vec<_>, Vec<_>) = all.into_iter().enumerate().partition(|(i, _)| i % 100 != 99);
    let sent: Vec<(String, Bytes)> = sent.into_iter().map(|(_, c)| c).collect();
    let sent_ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let n = sent.len();
    let mut stages: Vec<(&str, f64, usize, f64)> = Vec::new();
    let mut phase = |name: &'static str, cpu0: f64, t0: Instant, handled: usize| {
        stages.push((name, callflow_cpu() - cpu0, handled, t0.elapsed().as_secs_f64()));
    };

    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    let answers = send(b.webhook_url.clone(), b.key.clone(), sent, Pace::Burst(concurrency)).await;
    anyhow::ensure!(answers.iter().all(|(_, _, s)| *s == 200), "a webhook was not accepted");
    let asked = |v: Vendor| b.vendors.requests(v).0 as usize;
    // recording.json and the recording: two requests a call.
    until(
        "the recordings' fetch",
        limit,
        || asked(Vendor::CallRail) >= 2 * n,
        || async { count(state.as_ref(), &[CallState::RecordingStored]).await == n },
    )
    .await;
    phase("on-webhook (intake, recording fetch)", cpu0, t0, n);

    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    b.host.mount("on-audio-uploaded");
    until(
        "transcription",
        limit,
        || asked(Vendor::Speech) >= n,
        || async { count(state.as_ref(), &[CallState::Transcribed]).await == n },
    )
    .await;
    phase("on-audio-uploaded (Speech-to-Text)", cpu0, t0, n);
    b.host.router.unhost("on-audio-uploaded");

    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    b.host.mount("on-transcript");
    until(
        "analysis",
        limit,
        || asked(Vendor::Gemini) >= n,
        || async { count(state.as_ref(), &[CallState::Analysed]).await == n },
    )
    .await;
    phase("on-transcript (redaction, Gemini)", cpu0, t0, n);
    b.host.router.unhost("on-transcript");

    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    b.host.mount("on-analysis");
    let vendors = b.vendors.clone();
    let leads_sent = sent_ids.iter().filter(|id| vendors::script_of(id) != "spam").count();
    until(
        "the first pushes",
        limit,
        || asked(Vendor::Crm) >= leads_sent,
        || async { count(state.as_ref(), &TERMINAL).await + vendors.requests(Vendor::Crm).1 as usize == n },
    )
    .await;
    let retried = vendors.requests(Vendor::Crm).1 as usize;
    phase("on-analysis (workflow, CRM push)", cpu0, t0, n);
    b.host.router.unhost("on-analysis");

    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    b.host.mount("on-crm-retry");
    until(
        "the retried pushes",
        limit,
        || vendors.leads_created() as usize >= leads_sent,
        || async { count(state.as_ref(), &TERMINAL).await == n },
    )
    .await;
    phase("on-crm-retry (failed first pushes)", cpu0, t0, retried);
    b.host.router.unhost("on-crm-retry");

    // The run as the schedule would start it, alone: the outbox that would fetch the ingested calls' recordings
    // waits until it is done.
    outbox_stop_tx.send(true)?;
    let _ = (&mut outbox).await;
    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    // Every job, as the schedule asks; a run bounded by its item budget leaves the rest to the next run.
    let request: callflow::domain::cleanup::RunRequest = serde_json::from_str("{}")?;
    let (mut reconciled, mut runs) = (0, 0);
    loop {
        runs += 1;
        let report = cleanup_scheduled::run::run(&b.host.cleanup, &request, &format!("bench-chain-{runs}")).await?;
        reconciled += report
            .reports
            .iter()
            .filter(|r| r.job == callflow::domain::cleanup::Job::Reconciliation)
            .map(|r| r.counts.get("ingested").copied().unwrap_or(0))
            .sum::<u64>();
        if report.reports.iter().all(|r| r.complete) || runs == 20 {
            break;
        }
    }
    phase("cleanup-scheduled (runs of all four jobs)", cpu0, t0, calls);
    anyhow::ensure!(reconciled as usize == missed.len(), "reconciliation ingested {reconciled}, not {}", missed.len());
    // Then everything runs, and the reconciled calls go the whole way.
    let (_outbox_stop_tx, outbox_stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(on_webhook::outbox::run(b.host.webhook.clone(), outbox_stop_rx));
    for name in Host::ROUTED {
        b.host.mount(name);
    }
    until("the reconciled calls", limit, || true, || async { count(state.as_ref(), &TERMINAL).await == calls }).await;
    b.check(&ids).await?;

    println!("  {:<46} {:>9} {:>10} {:>12}", "stage", "calls", "wall s", "CPU per call");
    let mut total = 0.0;
    for (name, cpu, handled, wall) in &stages {
        let per_call = cpu * 1e6 / *handled.max(&1) as f64;
        let over_all = cpu * 1e6 / calls as f64;
        total += over_all;
        let note =
            if *handled != calls { format!("  ({} per call of the {calls})", ms(over_all)) } else { String::new() };
        println!("  {name:<46} {handled:>9} {wall:>10.2} {:>12}{note}", ms(per_call));
    }
    println!("  {:<46} {:>9} {:>10} {:>12}", "total per call", calls, "", ms(total));
    println!(
        "  {} leads and {} robocalls; {retried} first pushes failed on purpose and were delivered by on-crm-retry; \
         {reconciled} missed webhooks ingested by reconciliation ({runs} cleanup runs); every call checked: one lead each",
        lead_calls(&ids),
        calls - lead_calls(&ids)
    );

    // --- 2. Throughput -----------------------------------------------------------------------------------------
    b.vendors.fail_first_crm_push_every(0);
    let burst = b.calls(calls);
    let ids: Vec<String> = burst.iter().map(|(id, _)| id.clone()).collect();
    let before = count(state.as_ref(), &TERMINAL).await;
    let created = b.vendors.leads_created() as usize;
    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    let answers = send(b.webhook_url.clone(), b.key.clone(), burst, Pace::Burst(concurrency)).await;
    let accepted = t0.elapsed().as_secs_f64();
    anyhow::ensure!(answers.iter().all(|(_, _, s)| *s == 200), "a webhook was not accepted");
    until(
        "the burst",
        limit,
        || b.vendors.leads_created() as usize >= created + lead_calls(&ids),
        || async { count(state.as_ref(), &TERMINAL).await == before + calls },
    )
    .await;
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), callflow_cpu() - cpu0);
    b.check(&ids).await?;
    let l = b.lead_latencies(&answers);
    println!("2. throughput: {calls} calls, {concurrency} connections, every stage hosted");
    println!(
        "  {:.0} calls/s through the chain (webhooks accepted at {:.0}/s); {:.2} ms CPU per call; \
         webhook → CRM lead p50 {:.1} ms, p95 {:.1} ms (queueing included)",
        calls as f64 / wall,
        calls as f64 / accepted,
        cpu * 1e3 / calls as f64,
        pct(&l, 50.0),
        pct(&l, 95.0)
    );

    // --- 3. Latency at a fixed rate ----------------------------------------------------------------------------
    let total = rate as usize * seconds as usize;
    let paced = b.calls(total);
    let ids: Vec<String> = paced.iter().map(|(id, _)| id.clone()).collect();
    let before = count(state.as_ref(), &TERMINAL).await;
    let created = b.vendors.leads_created() as usize;
    let (cpu0, t0) = (callflow_cpu(), Instant::now());
    let answers = send(b.webhook_url.clone(), b.key.clone(), paced, Pace::Rate(f64::from(rate))).await;
    anyhow::ensure!(answers.iter().all(|(_, _, s)| *s == 200), "a webhook was not accepted");
    until(
        "the paced calls",
        limit,
        || b.vendors.leads_created() as usize >= created + lead_calls(&ids),
        || async { count(state.as_ref(), &TERMINAL).await == before + total },
    )
    .await;
    let cpu = callflow_cpu() - cpu0;
    let busy = cpu / t0.elapsed().as_secs_f64();
    b.check(&ids).await?;
    let l = b.lead_latencies(&answers);
    println!("3. latency at {rate} calls/s for {seconds} s ({total} calls, open loop):");
    println!(
        "  webhook → CRM lead p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.2} ms CPU per call \
         ({:.2} cores busy)",
        pct(&l, 50.0),
        pct(&l, 95.0),
        pct(&l, 99.0),
        pct(&l, 100.0),
        cpu * 1e3 / total as f64,
        busy
    );
    println!("peak RSS {:.0} MB (the whole process: callflow, the vendor fakes and the load generator)", peak_rss_mb());
    let _ = stop_tx.send(true);
    Ok(())
}
