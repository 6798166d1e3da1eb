//! Configuration from the environment (Cloud Run style): every function reads its variables through a lookup
//! (the process environment in production, a map in tests), and the settings all functions share are read once
//! here so they mean the same everywhere.

use std::path::PathBuf;
use std::time::Duration;

use crate::adapters::sqlite::Durability;
use crate::eventarc::Triggers;
use crate::runtime::google::GoogleConfig;

/// A variable's value parsed, its default when unset or empty, or an error that names the variable.
pub fn parse<T: std::str::FromStr>(name: &str, value: Option<String>, default: T) -> anyhow::Result<T> {
    match value {
        Some(v) if !v.is_empty() => v.parse().map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

/// What every function reads the same way.
#[derive(Debug, Clone)]
pub struct Common {
    /// `PORT` (Cloud Run sets it), default 8080.
    pub port: u16,
    /// `CALLFLOW_DATA_DIR`: the embedded backends' directory.
    pub data_dir: PathBuf,
    /// `CALLFLOW_TENANTS`: the tenants file.
    pub tenants_file: PathBuf,
    /// Trigger definitions (`CALLFLOW_EVENTARC`) bound to the environment `CALLFLOW_ENVIRONMENT` names.
    pub triggers: Triggers,
    /// How long in-flight requests get after SIGTERM.
    pub drain: Duration,
    /// `CALLFLOW_SQLITE_SYNC`.
    pub durability: Durability,
    /// Outside the embedded environment the Google Cloud backends (on their emulators when those are configured).
    pub google: Option<GoogleConfig>,
}

impl Common {
    pub fn from_lookup(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let eventarc_dir: PathBuf = parse("CALLFLOW_EVENTARC", var("CALLFLOW_EVENTARC"), PathBuf::from("eventarc"))?;
        let environment: String = parse("CALLFLOW_ENVIRONMENT", var("CALLFLOW_ENVIRONMENT"), "embedded".to_owned())?;
        let mut triggers = crate::eventarc::load(&eventarc_dir, &environment)?;
        if triggers.needs_project() {
            let project = var("GOOGLE_CLOUD_PROJECT").filter(|p| !p.is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "environment {environment:?} names its buckets and topics after the project: set \
                     GOOGLE_CLOUD_PROJECT"
                )
            })?;
            triggers = triggers.bind_project(&project);
        }
        Ok(Self {
            port: parse("PORT", var("PORT"), 8080)?,
            data_dir: parse("CALLFLOW_DATA_DIR", var("CALLFLOW_DATA_DIR"), PathBuf::from(".data"))?,
            tenants_file: parse("CALLFLOW_TENANTS", var("CALLFLOW_TENANTS"), PathBuf::from("fixtures/tenants.toml"))?,
            google: if environment == "embedded" { None } else { Some(GoogleConfig::from_lookup(var)?) },
            triggers,
            drain: Duration::from_secs(8),
            durability: Durability::parse(var("CALLFLOW_SQLITE_SYNC").as_deref()),
        })
    }

    /// The trigger named `name` in the definitions (a function finds its own retry budget and timeout here).
    pub fn trigger(&self, name: &str) -> anyhow::Result<&crate::eventarc::Trigger> {
        self.triggers
            .triggers
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow::anyhow!("eventarc/ defines no trigger {name:?}"))
    }

    /// The real name of the bucket bound to `role`, or an error naming the environment that lacks it.
    pub fn bucket(&self, role: &str) -> anyhow::Result<String> {
        self.triggers.bucket(role).map(str::to_owned).ok_or_else(|| {
            anyhow::anyhow!("environment {:?} binds no bucket to the role {role:?}", self.triggers.environment)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn on_google_cloud_the_names_are_the_projects() {
        let eventarc = concat!(env!("CARGO_MANIFEST_DIR"), "/../eventarc");
        let base = [
            ("CALLFLOW_EVENTARC", eventarc),
            ("CALLFLOW_ENVIRONMENT", "gcp"),
            ("CALLFLOW_SPANNER_DATABASE", "projects/acme/instances/i/databases/d"),
        ];
        let missing = Common::from_lookup(&lookup(&base)).unwrap_err().to_string();
        assert!(missing.contains("set GOOGLE_CLOUD_PROJECT"), "{missing}");
        let mut vars = base.to_vec();
        vars.push(("GOOGLE_CLOUD_PROJECT", "acme"));
        let common = Common::from_lookup(&lookup(&vars)).unwrap();
        assert_eq!(common.bucket("transcripts").unwrap(), "acme-callflow-transcripts");
        assert_eq!(common.triggers.project, "acme");
    }
}
