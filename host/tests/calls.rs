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
use callflow_host::vendors::{self, Vendors};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_calls_whole_path_is_shown_with_the_caller_masked() {
    let vendors = Vendors::new();
    let vendor_url = vendors::serve(vendors.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vars = chain::host_env(dir.path(), &vendor_url, &[], &[]);
    let settings = Settings::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).unwrap();
    let host = Arc::new(Host::open(settings).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, on_webhook::app(host.webhook.clone())).into_future());
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    drop(host.spawn_workers(stop_rx));

    let id = (0..).map(|n| chain::call_id(0x0c11, n)).find(|id| is_lead(id)).unwrap();
    let body = chain::post_call(&id, 7);
    let phone = body["customer_phone_number"].as_str().unwrap().to_owned();
    let body = body.to_string();
    let status = reqwest::Client::new()
        .post(format!("{url}/webhooks/callrail/{ACME}"))
        .header("content-type", "application/json")
        .header("signature", sign_callrail(&chain::callrail_key(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let tenant = TenantId::parse(ACME).unwrap();
    let call = CallId::parse(&id).unwrap();
    until("the call is delivered", Duration::from_secs(60), || {
        let (host, tenant, call) = (host.clone(), tenant.clone(), call.clone());
        async move {
            match host.embedded.state.call(&tenant, &call).await.unwrap() {
                Some(c) if c.state == CallState::Delivered => Ok(()),
                other => Err(format!("{:?}", other.map(|c| c.state))),
            }
        }
    })
    .await;

    let out = cli(&vars, &["calls", "show", "--tenant", ACME, &id, "--json"]);
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
    let revealed = cli(&vars, &["calls", "show", "--tenant", ACME, &id, "--json", "--reveal"]);
    assert!(String::from_utf8_lossy(&revealed.stdout).contains(&phone));

    let text = cli(&vars, &["calls", "show", "--tenant", ACME, &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    for line in ["state        delivered", "analysis     intent new_lead", "CRM          webhook record"] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }

    let missing = cli(&vars, &["calls", "show", "--tenant", ACME, "CALffffffffffffffffffffffffffffffff"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no call CALffffffffffffffffffffffffffffffff"));
    let stranger = cli(&vars, &["calls", "show", "--tenant", "nobody", &id]);
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no tenant \"nobody\""));
}
