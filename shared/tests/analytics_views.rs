//! The analysts' views over the fixture day (`fixtures/day/analytics.jsonl`: every analytics row the pipeline
//! wrote while `scripts/demo` replayed the fixture day, exported with `callflow analytics export`).
//!
//! - On SQLite, each view's figures equal the same figures counted here in Rust from the rows themselves.
//! - On BigQuery's emulator, with the rows streamed through the production sink twice (a retried batch: bqemulator
//!   keeps both copies, as BigQuery may beyond its best-effort insertId window), every view returns exactly what
//!   the SQLite view returns: same names, same columns in the same order, same rows.

use std::collections::{BTreeMap, BTreeSet};

use callflow::adapters::bigquery::BigQuerySink;
use callflow::adapters::sqlite::{Durability, SqliteAnalytics, SqliteAnalyticsReader};
use callflow::domain::analytics::{self, AnalyticsRow, Dialect, TABLES, VIEWS};
use callflow::ports::{AnalyticsQuery, AnalyticsSink, QueryResult};
use serde_json::{Value, json};

fn fixture_day() -> Vec<AnalyticsRow> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/day/analytics.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let rows: Vec<AnalyticsRow> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for row in &rows {
        analytics::validate(row).unwrap_or_else(|e| panic!("the fixture no longer fits its table: {e}"));
    }
    let tables: BTreeSet<&str> = rows.iter().map(|r| r.table.as_str()).collect();
    for table in ["calls", "analyses", "crm_deliveries", "costs"] {
        assert!(tables.contains(table), "the fixture day has no {table} rows");
    }
    rows
}

async fn sqlite(rows: &[AnalyticsRow]) -> (tempfile::TempDir, SqliteAnalyticsReader) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("analytics.sqlite");
    let sink = SqliteAnalytics::open(&path, Durability::Normal).unwrap();
    sink.insert(rows).await.unwrap();
    let reader = SqliteAnalyticsReader::open(&path).unwrap();
    (dir, reader)
}

/// Rows as objects keyed by column.
fn records(answer: &QueryResult) -> Vec<BTreeMap<String, Value>> {
    answer.rows.iter().map(|r| answer.columns.iter().cloned().zip(r.iter().cloned()).collect()).collect()
}

fn field<'a>(row: &'a AnalyticsRow, name: &str) -> Option<&'a str> {
    row.fields.get(name).and_then(Value::as_str)
}

/// Per tenant, counted from the rows: (leads, analysed, spam, delivered, pushes, pushes delivered, cost).
#[derive(Debug, Default, PartialEq)]
struct Counted {
    leads: BTreeSet<String>,
    analysed: BTreeSet<String>,
    spam: BTreeSet<String>,
    delivered: BTreeSet<String>,
    pushes: usize,
    pushes_delivered: usize,
    cost_usd: f64,
}

fn count(rows: &[AnalyticsRow]) -> BTreeMap<String, Counted> {
    let mut out: BTreeMap<String, Counted> = BTreeMap::new();
    for row in rows {
        let tenant = field(row, "tenant_id").unwrap().to_owned();
        let call = field(row, "call_id").unwrap().to_owned();
        let c = out.entry(tenant).or_default();
        let (stage, outcome) = (field(row, "stage"), field(row, "outcome"));
        match row.table.as_str() {
            "calls" if stage != Some("crm-breaker") => {
                c.leads.insert(call.clone());
                let delivery = matches!(stage, Some("on-analysis" | "on-crm-retry"));
                if stage == Some("on-transcript") && outcome == Some("analysed") {
                    c.analysed.insert(call.clone());
                }
                if delivery && outcome == Some("spam") {
                    c.spam.insert(call.clone());
                }
                if delivery && outcome == Some("delivered") {
                    c.delivered.insert(call);
                }
            }
            "crm_deliveries" => {
                c.pushes += 1;
                c.pushes_delivered += usize::from(outcome == Some("delivered"));
            }
            "costs" => c.cost_usd += row.fields["usd"].as_f64().unwrap(),
            _ => {}
        }
    }
    out
}

fn sum(rows: &[BTreeMap<String, Value>], tenant: &str, column: &str) -> f64 {
    rows.iter().filter(|r| r["tenant_id"] == tenant).map(|r| r[column].as_f64().unwrap_or(0.0)).sum()
}

