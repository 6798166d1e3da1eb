//! `callflow dead-letters` outside the embedded environment, on the Pub/Sub emulator: a message a trigger
//! subscription gave up on is forwarded by its dead-letter policy to the dead-letter topic, waits in the hold
//! subscription, is listed (without being consumed) and inspected through the real `callflow` binary, and
//! `replay --id` puts it back on its topic with its original data and attributes and takes it off the hold
//! subscription.
//!
//! The emulator (the Google Cloud CLI's, 2026) does forward to the dead-letter topic after maxDeliveryAttempts,
//! with `CloudPubSubDeadLetterSourceSubscription` (the short name), `…SourceSubscriptionProject`,
//! `…SourceDeliveryCount` and `…SourceTopicPublishTime`, so the dead letter here is one Pub/Sub made.
//!
//! Everything lives in a project of its own (the environment's project is rebound in a copy of eventarc/), so
//! the test shares no topic or subscription with a running topology or another test. The command also reads the
//! state store's dead letters, so it needs the Spanner emulator: a fresh database with the repo's DDL.
//!
//! Skipped without the emulators, unless CALLFLOW_EMULATORS=required (scripts/test), where their absence fails it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The Pub/Sub emulator's URL; None (the test skips) without it or the Spanner emulator.
fn emulators() -> Option<String> {
    let missing: Vec<&str> = ["PUBSUB_EMULATOR_HOST", "SPANNER_EMULATOR_HOST"]
        .into_iter()
        .filter(|v| std::env::var(v).ok().filter(|h| !h.is_empty()).is_none())
        .collect();
    if missing.is_empty() {
        return callflow::adapters::emulator_url("PUBSUB_EMULATOR_HOST");
    }
    assert!(
        std::env::var("CALLFLOW_EMULATORS").as_deref() != Ok("required"),
        "CALLFLOW_EMULATORS=required but {} not set: run scripts/emulators start",
        missing.join(", ")
    );
    eprintln!(
        "skipped: no Pub/Sub or Spanner emulator (eval \"$(scripts/emulators env)\" after scripts/emulators start)"
    );
    None
}

struct PubSub {
    http: reqwest::Client,
    /// `…/v1/projects/P`.
    base: String,
}

impl PubSub {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let answer = self.http.request(method, format!("{}/{path}", self.base)).json(&body).send().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Up to 10 waiting messages, leased.
    async fn pull(&self, subscription: &str) -> Vec<Value> {
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("subscriptions/{subscription}:pull"),
                json!({"maxMessages": 10, "returnImmediately": true}),
            )
            .await;
        answer["receivedMessages"].as_array().cloned().unwrap_or_default()
    }

    /// Hand pulled messages back at once: for the source subscription, a failed delivery (a nack).
    async fn nack(&self, subscription: &str, received: &[Value]) {
        let ids: Vec<&Value> = received.iter().map(|r| &r["ackId"]).collect();
        if !ids.is_empty() {
            let path = format!("subscriptions/{subscription}:modifyAckDeadline");
            self.call(reqwest::Method::POST, &path, json!({"ackIds": ids, "ackDeadlineSeconds": 0})).await;
        }
    }

    async fn ack(&self, subscription: &str, received: &[Value]) {
        let ids: Vec<&Value> = received.iter().map(|r| &r["ackId"]).collect();
        if !ids.is_empty() {
            let path = format!("subscriptions/{subscription}:acknowledge");
            self.call(reqwest::Method::POST, &path, json!({"ackIds": ids})).await;
        }
    }
}

