//! The one-process host: on-webhook's recordings reach the router as one finalize event per generation; a call and
//! a web form go through every hosted stage to the tenant's lead receiver; the `callflow` binary serves, routes a
//! call to `delivered` and stops cleanly.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use callflow::domain::signature::sign_callrail;
use callflow::ports::ObjectStore;
use common::{fixture_tenants, repo};
use tower::ServiceExt;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CALL: &str = "CALa1b2c3d4e5f60718293a4b5c6d7e8f90";
/// The caller of the fixture call.
const PHONE: &str = "+15125550143";

async fn fake_callrail() -> MockServer {
    let mock = MockServer::start().await;
    let url = format!("{}/audio/{CALL}.mp3", mock.uri());
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "url": url })))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("/audio/"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(&b"ID3 host"[..], "audio/mpeg"))
        .mount(&mock)
        .await;
    // Acme's lead receiver (the custom-webhook CRM) on the same fake server.
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/crm/leads"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": "lead-1"})))
        .mount(&mock)
        .await;
    mock
}

/// CallRail's post-call webhook, with CallRail's own transcript of the call (so no speech engine is involved).
fn webhook() -> Request<Body> {
    common::acme_post_call(|json| {
        json["transcription"] = "Agent: Acme Remodeling.\nCaller: I need my kitchen cabinets replaced.".into();
    })
}

#[tokio::test]
async fn a_stored_recording_is_one_finalize_event_per_generation_for_the_next_stage() {
    let dir = tempfile::tempdir().unwrap();
    let mock = fake_callrail().await;
    let host = callflow_host::Host::open(common::host_settings(dir.path(), &mock.uri(), &[])).await.unwrap();
    for _ in 0..3 {
        let resp = on_webhook::app(host.webhook.clone()).oneshot(webhook()).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    on_webhook::outbox::drain_pass(&host.webhook).await;
    on_webhook::outbox::drain_pass(&host.webhook).await;

    let events = host.router.pending().await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!((ev.trigger.as_str(), ev.destination.as_str()), ("recording-finalized", "on-audio-uploaded"));
    assert_eq!(ev.ce_subject.as_deref(), Some(format!("objects/acme-remodeling/{CALL}.mp3").as_str()));
    let head = host.embedded.objects.head("recordings", &format!("acme-remodeling/{CALL}.mp3")).await.unwrap().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&ev.body).unwrap();
    assert_eq!(body["generation"], head.generation.to_string());
    assert_eq!(body["metadata"]["call_id"], CALL);
    // on-audio-uploaded and on-transcript are hosted: the recording's event and then the transcript's are
    // delivered once each and acknowledged (one pass may carry both: the second is due as soon as it exists).
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let pass = host.router.deliver_due().await;
        assert!(!pass.is_empty(), "nothing left to deliver after {delivered:?}");
        delivered.extend(pass);
    }
    assert!(delivered.iter().all(|d| matches!(d, callflow::adapters::local_router::Delivery::Acked)), "{delivered:?}");
    assert!(host.router.dead_letters().await.unwrap().is_empty());
    let (info, transcript) =
        host.embedded.objects.get("transcripts", &format!("acme-remodeling/{CALL}.json")).await.unwrap().unwrap();
    assert_eq!(info.metadata["engine"], "callrail");
    assert!(String::from_utf8_lossy(&transcript).contains("kitchen cabinets"));

    // The call analysed by the rules (the embedded default), then delivered by on-analysis to Acme's receiver.
    let (tenant, call) =
        (callflow::domain::TenantId::parse("acme-remodeling").unwrap(), callflow::domain::CallId::parse(CALL).unwrap());
    let state = host.embedded.state.as_ref();
    let analysis = callflow::ports::StateStore::analysis(state, &tenant, &call).await.unwrap();
    let analysis = analysis.expect("the call's analysis");
    assert_eq!(analysis.analyzer, "rules/1");
    assert_eq!(analysis.findings.project_type, callflow::domain::analysis::ProjectType::Kitchen);
    for _ in 0..10 {
        if host.router.pending().await.unwrap().is_empty() {
            break;
        }
        host.router.deliver_due().await;
    }
    assert!(host.router.pending().await.unwrap().is_empty());
    let record = callflow::ports::StateStore::call(state, &tenant, &call).await.unwrap().unwrap();
    assert_eq!(record.state, callflow::domain::CallState::Delivered, "{:?}", record.state_reason);
    let delivery = callflow::ports::StateStore::delivery(state, &tenant, &call).await.unwrap().unwrap();
    assert_eq!((delivery.provider.as_str(), delivery.record_id.as_str()), ("webhook", "lead-1"));
    let leads: Vec<_> =
        mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/crm/leads").collect();
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].headers.get("webhook-id").unwrap(), &format!("acme-remodeling:{CALL}"));
}

