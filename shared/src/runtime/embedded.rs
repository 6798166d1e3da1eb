//! The embedded backends (SQLite, a directory, local secrets, the local router), opened from one data
//! directory. Every function and the one-process host wire themselves from this, so they share one layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::adapters::dir_objects::DirObjectStore;
use crate::adapters::local_router::{LocalRouter, RoutedObjectStore};
use crate::adapters::local_secrets::{CachedSecrets, LocalSecrets};
use crate::adapters::sqlite::{Durability, SqliteAnalytics, SqliteStateStore};
use crate::adapters::tenants_file::ReloadingTenants;
use crate::eventarc::Triggers;

pub struct Embedded {
    pub data_dir: PathBuf,
    pub state: Arc<SqliteStateStore>,
    /// The directory object store with the router attached: every put records its finalize event.
    pub objects: Arc<RoutedObjectStore>,
    pub router: Arc<LocalRouter>,
    pub analytics: Arc<SqliteAnalytics>,
    /// The tenants file, followed: an edited file (or secret version) is served without a restart.
    pub tenants: Arc<ReloadingTenants>,
    pub secrets: Arc<CachedSecrets>,
}

impl Embedded {
    /// `data_dir` holds `state.sqlite`, `analytics.sqlite`, `router.sqlite` and `objects/`; `tenants_file` is TOML
    /// whose `file:` secret references are relative to its own directory.
    pub fn open(
        data_dir: &Path,
        tenants_file: &Path,
        triggers: Triggers,
        durability: Durability,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let tenants = ReloadingTenants::load(tenants_file)?;
        let secrets_dir = tenants_file.parent().map(Path::to_path_buf).unwrap_or_default();
        let router = Arc::new(LocalRouter::open(&data_dir.join("router.sqlite"), triggers, durability)?);
        let objects = Arc::new(DirObjectStore::new(data_dir.join("objects")));
        Ok(Self {
            data_dir: data_dir.to_owned(),
            state: Arc::new(SqliteStateStore::open(&data_dir.join("state.sqlite"), durability)?),
            objects: Arc::new(RoutedObjectStore::new(objects, router.clone())),
            router,
            analytics: Arc::new(SqliteAnalytics::open(&data_dir.join("analytics.sqlite"), durability)?),
            tenants: Arc::new(tenants),
            secrets: Arc::new(CachedSecrets::new(Arc::new(LocalSecrets::new(secrets_dir)), Duration::from_secs(60))),
        })
    }
}
