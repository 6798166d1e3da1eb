//! Analytics rows. Every stage streams one `calls` row per outcome, and the facts an analyst counts land in their
//! own tables: `analyses` (what the analyzer found), `crm_deliveries` (each CRM push), `costs` (what each stage's
//! vendors cost). The columns are those of the BigQuery tables whose schemas live in `shared/schemas/analytics/`
//! (the embedded SQLite sink creates its tables from the same files, and terraform deploys them). Rows carry no
//! PII: marketing facts, findings, timings and money only.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::analysis::{Analysis, score_band};
use super::call::CallRecord;

pub const CALLS_TABLE: &str = "calls";
pub const CALLS_SCHEMA: &str = include_str!("../../schemas/analytics/calls.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsRow {
    pub table: String,
    pub insert_id: String,
    pub fields: Map<String, Value>,
}

impl AnalyticsRow {
    /// The outbox work that streams this row, committed with the change it records.
    pub fn work(&self) -> super::work::NewWork {
        super::work::NewWork {
            kind: super::work::WorkKind::Analytics,
            payload: serde_json::to_value(self).expect("rows serialize"),
        }
    }

    /// Set one more column (one a stage adds beyond the common ones); null values are left out.
    pub fn set(mut self, column: &str, value: Value) -> Self {
        if !value.is_null() {
            self.fields.insert(column.to_owned(), value);
        }
        self
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub mode: Option<String>,
}

pub fn calls_schema() -> Vec<ColumnSchema> {
    serde_json::from_str(CALLS_SCHEMA).expect("the bundled schema is valid JSON")
}

pub const ANALYSES_TABLE: &str = "analyses";
pub const CRM_DELIVERIES_TABLE: &str = "crm_deliveries";
pub const COSTS_TABLE: &str = "costs";

/// Every table this project streams to, with its schema file.
pub const TABLES: &[(&str, &str)] = &[
    (CALLS_TABLE, CALLS_SCHEMA),
    (ANALYSES_TABLE, include_str!("../../schemas/analytics/analyses.json")),
    (CRM_DELIVERIES_TABLE, include_str!("../../schemas/analytics/crm_deliveries.json")),
    (COSTS_TABLE, include_str!("../../schemas/analytics/costs.json")),
    (super::cleanup::CLEANUP_RUNS_TABLE, super::cleanup::CLEANUP_RUNS_SCHEMA),
];

/// The analysts' views, in the order they must be created (a view may read the ones before it): name and SQL.
/// The SQL is written once for both BigQuery and SQLite (see `view_sql`).
pub const VIEWS: &[(&str, &str)] = &[
    ("leads", include_str!("../../schemas/analytics/views/base/leads.sql")),
    ("lead_funnel", include_str!("../../schemas/analytics/views/lead_funnel.sql")),
    ("lead_quality_by_source", include_str!("../../schemas/analytics/views/lead_quality_by_source.sql")),
    ("time_to_crm", include_str!("../../schemas/analytics/views/time_to_crm.sql")),
    ("crm_success_by_provider", include_str!("../../schemas/analytics/views/crm_success_by_provider.sql")),
    ("spam_rate", include_str!("../../schemas/analytics/views/spam_rate.sql")),
    ("cost_per_lead", include_str!("../../schemas/analytics/views/cost_per_lead.sql")),
];

/// Where a view's SQL runs. The files name tables as `` `{dataset}.calls` ``: BigQuery gets the dataset's full
/// name there (terraform does the same replacement); SQLite, whose tables sit in one file, gets the bare name
/// (SQLite takes backquoted identifiers too). Everything else in the files is SQL both engines read alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect<'a> {
    BigQuery { project: &'a str, dataset: &'a str },
    Sqlite,
}

pub fn view_sql(sql: &str, dialect: Dialect<'_>) -> String {
    match dialect {
        Dialect::BigQuery { project, dataset } => sql.replace("{dataset}", &format!("{project}.{dataset}")),
        Dialect::Sqlite => sql.replace("{dataset}.", ""),
    }
}

/// The columns of a table this project streams to, from the repo's schema files; `None` for any other table.
pub fn table_schema(table: &str) -> Option<Vec<ColumnSchema>> {
    TABLES
        .iter()
        .find(|(name, _)| *name == table)
        .map(|(_, schema)| serde_json::from_str(schema).expect("the bundled schemas are valid JSON"))
}

