//! `callflow`: run everything in one process (the embedded mode), and operate its router.

use std::process::ExitCode;

use callflow::runtime::{serve, telemetry};
use clap::{Parser, Subcommand};

mod analytics;
mod backfill;
mod bench;
mod bench_adapters;
mod bench_analytics;
mod bench_chain;
mod bench_cleanup;
mod bench_delivery;
mod bench_stage;
mod calls;
mod cleanup_ops;
mod dead_letters;
mod receiver;
mod sign;
mod tenants;
mod text_table;

#[derive(Parser)]
#[command(name = "callflow", about = "callflow's one-process host (embedded mode) and its operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every function, the local router and the embedded backends in one process (the default).
    Serve,
    /// Erasure requests: erase a caller's recordings, transcripts and personal data (carried out by cleanup).
    Erasure {
        #[command(subcommand)]
        action: cleanup_ops::ErasureAction,
    },
    /// Cleanup (retention, erasure, stuck calls, reconciliation with CallRail) now, as the schedule runs it.
    Cleanup {
        #[command(subcommand)]
        action: cleanup_ops::CleanupAction,
    },
    /// The analysts' views, queries over the environment's analytics, and an export of the embedded rows.
    Analytics {
        #[command(subcommand)]
        action: analytics::AnalyticsAction,
    },
    /// Events the pipeline gave up on (the local router's; Pub/Sub's on the emulators and Google Cloud), and work
    /// the functions dead-lettered.
    DeadLetters {
        #[command(subcommand)]
        action: dead_letters::DeadLetterAction,
    },
    /// Measure each port's main operations: embedded adapter beside its Google Cloud adapter on the emulators.
    BenchAdapters {
        #[arg(long, default_value_t = 200)]
        iterations: usize,
    },
    /// Transcribe a local recording with the offline engine and print the normalized transcript JSON.
    Transcribe {
        /// An MP3, WAV, OGG or FLAC file.
        file: std::path::PathBuf,
        #[arg(long, default_value = "local")]
        tenant: String,
    },
    /// Emulator topology: create the Spanner database, buckets, BigQuery tables, Pub/Sub topics and push
    /// subscriptions from eventarc/ definitions (environment `emulators` unless CALLFLOW_ENVIRONMENT says otherwise).
    Provision,
    /// Emulator topology: turn new objects in the watched buckets into Eventarc storage events, delivered to the
    /// function processes with the triggers' retry and dead-letter policies.
    WatchStorage {
        /// Poll interval in milliseconds.
        #[arg(long, default_value_t = 250)]
        interval_ms: u64,
        /// Deliver a function's events to another URL than the environment's, as FUNCTION=URL (repeatable).
        #[arg(long = "deliver", value_parser = parse_deliver)]
        deliver: Vec<(String, String)>,
    },
    /// Emulator topology: Cloud Scheduler's part — publish each schedule of eventarc/triggers.toml on its topic at
    /// every due slot (attributes `schedule`, `schedule_time`); or, with --fire-now, one message now, then exit.
    Scheduler {
        /// Publish one message for this schedule (`cleanup`) now and exit.
        #[arg(long)]
        fire_now: Option<String>,
        /// How often due slots are looked for, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// A lead receiver for the custom-webhook CRM (signature checked, each lead kept once, JSON Lines out).
    CrmReceiver {
        #[arg(long, default_value_t = 8099)]
        port: u16,
        /// The address to listen on. Loopback by default: `GET /leads` lists what it received, caller details
        /// included, without authentication.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// The tenant's `whsec_…` signing secret, from this file.
        #[arg(long)]
        secret_file: std::path::PathBuf,
        /// Where accepted leads are appended.
        #[arg(long, default_value = ".data/leads.jsonl")]
        out: std::path::PathBuf,
    },
    /// Measure lead delivery: pushes/s to a CRM that answers at once, and the time from a CRM's recovery until a
    /// backlog held during its outage is delivered.
    BenchDelivery {
        #[arg(long, default_value_t = 2_000)]
        leads: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 500)]
        backlog: usize,
    },
    /// Measure the whole chain on embedded defaults with the vendors faked at zero latency: CPU per call per
    /// stage, calls/s through all six stages, end-to-end latency at a fixed rate, peak RSS.
    BenchChain {
        #[arg(long, default_value_t = 3_000)]
        calls: usize,
        /// Calls/s for the latency run.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of the latency run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections of the load generator in the stage-by-stage and throughput runs.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Measure one cleanup run on the embedded backends: erasure requests, stuck calls re-driven, retention.
    BenchCleanup {
        #[arg(long, default_value_t = 5_000)]
        calls: usize,
        #[arg(long, default_value_t = 100)]
        requests: usize,
    },
    /// Measure the analysts' views on the embedded SQLite sink: the fixture day's rows copied DAYS x COPIES times
    /// over TENANTS tenants, inserted as the outbox inserts them, then each view and README's questions read whole.
    BenchAnalytics {
        #[arg(long, default_value_t = 30)]
        days: usize,
        #[arg(long, default_value_t = 40)]
        copies: usize,
        #[arg(long, default_value_t = 20)]
        tenants: usize,
    },
    /// Measure on-audio-uploaded's own overhead (engine excluded) on the embedded backends.
    BenchTranscribeStage {
        #[arg(long, default_value_t = 2_000)]
        calls: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Ingest a tenant's CallRail calls of a date range through the normal intake (resumable; a progress bar).
    Backfill(backfill::BackfillArgs),
    /// Calls: one call's whole path (state, objects, analysis, CRM delivery, dead letters).
    Calls {
        #[command(subcommand)]
        action: calls::CallsAction,
    },
    /// Print a curl command that sends BODY signed with the tenant's active key, as CallRail (or the tenant's form
    /// sender) signs it: an onboarding check of the tenant's configuration end to end.
    Sign(sign::SignArgs),
    /// Check a captured webhook (raw HTTP, or a body and its headers) against the tenant's keys: which key signed
    /// it, or why none did. Exits 1 when the signature is not valid.
    Verify(sign::VerifyArgs),
    /// Tenants: list them, show one (with a check of its secret references), add or update one. Writes are
    /// validated as the functions load the file, and the functions pick the new file up without a restart.
    Tenants {
        #[command(subcommand)]
        action: tenants::TenantsAction,
    },
    /// terraform/generated.tf.json from eventarc/ and shared/schemas/ (the deployment's single sources of truth).
    Terraform {
        #[command(subcommand)]
        action: TerraformAction,
    },
    /// Measure the router: deliveries/s through a no-op function, CPU and latency per delivery.
    BenchRouter {
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Publish rate (events/s) for the latency run.
        #[arg(long, default_value_t = 2_000)]
        rate: u32,
    },
}

#[derive(Subcommand)]
enum TerraformAction {
    /// Write terraform/generated.tf.json; with --check, only say whether the committed file is current.
    Generate {
        #[arg(long)]
        check: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        None | Some(Command::Serve) | Some(Command::WatchStorage { .. }) | Some(Command::CrmReceiver { .. })
    );
    if serving {
        telemetry::init("callflow-host");
    } else {
        telemetry::init_stderr("callflow");
    }
    // An operator's command piped into `head` should stop quietly, as a Unix tool does, rather than panic on a
    // closed stdout. Only for the commands that print and exit: the hosts keep Rust's default, so a speech
    // engine child that dies under them is an error to handle, not a signal that kills the process.
    let prints = matches!(
        cli.command,
        Some(
            Command::Analytics { .. }
                | Command::DeadLetters { .. }
                | Command::Erasure { .. }
                | Command::Cleanup { .. }
                | Command::Calls { .. }
                | Command::Backfill(_)
                | Command::Sign(_)
                | Command::Verify(_)
                | Command::Tenants { .. }
        )
    );
    if prints {
        sigpipe::reset();
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve_all().await,
        Command::Analytics { action } => analytics::run(action).await,
        Command::DeadLetters { action } => dead_letters::run(action).await,
        Command::Erasure { action } => cleanup_ops::erasure(action).await,
        Command::Cleanup { action } => cleanup_ops::cleanup(action).await,
        Command::BenchRouter { events, concurrency, rate } => bench::run(events, concurrency, rate).await,
        Command::Provision => provision().await,
        Command::Sign(args) => sign::run_sign(args).await,
        Command::Calls { action } => calls::run(action).await,
        Command::Backfill(args) => backfill::run(args).await,
        Command::Verify(args) => match sign::run_verify(args).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Tenants { action } => match tenants::run(action).await {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Terraform { action: TerraformAction::Generate { check } } => terraform_generate(check),
        Command::Transcribe { file, tenant } => transcribe(file, tenant).await,
        Command::BenchAdapters { iterations } => bench_adapters::run(iterations).await,
        Command::BenchChain { calls, rate, seconds, concurrency } => {
            bench_chain::run(calls, rate, seconds, concurrency).await
        }
        Command::BenchCleanup { calls, requests } => bench_cleanup::run(calls, requests).await,
        Command::BenchAnalytics { days, copies, tenants } => bench_analytics::run(days, copies, tenants).await,
        Command::BenchTranscribeStage { calls, concurrency } => bench_stage::run(calls, concurrency).await,
        Command::BenchDelivery { leads, concurrency, backlog } => {
            bench_delivery::run(leads, concurrency, backlog).await
        }
        Command::WatchStorage { interval_ms, deliver } => watch_storage(interval_ms, deliver).await,
        Command::Scheduler { fire_now, interval_ms } => match topology_triggers() {
            Ok(t) => {
                callflow_host::scheduler::command(t, fire_now, std::time::Duration::from_millis(interval_ms)).await
            }
            Err(e) => Err(e),
        },
        Command::CrmReceiver { port, bind, secret_file, out } => {
            crm_receiver((bind, port).into(), secret_file, out).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The server logs for Cloud Logging; an operator at a terminal gets one plain line.
            if serving {
                tracing::error!(error = format!("{e:#}"), "callflow stopped");
            }
            eprintln!("callflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn crm_receiver(
    addr: std::net::SocketAddr,
    secret_file: std::path::PathBuf,
    out: std::path::PathBuf,
) -> anyhow::Result<()> {
    let secret = std::fs::read_to_string(&secret_file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", secret_file.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let app = receiver::app(receiver::Receiver::new(&secret, out)?);
    serve::serve_on(app, addr, serve::shutdown_signal(), std::time::Duration::from_secs(2)).await
}

async fn serve_all() -> anyhow::Result<()> {
    let host = std::sync::Arc::new(callflow_host::Host::open(callflow_host::Settings::from_env()?).await?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = host.spawn_workers(stop_rx);
    let shutdown = async move {
        serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    let drain = host.settings.drain;
    serve::serve(on_webhook::app(host.webhook.clone()), host.settings.port, shutdown, drain).await?;
    let _ = tokio::time::timeout(drain, async {
        futures::future::join_all(workers).await;
    })
    .await;
    Ok(())
}

async fn transcribe(file: std::path::PathBuf, tenant: String) -> anyhow::Result<()> {
    use callflow::domain::transcript::{TRANSCRIPT_SCHEMA_VERSION, Transcript, segments_from_words};
    use callflow::ports::Transcriber;
    let content_type = match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        other => anyhow::bail!("{}: unknown audio extension {other:?} (mp3, wav, ogg, flac)", file.display()),
    };
    let data = bytes::Bytes::from(std::fs::read(&file)?);
    let call = file.file_stem().and_then(|s| s.to_str()).unwrap_or("call").to_owned();
    let audio = callflow::ports::AudioRef {
        bucket: "local".into(),
        name: file.display().to_string(),
        generation: 0,
        content_type: content_type.into(),
        size: data.len() as u64,
        duration_secs: None,
        language: "en-US".into(),
    };
    let started = std::time::Instant::now();
    let heard = callflow::adapters::pocketsphinx::Pocketsphinx::default().transcribe(&audio, Some(data)).await?;
    let took = started.elapsed().as_secs_f64();
    let transcript = Transcript {
        schema_version: TRANSCRIPT_SCHEMA_VERSION,
        tenant_id: tenant,
        call_id: call,
        engine: heard.engine,
        quality: heard.quality,
        language: heard.language,
        duration_secs: heard.duration_secs,
        segments: segments_from_words(&heard.words),
    };
    println!("{}", serde_json::to_string_pretty(&transcript)?);
    eprintln!(
        "{:.1} s of audio in {took:.2} s ({:.1} s per audio minute)",
        transcript.duration_secs,
        took * 60.0 / transcript.duration_secs.max(0.001)
    );
    Ok(())
}

/// Run from the repo's root, like the scripts.
fn terraform_generate(check: bool) -> anyhow::Result<()> {
    use callflow_host::terraform::{GENERATED, generate};
    let text = generate(std::path::Path::new("."))?;
    let current = std::fs::read_to_string(GENERATED).unwrap_or_default();
    if check {
        anyhow::ensure!(
            current == text,
            "{GENERATED} differs from eventarc/ and shared/schemas/: run `callflow terraform generate`"
        );
        println!("{GENERATED} is current");
    } else if current == text {
        println!("{GENERATED} unchanged");
    } else {
        std::fs::write(GENERATED, text)?;
        println!("wrote {GENERATED}");
    }
    Ok(())
}

fn parse_deliver(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected FUNCTION=URL")?;
    Ok((name.to_owned(), url.to_owned()))
}

fn topology_triggers() -> anyhow::Result<callflow::eventarc::Triggers> {
    let dir = std::env::var("CALLFLOW_EVENTARC").unwrap_or_else(|_| "eventarc".into());
    let environment = std::env::var("CALLFLOW_ENVIRONMENT").unwrap_or_else(|_| "emulators".into());
    anyhow::ensure!(environment != "embedded", "the embedded environment has no topology to set up");
    Ok(callflow::eventarc::load(std::path::Path::new(&dir), &environment)?)
}

async fn provision() -> anyhow::Result<()> {
    let triggers = topology_triggers()?;
    let config = callflow::runtime::google::GoogleConfig::from_lookup(|k| std::env::var(k).ok())?;
    let started = std::time::Instant::now();
    let done =
        callflow_host::topology::provision(&triggers, &config.spanner_database, &config.bigquery_dataset, &|f| {
            triggers.function_url(f).map(str::to_owned)
        })
        .await?;
    println!("spanner database  {}", config.spanner_database);
    println!("buckets           {}", done.buckets.join(", "));
    println!("bigquery tables   {}", done.tables.join(", "));
    println!("pubsub topics     {}", done.topics.join(", "));
    println!("subscriptions     {}", done.subscriptions.join(", "));
    println!("provisioned in {} ms", started.elapsed().as_millis());
    Ok(())
}

async fn watch_storage(interval_ms: u64, deliver: Vec<(String, String)>) -> anyhow::Result<()> {
    use callflow::adapters::{gcs::GcsObjectStore, local_router::LocalRouter, storage_watcher};
    let triggers = topology_triggers()?;
    let dir =
        std::path::PathBuf::from(std::env::var("CALLFLOW_DATA_DIR").unwrap_or_else(|_| ".emulators/watcher".into()));
    let router = std::sync::Arc::new(LocalRouter::open(
        &dir.join("router.sqlite"),
        triggers.clone(),
        callflow::adapters::sqlite::Durability::Full,
    )?);
    router.release_leases().await?;
    let objects = std::sync::Arc::new(GcsObjectStore::connect().await?);
    let watcher = std::sync::Arc::new(storage_watcher::StorageWatcher::open(
        &dir.join("watcher.sqlite"),
        objects,
        router.clone(),
    )?);
    for trigger in triggers.triggers.iter().filter(|t| matches!(t.source, callflow::eventarc::Source::Bucket(_))) {
        let url = deliver
            .iter()
            .find(|(name, _)| *name == trigger.destination)
            .map(|(_, url)| url.as_str())
            .or_else(|| triggers.function_url(&trigger.destination))
            .ok_or_else(|| anyhow::anyhow!("no URL for function {}", trigger.destination))?;
        router.host(&trigger.destination, storage_watcher::remote_function(url)?, callflow_host::DELIVERY_CONCURRENCY);
        tracing::info!(trigger = %trigger.name, destination = %trigger.destination, url, "delivering storage events");
    }
    tracing::info!(buckets = ?watcher.buckets(), "storage watcher started");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let polling = tokio::spawn(watcher.run(std::time::Duration::from_millis(interval_ms), stop_rx.clone()));
    let delivering = tokio::spawn(router.run(stop_rx));
    serve::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(polling, delivering);
    Ok(())
}
