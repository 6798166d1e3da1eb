//! The fault suite's crash day (issue 9): the real `callflow` binary (`callflow serve`'s one process: intake,
//! outbox, router, every function, SQLite with fsync) against the vendor fakes running in this test, killed with
//! SIGKILL at random (seeded) moments while 30 calls' webhooks come in — a few twice, two never (CallRail lost
//! them) — and started again on the same data directory each time. A webhook that reaches a dead host is lost:
//! CallRail never retries. After the last restart an operator runs `callflow cleanup run --job reconciliation`,
//! which lists the account's calls through CallRail's API (the fake lists every call) and ingests the missing
//! ones. Then every call the fake CallRail knows must reach its right terminal state, and each lead call must be
//! created at the CRM exactly once (a push repeated after a kill is answered 409 by the CRM: counted, allowed).

mod chain;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callflow::domain::signature::sign_callrail;
use callflow_host::vendors::{self, Vendor, Vendors};
use chain::{ACCOUNT, ACME, expected_state, is_lead, until};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const CALLS: usize = 30;
const KILLS: usize = 5;
/// Calls whose webhook CallRail never sends (lost on its side): only reconciliation can find them.
const NEVER_SENT: usize = 2;

fn seed() -> u64 {
    std::env::var("CALLFLOW_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x0009_c4a5)
}

/// The served binary, killed if the test ends early (a failed assertion must not leave a server running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn callflow(vars: &[(String, String)], log: &Path) -> Command {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callflow"));
    cmd.envs(vars.iter().cloned()).stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
    cmd
}