#[tokio::test]
async fn the_sqlite_views_count_what_the_rows_say() {
    let rows = fixture_day();
    let (_dir, db) = sqlite(&rows).await;
    let counted = count(&rows);
    assert!(counted.len() >= 2, "the fixture day has two tenants");
    let view = |name: &str| {
        let db = &db;
        let sql = format!("SELECT * FROM {name}");
        async move { records(&db.query(&sql).await.unwrap()) }
    };
    let leads = view("leads").await;
    let funnel = view("lead_funnel").await;
    let crm = view("crm_success_by_provider").await;
    let spam = view("spam_rate").await;
    let cost = view("cost_per_lead").await;
    let quality = view("lead_quality_by_source").await;
    let waits = view("time_to_crm").await;
    for (tenant, c) in &counted {
        let n = |set: &BTreeSet<String>| set.len() as f64;
        assert_eq!(leads.iter().filter(|r| r["tenant_id"] == tenant.as_str()).count(), c.leads.len(), "{tenant}");
        assert_eq!(sum(&funnel, tenant, "leads"), n(&c.leads), "{tenant} leads");
        assert_eq!(sum(&funnel, tenant, "analysed"), n(&c.analysed), "{tenant} analysed");
        assert_eq!(sum(&funnel, tenant, "spam"), n(&c.spam), "{tenant} spam");
        assert_eq!(sum(&funnel, tenant, "delivered"), n(&c.delivered), "{tenant} delivered");
        assert_eq!(sum(&spam, tenant, "spam"), n(&c.spam), "{tenant} spam_rate");
        assert_eq!(sum(&quality, tenant, "leads"), n(&c.leads), "{tenant} quality");
        assert_eq!(sum(&crm, tenant, "pushes"), c.pushes as f64, "{tenant} pushes");
        assert_eq!(sum(&crm, tenant, "delivered"), c.pushes_delivered as f64, "{tenant} pushes delivered");
        assert_eq!(sum(&waits, tenant, "delivered"), n(&c.delivered), "{tenant} time_to_crm");
        assert!((sum(&cost, tenant, "cost_usd") - c.cost_usd).abs() < 1e-5, "{tenant} cost");
    }
    // The fixture day holds what the views are for: deliveries, spam, and a lead that was not qualified.
    let total = |f: fn(&Counted) -> usize| counted.values().map(f).sum::<usize>();
    assert!(total(|c| c.delivered.len()) > 0 && total(|c| c.spam.len()) > 0 && total(|c| c.pushes) > 0);
    for r in &funnel {
        let (leads, delivered) = (r["leads"].as_f64().unwrap(), r["delivered"].as_f64().unwrap());
        assert!((r["delivered_rate"].as_f64().unwrap() - (delivered / leads * 1e4).round() / 1e4).abs() < 1e-9);
    }
    // The median and the 90th percentile lie within what they summarise.
    for r in &waits {
        let (median, p90, max) =
            (r["median_secs"].as_f64().unwrap(), r["p90_secs"].as_f64().unwrap(), r["max_secs"].as_f64().unwrap());
        assert!(median <= p90 && p90 <= max, "{r:?}");
    }
}

/// Values as both engines print them: numbers compared as f64 (SQLite has no INT64/FLOAT64 split in views).
fn normal(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{:.9}", n.as_f64().unwrap()),
        Value::Bool(b) => format!("{:.9}", f64::from(u8::from(*b))),
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sorted(answer: &QueryResult) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = answer.rows.iter().map(|r| r.iter().map(normal).collect()).collect();
    rows.sort();
    rows
}

/// A fresh dataset on the emulator `scripts/emulators start` runs, with the project's tables and views as
/// `callflow provision` and terraform make them.
async fn bigquery() -> Option<(BigQuerySink, String, String)> {
    let Some(host) = std::env::var("BIGQUERY_EMULATOR_HOST").ok().filter(|h| !h.is_empty()) else {
        assert!(
            std::env::var("CALLFLOW_EMULATORS").as_deref() != Ok("required"),
            "CALLFLOW_EMULATORS=required but BIGQUERY_EMULATOR_HOST is not set: run scripts/emulators start"
        );
        eprintln!("skipped: no BigQuery emulator (eval \"$(scripts/emulators env)\" after scripts/emulators start)");
        return None;
    };
    let host = if host.contains("://") { host } else { format!("http://{host}") };
    let project = std::env::var("CALLFLOW_GCP_PROJECT").unwrap_or_else(|_| "callflow-emulators".into());
    let dataset = format!("views_{}", uuid::Uuid::new_v4().simple());
    let base = format!("{host}/bigquery/v2/projects/{project}");
    let http = reqwest::Client::new();
    let create = |url: String, body: Value| {
        let http = http.clone();
        async move {
            let answer = http.post(&url).json(&body).send().await.unwrap();
            assert!(answer.status().is_success(), "{url}: {}", answer.text().await.unwrap());
        }
    };
    create(format!("{base}/datasets"), json!({"datasetReference": {"projectId": project, "datasetId": dataset}})).await;
    for (table, schema) in TABLES {
        let fields: Value = serde_json::from_str(schema).unwrap();
        let body = json!({
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": fields},
            "timePartitioning": {"type": "DAY", "field": "event_time"},
            "clustering": {"fields": ["tenant_id"]},
        });
        create(format!("{base}/datasets/{dataset}/tables"), body).await;
    }
    for (view, sql) in VIEWS {
        let query = analytics::view_sql(sql, Dialect::BigQuery { project: &project, dataset: &dataset });
        let body = json!({
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": view},
            "view": {"query": query, "useLegacySql": false},
        });
        create(format!("{base}/datasets/{dataset}/tables"), body).await;
    }
    let sink = BigQuerySink::connect(&project, &dataset).await.unwrap();
    Some((sink, project, dataset))
}

