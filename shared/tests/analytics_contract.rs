//! The analytics sink's contract, against the SQLite sink and against BigQuery's emulator through the production
//! adapter (gcp-bigquery-client's insertAll): rows read back with their values, a retried batch does not add a
//! second row per insert_id, a batch with an invalid row is an error and stores nothing, an unknown table is a
//! permanent error.
//!
//! How "once per insert_id" is observed differs by backend, and that is the point of writing it down: SQLite
//! stores a row once (insert_id is its primary key); BigQuery dedupes streaming inserts on insertId best-effort
//! (and bqemulator not at all), so what analysts read is deduplicated by the insert_id column — the reader below
//! reads BigQuery that way, as the analyst views do.

use std::collections::BTreeMap;
use std::sync::Arc;

use callflow::adapters::bigquery::BigQuerySink;
use callflow::adapters::sqlite::{Durability, SqliteAnalytics};
use callflow::domain::analytics::{AnalyticsRow, CALLS_SCHEMA, CALLS_TABLE};
use callflow::ports::AnalyticsSink;
use serde_json::{Value, json};

/// What a reader sees of one insert_id: (outcome, call_duration_secs, answered).
type Seen = BTreeMap<String, (String, Option<i64>, Option<bool>)>;

fn row(id: &str, outcome: &str, duration: Option<i64>) -> AnalyticsRow {
    let mut fields = json!({
        "insert_id": id,
        "event_time": "2026-11-21T10:00:00.000000Z",
        "tenant_id": "acme",
        "call_id": id,
        "stage": "on-webhook",
        "outcome": outcome,
        "answered": true,
    });
    if let Some(d) = duration {
        fields["call_duration_secs"] = json!(d);
    }
    let Value::Object(fields) = fields else { unreachable!() };
    AnalyticsRow { table: CALLS_TABLE.into(), insert_id: id.into(), fields }
}

async fn contract<F, Fut>(sink: Arc<dyn AnalyticsSink>, read: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Seen>,
{
    let batch = vec![row("r1", "accepted", Some(42)), row("r2", "duplicate", None), row("r3", "accepted", Some(7))];
    sink.insert(&batch).await.unwrap();
    // The same batch again, as a retry after a lost answer would send it.
    sink.insert(&batch).await.unwrap();
    let expected: Seen = BTreeMap::from([
        ("r1".to_owned(), ("accepted".to_owned(), Some(42), Some(true))),
        ("r2".to_owned(), ("duplicate".to_owned(), None, Some(true))),
        ("r3".to_owned(), ("accepted".to_owned(), Some(7), Some(true))),
    ]);
    assert_eq!(read().await, expected);

    // A batch with one invalid row (a REQUIRED column missing) is an error, and none of its rows are stored.
    let mut bad = row("r5", "accepted", None);
    bad.fields.remove("tenant_id");
    let err = sink.insert(&[row("r4", "accepted", None), bad]).await.unwrap_err();
    eprintln!("invalid batch: {err}");
    assert_eq!(read().await, expected, "nothing of a refused batch is stored");

    let mut elsewhere = row("r6", "accepted", None);
    elsewhere.table = "no_such_table".into();
    let err = sink.insert(&[elsewhere]).await.unwrap_err();
    assert!(!err.retryable, "an unknown table is permanent: {err}");
}

#[tokio::test]
async fn the_sqlite_sink_honours_the_analytics_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("analytics.sqlite");
    let sink = Arc::new(SqliteAnalytics::open(&path, Durability::Full).unwrap());
    contract(sink, || async {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT insert_id, outcome, call_duration_secs, answered FROM calls ORDER BY insert_id")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>();
        let seen: Seen = rows.iter().cloned().collect();
        assert_eq!(rows.len(), seen.len(), "SQLite stores one row per insert_id");
        seen
    })
    .await;
}

struct Emulator {
    base: String,
    project: String,
    dataset: String,
}

impl Emulator {
    /// A fresh dataset with the repo's calls table on the emulator `scripts/emulators start` runs.
    async fn start() -> Option<Self> {
        let Some(host) = std::env::var("BIGQUERY_EMULATOR_HOST").ok().filter(|h| !h.is_empty()) else {
            assert!(
                std::env::var("CALLFLOW_EMULATORS").as_deref() != Ok("required"),
                "CALLFLOW_EMULATORS=required but BIGQUERY_EMULATOR_HOST is not set: run scripts/emulators start"
            );
            eprintln!(
                "skipped: no BigQuery emulator (eval \"$(scripts/emulators env)\" after scripts/emulators start)"
            );
            return None;
        };
        let host = if host.contains("://") { host } else { format!("http://{host}") };
        let project = std::env::var("CALLFLOW_GCP_PROJECT").unwrap_or_else(|_| "callflow-emulators".into());
        let dataset = format!("contract_{}", uuid::Uuid::new_v4().simple());
        let base = format!("{host}/bigquery/v2/projects/{project}");
        let http = reqwest::Client::new();
        let made = http
            .post(format!("{base}/datasets"))
            .json(&json!({"datasetReference": {"projectId": project, "datasetId": dataset}}))
            .send()
            .await
            .unwrap();
        assert!(made.status().is_success(), "create dataset: {}", made.text().await.unwrap());
        let fields: Value = serde_json::from_str(CALLS_SCHEMA).unwrap();
        let made = http
            .post(format!("{base}/datasets/{dataset}/tables"))
            .json(&json!({
                "tableReference": {"projectId": project, "datasetId": dataset, "tableId": CALLS_TABLE},
                "schema": {"fields": fields},
            }))
            .send()
            .await
            .unwrap();
        assert!(made.status().is_success(), "create table: {}", made.text().await.unwrap());
        Some(Self { base, project, dataset })
    }

    async fn read(&self) -> Seen {
        let sql = format!(
            "SELECT insert_id, ANY_VALUE(outcome) AS outcome, ANY_VALUE(call_duration_secs) AS d, \
             ANY_VALUE(answered) AS a FROM `{}.{}.calls` GROUP BY insert_id",
            self.project, self.dataset
        );
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/queries", self.base))
            .json(&json!({"query": sql, "useLegacySql": false}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let cell = |r: &Value, i: usize| r["f"][i]["v"].as_str().map(str::to_owned);
        answer["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let id = cell(r, 0).unwrap();
                let duration = cell(r, 2).map(|d| d.parse().unwrap());
                let answered = cell(r, 3).map(|a| a == "true");
                (id, (cell(r, 1).unwrap(), duration, answered))
            })
            .collect()
    }
}

#[tokio::test]
async fn bigquery_honours_the_analytics_contract() {
    let Some(emulator) = Emulator::start().await else { return };
    let sink = Arc::new(BigQuerySink::connect(&emulator.project, &emulator.dataset).await.unwrap());
    contract(sink, || emulator.read()).await;
}