#[tokio::test]
async fn a_web_form_is_analysed_from_its_text_and_delivered_like_a_call() {
    use callflow::domain::signature::{sign_standard_webhook, standard_webhooks_key};
    let dir = tempfile::tempdir().unwrap();
    let mock = fake_callrail().await;
    let host = callflow_host::Host::open(common::host_settings(dir.path(), &mock.uri(), &[])).await.unwrap();
    let body = std::fs::read(repo().join("fixtures/forms/estimate-request.json")).unwrap();
    let secret = std::fs::read_to_string(repo().join("fixtures/secrets/acme-forms-secret")).unwrap();
    let key = standard_webhooks_key(&secret).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let req = Request::post("/webhooks/forms/acme-remodeling")
        .header("content-type", "application/json")
        .header("webhook-id", "msg_form_1")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sign_standard_webhook(&key, "msg_form_1", ts, &body))
        .body(Body::from(body))
        .unwrap();
    let resp = on_webhook::app(host.webhook.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap()).unwrap();
    let call = callflow::domain::CallId::parse(answer["call_id"].as_str().unwrap()).unwrap();
    let tenant = callflow::domain::TenantId::parse("acme-remodeling").unwrap();
    on_webhook::outbox::drain_pass(&host.webhook).await;
    for _ in 0..10 {
        if host.router.pending().await.unwrap().is_empty() {
            break;
        }
        host.router.deliver_due().await;
    }
    let state = host.embedded.state.as_ref();
    let analysis = callflow::ports::StateStore::analysis(state, &tenant, &call).await.unwrap().expect("analysed");
    assert_eq!(analysis.findings.project_type, callflow::domain::analysis::ProjectType::Bathroom);
    let record = callflow::ports::StateStore::call(state, &tenant, &call).await.unwrap().unwrap();
    assert_eq!(record.state, callflow::domain::CallState::Delivered, "{:?}", record.state_reason);
    let leads: Vec<_> =
        mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/crm/leads").collect();
    assert_eq!(leads.len(), 1);
    let lead: serde_json::Value = serde_json::from_slice(&leads[0].body).unwrap();
    assert_eq!(lead["lead"]["source"], "form");
    assert_eq!(lead["lead"]["email"], "priya.raman@example.com");
    assert_eq!(lead["lead"]["phone"], "+15125550199");
    // Austin is far outside Acme's Portland service area, which tags rather than skips.
    assert_eq!(lead["lead"]["review"], true);
    assert!(lead["lead"]["tags"].as_array().unwrap().iter().any(|t| t == "out-of-area"), "{lead}");
}

/// A child process that is killed if the test ends early (a failed assertion must not leave a server running).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_callflow_binary_serves_routes_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mock = fake_callrail().await;
    let port = free_port();
    let vars = [
        ("PORT", port.to_string()),
        ("CALLFLOW_EVENTARC", repo().join("eventarc").display().to_string()),
        ("CALLFLOW_DATA_DIR", dir.path().display().to_string()),
        ("CALLFLOW_TENANTS", fixture_tenants(dir.path(), &format!("{}/crm", mock.uri())).display().to_string()),
        ("CALLFLOW_CALLRAIL_API", mock.uri()),
    ];
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_callflow"))
            .envs(vars.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "callflow did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (parts, body) = webhook().into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let resp = client.post(format!("{base}{}", parts.uri)).headers(parts.headers).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Through the whole chain: recording fetched, transcribed, analysed, delivered to Acme's receiver.
    let db = dir.path().join("state.sqlite");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: String = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT state FROM calls", [], |r| r.get(0)))
            .unwrap_or_default();
        if state == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "the call never reached delivered (last seen {state:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = Command::new(env!("CARGO_BIN_EXE_callflow"))
        .args(["dead-letters", "list", "--json"])
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["events"].as_array().map(Vec::len), Some(0));
    let leads = mock.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/crm/leads").count();
    assert_eq!(leads, 1, "the lead reached the tenant's receiver once");

    // An operator erases the caller: the request is kept, a cleanup run carries it out, the log says what went.
    let callflow = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_callflow")).args(args).envs(vars.iter().cloned()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let bad = Command::new(env!("CARGO_BIN_EXE_callflow"))
        .args(["erasure", "request", "--tenant", "acme-remodeling", "--phone", "call me"])
        .envs(vars.iter().cloned())
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not a phone number"));
    let requested = callflow(&["erasure", "request", "--tenant", "acme-remodeling", "--phone", PHONE, "--json"]);
    let id = requested["id"].as_str().unwrap().to_owned();
    let dry = callflow(&["cleanup", "run", "--job", "erasure", "--dry-run", "--json"]);
    assert_eq!(dry["jobs"][0]["calls"], serde_json::json!([CALL]), "{dry}");
    let run = callflow(&["cleanup", "run", "--job", "erasure", "--json"]);
    let acme = run["jobs"].as_array().unwrap().iter().find(|j| j["tenant_id"] == "acme-remodeling").unwrap();
    assert_eq!(acme["counts"]["calls_erased"], 1, "{run}");
    let listed = callflow(&["erasure", "list", "--tenant", "acme-remodeling", "--json"]);
    assert_eq!(listed["requests"][0]["id"], id.as_str());
    assert_eq!(listed["requests"][0]["calls_erased"], 1);
    assert_eq!(listed["erasures"][0]["call_id"], CALL);
    let lead: String =
        rusqlite::Connection::open(&db).unwrap().query_row("SELECT lead_json FROM calls", [], |r| r.get(0)).unwrap();
    assert!(!lead.contains(&PHONE[2..]), "{lead}");

    Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(stopped.elapsed() < Duration::from_secs(9), "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
}

