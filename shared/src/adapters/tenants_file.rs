//! Tenants from a TOML file (every mode's tenant directory: on Google Cloud the file is a Secret Manager secret
//! mounted into each function). Secrets are referenced, not inlined. `ReloadingTenants` serves the file's tenants
//! and picks up a new version of it without a restart; `replace_file` is how `callflow tenants` writes one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use crate::domain::TenantId;
use crate::domain::tenant::Tenant;
use crate::ports::{PortResult, TenantDirectory};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default, rename = "tenant")]
    tenants: Vec<Tenant>,
}

pub struct FileTenants {
    tenants: HashMap<TenantId, Arc<Tenant>>,
}

impl FileTenants {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read tenants file {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, dir).map_err(|e| anyhow::anyhow!("tenants file {}: {e}", path.display()))
    }

    /// Parse a tenants file whose `workflow_file`s are relative to the current directory.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::parse_in(text, Path::new("."))
    }

    /// Parse a tenants file whose `workflow_file`s are relative to `dir` (the file's own directory, as `load`
    /// resolves them). `callflow tenants` validates a new version with this before writing it.
    pub fn parse_in(text: &str, dir: &Path) -> anyhow::Result<Self> {
        let file: TenantsFile = toml::from_str(text)?;
        let mut tenants = HashMap::new();
        for mut tenant in file.tenants {
            if let Some(name) = tenant.workflow_file.take() {
                let path = dir.join(&name);
                let json = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("tenant {}: workflow_file {}: {e}", tenant.id, path.display()))?;
                tenant.workflow = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("tenant {}: workflow_file {}: {e}", tenant.id, path.display()))?;
            }
            tenant.validate()?;
            let id = tenant.id.clone();
            if tenants.insert(id.clone(), Arc::new(tenant)).is_some() {
                anyhow::bail!("tenant {id} is defined twice");
            }
        }
        Ok(Self { tenants })
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

#[async_trait]
impl TenantDirectory for FileTenants {
    async fn tenant(&self, id: &TenantId) -> PortResult<Option<Arc<Tenant>>> {
        Ok(self.tenants.get(id).cloned())
    }

    async fn list(&self) -> PortResult<Vec<Arc<Tenant>>> {
        let mut all: Vec<_> = self.tenants.values().cloned().collect();
        all.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(all)
    }
}

/// How often `ReloadingTenants` looks at the file: one `stat` per interval at most, whatever the request rate.
pub const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The tenants file, re-read when it changes: a tenant added or edited with `callflow tenants` (or, on Cloud Run, a
/// new version of the secret the file is mounted from, which Cloud Run refreshes in the volume when it references
/// `latest`) is served without a restart. The file is looked at (a `stat`: modification time, size, inode) at
/// most once per `RELOAD_CHECK_EVERY`. A new version that does not load is logged once and otherwise ignored: the
/// last good tenants keep serving, so a bad edit cannot take every tenant down. Workflow files are read again
/// only when the tenants file itself changes.
pub struct ReloadingTenants {
    path: PathBuf,
    check_every: Duration,
    state: Mutex<Reload>,
}

struct Reload {
    tenants: Arc<FileTenants>,
    /// The version `tenants` were read from.
    loaded: Stamp,
    /// The last version that failed to load (logged once, not parsed again).
    rejected: Option<Stamp>,
    checked_at: Instant,
    /// Versions refused so far (what the tests count).
    rejections: u64,
}

/// What identifies a version of the file cheaply. The inode matters: an atomic replace (a rename, as
/// `replace_file` and Cloud Run's volume refresh do) may keep the size and land within the clock's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    /// The file could not be looked at (renamed away for a moment, a volume being remounted).
    const MISSING: Stamp = Stamp { modified: None, len: 0, inode: 0 };

    fn of(path: &Path) -> std::io::Result<Self> {
        // `metadata` follows symlinks: a mounted volume swaps a link to the new version's file.
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Self { modified: m.modified().ok(), len: m.len(), inode })
    }
}

