//! `callflow bench-adapters`: the latency of each port's main operations, embedded adapter beside its Google
//! Cloud adapter on the emulators (sequential calls, so each figure is one round trip plus the adapter's own
//! work). Emulator figures describe the adapters and the emulators here, not Google Cloud's service latency.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use callflow::adapters::bigquery::BigQuerySink;
use callflow::adapters::dir_objects::DirObjectStore;
use callflow::adapters::gcs::GcsObjectStore;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::pubsub::PubSubPublisher;
use callflow::adapters::spanner::SpannerStateStore;
use callflow::adapters::sqlite::{Durability, SqliteAnalytics, SqliteStateStore};
use callflow::domain::analytics::{AnalyticsRow, CALLS_TABLE};
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::{CallId, CallSource, LeadDetails, TenantId};
use callflow::ports::{AnalyticsSink, EventPublisher, NewObject, ObjectStore, StateStore};
use serde_json::{Value, json};

const PROJECT: &str = "callflow-emulators";

struct Table(Vec<(String, String, Vec<u64>)>);

impl Table {
    async fn time<F, Fut>(&mut self, op: &str, backend: &str, n: usize, mut f: F) -> anyhow::Result<()>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        // One call outside the figures: connections and sessions are set up by then.
        f(n).await?;
        let mut us = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            f(i).await?;
            us.push(t.elapsed().as_micros() as u64);
        }
        us.sort_unstable();
        self.0.push((op.to_owned(), backend.to_owned(), us));
        Ok(())
    }

    fn print(&self) {
        println!("{:<34} {:<22} {:>9} {:>9} {:>9}", "operation", "adapter", "p50 ms", "p95 ms", "p99 ms");
        for (op, backend, us) in &self.0 {
            let p = |q: f64| us[((q / 100.0) * (us.len() - 1) as f64).round() as usize] as f64 / 1000.0;
            println!("{op:<34} {backend:<22} {:>9.2} {:>9.2} {:>9.2}", p(50.0), p(95.0), p(99.0));
        }
    }
}

fn intake(call: String) -> IntakeEvent {
    IntakeEvent {
        tenant_id: TenantId::parse("acme-remodeling").expect("valid"),
        call_id: CallId::parse(&call).expect("valid"),
        source: CallSource::Callrail,
        kind: EventKind::PostCall,
        dedupe_key: "post_call".into(),
        payload_sha256: "00".into(),
        payload_bytes: 2_000,
        lead: LeadDetails { answered: Some(true), recording_url: Some("https://rec".into()), ..Default::default() },
        received_at: chrono::Utc::now(),
    }
}

fn row(id: String) -> AnalyticsRow {
    let Value::Object(fields) = json!({
        "insert_id": id, "event_time": "2026-11-21T10:00:00Z", "tenant_id": "acme-remodeling", "call_id": id,
        "stage": "on-webhook", "outcome": "created", "call_duration_secs": 42, "answered": true,
    }) else {
        unreachable!()
    };
    AnalyticsRow { table: CALLS_TABLE.into(), insert_id: id, fields }
}

async fn state_ops(t: &mut Table, name: &str, store: Arc<dyn StateStore>, n: usize, run: &str) -> anyhow::Result<()> {
    t.time("state: record_intake (new call)", name, n, |i| {
        let store = store.clone();
        let call = format!("CAL{run}n{i}");
        async move { Ok(store.record_intake(intake(call)).await.map(|_| ())?) }
    })
    .await?;
    t.time("state: record_intake (duplicate)", name, n, |i| {
        let store = store.clone();
        let call = format!("CAL{run}n{i}");
        async move { Ok(store.record_intake(intake(call)).await.map(|_| ())?) }
    })
    .await?;
    let tenant = TenantId::parse("acme-remodeling")?;
    t.time("state: read a call", name, n, |i| {
        let (store, tenant) = (store.clone(), tenant.clone());
        let call = CallId::parse(&format!("CAL{run}n{i}")).expect("valid");
        async move { Ok(store.call(&tenant, &call).await.map(|_| ())?) }
    })
    .await
}

async fn object_ops(
    t: &mut Table,
    name: &str,
    store: Arc<dyn ObjectStore>,
    bucket: &str,
    n: usize,
    run: &str,
) -> anyhow::Result<()> {
    let audio = Bytes::from(vec![7u8; 256 * 1024]);
    t.time("objects: put 256 KiB", name, n, |i| {
        let (store, audio, bucket) = (store.clone(), audio.clone(), bucket.to_owned());
        let object = format!("acme-remodeling/{run}-{i}.mp3");
        async move {
            let new = NewObject {
                bucket: &bucket,
                name: &object,
                content_type: "audio/mpeg",
                metadata: BTreeMap::from([("tenant_id".to_owned(), "acme-remodeling".to_owned())]),
                max_bytes: 1 << 20,
            };
            let body: callflow::ports::ByteStream = Box::pin(futures::stream::iter([Ok(audio)]));
            Ok(store.put(new, body).await.map(|_| ())?)
        }
    })
    .await?;
    t.time("objects: head", name, n, |i| {
        let (store, bucket) = (store.clone(), bucket.to_owned());
        async move { Ok(store.head(&bucket, &format!("acme-remodeling/{run}-{i}.mp3")).await.map(|_| ())?) }
    })
    .await?;
    t.time("objects: get 256 KiB", name, n, |i| {
        let (store, bucket) = (store.clone(), bucket.to_owned());
        async move { Ok(store.get(&bucket, &format!("acme-remodeling/{run}-{i}.mp3")).await.map(|_| ())?) }
    })
    .await
}