/// An operator's command against the same data directory (its output captured).
fn cli(vars: &[(String, String)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_callflow")).envs(vars.iter().cloned()).args(args).output().unwrap()
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Every call of Acme's in the state file: id → (state, reason).
fn calls(db: &Path) -> BTreeMap<String, (String, String)> {
    let Ok(c) = rusqlite::Connection::open(db) else { return BTreeMap::new() };
    let Ok(mut stmt) =
        c.prepare("SELECT call_id, state, COALESCE(state_reason, '') FROM calls WHERE tenant_id = 'acme-remodeling'")
    else {
        return BTreeMap::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
}

/// A call's stage claims (`stage_runs`): key, whether a lease is held and until when, attempts, done.
fn stage_runs(db: &Path, call: &str) -> String {
    let Ok(c) = rusqlite::Connection::open(db) else { return String::new() };
    let Ok(mut stmt) = c.prepare(
        "SELECT stage_key, lease IS NOT NULL, COALESCE(lease_until, 0), attempts, done_at IS NOT NULL FROM stage_runs
         WHERE call_id = ?1 ORDER BY stage_key",
    ) else {
        return String::new();
    };
    let now = chrono::Utc::now().timestamp_micros();
    let rows = stmt.query_map([call], |r| {
        let (key, held, until, attempts, done): (String, bool, i64, u32, bool) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        let lease = if held { format!("leased for {:.0} s more", (until - now) as f64 / 1e6) } else { "free".into() };
        Ok(format!("{key}: {lease}, {attempts} attempts{}", if done { ", done" } else { "" }))
    });
    rows.map(|r| r.flatten().collect::<Vec<_>>().join("; ")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_five_times_during_a_day_of_calls_nothing_lost_no_lead_twice() {
    let started = Instant::now();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let vendors = Vendors::new();
    let vendor_url = vendors::serve(vendors.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The real durability (fsync on every commit), and reconciliation looking at everything but the last minute
    // (its shortest settling time).
    let vars = chain::host_env(
        dir.path(),
        &vendor_url,
        &[],
        &[("PORT", &port.to_string()), ("CALLFLOW_RECONCILE_SETTLE_MINS", "0"), ("RUST_LOG", "warn")],
    );
    let db = dir.path().join("data/state.sqlite");
    let log = dir.path().join("callflow.log");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let healthy = async || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "callflow did not start within 30 s:\n{}", tail(&log));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // The day: every call listed in CallRail's API; its webhook sent once, some twice, two never; shuffled and
    // paced 40–200 ms apart.
    let ids: Vec<String> = (0..CALLS).map(|n| chain::call_id(0xc4a5, n)).collect();
    let mut plan = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let body = chain::post_call(id, n);
        vendors.list_call(ACCOUNT, chain::listed(&body));
        if n >= CALLS - NEVER_SENT {
            continue;
        }
        let copies = if rng.random_bool(0.25) { 2 } else { 1 };
        for _ in 0..copies {
            plan.push((id.clone(), body.to_string()));
        }
    }
    plan.shuffle(&mut rng);
    let gaps: Vec<u64> = plan.iter().map(|_| rng.random_range(40..=200)).collect();
    let duplicates = plan.len() - (CALLS - NEVER_SENT);
    // Kills: each after 300–1500 ms of the host being up; it stays down 100–600 ms (webhooks meanwhile are lost),
    // then starts again on the same data directory.
    let uptimes: Vec<(u64, u64)> =
        (0..KILLS).map(|_| (rng.random_range(300..=1500), rng.random_range(100..=600))).collect();

    let mut child = Reaped(callflow(&vars, &log).spawn().unwrap());
    healthy().await;
    let key = chain::callrail_key();
    let sender = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/webhooks/callrail/{ACME}"));
        async move {
            let mut sends = Vec::new();
            for ((id, body), gap) in plan.into_iter().zip(gaps) {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                let sig = sign_callrail(&key, body.as_bytes());
                let req = client.post(&url).header("content-type", "application/json").header("signature", sig);
                let req = req.body(body);
                sends.push(tokio::spawn(async move { (id, req.send().await.map_or(0, |r| r.status().as_u16())) }));
            }
            futures::future::join_all(sends).await.into_iter().map(Result::unwrap).collect::<Vec<_>>()
        }
    });
    let mut downtime = Duration::ZERO;
    for (uptime, pause) in &uptimes {
        tokio::time::sleep(Duration::from_millis(*uptime)).await;
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        let down = Instant::now();
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        child = Reaped(callflow(&vars, &log).spawn().unwrap());
        healthy().await;
        downtime += down.elapsed();
    }
    let answers = sender.await.unwrap();
    let accepted: BTreeSet<&str> = answers.iter().filter(|(_, s)| *s == 200).map(|(id, _)| id.as_str()).collect();
    let failed = answers.iter().filter(|(_, s)| *s != 200).count();
    assert!(answers.iter().all(|(_, s)| matches!(s, 0 | 200 | 503)), "unexpected answers: {answers:?}");

    // Every accepted call is kept (durable before the answer), whatever the kills did after.
    let known = calls(&db);
    for id in &accepted {
        assert!(known.contains_key(*id), "{id} was answered 200 and is not in the state store");
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !known.contains_key(*id)).collect();
    assert!(missing.len() >= NEVER_SENT, "the never-sent calls are unknown before reconciliation");

    // The operator's reconciliation finds exactly the calls whose webhook never arrived.
    let out = cli(&vars, &["cleanup", "run", "--job", "reconciliation", "--json"]);
    assert!(out.status.success(), "cleanup run failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acme = report["jobs"].as_array().unwrap().iter().find(|j| j["tenant_id"] == ACME).unwrap().clone();
    assert_eq!(acme["complete"], true, "{acme}");
    let ingested = acme["counts"]["ingested"].as_u64().unwrap_or(0);
    assert_eq!(ingested as usize, missing.len(), "reconciliation ingested exactly the missing calls: {acme}");

    // Every call the fake CallRail knows reaches its terminal state.
    until("every call terminal after the crashes", Duration::from_secs(120), || async {
        let now = calls(&db);
        for id in &ids {
            let (state, reason) = now.get(id).cloned().unwrap_or_default();
            if state != expected_state(id).as_str() {
                return Err(format!(
                    "{id} ({}) is {state:?} {reason:?}, expected {}; its stage claims: {}; log:\n{}",
                    vendors::script_of(id),
                    expected_state(id),
                    stage_runs(&db, id),
                    tail(&log)
                ));
            }
        }
        Ok(())
    })
    .await;

    // One lead per lead call at the CRM; robocalls none. A lead pushed again after a kill (the push answered,
    // the process killed before its commit) is refused by the CRM's idempotency key: a conflict, not a lead.
    let mut crm: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for (key, lead) in vendors.crm_leads() {
        let call = key.split_once(':').map_or(key.clone(), |(_, c)| c.to_owned());
        let e = crm.entry(call).or_default();
        (e.0, e.1, e.2) = (e.0 + lead.pushes, e.1 + lead.created, e.2 + lead.conflicts);
    }
    let (mut pushes, mut conflicts, mut leads) = (0, 0, 0);
    for id in &ids {
        let (p, created, c) = crm.get(id).copied().unwrap_or_default();
        if is_lead(id) {
            assert_eq!(created, 1, "lead call {id}: {created} leads created at the CRM ({p} pushes, {c} conflicts)");
            leads += 1;
        } else {
            assert_eq!(p, 0, "robocall {id} reached the CRM");
        }
        (pushes, conflicts) = (pushes + p, conflicts + c);
    }
    assert_eq!(crm.len(), leads, "no other lead at the CRM: {crm:?}");
    let dead = cli(&vars, &["dead-letters", "list", "--json"]);
    let dead: serde_json::Value = serde_json::from_slice(&dead.stdout).unwrap_or_default();
    let (speech, gemini) = (vendors.requests(Vendor::Speech).0, vendors.requests(Vendor::Gemini).0);
    eprintln!(
        "SUMMARY crash day (seed {seed}): {CALLS} calls ({leads} leads); {} webhooks sent ({duplicates} duplicates, \
         {NEVER_SENT} calls never sent), {} accepted, {failed} lost to a dead host; {KILLS} SIGKILLs (down {:.1} s in \
         all); {} calls unknown after the kills, {ingested} ingested by reconciliation; every call terminal, none \
         lost; {pushes} CRM pushes, {leads} leads created once each, {conflicts} conflicts (repeats after a kill); \
         Speech {speech}, Gemini {gemini} requests; {} router dead letters; {:.1} s",
        answers.len(),
        answers.len() - failed,
        downtime.as_secs_f64(),
        missing.len(),
        dead["events"].as_array().map_or(0, Vec::len),
        started.elapsed().as_secs_f64()
    );
}

/// The minimal case behind the crash day's stuck calls: a process killed while a stage holds its claim on a call
/// (here on-audio-uploaded's `transcribe:{generation}`, taken and never finished) leaves that claim leased for the
/// trigger's timeout and a minute (11 minutes for recordings). The restarted host redelivers the event at once,
/// and the redelivery must be able to take the claim: a state file belongs to one host process, so at start-up
/// its stage claims are stale like its outbox leases. (Before the fix the redelivery was answered 503 `busy` until
/// the router's attempts ran out, and the call stayed `recording_stored` until the stuck-calls job re-drove it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_claim_left_by_a_killed_process_does_not_block_the_redelivery() {
    use callflow::domain::{CallId, CallState, TenantId};
    use callflow::ports::{Claim, StateStore};
    use tower::ServiceExt;
    let vendors = Vendors::new();
    let vendor_url = vendors::serve(vendors.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vars = chain::host_env(dir.path(), &vendor_url, &[], &[]);
    let settings = || {
        callflow_host::Settings::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .unwrap()
    };
    let id = chain::call_id(0xc4a6, 0);
    let (tenant, call) = (TenantId::parse(ACME).unwrap(), CallId::parse(&id).unwrap());
    {
        // The first process: the webhook is accepted, its recording fetched; its finalize event is claimed by
        // on-audio-uploaded, and the process dies mid-transcription (nothing else runs here).
        let host = callflow_host::Host::open(settings()).await.unwrap();
        let body = chain::post_call(&id, 0).to_string();
        let req = axum::http::Request::post(format!("/webhooks/callrail/{ACME}"))
            .header("content-type", "application/json")
            .header("signature", sign_callrail(&chain::callrail_key(), body.as_bytes()))
            .body(axum::body::Body::from(body))
            .unwrap();
        assert_eq!(on_webhook::app(host.webhook.clone()).oneshot(req).await.unwrap().status(), 200);
        on_webhook::outbox::drain_pass(&host.webhook).await;
        let events = host.router.pending().await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        let generation = serde_json::from_slice::<serde_json::Value>(&events[0].body).unwrap()["generation"]
            .as_str()
            .unwrap()
            .to_owned();
        let key = format!("transcribe:{generation}");
        let lease = Duration::from_secs(660);
        let claimed = host.embedded.state.claim_stage(&tenant, &call, &key, lease).await.unwrap();
        assert!(matches!(claimed, Claim::Claimed(_)), "{claimed:?}");
    }
    // The restart: the same data directory, and the router delivers the waiting event at once.
    let host = callflow_host::Host::open(settings()).await.unwrap();
    let delivered = host.router.deliver_due().await;
    assert_eq!(
        delivered.first(),
        Some(&callflow::adapters::local_router::Delivery::Acked),
        "the redelivery after the restart was not taken: the dead process's claim still holds"
    );
    let state = host.embedded.state.call(&tenant, &call).await.unwrap().unwrap().state;
    assert!(state != CallState::RecordingStored, "transcribed after the restart, not {state}");
    assert_eq!(vendors.requests(Vendor::Speech).0, 1);
    eprintln!(
        "SUMMARY a claim held by a killed process: released when the host starts again; the waiting event's first \
         redelivery took it and the call went on ({state}), Speech asked once"
    );
}
