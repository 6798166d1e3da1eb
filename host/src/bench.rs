//! `callflow bench-router`: the router's own cost, through a no-op function that parses the CloudEvent (as a
//! real function would) and answers 204.
//! 1. Backlog: publish N messages, then deliver them all: events/s both ways and CPU µs per event.
//! 2. Latency: publish at a fixed rate for 5 s while the router runs: publish → function receipt percentiles.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::sqlite::Durability;
use callflow::ports::EventPublisher;
use callflow::runtime::cloudevent::Incoming;
use futures::StreamExt;

/// User + system CPU time of this process, from /proc (clock ticks of 10 ms: use over runs of seconds).
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the ')' field 0 is the state (field 3 of the line): utime and stime are fields 14 and 15.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize] as f64 / 1000.0
}

pub async fn run(events: usize, concurrency: usize, rate: u32) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("callflow-bench-router-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let triggers = callflow::eventarc::load(Path::new("eventarc"), "embedded")?;
    let topic = triggers.topic("analysis-complete").unwrap_or("analysis-complete").to_owned();
    let router = Arc::new(LocalRouter::open(&dir.join("router.sqlite"), triggers, Durability::Full)?);

    let received = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u64>::with_capacity(events)));
    let (count, lat) = (received.clone(), latencies.clone());
    let app = axum::Router::new().route(
        "/",
        post(move |Incoming(event): Incoming| {
            let (count, lat) = (count.clone(), lat.clone());
            async move {
                let Ok(msg) = event.and_then(|e| e.pubsub_message()) else { return StatusCode::BAD_REQUEST };
                if let Some(sent) = msg.message.attributes.get("published_us").and_then(|v| v.parse::<u64>().ok()) {
                    lat.lock().expect("latency lock").push(now_us().saturating_sub(sent));
                }
                count.fetch_add(1, Ordering::Relaxed);
                StatusCode::NO_CONTENT
            }
        }),
    );
    router.host("on-analysis", app, concurrency);
    let data = Bytes::from_static(br#"{"schema_version":1,"tenant_id":"acme-remodeling","call_id":"CAL0000"}"#);
    let publish = |stamp: bool| {
        let (router, topic, data) = (router.clone(), topic.clone(), data.clone());
        async move {
            let mut attrs = std::collections::BTreeMap::new();
            if stamp {
                attrs.insert("published_us".to_owned(), now_us().to_string());
            }
            router.publish(&topic, data, attrs, None).await.expect("publish");
        }
    };

    // 1. Backlog.
    let (t0, c0) = (Instant::now(), cpu_time());
    futures::stream::iter(0..events).for_each_concurrent(64, |_| publish(false)).await;
    let (publish_time, publish_cpu) = (t0.elapsed(), cpu_time() - c0);
    let (t1, c1) = (Instant::now(), cpu_time());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loop_task = tokio::spawn(router.clone().run(stop_rx));
    while received.load(Ordering::Relaxed) < events {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (deliver_time, deliver_cpu) = (t1.elapsed(), cpu_time() - c1);
    println!("backlog: {events} events, delivery concurrency {concurrency}");
    println!(
        "  publish: {:.0} events/s, {:.1} µs CPU per event",
        events as f64 / publish_time.as_secs_f64(),
        publish_cpu.as_secs_f64() * 1e6 / events as f64
    );
    println!(
        "  deliver: {:.0} deliveries/s, {:.1} µs CPU per delivery (router + no-op function), {:.1} µs wall per delivery",
        events as f64 / deliver_time.as_secs_f64(),
        deliver_cpu.as_secs_f64() * 1e6 / events as f64,
        deliver_time.as_secs_f64() * 1e6 / events as f64
    );

    // 2. Latency at a fixed rate, router running.
    latencies.lock().expect("latency lock").clear();
    let before = received.load(Ordering::Relaxed);
    let total = (rate as usize) * 5;
    let start = Instant::now();
    for i in 0..total {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / f64::from(rate))).into()).await;
        tokio::spawn(publish(true));
    }
    while received.load(Ordering::Relaxed) < before + total {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut l = latencies.lock().expect("latency lock").clone();
    l.sort_unstable();
    println!(
        "latency at {rate} events/s (publish → function, durable both ways): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&l, 50.0),
        pct(&l, 90.0),
        pct(&l, 99.0),
        pct(&l, 100.0)
    );
    let _ = stop_tx.send(true);
    let _ = loop_task.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