async fn analytics_ops(
    t: &mut Table,
    name: &str,
    sink: Arc<dyn AnalyticsSink>,
    n: usize,
    run: &str,
) -> anyhow::Result<()> {
    t.time("analytics: insert 1 row", name, n, |i| {
        let sink = sink.clone();
        async move { Ok(sink.insert(&[row(format!("{run}-one-{i}"))]).await?) }
    })
    .await?;
    t.time("analytics: insert 100 rows", name, (n / 5).max(5), |i| {
        let sink = sink.clone();
        let rows: Vec<_> = (0..100).map(|j| row(format!("{run}-batch-{i}-{j}"))).collect();
        async move { Ok(sink.insert(&rows).await?) }
    })
    .await
}

async fn publish_ops(
    t: &mut Table,
    name: &str,
    p: Arc<dyn EventPublisher>,
    topic: &str,
    n: usize,
) -> anyhow::Result<()> {
    t.time("events: publish", name, n, |i| {
        let (p, topic) = (p.clone(), topic.to_owned());
        async move {
            let attrs = BTreeMap::from([("tenant_id".to_owned(), "acme-remodeling".to_owned())]);
            let data = Bytes::from(format!(r#"{{"schema_version":1,"n":{i}}}"#));
            Ok(p.publish(&topic, data, attrs, Some("CAL1")).await.map(|_| ())?)
        }
    })
    .await
}

pub async fn run(n: usize) -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let dir = std::env::temp_dir().join(format!("callflow-bench-adapters-{run}"));
    std::fs::create_dir_all(&dir)?;
    let mut t = Table(Vec::new());
    let emulators =
        ["SPANNER_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"]
            .iter()
            .all(|v| std::env::var(v).is_ok_and(|h| !h.is_empty()));
    anyhow::ensure!(emulators, "the emulators are not configured: run through scripts/bench-adapters");

    let triggers = callflow::eventarc::load(std::path::Path::new("eventarc"), "emulators")?;
    let database = format!("projects/{PROJECT}/instances/callflow/databases/bench-{run}");
    let dataset = format!("bench_{run}");
    callflow_host::topology::provision(&triggers, &database, &dataset, &|f| {
        triggers.function_url(f).map(str::to_owned)
    })
    .await?;

    let sqlite = Arc::new(SqliteStateStore::open(&dir.join("state.sqlite"), Durability::Full)?);
    state_ops(&mut t, "SQLite (embedded)", sqlite, n, &run).await?;
    let spanner = Arc::new(SpannerStateStore::connect(&database).await?);
    state_ops(&mut t, "Spanner (emulator)", spanner, n, &run).await?;

    object_ops(&mut t, "directory (embedded)", Arc::new(DirObjectStore::new(dir.join("objects"))), "rec", n, &run)
        .await?;
    let recordings = triggers.bucket("recordings").unwrap_or("callflow-recordings").to_owned();
    object_ops(&mut t, "GCS (emulator)", Arc::new(GcsObjectStore::connect().await?), &recordings, n, &run).await?;

    let sqlite = Arc::new(SqliteAnalytics::open(&dir.join("analytics.sqlite"), Durability::Full)?);
    analytics_ops(&mut t, "SQLite (embedded)", sqlite, n, &run).await?;
    let bigquery = Arc::new(BigQuerySink::connect(PROJECT, &dataset).await?);
    analytics_ops(&mut t, "BigQuery (emulator)", bigquery, n, &run).await?;

    let embedded = callflow::eventarc::load(std::path::Path::new("eventarc"), "embedded")?;
    let router = Arc::new(LocalRouter::open(&dir.join("router.sqlite"), embedded, Durability::Full)?);
    publish_ops(&mut t, "local router (embedded)", router, "analysis-complete", n).await?;
    let pubsub = Arc::new(PubSubPublisher::connect(PROJECT).await?);
    publish_ops(&mut t, "Pub/Sub (emulator)", pubsub, "analysis-complete", n).await?;

    println!("{n} sequential calls per operation (batches: {}), after one warm-up call", (n / 5).max(5));
    t.print();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