/// Check a row against its table's schema before any sink sees it, so every backend refuses the same rows with
/// the same reason (BigQuery would answer with insertErrors; SQLite would store or drop it silently): the table
/// exists, the insert_id column matches the row's, REQUIRED columns are present, every field is a column, and each
/// value has its column's JSON type.
pub fn validate(row: &AnalyticsRow) -> Result<(), String> {
    let columns = table_schema(&row.table).ok_or_else(|| format!("unknown analytics table {}", row.table))?;
    let id = &row.insert_id;
    if id.is_empty() || row.fields.get("insert_id").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(format!("row {id}: the insert_id column must equal the row's insert_id"));
    }
    for column in &columns {
        let value = row.fields.get(&column.name).filter(|v| !v.is_null());
        let Some(value) = value else {
            if column.mode.as_deref() == Some("REQUIRED") {
                return Err(format!("row {id}: missing required field {}", column.name));
            }
            continue;
        };
        let fits = match column.kind.as_str() {
            "INT64" | "INTEGER" => value.is_i64() || value.is_u64(),
            "FLOAT64" | "FLOAT" | "NUMERIC" => value.is_number(),
            "BOOL" | "BOOLEAN" => value.is_boolean(),
            "TIMESTAMP" => value.as_str().is_some_and(|t| DateTime::parse_from_rfc3339(t).is_ok()),
            _ => value.is_string(),
        };
        if !fits {
            return Err(format!("row {id}: field {} is not a valid {}: {value}", column.name, column.kind));
        }
    }
    if let Some(extra) = row.fields.keys().find(|k| !columns.iter().any(|c| &c.name == *k)) {
        return Err(format!("row {id}: no such field {extra} in {}", row.table));
    }
    Ok(())
}

/// What one stage did to one call.
pub struct StageEvent<'a> {
    pub call: &'a CallRecord,
    pub stage: &'a str,
    pub outcome: &'a str,
    pub event_kind: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub stage_duration_ms: Option<f64>,
    pub attempts: Option<u32>,
    pub bytes: Option<u64>,
    pub cost_usd: Option<f64>,
    pub reason: Option<&'a str>,
    /// The engine or model that did the work (transcription, analysis).
    pub engine: Option<&'a str>,
    pub audio_secs: Option<f64>,
}

impl StageEvent<'_> {
    /// The row; its insert_id is derived from call, stage, outcome and `discriminator`, so a stage that records
    /// the same outcome twice (a redelivery) lands one row.
    pub fn into_row(self, discriminator: &str) -> AnalyticsRow {
        let c = self.call;
        let lead = &c.lead;
        let mut fields = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                fields.insert(k.to_owned(), v);
            }
        };
        put("event_time", json!(self.at.to_rfc3339_opts(SecondsFormat::Micros, true)));
        put("tenant_id", json!(c.tenant_id.as_str()));
        put("call_id", json!(c.call_id.as_str()));
        put("stage", json!(self.stage));
        put("outcome", json!(self.outcome));
        put("call_state", json!(c.state.as_str()));
        put("call_source", json!(c.source.as_str()));
        put("event_kind", json!(self.event_kind));
        put("marketing_source", json!(lead.source_name));
        put("utm_source", json!(lead.utm_source));
        put("utm_medium", json!(lead.utm_medium));
        put("utm_campaign", json!(lead.utm_campaign));
        put("call_started_at", json!(lead.start_time));
        put("call_duration_secs", json!(lead.duration_secs));
        put("answered", json!(lead.answered));
        put("stage_duration_ms", json!(self.stage_duration_ms));
        put("attempts", json!(self.attempts));
        put("bytes", json!(self.bytes));
        put("cost_usd", json!(self.cost_usd));
        put("reason", json!(self.reason.map(reason_fact)));
        put("engine", json!(self.engine));
        put("audio_secs", json!(self.audio_secs));
        let insert_id = format!("{}:{}:{}:{}:{}", c.tenant_id, c.call_id, self.stage, self.outcome, discriminator);
        fields.insert("insert_id".into(), json!(insert_id));
        AnalyticsRow { table: CALLS_TABLE.into(), insert_id, fields }
    }
}

/// Where a vendor's own words start in a failure reason (`VendorError`'s texts: "vendor answered 422: {body}",
/// "malformed response: {excerpt}").
const VENDOR_WORDS: [&str; 2] = ["vendor answered ", "malformed response"];

/// A stage's reason as analytics keeps it. The vendor's own words are cut off after its status: a CRM's
/// validation message quotes the lead back (the caller's name, phone, email), and an analytics row, unlike the
/// state store's copy, is not erased later. Any phone number or email left is masked.
pub fn reason_fact(reason: &str) -> String {
    let mut kept = reason;
    for marker in VENDOR_WORDS {
        if let Some(at) = kept.find(marker) {
            let rest = &kept[at + marker.len()..];
            let status = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            kept = &kept[..at + marker.len() + status];
        }
    }
    super::pii::scrub(kept.trim_end_matches([':', ' '])).into_owned()
}

