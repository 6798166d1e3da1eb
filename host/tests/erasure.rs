//! An erasure request carried out on calls that went the real way through the embedded host leaves nothing of the
//! caller anywhere the host keeps data: not in any table of any of its SQLite files, not in those files' bytes,
//! not in the object directory. The calls are made by the chain itself (intake, recording, transcript, analysis,
//! CRM push, a CRM refusal that quotes the caller back, a dead letter), not written into the store by the test, so
//! every place the chain copies a caller's words is covered.

mod common;

use std::path::Path;

use axum::body::Body;
use axum::http::Request;
use callflow::domain::cleanup::RunRequest;
use callflow::domain::{CallId, CallState, TenantId};
use callflow::ports::{ErasureRequest, StateStore};
use tower::ServiceExt;
use wiremock::matchers::{body_string_contains, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DELIVERED: &str = "CALe1a5e0000000000000000000000001";
const REFUSED: &str = "CALe1a5e0000000000000000000000002";
const OTHER: &str = "CALe1a5e0000000000000000000000003";
/// What the chain may have kept of the erased caller, in the forms it may have kept it in.
const TRACES: [&str; 8] =
    ["5125550143", "512 555 0143", "512-555-0143", "555 0143", "555-0143", "Whitfield", "Dana", "dana.w@example.com"];

/// CallRail (recordings) and Acme's lead receiver, which refuses one of the calls quoting the caller back, as CRMs'
/// validation messages do.
async fn vendors() -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({ "url": format!("{}/audio.mp3", mock.uri()) })),
        )
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path("/audio.mp3"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(&b"ID3 erasure"[..], "audio/mpeg"))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/leads"))
        .and(body_string_contains(REFUSED))
        .respond_with(ResponseTemplate::new(422).set_body_json(serde_json::json!({
            "error": "duplicate contact: Dana Whitfield <dana.w@example.com>, phone (512) 555-0143"
        })))
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/leads"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": "lead-1"})))
        .mount(&mock)
        .await;
    mock
}

/// CallRail's post-call webhook for `call` by `name` from `phone`, with CallRail's transcript of what they said.
fn webhook(call: &str, name: &str, phone: &str, said: &str) -> Request<Body> {
    common::acme_post_call(|json| {
        json["resource_id"] = call.into();
        json["customer_name"] = name.into();
        json["customer_phone_number"] = phone.into();
        json["recording"] = format!("https://app.callrail.com/calls/{call}/recording/redirect?access_key=demo").into();
        json["transcription"] = format!("Agent: Acme Remodeling.\nCaller: {said}").into();
    })
}

