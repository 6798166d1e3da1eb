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