/// The columns every fact table has: when, whose, which call.
fn key_columns(fields: &mut Map<String, Value>, c: &CallRecord, at: DateTime<Utc>) {
    fields.insert("event_time".into(), json!(at.to_rfc3339_opts(SecondsFormat::Micros, true)));
    fields.insert("tenant_id".into(), json!(c.tenant_id.as_str()));
    fields.insert("call_id".into(), json!(c.call_id.as_str()));
}

/// The key columns and what the call's facts repeat from it, so an analyst slices by source without a join.
fn call_columns(fields: &mut Map<String, Value>, c: &CallRecord, at: DateTime<Utc>) {
    key_columns(fields, c, at);
    fields.insert("call_source".into(), json!(c.source.as_str()));
    if let Some(source) = &c.lead.source_name {
        fields.insert("marketing_source".into(), json!(source));
    }
}

fn row(table: &str, insert_id: String, mut fields: Map<String, Value>) -> AnalyticsRow {
    fields.retain(|_, v| !v.is_null());
    fields.insert("insert_id".into(), json!(insert_id));
    AnalyticsRow { table: table.into(), insert_id, fields }
}

/// The `analyses` row of a stored analysis; `discriminator` is the transcript generation it was made from, so a
/// redelivery lands one row and a re-analysis (a new transcript) another.
pub fn analysis_row(
    call: &CallRecord,
    analysis: &Analysis,
    at: DateTime<Utc>,
    duration_ms: f64,
    discriminator: &str,
) -> AnalyticsRow {
    let f = &analysis.findings;
    let mut fields = Map::new();
    call_columns(&mut fields, call, at);
    fields.insert("utm_campaign".into(), json!(call.lead.utm_campaign));
    fields.insert("analyzer".into(), json!(analysis.analyzer));
    fields.insert("fallback".into(), json!(analysis.fallback_reason.is_some()));
    fields.insert("intent".into(), json!(f.intent));
    fields.insert("project_type".into(), json!(f.project_type));
    fields.insert("lead_score".into(), json!(f.lead_score));
    fields.insert("score_band".into(), json!(score_band(f.lead_score)));
    fields.insert("spam_likelihood".into(), json!(f.spam_likelihood));
    fields.insert("urgency".into(), json!(f.urgency));
    fields.insert("budget".into(), json!(f.budget));
    fields.insert("sentiment".into(), json!(f.sentiment));
    fields.insert("redactions".into(), json!(analysis.redactions));
    fields.insert("prompt_tokens".into(), json!(analysis.usage.prompt_tokens));
    fields.insert("output_tokens".into(), json!(analysis.usage.output_tokens));
    fields.insert("cost_usd".into(), json!(analysis.usage.cost_usd));
    fields.insert("duration_ms".into(), json!(duration_ms));
    let id = format!("{}:{}:analysis:{discriminator}", call.tenant_id, call.call_id);
    row(ANALYSES_TABLE, id, fields)
}

/// One CRM push and how it ended.
pub struct CrmPush<'a> {
    pub call: &'a CallRecord,
    /// on-analysis or on-crm-retry.
    pub stage: &'a str,
    pub provider: &'a str,
    /// delivered, retry_scheduled or dead_lettered.
    pub outcome: &'a str,
    /// 1 for the lead's first push.
    pub attempt: u32,
    pub created: Option<bool>,
    pub latency_ms: f64,
    pub at: DateTime<Utc>,
}

impl CrmPush<'_> {
    /// The `crm_deliveries` row; `discriminator` is the delivery step's claim key, one per push.
    pub fn into_row(self, discriminator: &str) -> AnalyticsRow {
        let c = self.call;
        let mut fields = Map::new();
        call_columns(&mut fields, c, self.at);
        fields.insert("stage".into(), json!(self.stage));
        fields.insert("provider".into(), json!(self.provider));
        fields.insert("outcome".into(), json!(self.outcome));
        fields.insert("attempt".into(), json!(self.attempt));
        fields.insert("created".into(), json!(self.created));
        fields.insert("latency_ms".into(), json!(self.latency_ms));
        // From the webhook's arrival: CallRail posts it as the call ends, so this is the caller's wait.
        let waited = (self.at - c.created_at).num_milliseconds().max(0) as f64 / 1e3;
        fields.insert("call_to_crm_secs".into(), json!(waited));
        let id = format!("{}:{}:crm:{discriminator}", c.tenant_id, c.call_id);
        row(CRM_DELIVERIES_TABLE, id, fields)
    }
}

/// What one stage's vendors cost for one call.
pub struct StageCost<'a> {
    pub call: &'a CallRecord,
    pub stage: &'a str,
    pub engine: Option<&'a str>,
    pub audio_secs: Option<f64>,
    pub prompt_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub api_calls: u32,
    pub usd: f64,
    pub at: DateTime<Utc>,
}