fn cli(vars: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callflow"))
        .current_dir(common::repo())
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// eventarc/ with the emulators environment bound to `project`.
fn eventarc_for(dir: &Path, project: &str) -> std::path::PathBuf {
    let repo = common::repo().join("eventarc");
    let eventarc = dir.join("eventarc");
    std::fs::create_dir_all(&eventarc).unwrap();
    std::fs::copy(repo.join("triggers.toml"), eventarc.join("triggers.toml")).unwrap();
    let environments = std::fs::read_to_string(repo.join("environments.toml")).unwrap();
    let rebound = environments
        .replace("[emulators]\nproject = \"callflow-emulators\"", &format!("[emulators]\nproject = \"{project}\""));
    assert_ne!(rebound, environments, "eventarc/environments.toml's [emulators] project moved: update this test");
    std::fs::write(eventarc.join("environments.toml"), rebound).unwrap();
    eventarc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_pubsub_dead_lettered_is_listed_inspected_and_replayed_onto_its_topic() {
    let Some(emulator) = emulators() else { return };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let project = format!("dl-{suffix}");
    let dir = tempfile::tempdir().unwrap();
    let database = format!("projects/callflow-emulators/instances/callflow/databases/dl-{suffix}");
    callflow::adapters::spanner::migrate(&database).await.unwrap();
    let vars = [
        ("CALLFLOW_ENVIRONMENT", "emulators".to_owned()),
        ("CALLFLOW_EVENTARC", eventarc_for(dir.path(), &project).display().to_string()),
        ("CALLFLOW_SPANNER_DATABASE", database.clone()),
        ("CALLFLOW_TENANTS", common::fixture_tenants(dir.path(), "http://127.0.0.1:1").display().to_string()),
        ("CALLFLOW_DATA_DIR", dir.path().join("data").display().to_string()),
    ];
    let ps = PubSub { http: reqwest::Client::new(), base: format!("{emulator}/v1/projects/{project}") };

    // Before anything is provisioned: the missing hold subscription is named, with what creates it.
    let out = cli(&vars, &["dead-letters", "list"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "list without a hold subscription succeeded");
    assert!(
        said.contains(&format!("projects/{project}/subscriptions/dead-letters-hold"))
            && said.contains("callflow provision"),
        "{said}"
    );

    // What `callflow provision` makes for the analysis-complete trigger, as a pull subscription so the test can
    // fail its deliveries itself: the topic, the trigger's subscription giving up after 5 attempts, the
    // dead-letter topic and its hold subscription.
    let put = reqwest::Method::PUT;
    ps.call(put.clone(), "topics/analysis-complete", json!({})).await;
    ps.call(put.clone(), "topics/dead-letters", json!({})).await;
    let hold = "dead-letters-hold";
    let source = "eventarc-analysis-complete";
    ps.call(
        put.clone(),
        &format!("subscriptions/{hold}"),
        json!({"topic": format!("projects/{project}/topics/dead-letters"), "ackDeadlineSeconds": 60}),
    )
    .await;
    ps.call(
        put,
        &format!("subscriptions/{source}"),
        json!({
            "topic": format!("projects/{project}/topics/analysis-complete"),
            "ackDeadlineSeconds": 10,
            "deadLetterPolicy": {
                "deadLetterTopic": format!("projects/{project}/topics/dead-letters"),
                "maxDeliveryAttempts": 5,
            },
        }),
    )
    .await;

    // An empty hold subscription lists no events.
    let listed: Value = serde_json::from_str(&ok(&cli(&vars, &["dead-letters", "list", "--json"]), "list")).unwrap();
    assert_eq!(listed["events"], json!([]), "{listed}");

    let body = json!({"tenant_id": "acme-remodeling", "call_id": format!("CAL{suffix}")});
    let attributes = json!({"tenant": "acme-remodeling", "kind": "analysis"});
    let published = ps
        .call(
            reqwest::Method::POST,
            "topics/analysis-complete:publish",
            json!({"messages": [{"data": B64.encode(body.to_string()), "attributes": attributes}]}),
        )
        .await;
    let original_id = published["messageIds"][0].as_str().unwrap().to_owned();

    // Fail every delivery until Pub/Sub gives up and forwards the message to the dead-letter topic.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = Vec::new();
    let dead_letter = loop {
        assert!(Instant::now() < deadline, "not dead-lettered after deliveries {attempts:?}");
        let received = ps.pull(source).await;
        for r in &received {
            assert_eq!(r["message"]["messageId"], original_id.as_str());
            attempts.push(r["deliveryAttempt"].as_u64().unwrap());
        }
        ps.nack(source, &received).await;
        if received.is_empty() {
            // Peek at the hold subscription without consuming: pull, then hand back.
            let held = ps.pull(hold).await;
            ps.nack(hold, &held).await;
            if let Some(m) = held.first() {
                break m["message"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(attempts, [1, 2, 3, 4, 5], "the source subscription's deliveries");
    let id = dead_letter["messageId"].as_str().unwrap().to_owned();
    assert_ne!(id, original_id, "the dead letter is a message of its own");

    // `list --json`: the message with its trigger, attempts, source, data and attributes; twice, as listing
    // leaves it waiting.
    for round in ["first", "second"] {
        let out = ok(&cli(&vars, &["dead-letters", "list", "--json"]), "list --json");
        let listed: Value = serde_json::from_str(&out).unwrap();
        let events = listed["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{round} listing: {listed}");
        let e = &events[0];
        assert_eq!(e["id"], id.as_str(), "{e}");
        assert_eq!(e["trigger"], "analysis-complete", "{e}");
        assert_eq!(e["destination"], "on-analysis", "{e}");
        assert_eq!(e["attempts"], 5, "{e}");
        assert_eq!(e["last_status"], Value::Null, "{e}");
        assert_eq!(e["ce_source"], format!("//pubsub.googleapis.com/projects/{project}/topics/analysis-complete"));
        assert_eq!(e["source_subscription"], format!("projects/{project}/subscriptions/{source}"), "{e}");
        assert_eq!(e["hold_subscription"], format!("projects/{project}/subscriptions/{hold}"), "{e}");
        assert_eq!(e["dead_lettered_at"], dead_letter["publishTime"], "{e}");
        assert_eq!(e["data"], body, "{e}");
        assert_eq!(e["attributes"]["tenant"], "acme-remodeling", "{e}");
        assert_eq!(e["attributes"]["CloudPubSubDeadLetterSourceSubscription"], source, "{e}");
        assert!(e["reason"].as_str().unwrap().contains("after 5 delivery attempts"), "{e}");
        assert_eq!(listed["work"], json!([]), "no function work was dead-lettered");
    }
    let text = ok(&cli(&vars, &["dead-letters", "list"]), "list");
    assert!(text.contains(&format!("Pub/Sub dead letters in projects/{project}/subscriptions/{hold} (1):")), "{text}");
    assert!(text.contains(&format!("#{id}")) && text.contains("analysis-complete"), "{text}");

    // `inspect`: the same document, in full.
    let shown: Value =
        serde_json::from_str(&ok(&cli(&vars, &["dead-letters", "inspect", "--id", &id, "--json"]), "inspect")).unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["data"], body);
    assert_eq!(shown["published_at"], dead_letter["attributes"]["CloudPubSubDeadLetterSourceTopicPublishTime"]);
    let out = cli(&vars, &["dead-letters", "inspect", "--id", "no-such-id"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no dead letter no-such-id"));

    // `replay --id`: back on analysis-complete with its data and original attributes, off the hold subscription.
    let said = ok(&cli(&vars, &["dead-letters", "replay", "--id", &id]), "replay");
    assert!(said.contains("replayed 1 dead letter(s)"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let received = ps.pull(source).await;
        ps.ack(source, &received).await;
        if let Some(r) = received.first() {
            assert_eq!(received.len(), 1, "replayed once: {received:?}");
            break r["message"].clone();
        }
        assert!(Instant::now() < deadline, "the replayed message did not reach {source}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let data = B64.decode(again["data"].as_str().unwrap()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&data).unwrap(), body);
    assert_eq!(again["attributes"], attributes, "the original attributes, without Pub/Sub's dead-letter ones");

    let listed: Value = serde_json::from_str(&ok(&cli(&vars, &["dead-letters", "list", "--json"]), "list")).unwrap();
    assert_eq!(listed["events"], json!([]), "still held after the replay: {listed}");
    let held = ps.pull(hold).await;
    ps.nack(hold, &held).await;
    assert!(held.is_empty(), "still held after the replay: {held:?}");
    let out = cli(&vars, &["dead-letters", "replay", "--id", &id]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains(&format!("no dead letter {id} waiting")), "{said}");
}
