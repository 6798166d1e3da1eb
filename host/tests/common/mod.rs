//! What the host's test files share.

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fixture tenants with Acme's lead receiver at `crm` (secrets and workflow files still the fixtures').
pub fn fixture_tenants(dir: &Path, crm: &str) -> PathBuf {
    let fixtures = repo().join("fixtures");
    let text = std::fs::read_to_string(fixtures.join("tenants.toml")).unwrap();
    let text = text
        .replace("http://127.0.0.1:8099/leads", &format!("{crm}/leads"))
        .replace("file:secrets/", &format!("file:{}/secrets/", fixtures.display()))
        .replace("\"workflows/", &format!("\"{}/workflows/", fixtures.display()));
    let path = dir.join("tenants.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The one-process host's settings over `data`: the repo's `eventarc/`, the fixture tenants with CallRail's API and
/// Acme's lead receiver at `callrail` (`{callrail}/crm`), and `extra` variables.
#[allow(dead_code)] // Not every test file hosts the chain in-process.
pub fn host_settings(data: &Path, callrail: &str, extra: &[(&str, &str)]) -> callflow_host::Settings {
    std::fs::create_dir_all(data).unwrap();
    let mut vars = vec![
        ("CALLFLOW_EVENTARC".to_owned(), repo().join("eventarc").display().to_string()),
        ("CALLFLOW_DATA_DIR".to_owned(), data.display().to_string()),
        ("CALLFLOW_TENANTS".to_owned(), fixture_tenants(data, &format!("{callrail}/crm")).display().to_string()),
        ("CALLFLOW_CALLRAIL_API".to_owned(), callrail.to_owned()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    callflow_host::Settings::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).unwrap()
}

/// Acme's CallRail signing key (the fixture tenants').
#[allow(dead_code)] // Not every test file sends CallRail webhooks.
pub const ACME_CALLRAIL_KEY: &[u8] = b"072e77e426f92738a72fe23c4d1953b4";

/// CallRail's post-call webhook fixture for Acme, changed by `edit`, signed with Acme's key.
#[allow(dead_code)] // Not every test file sends CallRail webhooks.
pub fn acme_post_call(edit: impl FnOnce(&mut serde_json::Value)) -> axum::http::Request<axum::body::Body> {
    let fixture = std::fs::read(repo().join("fixtures/callrail/post-call-resource-ids.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&fixture).unwrap();
    edit(&mut json);
    let body = serde_json::to_vec(&json).unwrap();
    axum::http::Request::post("/webhooks/callrail/acme-remodeling")
        .header("content-type", "application/json")
        .header("signature", callflow::domain::signature::sign_callrail(ACME_CALLRAIL_KEY, &body))
        .body(axum::body::Body::from(body))
        .unwrap()
}