impl StageCost<'_> {
    /// The `costs` row; `discriminator` names the work (object generation, claim key), so it lands once.
    pub fn into_row(self, discriminator: &str) -> AnalyticsRow {
        let c = self.call;
        let mut fields = Map::new();
        key_columns(&mut fields, c, self.at);
        fields.insert("stage".into(), json!(self.stage));
        fields.insert("engine".into(), json!(self.engine));
        fields.insert("audio_secs".into(), json!(self.audio_secs));
        fields.insert("prompt_tokens".into(), json!(self.prompt_tokens));
        fields.insert("output_tokens".into(), json!(self.output_tokens));
        fields.insert("api_calls".into(), json!(self.api_calls));
        fields.insert("usd".into(), json!(self.usd));
        let id = format!("{}:{}:cost:{}:{discriminator}", c.tenant_id, c.call_id, self.stage);
        row(COSTS_TABLE, id, fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};

    #[test]
    fn rows_fit_the_schema_and_carry_no_pii() {
        let call = CallRecord {
            tenant_id: TenantId::parse("acme").unwrap(),
            call_id: CallId::parse("CAL1").unwrap(),
            source: CallSource::Callrail,
            state: CallState::Received,
            state_reason: None,
            lead: LeadDetails {
                customer_phone: Some("+12148654559".into()),
                customer_name: Some("Kaylah Mills".into()),
                source_name: Some("Google Ads".into()),
                ..Default::default()
            },
            recording_object: None,
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        };
        let row = StageEvent {
            call: &call,
            stage: "on-webhook",
            outcome: "accepted",
            event_kind: Some("post_call"),
            at: DateTime::UNIX_EPOCH,
            stage_duration_ms: Some(0.4),
            attempts: None,
            bytes: Some(2279),
            cost_usd: None,
            reason: None,
            engine: None,
            audio_secs: None,
        }
        .into_row("post_call");
        let columns: Vec<String> = calls_schema().into_iter().map(|c| c.name).collect();
        for key in row.fields.keys() {
            assert!(columns.contains(key), "{key} is not a column of {CALLS_TABLE}");
        }
        let text = serde_json::to_string(&row).unwrap();
        assert!(!text.contains("4559") && !text.contains("Kaylah"), "PII in analytics: {text}");
        assert_eq!(row.fields["marketing_source"], "Google Ads");
        assert_eq!(validate(&row), Ok(()));
    }

    #[test]
    fn rows_that_do_not_fit_their_table_are_refused_with_the_reason() {
        let mut fields = Map::new();
        fields.insert("insert_id".into(), json!("r1"));
        fields.insert("event_time".into(), json!("2026-11-21T10:00:00Z"));
        for k in ["tenant_id", "call_id", "stage", "outcome"] {
            fields.insert(k.into(), json!("x"));
        }
        let good = AnalyticsRow { table: CALLS_TABLE.into(), insert_id: "r1".into(), fields };
        assert_eq!(validate(&good), Ok(()));
        let broken = |f: &dyn Fn(&mut AnalyticsRow)| {
            let mut row = good.clone();
            f(&mut row);
            validate(&row).unwrap_err()
        };
        assert!(broken(&|r| r.table = "nope".into()).contains("unknown analytics table"));
        assert!(broken(&|r| drop(r.fields.remove("tenant_id"))).contains("missing required field tenant_id"));
        assert!(broken(&|r| drop(r.fields.insert("bogus".into(), json!(1)))).contains("no such field bogus"));
        assert!(broken(&|r| drop(r.fields.insert("attempts".into(), json!("3")))).contains("attempts"));
        assert!(broken(&|r| drop(r.fields.insert("event_time".into(), json!("yesterday")))).contains("event_time"));
        assert!(broken(&|r| r.insert_id = "other".into()).contains("insert_id"));
    }

    #[test]
    fn a_reason_reaches_analytics_without_the_vendors_words() {
        let refused = crate::ports::VendorError::Status {
            status: 422,
            message: r#"{"error":"duplicate contact: Dana Whitfield <dana.w@example.com>, phone (512) 555-0143"}"#
                .into(),
        };
        assert_eq!(
            reason_fact(&format!("webhook refused the lead: {refused}")),
            "webhook refused the lead: vendor answered 422"
        );
        let malformed = crate::ports::VendorError::Malformed("expected an id in {\"name\":\"Dana\"}".into());
        assert_eq!(reason_fact(&format!("hubspot: {malformed}")), "hubspot: malformed response");
        assert_eq!(reason_fact("unanswered"), "unanswered");
        assert_eq!(
            reason_fact("stuck in transcribed for 2 h after 3 re-drives"),
            "stuck in transcribed for 2 h after 3 re-drives"
        );
        assert!(!reason_fact("the caller asked to be called at 512-555-0143").contains("555-0143"));
    }
}
