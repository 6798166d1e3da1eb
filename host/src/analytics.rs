//! `callflow analytics`: the analysts' views and a query prompt over the environment's analytics backend (the
//! embedded SQLite file, or BigQuery on the emulators and Google Cloud), and an export of the embedded rows.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use callflow::adapters::bigquery::BigQuerySink;
use callflow::adapters::sqlite::SqliteAnalyticsReader;
use callflow::domain::analytics::{self, AnalyticsRow};
use callflow::ports::{AnalyticsQuery, QueryResult};
use callflow::runtime::config::Common;
use clap::Subcommand;
use serde_json::{Map, Value, json};

#[derive(Subcommand)]
pub enum AnalyticsAction {
    /// The views analysts query, with what each answers and its columns.
    Views {
        #[arg(long)]
        json: bool,
    },
    /// Run one read-only SQL query (SQLite embedded, GoogleSQL on BigQuery); tables and views may be named bare.
    Query {
        sql: String,
        /// One JSON object per row, in an array.
        #[arg(long)]
        json: bool,
    },
    /// Every row of the embedded analytics tables as JSON lines ({"table", "insert_id", "fields"}): to load
    /// elsewhere, or to keep a day as a fixture.
    Export {
        /// Only this table.
        #[arg(long)]
        table: Option<String>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The environment's analytics, read-only.
async fn backend(common: &Common) -> anyhow::Result<Arc<dyn AnalyticsQuery>> {
    Ok(match &common.google {
        Some(google) => Arc::new(
            BigQuerySink::connect(&common.triggers.project, &google.bigquery_dataset).await.context("BigQuery")?,
        ),
        None => Arc::new(SqliteAnalyticsReader::open(&common.data_dir.join("analytics.sqlite"))?),
    })
}

/// A view's description: its SQL file's leading comment, without the name it starts with.
fn describe(sql: &str) -> String {
    let text: Vec<&str> = sql
        .lines()
        .map_while(|l| l.strip_prefix("--"))
        .map(str::trim)
        .take_while(|l| !l.starts_with("Written"))
        .collect();
    let text = text.join(" ");
    text.split_once(": ").map_or(text.clone(), |(_, rest)| rest.to_owned())
}

pub async fn run(action: AnalyticsAction) -> anyhow::Result<()> {
    let common = Common::from_lookup(&|name| std::env::var(name).ok())?;
    match action {
        AnalyticsAction::Views { json } => {
            let db = backend(&common).await?;
            let mut views = Vec::new();
            for (name, sql) in analytics::VIEWS {
                // LIMIT 0 reads the columns without reading the data.
                let columns = db
                    .query(&format!("SELECT * FROM {name} LIMIT 0"))
                    .await
                    .with_context(|| format!("view {name}"))?
                    .columns;
                views.push(json!({"view": name, "about": describe(sql), "columns": columns}));
            }
            if json {
                println!("{}", Value::Array(views));
            } else {
                for v in &views {
                    println!(
                        "{}\n  {}",
                        v["view"].as_str().unwrap_or_default(),
                        v["about"].as_str().unwrap_or_default()
                    );
                    let columns: Vec<&str> =
                        v["columns"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    println!("  columns: {}\n", columns.join(", "));
                }
            }
        }
        AnalyticsAction::Query { sql, json } => {
            let answer = backend(&common).await?.query(&sql).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", Value::Array(objects(&answer)));
            } else {
                print!("{}", render(&answer));
            }
        }
        AnalyticsAction::Export { table, out } => {
            anyhow::ensure!(
                common.google.is_none(),
                "export reads the embedded analytics; on BigQuery use `bq extract` or a query"
            );
            let tables: Vec<&str> = match &table {
                Some(t) => vec![
                    analytics::TABLES
                        .iter()
                        .map(|(name, _)| *name)
                        .find(|name| name == t)
                        .with_context(|| format!("no analytics table {t}"))?,
                ],
                None => analytics::TABLES.iter().map(|(name, _)| *name).collect(),
            };
            let db = SqliteAnalyticsReader::open(&common.data_dir.join("analytics.sqlite"))?;
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::fs::File::create(path).with_context(|| path.display().to_string())?),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut count = 0;
            for table in tables {
                let answer = db
                    .query(&format!("SELECT * FROM {table} ORDER BY event_time, insert_id"))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                for row in export_rows(table, &answer) {
                    writeln!(sink, "{}", serde_json::to_string(&row)?)?;
                    count += 1;
                }
            }
            sink.flush()?;
            if out.is_some() {
                eprintln!("{count} rows");
            }
        }
    }
    Ok(())
}

fn objects(answer: &QueryResult) -> Vec<Value> {
    answer
        .rows
        .iter()
        .map(|row| Value::Object(answer.columns.iter().cloned().zip(row.iter().cloned()).collect()))
        .collect()
}

/// Rows back as the sinks take them: SQLite keeps BOOL columns as 0/1, the schema says which are booleans.
fn export_rows(table: &str, answer: &QueryResult) -> Vec<AnalyticsRow> {
    let schema = analytics::table_schema(table).unwrap_or_default();
    let is_bool = |name: &str| schema.iter().any(|c| c.name == name && matches!(c.kind.as_str(), "BOOL" | "BOOLEAN"));
    answer
        .rows
        .iter()
        .map(|row| {
            let mut fields = Map::new();
            for (name, value) in answer.columns.iter().zip(row) {
                let value = match value {
                    Value::Number(n) if is_bool(name) => Value::Bool(n.as_i64() != Some(0)),
                    Value::Null => continue,
                    other => other.clone(),
                };
                fields.insert(name.clone(), value);
            }
            let insert_id = fields.get("insert_id").and_then(Value::as_str).unwrap_or_default().to_owned();
            AnalyticsRow { table: table.to_owned(), insert_id, fields }
        })
        .collect()
}

/// A plain text table, numbers to the right.
fn render(answer: &QueryResult) -> String {
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = std::iter::once(answer.columns.clone())
        .chain(answer.rows.iter().map(|r| r.iter().map(text).collect()))
        .collect();
    let numeric = |row: usize, column: usize| row > 0 && answer.rows[row - 1].get(column).is_some_and(Value::is_number);
    format!("{}({} rows)\n", crate::text_table::aligned(&rows, numeric), answer.rows.len())
}
