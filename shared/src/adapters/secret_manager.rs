//! Secrets from Google Secret Manager (official client, REST), for references `gcp-sm:projects/P/secrets/S`
//! (the latest version) or `gcp-sm:projects/P/secrets/S/versions/V`. The payload's CRC32C is checked when the
//! service sends one. Put `CachedSecrets` in front: secrets are read per request, Secret Manager is billed per call.
//!
//! `SecretManagerFile` keeps a whole text file as a secret's versions: on Google Cloud the tenants file is one,
//! mounted into every function (terraform/main.tf), and `callflow tenants` edits it through this.

use std::sync::Arc;

use async_trait::async_trait;
use google_cloud_secretmanager_v1::client::SecretManagerService;

use super::local_secrets::LocalSecrets;
use crate::domain::tenant::SecretRef;
use crate::ports::{PortError, PortResult, Secret, SecretSource};

pub const SCHEME: &str = "gcp-sm:";

pub struct SecretManagerSecrets {
    client: SecretManagerService,
}

impl SecretManagerSecrets {
    /// With Application Default Credentials (on Cloud Run: the service account).
    pub async fn connect() -> anyhow::Result<Self> {
        Ok(Self { client: SecretManagerService::builder().build().await? })
    }

    /// Over a client built elsewhere (another endpoint, credentials or retry policy; tests use a local fake).
    pub fn with_client(client: SecretManagerService) -> Self {
        Self { client }
    }
}

/// `projects/P/secrets/S[/versions/V]` → the version's full name, or None when the shape is wrong.
pub fn version_name(reference: &str) -> Option<String> {
    let parts: Vec<&str> = reference.split('/').collect();
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match parts[..] {
        ["projects", p, "secrets", s] if ok(p) && ok(s) => Some(format!("{reference}/versions/latest")),
        ["projects", p, "secrets", s, "versions", v] if ok(p) && ok(s) && ok(v) => Some(reference.to_owned()),
        _ => None,
    }
}

#[async_trait]
impl SecretSource for SecretManagerSecrets {
    async fn secret(&self, reference: &SecretRef) -> PortResult<Secret> {
        let r = reference.0.as_str();
        let name = r.strip_prefix(SCHEME).and_then(version_name).ok_or_else(|| {
            PortError::permanent(format!("secret {r}: expected {SCHEME}projects/P/secrets/S[/versions/V]"))
        })?;
        let resp = self.client.access_secret_version().set_name(&name).send().await.map_err(|e| {
            // Missing or forbidden stays so until someone changes IAM or creates the secret; the rest may pass.
            let permanent = matches!(e.http_status_code(), Some(400 | 403 | 404));
            let msg = format!("secret {r}: {e}");
            if permanent { PortError::permanent(msg) } else { PortError::retryable(msg) }
        })?;
        let payload =
            resp.payload.ok_or_else(|| PortError::retryable(format!("secret {r}: answer without a payload")))?;
        let text = payload_text(&payload).map_err(|bad| {
            // A payload damaged on the way may come through whole next time; one that is not text will not.
            let msg = format!("secret {r}: {bad}");
            if bad == BadPayload::Crc { PortError::retryable(msg) } else { PortError::permanent(msg) }
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(PortError::permanent(format!("secret {r}: payload is empty")));
        }
        Ok(Secret::new(text))
    }
}

/// Where a secret's payload may be: Secret Manager refuses versions over 64 KiB.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// A client for an operator's command: Application Default Credentials with a short retry budget (someone is
/// waiting), or, with `SECRET_MANAGER_EMULATOR_HOST` set (`host:port` or a URL), a local fake there without
/// credentials — no Secret Manager emulator exists, and the tests fake its REST API.
pub async fn operator_client() -> anyhow::Result<SecretManagerService> {
    use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
    let mut builder = SecretManagerService::builder().with_retry_policy(Aip194Strict.with_attempt_limit(3));
    if let Some(url) = super::emulator_url("SECRET_MANAGER_EMULATOR_HOST") {
        builder = builder
            .with_endpoint(url)
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
    }
    builder.build().await.map_err(|e| anyhow::anyhow!("Secret Manager client: {e}"))
}

/// One version of a `SecretManagerFile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub text: String,
    /// Its full name, `projects/P/secrets/S/versions/N` (the number, not `latest`).
    pub version: String,
}

/// A text file kept as a Secret Manager secret: read its latest version, add a new one. The secret must exist
/// (terraform creates it); this never creates secrets or changes who may read them.
pub struct SecretManagerFile {
    client: SecretManagerService,
    /// `projects/P/secrets/S`.
    secret: String,
}

