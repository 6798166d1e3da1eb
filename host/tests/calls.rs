//! `callflow calls show` as an operator uses it: a call that went the whole way through the host (vendors faked
//! over loopback HTTP) is shown with its state, objects, analysis and CRM record, the caller's contact details
//! masked unless asked for; an unknown call is a clear error.

mod chain;
mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use callflow::domain::signature::sign_callrail;
use callflow::domain::{CallId, CallState, TenantId};
use callflow::ports::StateStore;
use callflow_host::vendors::{self, Mode, Vendor, Vendors};
use callflow_host::{Host, Settings};
use chain::{ACME, is_lead, until};
use serde_json::Value;

fn cli(vars: &[(String, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callflow"))
        .current_dir(common::repo())
        .envs(vars.iter().cloned())
        .args(args)
        .output()
        .unwrap()
}

/// The host against the fakes, serving the public endpoint, with its workers running.
struct Running {
    _dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
    vendors: Arc<Vendors>,
    host: Arc<Host>,
    url: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start() -> Running {
    let vendors = Vendors::new();
    let vendor_url = vendors::serve(vendors.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vars = chain::host_env(dir.path(), &vendor_url, &[], &[]);
    let settings = Settings::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).unwrap();
    let host = Arc::new(Host::open(settings).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, on_webhook::app(host.webhook.clone())).into_future());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    drop(host.spawn_workers(stop_rx));
    Running { _dir: dir, vars, vendors, host, url, _stop: stop }
}

impl Running {
    /// A new lead call (its script at the fakes is a lead's), sent once; its id and the caller's number.
    async fn send_lead(&self, tag: u16) -> (String, String) {
        let id = (0..).map(|n| chain::call_id(tag, n)).find(|id| is_lead(id)).unwrap();
        let body = chain::post_call(&id, 7);
        let phone = body["customer_phone_number"].as_str().unwrap().to_owned();
        let body = body.to_string();
        let status = reqwest::Client::new()
            .post(format!("{}/webhooks/callrail/{ACME}", self.url))
            .header("content-type", "application/json")
            .header("signature", sign_callrail(&chain::callrail_key(), body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        (id, phone)
    }

    async fn until_state(&self, id: &str, want: CallState) {
        let tenant = TenantId::parse(ACME).unwrap();
        let call = CallId::parse(id).unwrap();
        until(&format!("{id} is {want}"), Duration::from_secs(60), || {
            let (host, tenant, call) = (self.host.clone(), tenant.clone(), call.clone());
            async move {
                match host.embedded.state.call(&tenant, &call).await.unwrap() {
                    Some(c) if c.state == want => Ok(()),
                    other => Err(format!("{:?}", other.map(|c| c.state))),
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_calls_whole_path_is_shown_with_the_caller_masked() {
    let r = start().await;
    let vars = &r.vars;
    let (id, phone) = r.send_lead(0x0c11).await;
    r.until_state(&id, CallState::Delivered).await;

    let out = cli(vars, &["calls", "show", "--tenant", ACME, &id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["call"]["state"], "delivered");
    assert_eq!(doc["call"]["call_id"], id.as_str());
    let recording = &doc["objects"]["recording"];
    assert!(recording["size"].as_u64().unwrap() > 0, "{recording}");
    assert!(recording["name"].as_str().unwrap().starts_with(&format!("{ACME}/{id}")));
    assert_eq!(doc["objects"]["transcript"]["name"], format!("{ACME}/{id}.json"));
    assert_eq!(doc["analysis"]["intent"], "new_lead");
    assert_eq!(doc["delivery"]["provider"], "webhook");
    assert_eq!(doc["delivery"]["attempts"], 1);
    assert_eq!(doc["dead_letters"], serde_json::json!([]));
    // The caller's number is masked by default, and only there when asked for.
    assert!(!stdout.contains(&phone), "the caller's phone is in the output: {stdout}");
    let revealed = cli(vars, &["calls", "show", "--tenant", ACME, &id, "--json", "--reveal"]);
    assert!(String::from_utf8_lossy(&revealed.stdout).contains(&phone));

    let text = cli(vars, &["calls", "show", "--tenant", ACME, &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    for line in ["state        delivered", "analysis     intent new_lead", "CRM          webhook record"] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }

    let missing = cli(vars, &["calls", "show", "--tenant", ACME, "CALffffffffffffffffffffffffffffffff"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no call CALffffffffffffffffffffffffffffffff"));
    let stranger = cli(vars, &["calls", "show", "--tenant", "nobody", &id]);
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no tenant \"nobody\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_the_crm_refused_is_listed_inspected_and_replayed_once_it_is_fixed() {
    let r = start().await;
    let vars = &r.vars;
    // A validation error is permanent: the lead is dead-lettered at once, kind `crm`.
    r.vendors.set(Vendor::Crm, Mode::Fail { status: 400, retry_after: None });
    let (id, _) = r.send_lead(0x0c12).await;
    r.until_state(&id, CallState::DeadLettered).await;

    let out = cli(vars, &["dead-letters", "list", "--tenant", ACME, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let letter = listed["work"].as_array().unwrap().iter().find(|w| w["call_id"] == id.as_str()).unwrap().clone();
    assert_eq!(letter["kind"], "crm");
    let letter_id = letter["id"].as_str().unwrap().to_owned();

    let out = cli(vars, &["dead-letters", "inspect", "--id", &letter_id, "--json"]);
    let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["call_id"], id.as_str());
    assert!(inspected["reason"].as_str().unwrap().contains("400"), "{inspected}");
    let shown = cli(vars, &["calls", "show", "--tenant", ACME, &id, "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["dead_letters"][0]["id"], letter_id.as_str());

    // The tenant fixed their CRM: the replay pushes the lead, once.
    r.vendors.set(Vendor::Crm, Mode::Up);
    let out = cli(vars, &["dead-letters", "replay-leads", "--tenant", ACME, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replayed["replayed"], serde_json::json!([letter_id]));
    r.until_state(&id, CallState::Delivered).await;
    let again = cli(vars, &["dead-letters", "replay-leads", "--tenant", ACME, "--json"]);
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["replayed"], serde_json::json!([]), "a replayed letter is not replayed twice");
    assert_eq!(r.vendors.crm_leads().values().filter(|l| l.call_id == id).count(), 1);

    let missing = cli(vars, &["dead-letters", "inspect", "--id", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_ingests_the_ranges_missing_calls_once_and_resumes_where_it_stopped() {
    let r = start().await;
    let vars = &r.vars;
    const ACCOUNT: &str = "ACC8154748ae6bd4e278a7cddd38a662f4f";
    // Three calls of the range at CallRail; one came by webhook, two never did.
    let (known, _) = r.send_lead(0x0c13).await;
    let ids: Vec<String> = (0..).map(|n| chain::call_id(0x0c14, n)).filter(|id| is_lead(id)).take(2).collect();
    r.vendors.list_call(ACCOUNT, chain::listed(&chain::post_call(&known, 7)));
    for (n, id) in ids.iter().enumerate() {
        r.vendors.list_call(ACCOUNT, chain::listed(&chain::post_call(id, 20 + n)));
    }
    let from = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    let to = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let args = |budget: &'static str| {
        vec![
            "backfill",
            "--tenant",
            ACME,
            "--from",
            &from,
            "--to",
            &to,
            "--per-page",
            "2",
            "--requests-per-hour",
            budget,
            "--json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<String>>()
    };
    let run = |a: Vec<String>| cli(vars, &a.iter().map(String::as_str).collect::<Vec<_>>());

    // A dry run lists what is missing and changes nothing.
    let mut dry = args("100");
    dry.push("--dry-run".into());
    let out = run(dry);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["counts"]["missing"], 2, "{report}");
    assert_eq!(report["counts"]["known"], 1);

    // One listing request allowed: page 1 of 2, then it stops (exit 1) with its place kept.
    let out = run(args("1"));
    assert_eq!(out.status.code(), Some(1));
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["complete"], false, "{first}");
    assert!(first["stopped"].as_str().unwrap().contains("run the same command again next hour"));
    assert_eq!(first["counts"]["listed"], 2);

    // The same command with a budget left resumes at page 2: every call listed once in all.
    let out = run(args("100"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(second["complete"], true, "{second}");
    assert_eq!(second["counts"]["listed"], 1, "page 2 only: {second}");
    let ingested =
        first["counts"]["ingested"].as_u64().unwrap_or(0) + second["counts"]["ingested"].as_u64().unwrap_or(0);
    let known_count = first["counts"]["known"].as_u64().unwrap_or(0) + second["counts"]["known"].as_u64().unwrap_or(0);
    assert_eq!((ingested, known_count), (2, 1));
    for id in &ids {
        r.until_state(id, CallState::Delivered).await;
    }
    let leads = r.vendors.crm_leads();
    for id in ids.iter().chain([&known]) {
        assert_eq!(leads.values().filter(|l| &l.call_id == id).count(), 1, "{id} reached the CRM once");
    }
    // Finished ranges are not listed again.
    let again = cli(vars, &["backfill", "--tenant", ACME, "--from", &from, "--to", &to]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("was backfilled already"));
}

/// Events the embedded router gave up on, replayed by id and by trigger: each goes back to the queue once, and a
/// wrong id or trigger is refused with the reason and moves nothing.
#[tokio::test]
async fn router_dead_letters_are_replayed_one_by_id_or_all_of_a_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let vars = chain::host_env(dir.path(), "http://127.0.0.1:1", &[], &[]);
    let data = std::path::PathBuf::from(&vars.iter().find(|(k, _)| k == "CALLFLOW_DATA_DIR").unwrap().1);
    let router_db = data.join("router.sqlite");
    let triggers = callflow::eventarc::load(&common::repo().join("eventarc"), "embedded").unwrap();
    std::fs::create_dir_all(&data).unwrap();
    drop(
        callflow::adapters::local_router::LocalRouter::open(
            &router_db,
            triggers,
            callflow::adapters::sqlite::Durability::Full,
        )
        .unwrap(),
    );
    let db = rusqlite::Connection::open(&router_db).unwrap();
    for (n, trigger, destination) in [
        (1, "recording-finalized", "on-audio-uploaded"),
        (2, "transcript-finalized", "on-transcript"),
        (3, "transcript-finalized", "on-transcript"),
    ] {
        db.execute(
            "INSERT INTO dead_letters (trigger, destination, ce_id, ce_source, ce_type, ce_subject, ce_time, body,
                                       attempts, last_status, reason, dead_lettered_at)
             VALUES (?1, ?2, ?3, 'src', 'google.cloud.storage.object.v1.finalized', NULL, '2026-11-22T10:00:00Z',
                     x'7b7d', 5, 500, 'answered 500', '2026-11-22T10:05:00Z')",
            rusqlite::params![trigger, destination, format!("ev-{n}")],
        )
        .unwrap();
    }
    let waiting = |db: &rusqlite::Connection| -> (i64, i64) {
        let count = |table: &str| db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap();
        (count("dead_letters"), count("events"))
    };
    let json = |out: &Output| -> Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let wrong = cli(&vars, &["dead-letters", "replay", "--all", "--trigger", "transcript-finalised"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("one of: recording-finalized, transcript-finalized"));
    let missing = cli(&vars, &["dead-letters", "replay", "--id", "99"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no router dead letter 99"));
    assert_eq!(waiting(&db), (3, 0), "refusals move nothing");

    let by_trigger =
        json(&cli(&vars, &["dead-letters", "replay", "--all", "--trigger", "transcript-finalized", "--json"]));
    assert_eq!(by_trigger, serde_json::json!({"replayed": 2, "ids": [2, 3]}));
    assert_eq!(waiting(&db), (1, 2));
    let one = json(&cli(&vars, &["dead-letters", "replay", "--id", "1", "--json"]));
    assert_eq!(one, serde_json::json!({"replayed": 1, "ids": [1]}));
    assert_eq!(waiting(&db), (0, 3));
    let again = cli(&vars, &["dead-letters", "replay", "--id", "1"]);
    assert!(!again.status.success(), "a replayed letter is not replayed twice");
}
