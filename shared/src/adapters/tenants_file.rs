//! Tenants from a TOML file (the embedded mode's tenant directory). Secrets are referenced, not inlined.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

    fn parse_in(text: &str, dir: &Path) -> anyhow::Result<Self> {
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
}
