//! `callflow sign` and `callflow verify` as an operator uses them during onboarding: a signed request from `sign`
//! is accepted by on-webhook itself, and `verify` accepts the captured request and refuses a tampered one.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn cli(vars: &[(String, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callflow"))
        .current_dir(common::repo())
        .envs(vars.iter().cloned())
        .args(args)
        .output()
        .unwrap()
}

fn vars(dir: &Path) -> Vec<(String, String)> {
    let tenants = common::fixture_tenants(dir, "http://127.0.0.1:1");
    vec![
        ("CALLFLOW_DATA_DIR".into(), dir.join("data").display().to_string()),
        ("CALLFLOW_TENANTS".into(), tenants.display().to_string()),
        ("CALLFLOW_EVENTARC".into(), common::repo().join("eventarc").display().to_string()),
        // No recording is fetched here: the outbox worker is not started.
        ("CALLFLOW_CALLRAIL_API".into(), "http://127.0.0.1:1".into()),
    ]
}

/// on-webhook on a free port over the same data directory and tenants.
async fn webhook(vars: &[(String, String)]) -> String {
    let settings =
        on_webhook::Settings::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap();
    let service = on_webhook::Service::from_settings(&settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = on_webhook::app(service).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The request as a capture saves it: request line, headers, blank line, body.
fn capture(path: &str, headers: &serde_json::Map<String, Value>, body: &[u8]) -> Vec<u8> {
    let mut raw = format!("POST {path} HTTP/1.1\r\nHost: example\r\nContent-Type: application/json\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap()));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_is_accepted_by_on_webhook_and_its_capture_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let vars = vars(dir.path());
    let url = webhook(&vars).await;
    let http = reqwest::Client::new();
    let cases = [
        ("callrail", "acme-remodeling", "fixtures/callrail/post-call-resource-ids.json"),
        ("form", "acme-remodeling", "fixtures/forms/estimate-request.json"),
        ("callrail", "bayside-baths", "fixtures/callrail/post-call-bayside.json"),
    ];
    for (kind, tenant, body_file) in cases {
        let out = cli(&vars, &["sign", "--json", "--kind", kind, "--tenant", tenant, "--url", &url, body_file]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let signed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let headers = signed["headers"].as_object().unwrap().clone();
        let body = std::fs::read(common::repo().join(body_file)).unwrap();

        // on-webhook accepts it.
        let mut req =
            http.post(signed["url"].as_str().unwrap()).header("content-type", "application/json").body(body.clone());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str().unwrap());
        }
        let response = req.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "{kind} for {tenant}: {text}");

        // The captured request verifies, naming the key …
        let path = signed["url"].as_str().unwrap().trim_start_matches(&url).to_owned();
        let captured = dir.path().join(format!("{kind}-{tenant}.http"));
        std::fs::write(&captured, capture(&path, &headers, &body)).unwrap();
        let out = cli(&vars, &["verify", "--tenant", tenant, "--request", captured.to_str().unwrap(), "--json"]);
        let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "{verdict}");
        assert_eq!(verdict["valid"], true);
        assert_eq!(verdict["key"], 1);

        // … and a byte changed in the body does not, with exit status 1.
        let mut tampered = body.clone();
        let i = tampered.iter().position(|b| b.is_ascii_digit()).unwrap();
        tampered[i] = if tampered[i] == b'9' { b'8' } else { tampered[i] + 1 };
        std::fs::write(&captured, capture(&path, &headers, &tampered)).unwrap();
        let out = cli(&vars, &["verify", "--tenant", tenant, "--request", captured.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stdout).contains("invalid: signature does not match"));
    }
}

#[test]
fn another_tenants_key_and_unknown_tenants_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let vars = vars(dir.path());
    let body = "fixtures/callrail/post-call-resource-ids.json";
    let out = cli(&vars, &["sign", "--json", "--tenant", "acme-remodeling", body]);
    let signed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let header = format!("Signature: {}", signed["headers"]["Signature"].as_str().unwrap());
    // Bayside has two active keys (a rotation); neither is Acme's.
    let out = cli(&vars, &["verify", "--tenant", "bayside-baths", "--body", body, "--header", &header]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checked against 2 callrail key(s) of bayside-baths"), "{text}");
    let out = cli(&vars, &["verify", "--tenant", "nobody", "--body", body, "--header", &header]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tenant \"nobody\""));
    let out = cli(&vars, &["verify", "--tenant", "acme-remodeling", "--body", body]);
    assert_eq!(out.status.code(), Some(1), "no kind and no signature header");
    assert!(String::from_utf8_lossy(&out.stderr).contains("say --kind"));
}

/// Regression: `sign` opened on-webhook's embedded service, which hands back every lease and stage claim at
/// start (crash recovery). Run beside a host, that let a second delivery of an event in progress start the same
/// transcription again. The onboarding commands must leave a running host's claims alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_onboarding_commands_leave_a_running_hosts_claims_alone() {
    use callflow::domain::{CallId, TenantId};
    use callflow::ports::{Claim, StateStore};
    let dir = tempfile::tempdir().unwrap();
    let vars = vars(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let state = callflow::adapters::sqlite::SqliteStateStore::open(
        &data.join("state.sqlite"),
        callflow::adapters::sqlite::Durability::Full,
    )
    .unwrap();
    let (tenant, call) =
        (TenantId::parse("acme-remodeling").unwrap(), CallId::parse("CAL0123456789abcdef0123456789abcdef").unwrap());
    let lease = std::time::Duration::from_secs(600);
    assert!(matches!(state.claim_stage(&tenant, &call, "transcribe:1", lease).await.unwrap(), Claim::Claimed(_)));

    let body = "fixtures/callrail/post-call-resource-ids.json";
    let out = cli(&vars, &["sign", "--json", "--tenant", "acme-remodeling", body]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let signed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let header = format!("Signature: {}", signed["headers"]["Signature"].as_str().unwrap());
    assert!(
        cli(&vars, &["verify", "--tenant", "acme-remodeling", "--body", body, "--header", &header]).status.success()
    );

    let again = state.claim_stage(&tenant, &call, "transcribe:1", lease).await.unwrap();
    assert!(matches!(again, Claim::Busy { .. }), "the claim was handed back: {again:?}");
}
