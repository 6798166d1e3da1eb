//! Leads as CRMs receive them: the tenant's CRM settings, the lead built from a call and its analysis, the field
//! mapping from our lead fields to the CRM's properties, and what a delivery left on the call. Pure: no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::analysis::{Analysis, score_band};
use super::call::CallRecord;
use super::tenant::SecretRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrmProvider {
    Hubspot,
    Salesforce,
    Pipedrive,
    Webhook,
}

impl CrmProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hubspot => "hubspot",
            Self::Salesforce => "salesforce",
            Self::Pipedrive => "pipedrive",
            Self::Webhook => "webhook",
        }
    }

    /// Our lead field → the CRM's property, for the fields every account of that CRM has. A tenant's
    /// `field_mapping` adds to these and overrides them (custom properties, other names).
    pub fn default_mapping(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Hubspot => &[
                ("first_name", "firstname"),
                ("last_name", "lastname"),
                ("phone", "phone"),
                ("email", "email"),
                ("zip", "zip"),
                ("city", "city"),
                ("state", "state"),
            ],
            Self::Salesforce => &[
                ("first_name", "FirstName"),
                ("last_name", "LastName"),
                ("company", "Company"),
                ("phone", "Phone"),
                ("email", "Email"),
                ("zip", "PostalCode"),
                ("city", "City"),
                ("state", "State"),
                ("marketing_source", "LeadSource"),
                ("rating", "Rating"),
                ("summary", "Description"),
            ],
            // Pipedrive's person gets name, phone and email from the lead itself; its custom fields have
            // generated keys, so anything else comes from the tenant's mapping.
            Self::Pipedrive => &[],
            // The webhook receives every field in the document; `properties` carries the mapping's names.
            Self::Webhook => &[],
        }
    }
}

impl std::fmt::Display for CrmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a HubSpot contact is upserted on: a unique property the tenant created in HubSpot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotSettings {
    /// The contact property with unique values that identifies a lead (HubSpot's `idProperty`).
    #[serde(default = "default_hubspot_id_property")]
    pub id_property: String,
    /// Which of our values fills it: `phone` (one contact per caller, each call logged on it) or `call_id`
    /// (one contact per call).
    #[serde(default)]
    pub id_from: HubSpotIdFrom,
    /// Log the call as a call engagement on the contact (summary, score, recording link).
    #[serde(default = "yes")]
    pub log_call: bool,
}

fn default_hubspot_id_property() -> String {
    "callflow_phone".into()
}
fn yes() -> bool {
    true
}

impl Default for HubSpotSettings {
    fn default() -> Self {
        Self { id_property: default_hubspot_id_property(), id_from: HubSpotIdFrom::default(), log_call: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HubSpotIdFrom {
    #[default]
    Phone,
    CallId,
}

/// What to do when a Salesforce duplicate rule blocks the new Lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// Treat the matching record Salesforce names as the lead (delivered, not created).
    #[default]
    Link,
    /// Save anyway when the rule allows it (`Sforce-Duplicate-Rule-Header: allowSave=true`).
    AllowSave,
    /// A permanent failure: the tenant decides.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceSettings {
    #[serde(default = "default_sf_version")]
    pub api_version: String,
    /// The Lead's External ID field that holds our lead key.
    #[serde(default = "default_sf_external_id")]
    pub external_id_field: String,
    #[serde(default)]
    pub on_duplicate: DuplicatePolicy,
}

fn default_sf_version() -> String {
    "v61.0".into()
}
fn default_sf_external_id() -> String {
    "Callflow_Lead_Key__c".into()
}

impl Default for SalesforceSettings {
    fn default() -> Self {
        Self {
            api_version: default_sf_version(),
            external_id_field: default_sf_external_id(),
            on_duplicate: DuplicatePolicy::default(),
        }
    }
}

/// `[tenant.crm]`: where a tenant's leads go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrmSettings {
    pub provider: CrmProvider,
    /// HubSpot: a private app token. Salesforce: JSON `{"client_id", "client_secret"}` of a connected app with
    /// the client-credentials flow (plus `"refresh_token"` to use that grant instead). Pipedrive: an API token.
    /// Webhook: the `whsec_…` signing secret.
    pub credential: SecretRef,
    /// HubSpot: the API base (default `https://api.hubapi.com`). Salesforce: the org's My Domain URL
    /// (required). Pipedrive: the API base (default `https://api.pipedrive.com`). Webhook: the receiving URL
    /// (required).
    #[serde(default)]
    pub url: Option<String>,
    /// Our lead field → CRM property; adds to and overrides the provider's defaults.
    #[serde(default)]
    pub field_mapping: BTreeMap<String, String>,
    #[serde(default)]
    pub hubspot: HubSpotSettings,
    #[serde(default)]
    pub salesforce: SalesforceSettings,
    /// Per-request time limit.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The longest per-request limit a tenant may set (a push is bounded at four of them).
pub const MAX_TIMEOUT_MS: u64 = 25_000;

impl CrmSettings {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!("crm.url {url:?} is not an http(s) URL"));
        }
        if self.url.is_none() && matches!(self.provider, CrmProvider::Salesforce | CrmProvider::Webhook) {
            return Err(format!(
                "crm.url is required for {} (the {})",
                self.provider,
                match self.provider {
                    CrmProvider::Salesforce => "org's My Domain URL",
                    _ => "URL that receives the leads",
                }
            ));
        }
        for (ours, theirs) in &self.field_mapping {
            if !LEAD_FIELDS.contains(&ours.as_str()) {
                return Err(format!(
                    "crm.field_mapping: {ours:?} is not a lead field (one of: {})",
                    LEAD_FIELDS.join(", ")
                ));
            }
            if theirs.trim().is_empty() {
                return Err(format!("crm.field_mapping: {ours:?} maps to an empty property name"));
            }
        }
        if self.hubspot.id_property.trim().is_empty() {
            return Err("crm.hubspot.id_property is empty".into());
        }
        // A push makes a few requests under this limit each, and all of them must end well inside the functions'
        // 120 s request timeout (eventarc/triggers.toml).
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(format!("crm.timeout_ms {} is not between 1 and {MAX_TIMEOUT_MS}", self.timeout_ms));
        }
        Ok(())
    }

    /// The mapping in force: the provider's defaults, then the tenant's.
    pub fn mapping(&self) -> BTreeMap<&str, &str> {
        let mut m: BTreeMap<&str, &str> = self.provider.default_mapping().iter().copied().collect();
        for (ours, theirs) in &self.field_mapping {
            m.insert(ours, theirs);
        }
        m
    }
}

