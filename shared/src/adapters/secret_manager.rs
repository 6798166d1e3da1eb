//! Secrets from Google Secret Manager (official client, REST), for references `gcp-sm:projects/P/secrets/S`
//! (the latest version) or `gcp-sm:projects/P/secrets/S/versions/V`. The payload's CRC32C is checked when the
//! service sends one. Put `CachedSecrets` in front: secrets are read per request, Secret Manager is billed per call.

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
        if let Some(expected) = payload.data_crc32c
            && i64::from(crc32c::crc32c(&payload.data)) != expected
        {
            return Err(PortError::retryable(format!("secret {r}: payload failed its CRC32C check")));
        }
        let text = String::from_utf8(payload.data.to_vec())
            .map_err(|_| PortError::permanent(format!("secret {r}: payload is not UTF-8 text")))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(PortError::permanent(format!("secret {r}: payload is empty")));
        }
        Ok(Secret::new(text))
    }
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
    use super::version_name;

    #[test]
    fn references_name_a_version() {
        assert_eq!(version_name("projects/p/secrets/s").as_deref(), Some("projects/p/secrets/s/versions/latest"));
        assert_eq!(version_name("projects/p/secrets/s/versions/3").as_deref(), Some("projects/p/secrets/s/versions/3"));
        for bad in ["projects/p/secrets", "projects/p/secrets/s/versions", "projects/../secrets/s", "x/p/secrets/s", ""]
        {
            assert_eq!(version_name(bad), None, "{bad}");
        }
    }
}
