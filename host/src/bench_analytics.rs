//! `callflow bench-analytics`: the analysts' views on the embedded SQLite sink at a realistic size. The fixture
//! day's rows (`fixtures/day/analytics.jsonl`) are copied DAYS × COPIES times — each copy with its own call ids and
//! insert ids, spread over TENANTS tenants, one day back per day — and streamed through the sink in batches as the
//! outbox streams them (fsync on). Then each view, and README's five questions, are read whole, three times.
//! Prints rows/s for the inserts, the median and worst time per view and its row count, the file's size and the
//! peak RSS.

use std::time::Instant;

use callflow::adapters::sqlite::{Durability, SqliteAnalytics, SqliteAnalyticsReader};
use callflow::domain::analytics::{AnalyticsRow, VIEWS};
use callflow::ports::{AnalyticsQuery, AnalyticsSink};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::Value;

/// Rows per insert: what the analytics outbox sends at most in one batch.
const BATCH: usize = 500;

fn fixture() -> anyhow::Result<Vec<AnalyticsRow>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/day/analytics.jsonl");
    let text = std::fs::read_to_string(&path)?;
    Ok(text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}

/// The copy `k` of a row: its own call and insert ids, its tenant, its day.
fn copy(row: &AnalyticsRow, k: usize, tenants: usize, shift: Duration) -> AnalyticsRow {
    let mut out = row.clone();
    let tag = format!("-{k}");
    out.insert_id.push_str(&tag);
    out.fields.insert("insert_id".into(), Value::String(out.insert_id.clone()));
    for column in ["call_id"] {
        if let Some(Value::String(v)) = out.fields.get_mut(column) {
            v.push_str(&tag);
        }
    }
    // Tenant 0 keeps the fixture's names, so README's questions about Acme find Acme.
    if let Some(Value::String(t)) = out.fields.get_mut("tenant_id")
        && !k.is_multiple_of(tenants)
    {
        t.push_str(&format!("-{}", k % tenants));
    }
    if let Some(Value::String(t)) = out.fields.get_mut("event_time")
        && let Ok(at) = DateTime::parse_from_rfc3339(t)
    {
        *t = (at.with_timezone(&Utc) - shift).to_rfc3339_opts(SecondsFormat::Micros, true);
    }
    out
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

pub async fn run(days: usize, copies: usize, tenants: usize) -> anyhow::Result<()> {
    anyhow::ensure!(days > 0 && copies > 0 && tenants > 0, "days, copies and tenants must be at least 1");
    let day = fixture()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("analytics.sqlite");
    let sink = SqliteAnalytics::open(&path, Durability::Full)?;
    let leads_per_day = day
        .iter()
        .filter(|r| r.table == "calls")
        .filter_map(|r| r.fields.get("call_id").and_then(Value::as_str))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    println!(
        "{days} days x {copies} copies of the fixture day ({} rows, {leads_per_day} leads) over {tenants} tenants: \
         {} leads, {} rows",
        day.len(),
        days * copies * leads_per_day,
        days * copies * day.len()
    );

    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut rows = 0usize;
    for d in 0..days {
        for c in 0..copies {
            let k = d * copies + c;
            for row in &day {
                batch.push(copy(row, k, tenants, Duration::days(d as i64)));
                if batch.len() == BATCH {
                    sink.insert(&batch).await?;
                    rows += batch.len();
                    batch.clear();
                }
            }
        }
    }
    sink.insert(&batch).await?;
    rows += batch.len();
    let secs = started.elapsed().as_secs_f64();
    println!("insert: {rows} rows in {secs:.1} s, {:.0} rows/s (batches of {BATCH}, fsync on)", rows as f64 / secs);
    drop(sink);
    let size = std::fs::metadata(&path)?.len()
        + std::fs::metadata(dir.path().join("analytics.sqlite-wal")).map_or(0, |m| m.len());
    println!("file: {:.1} MiB", size as f64 / (1024.0 * 1024.0));

    let db = SqliteAnalyticsReader::open(&path)?;
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let questions: Vec<String> = readme
        .split("\n## For analysts\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .map(|s| s.split("```sql\n").skip(1).filter_map(|b| b.split("```").next()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut queries: Vec<(String, String)> =
        VIEWS.iter().map(|(name, _)| (name.to_string(), format!("SELECT * FROM {name}"))).collect();
    queries.extend(questions.into_iter().enumerate().map(|(i, sql)| (format!("README question {}", i + 1), sql)));
    println!("\n{:<26} {:>9} {:>12} {:>11}", "query (read whole)", "rows", "median ms", "worst ms");
    for (name, sql) in queries {
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..3 {
            let t = Instant::now();
            count = db.query(&sql).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?.rows.len();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let worst = times.iter().copied().fold(0.0, f64::max);
        println!("{name:<26} {count:>9} {:>12.1} {worst:>11.1}", median(times));
    }
    println!("\npeak RSS: {:.0} MiB", crate::bench_stage::peak_rss_mb());
    Ok(())
}