/// Every field a lead has, by the names field mappings use.
pub const LEAD_FIELDS: &[&str] = &[
    "lead_key",
    "call_id",
    "source",
    "name",
    "first_name",
    "last_name",
    "company",
    "phone",
    "email",
    "zip",
    "city",
    "state",
    "project_type",
    "intent",
    "lead_score",
    "score_band",
    "rating",
    "urgency",
    "budget",
    "sentiment",
    "spam_likelihood",
    "summary",
    "review",
    "tags",
    "marketing_source",
    "campaign",
    "medium",
    "landing_page",
    "started_at",
    "duration_secs",
    "recording_url",
    "callback_time",
    "analyzer",
];

/// A lead as we send it anywhere: one call and its analysis, after the workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    /// `{tenant_id}:{call_id}`: unique per call, the CRM-side dedupe key.
    pub lead_key: String,
    pub call_id: String,
    /// `callrail` or `form`.
    pub source: String,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// E.164 (`+15035550123`) when the number could be read.
    pub phone: Option<String>,
    pub email: Option<String>,
    pub zip: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub project_type: String,
    pub intent: String,
    pub lead_score: u8,
    /// `high`, `medium`, `low`.
    pub score_band: String,
    pub urgency: String,
    pub budget: String,
    pub sentiment: String,
    pub spam_likelihood: u8,
    pub summary: String,
    /// Pushed but flagged: a person should look before acting (spam in the review band, outside the area).
    pub review: bool,
    pub tags: Vec<String>,
    pub marketing_source: Option<String>,
    pub campaign: Option<String>,
    pub medium: Option<String>,
    pub landing_page: Option<String>,
    pub started_at: Option<String>,
    pub duration_secs: Option<u32>,
    pub recording_url: Option<String>,
    pub callback_time: Option<String>,
    pub analyzer: String,
}

impl Lead {
    pub fn new(call: &CallRecord, analysis: &Analysis, review: bool, tags: Vec<String>) -> Self {
        let f = &analysis.findings;
        let l = &call.lead;
        let name = f.caller.name.clone().or_else(|| l.customer_name.clone()).filter(|n| !n.trim().is_empty());
        let (first_name, last_name) = match name.as_deref().map(split_name) {
            Some((first, last)) => (first, last),
            None => (None, None),
        };
        Self {
            lead_key: lead_key(call.tenant_id.as_str(), call.call_id.as_str()),
            call_id: call.call_id.to_string(),
            source: call.source.as_str().into(),
            name,
            first_name,
            last_name,
            phone: l.customer_phone.as_deref().and_then(e164),
            email: f.caller.email.clone().or_else(|| l.customer_email.clone()),
            zip: f.caller.zip.clone().or_else(|| l.customer_zip.clone()),
            city: l.customer_city.clone(),
            state: l.customer_state.clone(),
            project_type: f.project_type.as_str().into(),
            intent: f.intent.as_str().into(),
            lead_score: f.lead_score,
            score_band: score_band(f.lead_score).into(),
            urgency: f.urgency.as_str().into(),
            budget: f.budget.as_str().into(),
            sentiment: f.sentiment.as_str().into(),
            spam_likelihood: f.spam_likelihood,
            summary: f.summary.clone(),
            review,
            tags,
            marketing_source: l.utm_source.clone().or_else(|| l.source_name.clone()),
            campaign: l.utm_campaign.clone(),
            medium: l.utm_medium.clone(),
            landing_page: l.landing_page_url.clone(),
            started_at: l.start_time.clone(),
            duration_secs: l.duration_secs,
            recording_url: l.recording_url.clone(),
            callback_time: f.caller.callback_time.clone(),
            analyzer: analysis.analyzer.clone(),
        }
    }