impl ReloadingTenants {
    /// Load the file now (an error stops start-up, as before), then follow it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_checking_every(path, RELOAD_CHECK_EVERY)
    }

    pub fn load_checking_every(path: &Path, check_every: Duration) -> anyhow::Result<Self> {
        // The stamp is taken before the read: a change in between is seen as a new version at the next check.
        let loaded =
            Stamp::of(path).map_err(|e| anyhow::anyhow!("cannot read tenants file {}: {e}", path.display()))?;
        let tenants = Arc::new(FileTenants::load(path)?);
        Ok(Self {
            path: path.to_owned(),
            check_every,
            state: Mutex::new(Reload { tenants, loaded, rejected: None, checked_at: Instant::now(), rejections: 0 }),
        })
    }

    /// The tenants in force, after looking at the file when the interval has passed.
    pub fn current(&self) -> Arc<FileTenants> {
        let mut s = self.state.lock().expect("tenants reload lock");
        if s.checked_at.elapsed() >= self.check_every {
            s.checked_at = Instant::now();
            // Under the lock, so one caller reloads and the others wait for it rather than each reading the file.
            // The read is synchronous: a small local file, and only when it has changed.
            self.refresh(&mut s);
        }
        s.tenants.clone()
    }

    fn refresh(&self, s: &mut Reload) {
        let stamp = match Stamp::of(&self.path) {
            Ok(stamp) => stamp,
            Err(e) => {
                if s.rejected != Some(Stamp::MISSING) {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "tenants file cannot be read; keeping the last good tenants");
                    s.rejected = Some(Stamp::MISSING);
                    s.rejections += 1;
                }
                return;
            }
        };
        if stamp == s.loaded || Some(stamp) == s.rejected {
            return;
        }
        match FileTenants::load(&self.path) {
            Ok(tenants) => {
                tracing::info!(path = %self.path.display(), tenants = tenants.len(), "tenants file reloaded");
                s.tenants = Arc::new(tenants);
                s.loaded = stamp;
                s.rejected = None;
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = format!("{e:#}"),
                    "tenants file changed but does not load; keeping the last good tenants");
                s.rejected = Some(stamp);
                s.rejections += 1;
            }
        }
    }
}

#[async_trait]
impl TenantDirectory for ReloadingTenants {
    async fn tenant(&self, id: &TenantId) -> PortResult<Option<Arc<Tenant>>> {
        self.current().tenant(id).await
    }

    async fn list(&self) -> PortResult<Vec<Arc<Tenant>>> {
        self.current().list().await
    }
}