#[test]
fn invalid_trigger_definitions_stop_start_up_naming_the_file_trigger_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let eventarc = dir.path().join("eventarc");
    std::fs::create_dir_all(&eventarc).unwrap();
    let triggers = std::fs::read_to_string(repo().join("eventarc/triggers.toml")).unwrap();
    std::fs::write(
        eventarc.join("triggers.toml"),
        triggers.replace("max_delivery_attempts = 20", "max_delivery_attempts = 200"),
    )
    .unwrap();
    std::fs::copy(repo().join("eventarc/environments.toml"), eventarc.join("environments.toml")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callflow"))
        .env("CALLFLOW_EVENTARC", &eventarc)
        .env("CALLFLOW_DATA_DIR", dir.path().join("data"))
        .env("CALLFLOW_TENANTS", repo().join("fixtures/tenants.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("triggers.toml: trigger \"crm-retry\", field \"retry.max_delivery_attempts\""), "{err}");
}

fn speech_tools_present() -> bool {
    let present = ["pocketsphinx_continuous", "sox", "flite"].iter().all(|t| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    });
    assert!(
        present || std::env::var("CALLFLOW_SPEECH_TOOLS").as_deref() != Ok("required"),
        "CALLFLOW_SPEECH_TOOLS=required but pocketsphinx, sox or flite is missing: run scripts/install-speech-tools"
    );
    if !present {
        eprintln!("skipped: no offline speech tools (scripts/install-speech-tools)");
    }
    present
}

/// A caller's request spoken by flite and encoded as MP3, as CallRail serves recordings.
fn spoken_mp3(dir: &Path) -> Vec<u8> {
    let (wav, mp3) = (dir.join("call.wav"), dir.join("call.mp3"));
    let text = "Hi, I need a quote for a kitchen remodel with new cabinets. Please call me back tomorrow.";
    assert!(Command::new("flite").args(["-voice", "slt", "-t", text, "-o"]).arg(&wav).status().unwrap().success());
    assert!(Command::new("sox").arg(&wav).args(["-r", "16000", "-C", "64"]).arg(&mp3).status().unwrap().success());
    std::fs::read(&mp3).unwrap()
}