#[tokio::test]
async fn erasing_a_caller_leaves_nothing_of_them_anywhere_the_host_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mock = vendors().await;
    let host = callflow_host::Host::open(common::host_settings(&data, &mock.uri(), &[])).await.unwrap();
    let said = "Hi, this is Dana Whitfield. I need my kitchen cabinets replaced, new countertops too. \
                Email me at dana.w@example.com or call 512 555 0143 tomorrow morning.";
    for (call, name, phone) in [
        (DELIVERED, "Dana Whitfield", "+15125550143"),
        (REFUSED, "Dana Whitfield", "+15125550143"),
        (OTHER, "Lee Park", "+15035550199"),
    ] {
        let said = if call == OTHER { "I need a new bathroom, this is Lee Park." } else { said };
        let resp = on_webhook::app(host.webhook.clone()).oneshot(webhook(call, name, phone, said)).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    on_webhook::outbox::drain_pass(&host.webhook).await;
    for _ in 0..20 {
        if host.router.pending().await.unwrap().is_empty() {
            break;
        }
        host.router.deliver_due().await;
    }
    let tenant = TenantId::parse("acme-remodeling").unwrap();
    let state = host.embedded.state.as_ref();
    let call = |id: &str| {
        let id = CallId::parse(id).unwrap();
        let tenant = tenant.clone();
        async move { state.call(&tenant, &id).await.unwrap().unwrap() }
    };
    assert_eq!(call(DELIVERED).await.state, CallState::Delivered);
    let refused = call(REFUSED).await;
    assert_eq!(refused.state, CallState::DeadLettered);
    // The premise: before the erasure the chain did keep the caller's words in the places checked below.
    let before = every_value(&data);
    for trace in ["Whitfield", "Dana"] {
        assert!(before.contains(trace), "{trace} was never stored: the check below would prove nothing");
    }

    let request = ErasureRequest {
        tenant_id: tenant.clone(),
        id: "era-e2e".into(),
        phone: Some("+15125550143".into()),
        email: None,
        requested_at: chrono::Utc::now(),
        completed_at: None,
        calls_erased: None,
    };
    assert!(state.request_erasure(&request).await.unwrap());
    let run =
        cleanup_scheduled::run::run(&host.cleanup, &RunRequest::parse(br#"{"jobs": ["erasure"]}"#).unwrap(), "e2e")
            .await
            .unwrap();
    let report = run.reports.iter().find(|r| r.tenant_id == "acme-remodeling").unwrap();
    assert_eq!(report.get("calls_erased"), 2, "{report:?}");

    // The audit record says what went, by name: what the job asked for and what the store found beside the lead.
    let log = state.erasures(&tenant, 10).await.unwrap();
    let of_refused = log.iter().find(|e| e.call_id.as_str() == REFUSED).unwrap();
    for what in ["transcript", "lead.customer_name", "analysis.summary", "call.state_reason", "dead_letters"] {
        assert!(of_refused.erased.iter().any(|e| e == what), "{what} in {:?}", of_refused.erased);
    }

    let after = every_value(&data);
    for trace in TRACES {
        assert!(!after.contains(trace), "{trace} is still stored:\n{}", lines_with(&after, trace));
    }
    assert!(after.contains("Lee Park"), "the check reads what the host keeps, and other callers keep theirs");
    // What the call was stays for the analysts and the operator.
    let (delivered, refused) = (call(DELIVERED).await, call(REFUSED).await);
    assert_eq!((delivered.state, refused.state), (CallState::Delivered, CallState::DeadLettered));
    let analysis = state.analysis(&tenant, &delivered.call_id).await.unwrap().unwrap();
    assert_eq!(analysis.findings.project_type, callflow::domain::analysis::ProjectType::Kitchen);
    assert!(!analysis.findings.summary.is_empty());
    assert!(refused.state_reason.as_deref().unwrap_or_default().contains("422"), "{:?}", refused.state_reason);
}

/// Everything the host keeps under `data`: every value of every table of every SQLite file (and, once the WAL is
/// checkpointed, the files' bytes, where deleted values would linger), and every other file's bytes (objects and
/// their metadata).
fn every_value(data: &Path) -> String {
    let mut out = String::new();
    for entry in walk(data) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with("-wal") || name.ends_with("-shm") {
            continue;
        }
        if name.ends_with(".sqlite") {
            let c = rusqlite::Connection::open(&entry).unwrap();
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
            let tables: Vec<String> = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for table in tables {
                let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
                let n = stmt.column_count();
                let mut rows = stmt.query([]).unwrap();
                while let Some(row) = rows.next().unwrap() {
                    for i in 0..n {
                        let v: rusqlite::types::Value = row.get(i).unwrap();
                        let text = match v {
                            rusqlite::types::Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
                            other => format!("{other:?}"),
                        };
                        out.push_str(&format!("{}:{table}: {text}\n", entry.display()));
                    }
                }
            }
        }
        out.push_str(&format!("{}: {}\n", entry.display(), String::from_utf8_lossy(&std::fs::read(&entry).unwrap())));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() { files.extend(walk(&p)) } else { files.push(p) }
    }
    files
}

fn lines_with(text: &str, trace: &str) -> String {
    text.lines().filter(|l| l.contains(trace)).map(|l| l.chars().take(400).collect::<String>() + "\n").collect()
}