/// Replace the tenants file at `path` with `text`, atomically: a temporary file in the same directory, flushed to
/// disk, renamed over it, so a function reading it (or `ReloadingTenants`) sees the old version or the new one,
/// never half of one. `expected` is the text the edit started from: if the file changed since, nothing is written
/// (two edits at once would otherwise lose one). The file keeps its permissions; a symlink is followed, not
/// replaced.
pub fn replace_file(path: &Path, expected: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let target = std::fs::canonicalize(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tenants-")
        .suffix(".toml.tmp")
        .tempfile_in(dir)
        .map_err(|e| anyhow::anyhow!("cannot create a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    let permissions = std::fs::metadata(&target)?.permissions();
    std::fs::set_permissions(tmp.path(), permissions)?;
    let now = std::fs::read_to_string(&target).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        now == expected,
        "{} changed while this edit was being made; nothing written: run the command again",
        path.display()
    );
    tmp.persist(&target).map_err(|e| anyhow::anyhow!("cannot replace {}: {}", path.display(), e.error))?;
    // The rename is durable once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_loads_and_bad_configs_say_why() {
        let sample_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tenants.toml");
        let sample = std::fs::read_to_string(&sample_path).unwrap();
        let t = FileTenants::load(&sample_path).unwrap();
        assert_eq!(t.len(), 2);
        let acme = t.tenants.get(&TenantId::parse("acme-remodeling").unwrap()).unwrap();
        assert_eq!(acme.workflow.spam.threshold, 80, "the workflow file was read");
        assert!(acme.workflow.service_area.is_some());
        let missing = sample.replace("workflows/acme-remodeling.json", "workflows/none.json");
        let err = FileTenants::parse(&missing).err().unwrap().to_string();
        assert!(err.contains("tenant acme-remodeling: workflow_file") && err.contains("none.json"), "{err}");
        let three_keys = r#"
            [[tenant]]
            id = "x"
            name = "X"
            [tenant.callrail]
            account_id = "ACC1"
            company_ids = ["1"]
            signing_keys = ["env:A", "env:B", "env:C"]
        "#;
        let err = FileTenants::parse(three_keys).err().unwrap().to_string();
        assert!(err.contains("at most 2"), "{err}");
        let err = FileTenants::parse("[[tenant]]\nid = \"Bad/Id\"\nname = \"x\"").err().unwrap().to_string();
        assert!(err.contains("invalid tenant id"), "{err}");
        let bad_language =
            "[[tenant]]\nid = \"x\"\nname = \"X\"\n[tenant.transcription]\nlanguage = \"english please\"";
        let err = FileTenants::parse(bad_language).err().unwrap().to_string();
        assert!(err.contains("transcription.language") && err.contains("BCP-47"), "{err}");
        let bad_engine = "[[tenant]]\nid = \"x\"\nname = \"X\"\n[tenant.transcription]\nengine = \"whisper\"";
        assert!(FileTenants::parse(bad_engine).is_err());
    }

    fn tenant_toml(id: &str) -> String {
        format!("[[tenant]]\nid = \"{id}\"\nname = \"{id} Ltd\"\n\n")
    }

    fn ids(t: &ReloadingTenants) -> Vec<String> {
        t.current()
            .tenants
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn an_edited_file_is_picked_up_and_a_broken_one_keeps_the_last_good_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, tenant_toml("alpha")).unwrap();
        let t = ReloadingTenants::load_checking_every(&path, Duration::ZERO).unwrap();
        assert_eq!(ids(&t), ["alpha"]);

        std::fs::write(&path, tenant_toml("alpha") + &tenant_toml("beta")).unwrap();
        assert_eq!(ids(&t), ["alpha", "beta"], "a new tenant is served without a restart");

        // Broken two ways: not TOML, then a tenant that fails validation. Both keep the last good tenants.
        std::fs::write(&path, "[[tenant]\nid = ").unwrap();
        for _ in 0..3 {
            assert_eq!(ids(&t), ["alpha", "beta"]);
        }
        assert_eq!(t.state.lock().unwrap().rejections, 1, "a bad version is logged once, not at every lookup");
        std::fs::write(&path, tenant_toml("alpha") + "[[tenant]]\nid = \"Bad/Id\"\nname = \"x\"\n").unwrap();
        assert_eq!(ids(&t), ["alpha", "beta"]);
        assert_eq!(t.state.lock().unwrap().rejections, 2);

        // Replaced atomically, as `callflow tenants` writes it.
        let expected = std::fs::read_to_string(&path).unwrap();
        replace_file(&path, &expected, &(tenant_toml("gamma") + &tenant_toml("alpha"))).unwrap();
        assert_eq!(ids(&t), ["alpha", "gamma"]);
        let err = replace_file(&path, &expected, "").unwrap_err().to_string();
        assert!(err.contains("changed while this edit was being made"), "{err}");
        assert_eq!(ids(&t), ["alpha", "gamma"], "a refused replace leaves the file alone");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left behind");

        // Gone for a moment (a volume being remounted): still served.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(ids(&t), ["alpha", "gamma"]);
    }

    #[test]
    fn the_file_is_looked_at_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, tenant_toml("alpha")).unwrap();
        let t = ReloadingTenants::load_checking_every(&path, Duration::from_millis(300)).unwrap();
        std::fs::write(&path, tenant_toml("alpha") + &tenant_toml("beta")).unwrap();
        assert_eq!(ids(&t), ["alpha"], "not before the interval has passed");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(ids(&t), ["alpha", "beta"]);
        assert!(ReloadingTenants::load(&dir.path().join("none.toml")).is_err(), "a missing file still stops start-up");
    }
}