/// The fixture day in both engines: on SQLite once, on BigQuery streamed twice (a retried batch: the emulator
/// stores every row again, as BigQuery may beyond its insertId window).
struct Both {
    _dir: tempfile::TempDir,
    db: SqliteAnalyticsReader,
    bq: BigQuerySink,
    project: String,
    dataset: String,
    rows: Vec<AnalyticsRow>,
}

async fn both() -> Option<Both> {
    let (bq, project, dataset) = bigquery().await?;
    let rows = fixture_day();
    let (_dir, db) = sqlite(&rows).await;
    bq.insert(&rows).await.unwrap();
    bq.insert(&rows).await.unwrap();
    Some(Both { _dir, db, bq, project, dataset, rows })
}

#[tokio::test]
async fn bigquery_views_return_what_the_sqlite_views_return() {
    let Some(Both { _dir, db, bq, project, dataset, rows }) = both().await else { return };
    let stored = bq.query(&format!("SELECT COUNT(*) AS n FROM `{project}.{dataset}.calls`")).await.unwrap();
    let calls = rows.iter().filter(|r| r.table == "calls").count();
    assert_eq!(stored.rows[0][0], json!(calls * 2), "the emulator kept both copies, so the views must dedupe");

    for (view, _) in VIEWS {
        let lite = db.query(&format!("SELECT * FROM {view}")).await.unwrap();
        let big = bq.query(&format!("SELECT * FROM `{project}.{dataset}.{view}`")).await.unwrap();
        assert_eq!(big.columns, lite.columns, "{view}: columns");
        assert!(!lite.rows.is_empty(), "{view}: the fixture day gives it rows");
        assert_eq!(sorted(&big), sorted(&lite), "{view}: rows");
        eprintln!("{view}: {} rows alike", lite.rows.len());
    }
}

/// The SQL of README's "For analysts" questions.
fn readme_questions() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("\n## For analysts\n").nth(1).expect("README has a For analysts section");
    let section = section.split("\n## ").next().unwrap();
    let questions: Vec<String> =
        section.split("```sql\n").skip(1).map(|block| block.split("```").next().unwrap().to_owned()).collect();
    assert_eq!(questions.len(), 5, "five example questions");
    questions
}

#[tokio::test]
async fn the_readme_questions_run_on_sqlite_and_answer_the_fixture_day() {
    let rows = fixture_day();
    let (_dir, db) = sqlite(&rows).await;
    for sql in readme_questions() {
        let answer = db.query(&sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
        assert!(!answer.rows.is_empty(), "no answer on the fixture day:\n{sql}");
        eprintln!("{sql}{:?}\n{:?}\n", answer.columns, answer.rows);
    }
}

#[tokio::test]
async fn the_readme_questions_answer_alike_on_bigquery() {
    let Some(Both { _dir, db, bq, project, dataset, .. }) = both().await else { return };
    for sql in readme_questions() {
        // bqemulator ignores a query's default dataset, which BigQuery honours: the view is named in full here.
        let mut qualified = sql.clone();
        for (view, _) in VIEWS {
            qualified = qualified.replace(&format!("FROM {view}\n"), &format!("FROM `{project}.{dataset}.{view}`\n"));
        }
        assert_ne!(qualified, sql, "the question reads a view");
        let (lite, big) = (db.query(&sql).await.unwrap(), bq.query(&qualified).await.unwrap());
        assert_eq!(big.columns, lite.columns, "{sql}");
        // ORDER BY is part of each question: the rows come in the same order too.
        let text = |a: &QueryResult| a.rows.iter().map(|r| r.iter().map(normal).collect()).collect::<Vec<Vec<_>>>();
        assert_eq!(text(&big), text(&lite), "{sql}");
    }
}
