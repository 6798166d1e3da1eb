//! What the whole-chain fault suites (`faults.rs`, `crash_day.rs`) share: trigger definitions with short retry
//! delays, the environment that points the host at the vendor fakes (`callflow_host::vendors`), signed CallRail
//! webhooks for new calls, the terminal state each call must reach, and waiting on a condition with a bound.
//! (Each suite uses a part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callflow::domain::CallState;
use callflow_host::vendors;
use serde_json::Value;

use crate::common::{fixture_tenants, repo};

pub const ACME: &str = "acme-remodeling";
pub const ACCOUNT: &str = "ACC8154748ae6bd4e278a7cddd38a662f4f";

/// Acme's CallRail signing key (the fixture's).
pub fn callrail_key() -> Vec<u8> {
    std::fs::read_to_string(repo().join("fixtures/secrets/acme-callrail-signing-key"))
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec()
}

/// `eventarc/` as the repo defines it, with every trigger's backoff cut to 1–2 s (the real policies wait 10 s to
/// 10 min between deliveries), `max_delivery_attempts` overridden per trigger name where asked, and no
/// `[[schedule]]`: a 15-minute cleanup slot passing mid-test would run a reconciliation pass of its own and make
/// the test's timing depend on the wall clock.
pub fn fast_eventarc(dir: &Path, attempts: &[(&str, u32)]) -> PathBuf {
    let out = dir.join("eventarc");
    std::fs::create_dir_all(&out).unwrap();
    let text = std::fs::read_to_string(repo().join("eventarc/triggers.toml")).unwrap();
    let text = text.split("[[schedule]]").next().unwrap();
    let mut trigger = String::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        let line = match key {
            "name" => {
                trigger = line.split('"').nth(1).unwrap_or_default().to_owned();
                line.to_owned()
            }
            "min_backoff_secs" => "min_backoff_secs = 1".to_owned(),
            "max_backoff_secs" => "max_backoff_secs = 2".to_owned(),
            "max_delivery_attempts" => match attempts.iter().find(|(t, _)| *t == trigger) {
                Some((_, n)) => format!("max_delivery_attempts = {n}"),
                None => line.to_owned(),
            },
            _ => line.to_owned(),
        };
        lines.push(line);
    }
    std::fs::write(out.join("triggers.toml"), lines.join("\n") + "\n").unwrap();
    std::fs::copy(repo().join("eventarc/environments.toml"), out.join("environments.toml")).unwrap();
    out
}

/// The environment of a host against the fakes at `vendor`: the fixture tenants with Acme's CRM at the fakes'
/// `/crm/leads`, Speech-to-Text and Gemini at the fakes, the fast triggers, and CRM retries in seconds.
/// `extra` is added (and wins).
pub fn host_env(dir: &Path, vendor: &str, attempts: &[(&str, u32)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut vars: Vec<(String, String)> = [
        ("CALLFLOW_EVENTARC", fast_eventarc(dir, attempts).display().to_string()),
        ("CALLFLOW_DATA_DIR", data.display().to_string()),
        ("CALLFLOW_TENANTS", fixture_tenants(dir, &format!("{vendor}/crm")).display().to_string()),
        ("CALLFLOW_CALLRAIL_API", vendor.to_owned()),
        ("CALLFLOW_TRANSCRIBER", "google".to_owned()),
        ("CALLFLOW_SPEECH_ENDPOINT", vendor.to_owned()),
        ("CALLFLOW_ANALYZER", "gemini".to_owned()),
        ("CALLFLOW_GEMINI_ENDPOINT", vendor.to_owned()),
        // A failed push comes again after 1–4 s, not 30 s to an hour (the crm-retry trigger's fast budget of
        // 20 deliveries 1–2 s apart must hold twice the longest wait: on-crm-retry checks that at start-up).
        ("CALLFLOW_CRM_BACKOFF_SECS", "1".to_owned()),
        ("CALLFLOW_CRM_BACKOFF_MAX_SECS", "4".to_owned()),
        ("CALLFLOW_CRM_DEFER_MAX_SECS", "3".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push(((*k).to_owned(), (*v).to_owned()));
    }
    vars
}

/// A call id no other test uses: `tag` names the test.
pub fn call_id(tag: u16, n: usize) -> String {
    format!("CAL{tag:04x}{n:028x}")
}

/// A post-call webhook for a new answered call with a recording and no CallRail transcript, from the fixture
/// payload; it started two hours ago (inside reconciliation's window, past its settling time). The recording is
/// over a minute, so Speech-to-Text is asked with `batchRecognize`, whose request names the recording's object
/// (and so the call) for the fake.
pub fn post_call(id: &str, n: usize) -> Value {
    let template: Value =
        serde_json::from_slice(&std::fs::read(repo().join("fixtures/callrail/post-call-resource-ids.json")).unwrap())
            .unwrap();
    let mut body = template;
    body["resource_id"] = id.into();
    body["id"] = (700_000_000 + n).into();
    body["customer_phone_number"] = format!("+1503555{:04}", n % 10_000).into();
    body["start_time"] = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339().into();
    body
}

/// The same call as CallRail's Listing All Calls returns it (its `id` is the resource id).
pub fn listed(webhook: &Value) -> Value {
    let mut listed = webhook.clone();
    listed["id"] = webhook["resource_id"].clone();
    listed
}

/// Where a call must end: a lead at the CRM (`delivered`), or a robocall stopped by the spam gate.
pub fn expected_state(call_id: &str) -> CallState {
    if is_lead(call_id) { CallState::Delivered } else { CallState::Spam }
}

pub fn is_lead(call_id: &str) -> bool {
    vendors::script_of(call_id) != "spam"
}

/// Polls `check` every 25 ms until it is `Ok`; panics naming `what` and the last reason it gave after `limit`.
pub async fn until<F>(what: &str, limit: Duration, mut check: impl FnMut() -> F)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) => assert!(start.elapsed() < limit, "{what}: not within {limit:?}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
