//! `callflow dead-letters`: list, inspect and replay what the pipeline gave up on.
//!
//! Two kinds live in different places:
//! - function work and refused events (failed fetches, poison events, CRM refusals): in the state store of the
//!   environment's backends (SQLite embedded, Spanner on Google Cloud), through cleanup-scheduled's ports;
//! - events the local router gave up delivering: in the embedded host's router only. On Google Cloud those are
//!   Pub/Sub's, kept by the dead-letter subscription terraform declares.

use std::sync::Arc;

use callflow::adapters::local_router::LocalRouter;
use callflow::ports::{DeadLetter, StateStore};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Subcommand)]
pub enum DeadLetterAction {
    /// List dead letters (router events and function work items).
    List {
        /// Only this tenant's function work items.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: its payload, reason, attempts and whether it was replayed.
    Inspect {
        /// The id `list` shows (a router event's number, or a work item's id).
        #[arg(long)]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead-lettered router events again, with a fresh attempt budget (embedded host).
    Replay {
        /// Dead letter ids (from `list`); repeat for several.
        #[arg(long = "id")]
        ids: Vec<i64>,
        /// Replay every dead-lettered event.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Push leads the CRM refused again once the tenant has fixed their CRM (dead letters of kind `crm`): each
    /// call goes back to `analysed` and a fresh retry chain starts. A running host delivers them within a second.
    ReplayLeads {
        /// Dead letter ids (the `id` column of `list`); repeat for several.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Every CRM dead letter of this tenant not yet replayed.
        #[arg(long, conflicts_with = "ids")]
        tenant: Option<String>,
        /// Every CRM dead letter not yet replayed.
        #[arg(long, conflicts_with_all = ["ids", "tenant"])]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

struct Backends {
    state: Arc<dyn StateStore>,
    /// The embedded host's router; none on Google Cloud.
    router: Option<LocalRouter>,
}

async fn backends() -> anyhow::Result<Backends> {
    let settings = cleanup_scheduled::Settings::from_env()?;
    let common = &settings.common;
    let router = if common.google.is_none() {
        Some(LocalRouter::open(&common.data_dir.join("router.sqlite"), common.triggers.clone(), common.durability)?)
    } else {
        None
    };
    let service = cleanup_scheduled::Service::connect(&settings).await?;
    Ok(Backends { state: service.ports.state.clone(), router })
}

fn work_json(w: &DeadLetter) -> serde_json::Value {
    json!({
        "id": w.id, "replayed_at": w.replayed_at, "tenant_id": w.tenant_id, "call_id": w.call_id, "kind": w.kind,
        "payload": w.payload, "attempts": w.attempts, "reason": w.reason, "created_at": w.created_at,
    })
}

pub async fn run(action: DeadLetterAction) -> anyhow::Result<()> {
    let b = backends().await?;
    match action {
        DeadLetterAction::List { tenant, json } => {
            let events = match &b.router {
                Some(r) if tenant.is_none() => r.dead_letters().await?,
                _ => Vec::new(),
            };
            let work = b.state.dead_letters(tenant.as_deref(), 100_000).await?;
            if json {
                let work: Vec<_> = work.iter().map(work_json).collect();
                println!("{}", json!({ "events": events, "work": work }));
                return Ok(());
            }
            if b.router.is_some() && tenant.is_none() {
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
            }
            println!("function work and refused events ({}):", work.len());
            for w in &work {
                let replayed = w.replayed_at.map(|t| format!(" (replayed {t})")).unwrap_or_default();
                println!(
                    "  #{:<5} {} {} {} attempts={}{replayed}: {}",
                    w.id, w.tenant_id, w.call_id, w.kind, w.attempts, w.reason
                );
            }
            Ok(())
        }
        DeadLetterAction::Inspect { id, json } => {
            let work = b.state.dead_letters(None, 100_000).await?;
            if let Some(w) = work.iter().find(|w| w.id == id) {
                let doc = work_json(w);
                if json {
                    println!("{doc}");
                } else {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                    println!(
                        "(`callflow calls show --tenant {} {}` shows the call's whole path)",
                        w.tenant_id, w.call_id
                    );
                }
                return Ok(());
            }
            if let (Some(router), Ok(n)) = (&b.router, id.parse::<i64>())
                && let Some(e) = router.dead_letters().await?.into_iter().find(|e| e.id == n)
            {
                let doc = serde_json::to_value(&e)?;
                println!("{}", if json { doc.to_string() } else { serde_json::to_string_pretty(&doc)? });
                return Ok(());
            }
            anyhow::bail!("no dead letter {id} (see `callflow dead-letters list`)")
        }
        DeadLetterAction::Replay { ids, all } => {
            let router = b.router.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "router events exist only in the embedded host; on Google Cloud, dead-lettered Pub/Sub messages \
                     wait in the dead-letter subscription (terraform output dead_letter_subscriptions)"
                )
            })?;
            if ids.is_empty() && !all {
                anyhow::bail!("name dead letters with --id N (repeatable) or use --all");
            }
            let n = router.replay(if all { None } else { Some(ids) }).await?;
            println!("replayed {n} event(s); a running host delivers them now");
            Ok(())
        }
        DeadLetterAction::ReplayLeads { ids, tenant, all, json } => {
            if ids.is_empty() && tenant.is_none() && !all {
                anyhow::bail!("name dead letters with --id ID (repeatable), --tenant TENANT or --all");
            }
            let policy = on_analysis::Settings::from_env()?.policy;
            let letters = b.state.dead_letters(tenant.as_deref(), 100_000).await?;
            let chosen: Vec<_> = letters
                .iter()
                .filter(|d| d.kind == "crm" && d.replayed_at.is_none())
                .filter(|d| ids.is_empty() || ids.contains(&d.id))
                .collect();
            if let Some(missing) = ids.iter().find(|id| !chosen.iter().any(|d| &d.id == *id)) {
                anyhow::bail!("no CRM dead letter {missing} waiting for a replay (see `dead-letters list`)");
            }
            // On stderr, and drawn only at a terminal: scripts reading --json see none of it.
            let bar = ProgressBar::new(chosen.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} leads replayed ({per_sec}, {eta} left)")
                    .expect("a valid template"),
            );
            let mut replayed = Vec::new();
            for letter in chosen {
                if callflow::runtime::lead_delivery::replay(b.state.as_ref(), &policy, letter, chrono::Utc::now())
                    .await?
                {
                    if !json {
                        bar.suspend(|| println!("  #{} {} {}: replaying", letter.id, letter.tenant_id, letter.call_id));
                    }
                    replayed.push(letter.id.clone());
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            if json {
                println!("{}", json!({ "replayed": replayed }));
            } else {
                println!("replayed {} lead(s); a running host pushes them now", replayed.len());
            }
            Ok(())
        }
    }
}
