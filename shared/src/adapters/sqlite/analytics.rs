//! The embedded analytics sink: SQLite tables with the BigQuery tables' columns, created from the same schema
//! files, so an analyst's query works on either with little change.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use super::writer::{self, Durability, Writer};
use crate::domain::analytics::{self, AnalyticsRow, ColumnSchema, STAGE_EVENTS_TABLE, stage_events_schema};
use crate::ports::{AnalyticsSink, PortError, PortResult};

#[derive(Clone)]
pub struct SqliteAnalytics {
    writer: Writer,
    tables: std::sync::Arc<Vec<(String, Vec<ColumnSchema>)>>,
}

fn sql_type(bq: &str) -> &'static str {
    match bq {
        "INT64" | "INTEGER" | "BOOL" | "BOOLEAN" => "INTEGER",
        "FLOAT64" | "FLOAT" | "NUMERIC" => "REAL",
        _ => "TEXT",
    }
}

fn create_table(name: &str, columns: &[ColumnSchema]) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| {
            let not_null = if c.mode.as_deref() == Some("REQUIRED") { " NOT NULL" } else { "" };
            let pk = if c.name == "insert_id" { " PRIMARY KEY" } else { "" };
            format!("{} {}{not_null}{pk}", c.name, sql_type(&c.kind))
        })
        .collect();
    format!("CREATE TABLE IF NOT EXISTS {name} ({})", cols.join(", "))
}

fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => n.as_i64().map_or_else(|| SqlValue::Real(n.as_f64().unwrap_or(0.0)), SqlValue::Integer),
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    }
}

impl SqliteAnalytics {
    pub fn open(path: &Path, durability: Durability) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = writer::open(path, durability)?;
        let tables = vec![(STAGE_EVENTS_TABLE.to_owned(), stage_events_schema())];
        for (name, cols) in &tables {
            conn.execute_batch(&create_table(name, cols))?;
        }
        Ok(Self { writer: Writer::start(conn, "analytics"), tables: tables.into() })
    }
}

#[async_trait]
impl AnalyticsSink for SqliteAnalytics {
    async fn insert(&self, rows: &[AnalyticsRow]) -> PortResult<()> {
        let tables = self.tables.clone();
        let rows = rows.to_vec();
        for row in &rows {
            analytics::validate(row).map_err(PortError::permanent)?;
            if !tables.iter().any(|(name, _)| *name == row.table) {
                return Err(PortError::permanent(format!("unknown analytics table {}", row.table)));
            }
        }
        self.writer
            .write(move |c| {
                for row in &rows {
                    let (_, cols) = tables.iter().find(|(name, _)| *name == row.table).expect("checked above");
                    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
                    let marks = vec!["?"; names.len()].join(", ");
                    // Only a repeated insert_id is ignored; OR IGNORE would also drop rows that break NOT NULL.
                    let sql = format!(
                        "INSERT INTO {} ({}) VALUES ({marks}) ON CONFLICT (insert_id) DO NOTHING",
                        row.table,
                        names.join(", ")
                    );
                    let values: Vec<SqlValue> =
                        names.iter().map(|n| row.fields.get(*n).map_or(SqlValue::Null, to_sql)).collect();
                    c.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(values))?;
                }
                Ok(())
            })
            .await
    }
}
