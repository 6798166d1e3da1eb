//! The Google Cloud backends (Spanner, Cloud Storage, BigQuery, Secret Manager), connected once per process. The
//! same code serves Google Cloud and the emulator topology: each client goes to its emulator when the emulator's
//! usual variable is set (`SPANNER_EMULATOR_HOST`, `STORAGE_EMULATOR_HOST`, `BIGQUERY_EMULATOR_HOST`,
//! `PUBSUB_EMULATOR_HOST`).
//!
//! Storage events are not produced here: on Google Cloud, Cloud Storage and Eventarc deliver them; in the emulator
//! topology, the storage watcher does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::adapters::bigquery::BigQuerySink;
use crate::adapters::gcs::GcsObjectStore;
use crate::adapters::local_secrets::{CachedSecrets, LocalSecrets};
use crate::adapters::secret_manager::{SecretManagerSecrets, SecretsByScheme};
use crate::adapters::spanner::SpannerStateStore;
use crate::adapters::tenants_file::ReloadingTenants;
use crate::eventarc::Triggers;

/// Where the Google backends live, beyond what the trigger definitions say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleConfig {
    /// `projects/P/instances/I/databases/D`.
    pub spanner_database: String,
    /// The BigQuery dataset the analytics tables are in (in the environment's project).
    pub bigquery_dataset: String,
}

impl GoogleConfig {
    /// `CALLFLOW_SPANNER_DATABASE` (required), `CALLFLOW_BIGQUERY_DATASET` (default `callflow`).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let spanner_database = var("CALLFLOW_SPANNER_DATABASE").filter(|v| !v.is_empty()).context(
            "CALLFLOW_SPANNER_DATABASE is not set (projects/P/instances/I/databases/D) — needed outside the \
             embedded environment",
        )?;
        anyhow::ensure!(
            spanner_database.split('/').count() == 6 && spanner_database.starts_with("projects/"),
            "CALLFLOW_SPANNER_DATABASE={spanner_database:?} is not projects/P/instances/I/databases/D"
        );
        let bigquery_dataset = var("CALLFLOW_BIGQUERY_DATASET").filter(|v| !v.is_empty()).unwrap_or("callflow".into());
        Ok(Self { spanner_database, bigquery_dataset })
    }
}

pub struct Google {
    pub state: Arc<SpannerStateStore>,
    pub objects: Arc<GcsObjectStore>,
    pub analytics: Arc<BigQuerySink>,
    /// The tenants file, followed: an edited file (or secret version) is served without a restart.
    pub tenants: Arc<ReloadingTenants>,
    pub secrets: Arc<CachedSecrets>,
}

impl Google {
    /// Tenants come from a TOML file (on Google Cloud, the Secret Manager secret mounted into the function:
    /// terraform/main.tf), followed for new versions; secret references in it may point at Secret Manager with
    /// `gcp-sm:`.
    pub async fn connect(config: &GoogleConfig, triggers: &Triggers, tenants_file: &Path) -> anyhow::Result<Self> {
        let tenants = ReloadingTenants::load(tenants_file)?;
        let secrets_dir = tenants_file.parent().map(Path::to_path_buf).unwrap_or_default();
        let secret_manager = SecretManagerSecrets::connect().await.context("Secret Manager client")?;
        let secrets = SecretsByScheme::new(LocalSecrets::new(secrets_dir), Some(Arc::new(secret_manager)));
        Ok(Self {
            state: Arc::new(SpannerStateStore::connect(&config.spanner_database).await.context("Spanner")?),
            objects: Arc::new(GcsObjectStore::connect().await.context("Cloud Storage")?),
            analytics: Arc::new(
                BigQuerySink::connect(&triggers.project, &config.bigquery_dataset).await.context("BigQuery")?,
            ),
            tenants: Arc::new(tenants),
            secrets: Arc::new(CachedSecrets::new(Arc::new(secrets), Duration::from_secs(60))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_what_is_missing_or_malformed() {
        let none = GoogleConfig::from_lookup(|_| None).unwrap_err().to_string();
        assert!(none.contains("CALLFLOW_SPANNER_DATABASE is not set"), "{none}");
        let bad = GoogleConfig::from_lookup(|k| (k == "CALLFLOW_SPANNER_DATABASE").then(|| "db".to_owned()));
        assert!(bad.unwrap_err().to_string().contains("is not projects/P/instances/I/databases/D"));
        let ok = GoogleConfig::from_lookup(|k| {
            (k == "CALLFLOW_SPANNER_DATABASE").then(|| "projects/p/instances/i/databases/d".to_owned())
        })
        .unwrap();
        assert_eq!(ok.bigquery_dataset, "callflow");
    }
}
