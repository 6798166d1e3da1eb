//! Tenants: one remodeling company each, with its CallRail ids, signing keys (as secret references) and settings.

use serde::{Deserialize, Serialize};

use super::ids::TenantId;

/// Where a secret lives, never the secret itself: `env:NAME`, `file:relative/or/absolute/path`, or
/// `gcp-sm:projects/P/secrets/S/versions/V` (Secret Manager). Config files hold these, not keys.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretRef(pub String);

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretRef({})", self.0)
    }
}

/// At most two keys are active per signature scheme: the current one and the one being rotated out.
pub const MAX_ACTIVE_KEYS: usize = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRailSettings {
    /// The `ACC…` account id used in API paths.
    pub account_id: String,
    /// Company ids (resource `COM…` and/or legacy numeric) whose webhooks this tenant may receive.
    pub company_ids: Vec<String>,
    #[serde(default)]
    pub signing_keys: Vec<SecretRef>,
    pub api_key: Option<SecretRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormSettings {
    /// Standard Webhooks secrets (`whsec_…`), by reference.
    #[serde(default)]
    pub signing_keys: Vec<SecretRef>,
    /// Accepted form submissions per minute for this tenant (a burst of the same size is allowed).
    #[serde(default = "default_form_rate")]
    pub per_minute: u32,
}

fn default_form_rate() -> u32 {
    120
}

fn default_retention_days() -> u32 {
    365
}

/// Which engine transcribes a tenant's recordings (CallRail's own transcript, when a call has one, is always
/// used first: it costs nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineChoice {
    /// Google Speech-to-Text v2 (Chirp, diarization).
    Google,
    /// PocketSphinx on the machine: free, offline, lower quality.
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptionSettings {
    /// Absent: the deployment's default (the offline engine embedded, Speech-to-Text on Google Cloud).
    #[serde(default)]
    pub engine: Option<EngineChoice>,
    /// BCP-47 language of the tenant's calls.
    #[serde(default = "default_language")]
    pub language: String,
    /// Calls shorter than this are not transcribed (hang-ups, misdials).
    #[serde(default = "default_min_call_secs")]
    pub min_call_secs: u32,
    /// Voicemails shorter than this are not transcribed (no message left).
    #[serde(default = "default_min_voicemail_secs")]
    pub min_voicemail_secs: u32,
}

fn default_language() -> String {
    "en-US".into()
}
fn default_min_call_secs() -> u32 {
    15
}
fn default_min_voicemail_secs() -> u32 {
    8
}

impl Default for TranscriptionSettings {
    fn default() -> Self {
        Self {
            engine: None,
            language: default_language(),
            min_call_secs: default_min_call_secs(),
            min_voicemail_secs: default_min_voicemail_secs(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnalyzerChoice {
    /// Vertex AI Gemini, with the rules as the fallback.
    Gemini,
    /// The rules analyzer alone: free, offline.
    Rules,
}

/// `[tenant.analysis]`: the analyzer, the model, the scoring weights and what is redacted before analysis.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSettings {
    /// Absent: the deployment's default (the rules embedded, Gemini on Google Cloud).
    #[serde(default)]
    pub analyzer: Option<AnalyzerChoice>,
    /// A Gemini model id; absent: the deployment's.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub weights: super::rules::ScoreWeights,
    #[serde(default)]
    pub redaction: super::redact::RedactionSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub callrail: Option<CallRailSettings>,
    pub forms: Option<FormSettings>,
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Retention per kind of data (recordings, transcripts, personal fields); `retention_days` where absent.
    #[serde(default)]
    pub retention: super::retention::RetentionSettings,
    /// How recordings are transcribed (on-audio-uploaded); defaults when absent.
    #[serde(default)]
    pub transcription: TranscriptionSettings,
    /// How calls are analysed (on-transcript); defaults when absent.
    #[serde(default)]
    pub analysis: AnalysisSettings,
    /// CRM provider, credential reference and field mapping (on-analysis). Absent: leads are accepted without a
    /// push (notifications still go out).
    #[serde(default)]
    pub crm: Option<super::crm::CrmSettings>,
    /// Spam gate, service area, minimum score, notification rules (on-analysis); the defaults when absent.
    #[serde(default)]
    pub workflow: super::workflow::Workflow,
    /// The workflow as a JSON document beside the tenants file, instead of an inline `[tenant.workflow]` table.
    #[serde(default, skip_serializing)]
    pub workflow_file: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantConfigError {
    #[error("tenant {tenant}: {message}")]
    Invalid { tenant: String, message: String },
}

impl Tenant {
    pub fn validate(&self) -> Result<(), TenantConfigError> {
        let fail = |message: String| Err(TenantConfigError::Invalid { tenant: self.id.to_string(), message });
        if let Some(cr) = &self.callrail {
            if cr.signing_keys.len() > MAX_ACTIVE_KEYS {
                return fail(format!(
                    "callrail.signing_keys has {} keys; at most {MAX_ACTIVE_KEYS}",
                    cr.signing_keys.len()
                ));
            }
            if cr.company_ids.is_empty() {
                return fail("callrail.company_ids is empty".into());
            }
            if cr.account_id.trim().is_empty() {
                return fail("callrail.account_id is empty".into());
            }
        }
        let language = &self.transcription.language;
        let well_formed = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric());
        if !language.split('-').all(well_formed) || language.len() > 35 {
            return fail(format!("transcription.language {language:?} is not a BCP-47 tag (e.g. en-US)"));
        }
        if let Some(model) = &self.analysis.model
            && (model.is_empty() || !model.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
        {
            return fail(format!("analysis.model {model:?} is not a model id (e.g. gemini-2.5-flash)"));
        }
        if let Some(crm) = &self.crm {
            crm.validate().map_err(|message| TenantConfigError::Invalid { tenant: self.id.to_string(), message })?;
        }
        self.workflow
            .validate()
            .map_err(|message| TenantConfigError::Invalid { tenant: self.id.to_string(), message })?;
        if let Some(forms) = &self.forms {
            if forms.signing_keys.len() > MAX_ACTIVE_KEYS {
                return fail(format!(
                    "forms.signing_keys has {} keys; at most {MAX_ACTIVE_KEYS}",
                    forms.signing_keys.len()
                ));
            }
            if forms.per_minute == 0 {
                return fail("forms.per_minute must be at least 1".into());
            }
        }
        Ok(())
    }

    pub fn owns_company(&self, ids: &[&str]) -> bool {
        self.callrail.as_ref().is_some_and(|cr| ids.iter().any(|id| cr.company_ids.iter().any(|own| own == id)))
    }
}