impl SecretManagerFile {
    /// `secret` is `projects/P/secrets/S` (a `gcp-sm:` prefix is accepted, a version is not: edits go on top of
    /// the latest).
    pub fn new(client: SecretManagerService, secret: &str) -> anyhow::Result<Self> {
        let secret = secret.strip_prefix(SCHEME).unwrap_or(secret).trim_end_matches('/');
        anyhow::ensure!(
            secret.split('/').count() == 4 && version_name(secret).is_some(),
            "{secret:?} is not a secret name: expected projects/P/secrets/S"
        );
        Ok(Self { client, secret: secret.to_owned() })
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The latest enabled version, its payload checked against its CRC32C.
    pub async fn read_latest(&self) -> anyhow::Result<FileVersion> {
        let name = format!("{}/versions/latest", self.secret);
        let resp = self
            .client
            .access_secret_version()
            .set_name(&name)
            .send()
            .await
            .map_err(|e| self.explain(e, "read", "roles/secretmanager.secretAccessor"))?;
        let payload =
            resp.payload.ok_or_else(|| anyhow::anyhow!("secret {}: answer without a payload", self.secret))?;
        let text = payload_text(&payload).map_err(|bad| anyhow::anyhow!("secret {}: {bad}", self.secret))?;
        // The answer names the version `latest` resolved to, which is what an edit is based on.
        let version = if resp.name.is_empty() { name } else { resp.name };
        Ok(FileVersion { text, version })
    }

    /// Add `text` as the new latest version, with its CRC32C so the service checks what it received. `based_on` is
    /// the version the edit started from: if another version was added since, nothing is added (two edits at
    /// once would otherwise lose one). Returns the new version's name.
    pub async fn add_version(&self, based_on: &FileVersion, text: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            text.len() <= MAX_PAYLOAD_BYTES,
            "secret {}: {} bytes is over Secret Manager's {MAX_PAYLOAD_BYTES}-byte limit per version",
            self.secret,
            text.len()
        );
        let now = self.read_latest().await?;
        anyhow::ensure!(
            now.version == based_on.version,
            "secret {} has a new version ({}) since this edit read {}; nothing added: run the command again",
            self.secret,
            now.version,
            based_on.version
        );
        let data = bytes::Bytes::from(text.to_owned());
        let payload = google_cloud_secretmanager_v1::model::SecretPayload::new()
            .set_data_crc32c(i64::from(crc32c::crc32c(&data)))
            .set_data(data);
        let version = self
            .client
            .add_secret_version()
            .set_parent(&self.secret)
            .set_payload(payload)
            .send()
            .await
            .map_err(|e| self.explain(e, "add a version to", "roles/secretmanager.secretVersionAdder"))?;
        Ok(version.name)
    }

    /// An error an operator can act on: which secret, what was refused, and the role that allows it.
    fn explain(&self, e: google_cloud_gax::error::Error, what: &str, role: &str) -> anyhow::Error {
        match e.http_status_code() {
            Some(403) => anyhow::anyhow!(
                "cannot {what} secret {}: permission denied (403; the caller needs {role} on it): {e}",
                self.secret
            ),
            Some(404) => {
                anyhow::anyhow!(
                    "cannot {what} secret {}: not found, or it has no enabled version (404): {e}",
                    self.secret
                )
            }
            _ => anyhow::anyhow!("cannot {what} secret {}: {e}", self.secret),
        }
    }
}

/// Why a version's payload cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum BadPayload {
    #[error("payload failed its CRC32C check")]
    Crc,
    #[error("payload is not UTF-8 text")]
    NotText,
}

/// A version's payload as text, checked against the CRC32C the service sends with it (when it sends one).
fn payload_text(payload: &google_cloud_secretmanager_v1::model::SecretPayload) -> Result<String, BadPayload> {
    if let Some(expected) = payload.data_crc32c
        && i64::from(crc32c::crc32c(&payload.data)) != expected
    {
        return Err(BadPayload::Crc);
    }
    String::from_utf8(payload.data.to_vec()).map_err(|_| BadPayload::NotText)
}

/// Routes a reference by its scheme: `env:`/`file:` to the local source, `gcp-sm:` to Secret Manager (when
/// configured). One source for the functions, whichever mode they run in.
pub struct SecretsByScheme {
    local: LocalSecrets,
    secret_manager: Option<Arc<dyn SecretSource>>,
}

impl SecretsByScheme {
    pub fn new(local: LocalSecrets, secret_manager: Option<Arc<dyn SecretSource>>) -> Self {
        Self { local, secret_manager }
    }
}

#[async_trait]
impl SecretSource for SecretsByScheme {
    async fn secret(&self, reference: &SecretRef) -> PortResult<Secret> {
        if reference.0.starts_with(SCHEME) {
            return match &self.secret_manager {
                Some(sm) => sm.secret(reference).await,
                None => Err(PortError::permanent(format!(
                    "secret {}: Secret Manager is not configured in this mode",
                    reference.0
                ))),
            };
        }
        self.local.secret(reference).await
    }
}

#[cfg(test)]
mod tests {
    use super::{SecretManagerFile, version_name};

    #[test]
    fn references_name_a_version() {
        assert_eq!(version_name("projects/p/secrets/s").as_deref(), Some("projects/p/secrets/s/versions/latest"));
        assert_eq!(version_name("projects/p/secrets/s/versions/3").as_deref(), Some("projects/p/secrets/s/versions/3"));
        for bad in ["projects/p/secrets", "projects/p/secrets/s/versions", "projects/../secrets/s", "x/p/secrets/s", ""]
        {
            assert_eq!(version_name(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_file_secret_is_named_without_a_version() {
        let client = google_cloud_secretmanager_v1::client::SecretManagerService::builder()
            .with_endpoint("http://127.0.0.1:1")
            .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
            .build()
            .await
            .unwrap();
        let ok = SecretManagerFile::new(client.clone(), "gcp-sm:projects/p/secrets/tenants").unwrap();
        assert_eq!(ok.secret(), "projects/p/secrets/tenants");
        for bad in ["projects/p/secrets/tenants/versions/3", "projects/p", "tenants"] {
            let err = SecretManagerFile::new(client.clone(), bad).err().unwrap().to_string();
            assert!(err.contains("expected projects/P/secrets/S"), "{bad}: {err}");
        }
    }
}