/// The embedded chain on defaults: webhook → recording fetched from CallRail → routed to on-audio-uploaded →
/// transcribed by the offline engine (the embedded default) → transcript object for the next stage.
#[tokio::test]
async fn a_spoken_call_is_transcribed_offline_through_the_embedded_chain() {
    if !speech_tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mp3 = spoken_mp3(dir.path());
    let mock = MockServer::start().await;
    let url = format!("{}/audio/{CALL}.mp3", mock.uri());
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "url": url })))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("/audio/"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(mp3, "audio/mpeg"))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/crm/leads"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&mock)
        .await;
    let host =
        callflow_host::Host::open(common::host_settings(&dir.path().join("data"), &mock.uri(), &[])).await.unwrap();
    let fixture = std::fs::read(repo().join("fixtures/callrail/post-call-resource-ids.json")).unwrap();
    let req = Request::post("/webhooks/callrail/acme-remodeling")
        .header("content-type", "application/json")
        .header("signature", sign_callrail(common::ACME_CALLRAIL_KEY, &fixture))
        .body(Body::from(fixture))
        .unwrap();
    assert_eq!(on_webhook::app(host.webhook.clone()).oneshot(req).await.unwrap().status(), 200);
    on_webhook::outbox::drain_pass(&host.webhook).await;
    // The recording's event, then the transcript's (which a pass may already pick up, as it is due at once).
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let pass = host.router.deliver_due().await;
        assert!(!pass.is_empty(), "nothing left to deliver after {delivered:?}");
        delivered.extend(pass);
    }
    assert!(delivered.iter().all(|d| matches!(d, callflow::adapters::local_router::Delivery::Acked)), "{delivered:?}");

    let (info, body) =
        host.embedded.objects.get("transcripts", &format!("acme-remodeling/{CALL}.json")).await.unwrap().unwrap();
    let transcript: callflow::domain::transcript::Transcript = serde_json::from_slice(&body).unwrap();
    assert_eq!((transcript.engine.as_str(), info.metadata["quality"].as_str()), ("pocketsphinx/en-us", "low"));
    let text = transcript.text().to_lowercase();
    for word in ["kitchen", "remodel", "cabinets"] {
        assert!(text.contains(word), "{word:?} not heard in {text:?}");
    }
    let call = callflow::ports::StateStore::call(
        host.embedded.state.as_ref(),
        &callflow::domain::TenantId::parse("acme-remodeling").unwrap(),
        &callflow::domain::CallId::parse(CALL).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    // Analysed, and possibly already delivered (on-analysis is hosted too; a pass may have carried its event).
    use callflow::domain::CallState;
    assert!(matches!(call.state, CallState::Analysed | CallState::Delivered), "{:?}", call.state_reason);

    // And on to on-transcript: what the offline engine heard is enough for the rules to see a kitchen lead.
    let analysis = callflow::ports::StateStore::analysis(host.embedded.state.as_ref(), &call.tenant_id, &call.call_id)
        .await
        .unwrap()
        .expect("analysed");
    assert_eq!(analysis.findings.project_type, callflow::domain::analysis::ProjectType::Kitchen);
    assert_eq!(analysis.findings.intent, callflow::domain::analysis::Intent::NewLead);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crm_receiver_verifies_keeps_each_lead_once_and_survives_a_restart() {
    use callflow::domain::signature::{sign_standard_webhook, standard_webhooks_key};
    let dir = tempfile::tempdir().unwrap();
    let secret_file = repo().join("fixtures/secrets/acme-crm-webhook-secret");
    let key = standard_webhooks_key(&std::fs::read_to_string(&secret_file).unwrap()).unwrap();
    let out = dir.path().join("leads.jsonl");
    let port = free_port();
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_callflow"))
            .args(["crm-receiver", "--port", &port.to_string(), "--secret-file"])
            .arg(&secret_file)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/leads");
    let wait_up = async || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(&url).send().await.is_err() {
            assert!(Instant::now() < deadline, "the receiver did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let post = async |id: &str, body: &str, key: &[u8]| {
        let ts = chrono::Utc::now().timestamp();
        let resp = client
            .post(&url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign_standard_webhook(key, id, ts, body.as_bytes()))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
    };
    let mut child = start();
    wait_up().await;
    let lead = r#"{"type":"lead","lead":{"call_id":"CAL1"}}"#;
    let (status, first) = post("acme:CAL1", lead, &key).await;
    assert_eq!((status, first["id"].as_str()), (201, Some("lead-1")));
    assert_eq!(
        post("acme:CAL1", lead, &key).await,
        (409, serde_json::json!({"id": "lead-1", "error": "already received"}))
    );
    assert_eq!(post("acme:CAL2", lead, b"another key").await.0, 401, "a bad signature is refused");
    child.kill().unwrap();
    child.wait().unwrap();
    // The file is the record: after a restart the same lead is still a duplicate.
    let mut child = start();
    wait_up().await;
    assert_eq!(post("acme:CAL1", lead, &key).await.0, 409);
    let listed: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["document"]["lead"]["call_id"], "CAL1");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_cleanup_schedule_fires_into_cleanup_scheduled_once_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mock = fake_callrail().await;
    let host = callflow_host::Host::open(common::host_settings(dir.path(), &mock.uri(), &[])).await.unwrap();
    let t0: chrono::DateTime<chrono::Utc> = "2026-11-22T06:07:00Z".parse().unwrap();
    assert_eq!(host.router.fire_schedules(t0).await.unwrap(), 0, "not on first sight");
    let slot = t0 + chrono::Duration::minutes(8); // 06:15, the next */15 slot
    assert_eq!(host.router.fire_schedules(slot).await.unwrap(), 1);
    assert_eq!(host.router.fire_schedules(slot + chrono::Duration::minutes(1)).await.unwrap(), 0, "once per slot");
    for _ in 0..10 {
        if host.router.pending().await.unwrap().is_empty() {
            break;
        }
        host.router.deliver_due().await;
    }
    let analytics = rusqlite::Connection::open(dir.path().join("analytics.sqlite")).unwrap();
    let rows: Vec<(String, String)> = analytics
        .prepare(
            "SELECT job, tenant_id FROM cleanup_runs WHERE run_id = '2026-11-22T06:15:00Z' ORDER BY job, tenant_id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 8, "every job for both fixture tenants: {rows:?}");
    assert_eq!(rows[0], ("erasure".to_owned(), "acme-remodeling".to_owned()));
}
