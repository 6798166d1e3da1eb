//! Analytics rows. Every stage streams one row per outcome; the columns are those of the BigQuery table whose
//! schema lives in `shared/schemas/analytics/` (the embedded SQLite sink creates its table from the same file).
//! Rows carry no PII: marketing facts and timings only.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::call::CallRecord;

pub const STAGE_EVENTS_TABLE: &str = "stage_events";
pub const STAGE_EVENTS_SCHEMA: &str = include_str!("../../schemas/analytics/stage_events.json");

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

pub fn stage_events_schema() -> Vec<ColumnSchema> {
    serde_json::from_str(STAGE_EVENTS_SCHEMA).expect("the bundled schema is valid JSON")
}

/// Every table this project streams to, with its schema file.
pub const TABLES: &[(&str, &str)] = &[
    (STAGE_EVENTS_TABLE, STAGE_EVENTS_SCHEMA),
    (super::cleanup::CLEANUP_RUNS_TABLE, super::cleanup::CLEANUP_RUNS_SCHEMA),
];

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
        put("reason", json!(self.reason));
        put("engine", json!(self.engine));
        put("audio_secs", json!(self.audio_secs));
        let insert_id = format!("{}:{}:{}:{}:{}", c.tenant_id, c.call_id, self.stage, self.outcome, discriminator);
        fields.insert("insert_id".into(), json!(insert_id));
        AnalyticsRow { table: STAGE_EVENTS_TABLE.into(), insert_id, fields }
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
        let columns: Vec<String> = stage_events_schema().into_iter().map(|c| c.name).collect();
        for key in row.fields.keys() {
            assert!(columns.contains(key), "{key} is not a column of {STAGE_EVENTS_TABLE}");
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
        let good = AnalyticsRow { table: STAGE_EVENTS_TABLE.into(), insert_id: "r1".into(), fields };
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
}
