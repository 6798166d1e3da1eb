//! Crash safety with the real binary: kill -9 it while a recording fetch is in flight (after the 200), start it
//! again, and the fetch happens. Also: SIGTERM drains and exits cleanly, and no log line carries a phone number.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CALL: &str = "CALa1b2c3d4e5f60718293a4b5c6d7e8f90";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(data: &Path, callrail: &str, port: u16, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_on-webhook"))
        .env("PORT", port.to_string())
        .env("CALLFLOW_DATA_DIR", data)
        .env("CALLFLOW_TENANTS", fixtures_dir().join("tenants.toml"))
        .env("CALLFLOW_EVENTARC", fixtures_dir().join("../eventarc"))
        .env("CALLFLOW_CALLRAIL_API", callrail)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

async fn wait_healthy(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("on-webhook did not become healthy");
}

fn state_of(data: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(data.join("state.sqlite")).ok()?;
    conn.query_row("SELECT state FROM calls WHERE call_id = ?1", [CALL], |r| r.get(0)).ok()
}

async fn mount_recording(mock: &MockServer, audio_delay: Duration) {
    let url = format!("{}/audio/{CALL}.mp3", mock.uri());
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({ "url": url })))
        .mount(mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("/audio/"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(&b"ID3 survived"[..], "audio/mpeg").set_delay(audio_delay),
        )
        .mount(mock)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_answer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("on-webhook.log"));
    let mock = MockServer::start().await;
    // The audio download hangs: the fetch is in flight when the process dies.
    mount_recording(&mock, Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let port = free_port();
    let mut child = start(&data, &mock.uri(), port, &log);
    wait_healthy(&client, port).await;

    // A rejection whose only identifying text is user input shaped like a phone number: logged, masked.
    let resp = client
        .post(format!("http://127.0.0.1:{port}/webhooks/callrail/15125550143"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let body = fixture("callrail/post-call-resource-ids.json");
    let resp = client
        .post(format!("http://127.0.0.1:{port}/webhooks/callrail/{ACME}"))
        .header("content-type", "application/json")
        .header("signature", sign(ACME_KEY, &body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mock.received_requests().await.unwrap().iter().any(|r| r.url.path().starts_with("/audio/")) {
        assert!(Instant::now() < deadline, "the fetch never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up.
    child.wait().unwrap();
    assert_eq!(state_of(&data).as_deref(), Some("received"), "the call must be recorded before the 200");

    mock.reset().await;
    mount_recording(&mock, Duration::ZERO).await;
    let port = free_port();
    let mut child = start(&data, &mock.uri(), port, &log);
    let deadline = Instant::now() + Duration::from_secs(15);
    while state_of(&data).as_deref() != Some("recording_stored") {
        assert!(Instant::now() < deadline, "the interrupted fetch was not resumed: {:?}", state_of(&data));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let object = data.join("objects/recordings").join(ACME).join(format!("{CALL}.mp3"));
    assert_eq!(std::fs::read(object).unwrap(), b"ID3 survived");

    // SIGTERM: drains and exits by itself, well inside Cloud Run's 10 s.
    let stopped = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(9), "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("\"severity\":\"INFO\""), "logs are not Cloud Logging JSON: {logs}");
    assert!(logs.contains("\"message\":\"webhook rejected\""), "the 404 was not logged: {logs}");
    assert!(logs.contains("*******143"), "the masked form is missing: {logs}");
    for pii in ["5125550143", "Dana Whitfield"] {
        assert!(!logs.contains(pii), "a log line carries {pii}");
    }
}