    /// Every field by its lead-field name; absent values are left out.
    pub fn fields(&self) -> Map<String, Value> {
        let Value::Object(mut m) = serde_json::to_value(self).expect("leads serialize") else { unreachable!() };
        m.retain(|_, v| !v.is_null());
        // Derived fields mappings can use: a company for CRMs that require one, a Hot/Warm/Cold rating.
        let company = self.name.clone().unwrap_or_else(|| "Unknown caller".into());
        m.insert("company".into(), Value::String(company));
        let rating = match self.score_band.as_str() {
            "high" => "Hot",
            "medium" => "Warm",
            _ => "Cold",
        };
        m.insert("rating".into(), Value::String(rating.into()));
        m
    }

    /// The CRM properties after `settings`' mapping.
    pub fn properties(&self, settings: &CrmSettings) -> Map<String, Value> {
        let fields = self.fields();
        let mut out = Map::new();
        for (ours, theirs) in settings.mapping() {
            if let Some(v) = fields.get(ours) {
                let v = match v {
                    // CRMs take multi-valued text as one string.
                    Value::Array(items) => {
                        Value::String(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(";"))
                    }
                    other => other.clone(),
                };
                out.insert(theirs.to_owned(), v);
            }
        }
        out
    }

    /// The lead as our JSON document (what the custom webhook receives).
    pub fn document(&self, tenant_id: &str) -> Value {
        json!({ "type": "lead", "schema_version": 1, "tenant_id": tenant_id, "lead": self })
    }

    /// A title for CRMs that want one (Pipedrive leads, call engagements).
    pub fn title(&self) -> String {
        let who = self.name.as_deref().unwrap_or("Caller");
        let project = if self.project_type == "none" { "enquiry" } else { &self.project_type };
        format!("{who} — {project} ({} {})", self.score_band, self.lead_score)
    }
}

pub fn lead_key(tenant: &str, call: &str) -> String {
    format!("{tenant}:{call}")
}

fn split_name(name: &str) -> (Option<String>, Option<String>) {
    let name = name.trim();
    match name.rsplit_once(char::is_whitespace) {
        Some((first, last)) => (Some(first.trim().to_owned()), Some(last.trim().to_owned())),
        None => (Some(name.to_owned()), None),
    }
}

/// A phone number in E.164, reading North American numbers without a country code as +1.
pub fn e164(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let international = raw.trim_start().starts_with('+');
    match digits.len() {
        10 if !international => Some(format!("+1{digits}")),
        11 if digits.starts_with('1') => Some(format!("+{digits}")),
        8..=15 if international => Some(format!("+{digits}")),
        _ => None,
    }
}

/// What a delivery left on the call: the CRM's record for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmDelivery {
    pub provider: String,
    pub record_id: String,
    /// False when the CRM already had the record (a redelivery or a duplicate rule's match).
    pub created: bool,
    /// Pushes it took, counting failed ones.
    pub attempts: u32,
    pub review: bool,
    pub delivered_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_become_e164() {
        assert_eq!(e164("(503) 555-0123").as_deref(), Some("+15035550123"));
        assert_eq!(e164("+1 503 555 0123").as_deref(), Some("+15035550123"));
        assert_eq!(e164("15035550123").as_deref(), Some("+15035550123"));
        assert_eq!(e164("+44 20 7946 0958").as_deref(), Some("+442079460958"));
        assert_eq!(e164("555-0123"), None);
        assert_eq!(e164(""), None);
    }

    #[test]
    fn mapping_defaults_then_tenant_overrides() {
        let settings: CrmSettings = serde_json::from_value(json!({
            "provider": "salesforce", "credential": "env:SF", "url": "https://acme.my.salesforce.com",
            "field_mapping": {"project_type": "Project_Type__c", "summary": "Call_Summary__c"}
        }))
        .unwrap();
        settings.validate().unwrap();
        let m = settings.mapping();
        assert_eq!(m["first_name"], "FirstName");
        assert_eq!(m["summary"], "Call_Summary__c");
        assert_eq!(m["project_type"], "Project_Type__c");
    }

    #[test]
    fn bad_settings_say_why() {
        let bad = |v: Value| serde_json::from_value::<CrmSettings>(v).unwrap().validate().unwrap_err();
        assert!(bad(json!({"provider": "webhook", "credential": "env:W"})).contains("crm.url is required"));
        assert!(
            bad(json!({"provider": "hubspot", "credential": "env:H", "field_mapping": {"shoe_size": "x"}}))
                .contains("\"shoe_size\" is not a lead field")
        );
        assert!(bad(json!({"provider": "hubspot", "credential": "env:H", "url": "ftp://x"})).contains("http(s)"));
        assert!(bad(json!({"provider": "hubspot", "credential": "env:H", "timeout_ms": 60000})).contains("25000"));
        let unknown = serde_json::from_value::<CrmSettings>(json!({"provider": "zoho", "credential": "env:Z"}));
        assert!(unknown.unwrap_err().to_string().contains("unknown variant `zoho`"));
    }
}
