//! The embedded analytics sink: SQLite tables with the BigQuery tables' columns, created from the same schema
//! files, and the analysts' views from the same SQL files, so an analyst's query works on either.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

use super::writer::{self, Durability, Writer};
use crate::domain::analytics::{self, AnalyticsRow, ColumnSchema};
use crate::ports::{AnalyticsQuery, AnalyticsSink, PortError, PortResult, QueryResult};

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

/// Schemas only ever gain NULLABLE columns (as BigQuery allows); a file made by an older version gets them here.
fn add_new_columns(conn: &rusqlite::Connection, table: &str, columns: &[ColumnSchema]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let existing: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for c in columns.iter().filter(|c| !existing.contains(&c.name)) {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {} {}", c.name, sql_type(&c.kind)))?;
    }
    Ok(())
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
        let tables: Vec<(String, Vec<ColumnSchema>)> = analytics::TABLES
            .iter()
            .map(|(name, _)| (name.to_string(), analytics::table_schema(name).expect("a listed table")))
            .collect();
        for (name, cols) in &tables {
            conn.execute_batch(&create_table(name, cols))?;
            add_new_columns(&conn, name, cols)?;
        }
        // Views are definitions, not data: made afresh at every open, so a file from an older version gets the
        // current ones.
        for (name, sql) in analytics::VIEWS {
            let sql = analytics::view_sql(sql, analytics::Dialect::Sqlite);
            conn.execute_batch(&format!("DROP VIEW IF EXISTS {name}; CREATE VIEW {name} AS {sql}"))
                .map_err(|e| anyhow::anyhow!("view {name}: {e}"))?;
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

/// Read-only queries over the embedded analytics file (a host may be writing it: WAL lets both go on).
pub struct SqliteAnalyticsReader {
    path: std::path::PathBuf,
}

impl SqliteAnalyticsReader {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            anyhow::bail!("no analytics at {} yet: the host creates it when it starts", path.display());
        }
        Ok(Self { path: path.to_owned() })
    }
}

fn from_sql(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(format!("<{} bytes>", b.len())),
    }
}

#[async_trait]
impl AnalyticsQuery for SqliteAnalyticsReader {
    async fn query(&self, sql: &str) -> PortResult<QueryResult> {
        let (path, sql) = (self.path.clone(), sql.to_owned());
        tokio::task::spawn_blocking(move || {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = rusqlite::Connection::open_with_flags(&path, flags)
                .map_err(|e| PortError::permanent(format!("{}: {e}", path.display())))?;
            conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| PortError::retryable(e.to_string()))?;
            let mut stmt = conn.prepare(&sql).map_err(|e| PortError::permanent(format!("query: {e}")))?;
            let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
            let width = columns.len();
            let rows = stmt
                .query_map([], |r| (0..width).map(|i| r.get_ref(i).map(from_sql)).collect::<Result<Vec<_>, _>>())
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| PortError::permanent(format!("query: {e}")))?;
            Ok(QueryResult { columns, rows })
        })
        .await
        .map_err(|e| PortError::retryable(format!("query task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::analytics::{CALLS_TABLE, calls_schema};
    use serde_json::json;

    #[tokio::test]
    async fn a_file_from_an_older_schema_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analytics.sqlite");
        let old: Vec<ColumnSchema> =
            calls_schema().into_iter().filter(|c| !["engine", "audio_secs"].contains(&c.name.as_str())).collect();
        rusqlite::Connection::open(&path).unwrap().execute_batch(&create_table(CALLS_TABLE, &old)).unwrap();

        let sink = SqliteAnalytics::open(&path, Durability::Full).unwrap();
        let mut fields = serde_json::Map::new();
        for (k, v) in [
            ("insert_id", json!("r1")),
            ("event_time", json!("2026-11-22T10:00:00Z")),
            ("tenant_id", json!("acme")),
            ("call_id", json!("CAL1")),
            ("stage", json!("on-audio-uploaded")),
            ("outcome", json!("transcribed")),
            ("engine", json!("pocketsphinx/en-us")),
            ("audio_secs", json!(42.5)),
        ] {
            fields.insert(k.into(), v);
        }
        sink.insert(&[AnalyticsRow { table: CALLS_TABLE.into(), insert_id: "r1".into(), fields }]).await.unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let (engine, secs): (String, f64) =
            conn.query_row("SELECT engine, audio_secs FROM calls", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((engine.as_str(), secs), ("pocketsphinx/en-us", 42.5));
    }
}
