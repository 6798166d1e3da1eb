//! `callflow bench-transcribe-stage`: on-audio-uploaded's own overhead, the engine excluded. Calls and their
//! 256 KiB recordings are stored first (not timed); then every finalize event goes through the function as the
//! router delivers it (a binary-mode CloudEvent into its axum app) with an engine that answers at once: event
//! parsing and checks, tenant and call reads, the claim, the recording's metadata and bytes, the transcript
//! object and the commit with its analytics row, and the inline analytics flush. Embedded backends, as on
//! defaults.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use callflow::adapters::local_router::LocalRouter;
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::transcript::{Quality, Word};
use callflow::domain::{CallId, CallSource, LeadDetails, TenantId};
use callflow::ports::{AudioRef, NewObject, ObjectStore, Recognized, StateStore, Transcriber, VendorError};
use callflow::runtime::embedded::Embedded;
use futures::StreamExt;
use tower::ServiceExt;

use crate::bench::{cpu_time, pct};

/// An engine with no cost and no latency, so what is measured is the stage.
struct Instant0;

#[async_trait]
impl Transcriber for Instant0 {
    async fn transcribe(&self, audio: &AudioRef, data: Option<Bytes>) -> Result<Recognized, VendorError> {
        let heard = "thanks for calling acme remodeling how can I help hi I need a quote for a kitchen remodel";
        let words = heard
            .split(' ')
            .enumerate()
            .map(|(i, w)| Word {
                text: w.to_owned(),
                start: i as f64 * 0.4,
                end: i as f64 * 0.4 + 0.3,
                confidence: Some(0.8),
                speaker_label: Some(if i < 8 { "1" } else { "2" }.to_owned()),
            })
            .collect();
        Ok(Recognized {
            engine: "instant".into(),
            quality: Quality::Low,
            language: audio.language.clone(),
            duration_secs: data.map_or(0.0, |d| d.len() as f64 / 16_000.0),
            words,
            billed_secs: 0.0,
        })
    }
}

pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

pub async fn run(calls: usize, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, "[[tenant]]\nid = \"acme\"\nname = \"Acme\"\n")?;
    let data = dir.path().join("data");
    let vars = [
        ("CALLFLOW_DATA_DIR", data.display().to_string()),
        ("CALLFLOW_TENANTS", tenants.display().to_string()),
        ("CALLFLOW_TRANSCRIBER", "offline".to_owned()),
    ];
    let settings = on_audio_uploaded::Settings::from_lookup(|name| {
        vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok())
    })?;
    let c = &settings.common;
    let e = Embedded::open(&c.data_dir, &c.tenants_file, c.triggers.clone(), c.durability)?;
    let mut service = on_audio_uploaded::Service::with_embedded(&e, &settings);
    service.ports.offline = Arc::new(Instant0);

    let recording = Bytes::from(vec![0x55u8; 256 * 1024]);
    for i in 0..calls {
        let (tenant, call) = (TenantId::parse("acme")?, CallId::parse(&format!("CALbench{i:06}"))?);
        e.state
            .record_intake(IntakeEvent {
                tenant_id: tenant.clone(),
                call_id: call.clone(),
                source: CallSource::Callrail,
                kind: EventKind::PostCall,
                dedupe_key: "post_call".into(),
                payload_sha256: "00".into(),
                payload_bytes: 2048,
                lead: LeadDetails {
                    answered: Some(true),
                    duration_secs: Some(95),
                    recording_url: Some("https://api.callrail.com/rec".into()),
                    ..LeadDetails::default()
                },
                received_at: chrono::Utc::now(),
            })
            .await?;
        let name = format!("acme/{call}.mp3");
        let metadata = [("tenant_id", "acme"), ("call_id", call.as_str())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let object =
            NewObject { bucket: "recordings", name: &name, content_type: "audio/mpeg", metadata, max_bytes: 1 << 30 };
        let body = recording.clone();
        e.objects.put(object, Box::pin(futures::stream::once(async move { Ok(body) }))).await?;
    }
    // The intake's own analytics rows are not this stage's work: deliver them before the clock starts.
    while callflow::runtime::analytics_outbox::flush(
        e.state.as_ref(),
        e.analytics.as_ref(),
        &callflow::ports::SystemClock,
    )
    .await
        > 0
    {}
    let events: Vec<_> =
        e.router.pending().await?.into_iter().filter(|ev| ev.destination == "on-audio-uploaded").collect();
    anyhow::ensure!(events.len() == calls, "expected {calls} finalize events, found {}", events.len());

    let app = on_audio_uploaded::app(service);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let results: Vec<(u16, u64)> = futures::stream::iter(events)
        .map(|ev| {
            let app = app.clone();
            async move {
                let started = Instant::now();
                let status = app.oneshot(LocalRouter::request(&ev)).await.map_or(0, |r| r.status().as_u16());
                (status, started.elapsed().as_micros() as u64)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let (wall, cpu) = (t0.elapsed(), cpu_time().saturating_sub(cpu0));
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    anyhow::ensure!(ok == calls, "{} of {calls} deliveries were not acknowledged", calls - ok);
    let mut latencies: Vec<u64> = results.iter().map(|(_, us)| *us).collect();
    latencies.sort_unstable();
    let transcripts = e.objects.list("transcripts", "acme/", None, 10).await?;
    anyhow::ensure!(!transcripts.objects.is_empty(), "no transcript was written");
    println!("on-audio-uploaded stage overhead (engine excluded), embedded backends, 256 KiB recordings");
    println!("calls {calls}, concurrency {concurrency}");
    println!("throughput      {:>10.0} recordings/s", calls as f64 / wall.as_secs_f64());
    println!(
        "latency ms      p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        pct(&latencies, 50.0),
        pct(&latencies, 95.0),
        pct(&latencies, 99.0),
        pct(&latencies, 100.0)
    );
    println!("cpu per event   {:>10.0} µs", cpu.as_micros() as f64 / calls as f64);
    println!("peak rss        {:>10.1} MB", peak_rss_mb());
    Ok(())
}
