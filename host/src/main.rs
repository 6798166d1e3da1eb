//! `callflow`: run everything in one process (the embedded mode), and operate its router.

use std::process::ExitCode;

use callflow::runtime::{serve, telemetry};
use clap::{Parser, Subcommand};

mod bench;

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
    /// Events the router gave up on, and work the functions dead-lettered.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
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
enum DeadLetterAction {
    /// List dead letters (router events and function work items).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead-lettered events again, with a fresh attempt budget.
    Replay {
        /// Dead letter ids (from `list`); repeat for several.
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// Replay every dead-lettered event.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, None | Some(Command::Serve));
    telemetry::init(if serving { "callflow-host" } else { "callflow" });
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve_all().await,
        Command::DeadLetters { action } => dead_letters(action).await,
        Command::BenchRouter { events, concurrency, rate } => bench::run(events, concurrency, rate).await,
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

async fn serve_all() -> anyhow::Result<()> {
    let settings = on_webhook::Settings::from_env()?;
    let host = callflow_host::Host::open(settings).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let outbox = tokio::spawn(on_webhook::outbox::run(host.webhook.clone(), stop_rx.clone()));
    let router = tokio::spawn(host.router.clone().run(stop_rx));
    let shutdown = async move {
        serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    let drain = host.settings.drain;
    serve::serve(on_webhook::app(host.webhook.clone()), host.settings.port, shutdown, drain).await?;
    let _ = tokio::time::timeout(drain, async {
        let _ = tokio::join!(outbox, router);
    })
    .await;
    Ok(())
}

async fn dead_letters(action: DeadLetterAction) -> anyhow::Result<()> {
    let settings = on_webhook::Settings::from_env()?;
    let router = callflow::adapters::local_router::LocalRouter::open(
        &settings.data_dir.join("router.sqlite"),
        settings.triggers.clone(),
        settings.durability,
    )?;
    match action {
        DeadLetterAction::List { json } => {
            let events = router.dead_letters().await?;
            let state = callflow::adapters::sqlite::SqliteStateStore::open(
                &settings.data_dir.join("state.sqlite"),
                settings.durability,
            )?;
            let work = state.dead_letters(None).await?;
            if json {
                let work: Vec<_> = work
                    .iter()
                    .map(|w| serde_json::json!({"tenant_id": w.tenant_id, "call_id": w.call_id, "kind": w.kind, "attempts": w.attempts, "reason": w.reason}))
                    .collect();
                println!("{}", serde_json::json!({ "events": events, "work": work }));
                return Ok(());
            }
            println!("router events ({}):", events.len());
            for e in &events {
                let subject = e.ce_subject.as_deref().unwrap_or("-");
                println!(
                    "  #{:<5} {:<22} → {:<18} {subject}  attempts={} status={} at {}\n         {}",
                    e.id,
                    e.trigger,
                    e.destination,
                    e.attempts,
                    e.last_status.map_or("-".to_owned(), |s| s.to_string()),
                    e.dead_lettered_at,
                    e.reason
                );
            }
            println!("function work ({}):", work.len());
            for w in &work {
                println!("  {} {} {} attempts={}: {}", w.tenant_id, w.call_id, w.kind, w.attempts, w.reason);
            }
            Ok(())
        }
        DeadLetterAction::Replay { ids, all } => {
            if ids.is_empty() && !all {
                anyhow::bail!("name dead letters with --id N (repeatable) or use --all");
            }
            let n = router.replay(if all { None } else { Some(ids) }).await?;
            println!("replayed {n} event(s); a running host delivers them now");
            Ok(())
        }
    }
}
