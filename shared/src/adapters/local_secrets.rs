//! Secrets for the embedded mode (`env:NAME`, `file:path`), and a TTL cache any secret source can sit behind,
//! so a webhook does not read a file or call Secret Manager per request, yet a rotated key is picked up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::tenant::SecretRef;
use crate::ports::{PortError, PortResult, Secret, SecretSource};

pub struct LocalSecrets {
    /// `file:` references are relative to this directory (the tenants file's).
    base_dir: PathBuf,
}

impl LocalSecrets {
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self { base_dir: base_dir.into() }
    }
}

#[async_trait]
impl SecretSource for LocalSecrets {
    async fn secret(&self, reference: &SecretRef) -> PortResult<Secret> {
        let r = reference.0.as_str();
        if let Some(name) = r.strip_prefix("env:") {
            return std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| Secret::new(v.trim()))
                .ok_or_else(|| PortError::permanent(format!("secret {r}: environment variable {name} is not set")));
        }
        if let Some(path) = r.strip_prefix("file:") {
            let path = self.base_dir.join(path);
            return match tokio::fs::read_to_string(&path).await {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(PortError::permanent(format!("secret {r}: {} is empty", path.display()))),
                Err(e) => Err(PortError::permanent(format!("secret {r}: {}: {e}", path.display()))),
            };
        }
        Err(PortError::permanent(format!("secret {r}: unsupported reference (use env:NAME or file:PATH)")))
    }
}

/// Caches secrets for `ttl`. Failures are not cached, so a missing key starts working as soon as it exists.
pub struct CachedSecrets {
    inner: Arc<dyn SecretSource>,
    ttl: Duration,
    cache: Mutex<HashMap<SecretRef, (Instant, Secret)>>,
}

impl CachedSecrets {
    pub fn new(inner: Arc<dyn SecretSource>, ttl: Duration) -> Self {
        Self { inner, ttl, cache: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl SecretSource for CachedSecrets {
    async fn secret(&self, reference: &SecretRef) -> PortResult<Secret> {
        if let Some((at, s)) = self.cache.lock().expect("secret cache lock").get(reference)
            && at.elapsed() < self.ttl
        {
            return Ok(s.clone());
        }
        let secret = self.inner.secret(reference).await?;
        self.cache.lock().expect("secret cache lock").insert(reference.clone(), (Instant::now(), secret.clone()));
        Ok(secret)
    }
}
