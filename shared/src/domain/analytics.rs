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
        }
        .into_row("post_call");
        let columns: Vec<String> = stage_events_schema().into_iter().map(|c| c.name).collect();
        for key in row.fields.keys() {
            assert!(columns.contains(key), "{key} is not a column of {STAGE_EVENTS_TABLE}");
        }
        let text = serde_json::to_string(&row).unwrap();
        assert!(!text.contains("4559") && !text.contains("Kaylah"), "PII in analytics: {text}");
        assert_eq!(row.fields["marketing_source"], "Google Ads");
    }
}
