//! `callflow dead-letters`: list, inspect and replay what the pipeline gave up on.
//!
//! Two kinds live in different places:
//! - function work and refused events (failed fetches, poison events, CRM refusals): in the state store of the
//!   environment's backends (SQLite embedded, Spanner on Google Cloud), through cleanup-scheduled's ports;
//! - events a trigger gave up delivering: in the embedded host's router, or, on the emulators and Google Cloud,
//!   Pub/Sub messages that a trigger subscription's dead-letter policy forwarded to the dead-letter topic, waiting
//!   in its pull "hold" subscription (`adapters::pubsub_dead_letters`). Both are shown in one shape.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::pubsub_dead_letters::{
    DeadLetterError, HeldMessage, Outcome, PubSubDeadLetters, SOURCE_SUBSCRIPTION, Selection,
};
use callflow::eventarc::{Source, Trigger, Triggers};
use callflow::ports::{DeadLetter, StateStore};
use callflow_host::topology::{dead_letter_holds, subscription_name};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

/// Pub/Sub dead letters one command looks at, at most, per hold subscription: every one is pulled (and handed
/// back), so the bound keeps a flood from holding thousands of leases for long.
const PUBSUB_SCAN_LIMIT: usize = 10_000;

#[derive(Subcommand)]
pub enum DeadLetterAction {
    /// List dead letters (events a trigger gave up on: the router's, or Pub/Sub's; and function work items).
    List {
        /// Only this tenant's function work items.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: its payload, reason, attempts and whether it was replayed.
    Inspect {
        /// The id `list` shows (a router event's number, a Pub/Sub dead letter's message id, or a work item's id).
        #[arg(long)]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead-lettered events again: router events with a fresh attempt budget (embedded host); Pub/Sub
    /// dead letters republished on their topic (emulators, Google Cloud), then acknowledged.
    Replay {
        /// Dead letter ids (from `list`); repeat for several.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Replay every dead-lettered event.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Only the events of this trigger (e.g. `transcript-finalized`), with --all (embedded host).
        #[arg(long, requires = "all")]
        trigger: Option<String>,
        #[arg(long)]
        json: bool,
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
    /// Outside the embedded environment: one per dead-letter topic, its hold subscription.
    pubsub: Vec<PubSubDeadLetters>,
    triggers: Triggers,
}

async fn backends() -> anyhow::Result<Backends> {
    let settings = cleanup_scheduled::Settings::from_env()?;
    let common = &settings.common;
    let (router, pubsub) = if common.google.is_none() {
        let router =
            LocalRouter::open(&common.data_dir.join("router.sqlite"), common.triggers.clone(), common.durability)?;
        (Some(router), Vec::new())
    } else {
        let holds = dead_letter_holds(&common.triggers)
            .iter()
            .map(|(_, hold)| PubSubDeadLetters::connect(&common.triggers.project, hold))
            .collect::<anyhow::Result<_>>()
            .context("Pub/Sub (dead letters)")?;
        (None, holds)
    };
    let service = cleanup_scheduled::Service::connect(&settings).await?;
    Ok(Backends { state: service.ports.state.clone(), router, pubsub, triggers: common.triggers.clone() })
}

/// The error to show for a failed Pub/Sub call: a missing hold subscription says how it comes to exist.
fn pubsub_error(e: DeadLetterError) -> anyhow::Error {
    match e {
        DeadLetterError::NoSubscription(s) => anyhow::anyhow!(
            "the Pub/Sub subscription {s}, which holds the dead-letter topic's messages, does not exist: \
             `callflow provision` creates it on the emulators, terraform (terraform/pubsub.tf) on Google Cloud"
        ),
        e => e.into(),
    }
}

/// Every Pub/Sub dead letter waiting (up to the scan limit per hold subscription), oldest first per subscription.
async fn pubsub_events(b: &Backends) -> anyhow::Result<Vec<Value>> {
    let mut events = Vec::new();
    for hold in &b.pubsub {
        let held = hold.list(PUBSUB_SCAN_LIMIT).await.map_err(pubsub_error)?;
        if held.len() >= PUBSUB_SCAN_LIMIT {
            eprintln!(
                "note: showing the first {PUBSUB_SCAN_LIMIT} dead letters of {}; more may be waiting",
                hold.subscription()
            );
        }
        events.extend(held.iter().map(|m| pubsub_event_json(m, &b.triggers, hold.subscription())));
    }
    Ok(events)
}

/// The trigger whose subscription gave up on a message: `eventarc-{trigger}` as `callflow provision` names it, or
/// Eventarc's own name on Google Cloud (`eventarc-{region}-{prefix}-{trigger}-sub-{n}`; the longest trigger name
/// that fits wins, so no trigger is taken for another whose name ends like it).
fn trigger_of<'a>(triggers: &'a Triggers, source_subscription: &str) -> Option<&'a Trigger> {
    let name = source_subscription.rsplit('/').next()?;
    triggers.triggers.iter().find(|t| subscription_name(&t.name) == name).or_else(|| {
        triggers
            .triggers
            .iter()
            .filter(|t| name.starts_with("eventarc-") && name.contains(&format!("-{}-sub-", t.name)))
            .max_by_key(|t| t.name.len())
    })
}

/// A Pub/Sub dead letter in the shape of a router event (`id`, `trigger`, `destination`, `ce_*`, `attempts`,
/// `last_status`, `reason`, `dead_lettered_at`), with what Pub/Sub adds: where it waits and came from, its
/// attributes and data. Pub/Sub keeps no status or reason, and the dead letter has its own message id; the
/// CloudEvent's identity is filled in where the message tells it.
fn pubsub_event_json(m: &HeldMessage, triggers: &Triggers, hold: &str) -> Value {
    let trigger = m.source_subscription.as_deref().and_then(|s| trigger_of(triggers, s));
    let attr = |k: &str| m.attributes.get(k).cloned();
    let (ce_id, ce_source, ce_subject) = if m.data.get("specversion").is_some() {
        // A structured CloudEvent.
        let field = |k: &str| m.data.get(k).and_then(Value::as_str).map(str::to_owned);
        (field("id"), field("source"), field("subject"))
    } else if m.attributes.contains_key("ce-id") {
        (attr("ce-id"), attr("ce-source"), attr("ce-subject"))
    } else if let (Some(bucket), Some(object)) = (attr("bucketId"), attr("objectId")) {
        // A Cloud Storage notification, as Eventarc's storage triggers receive it.
        (None, Some(format!("//storage.googleapis.com/projects/_/buckets/{bucket}")), Some(format!("objects/{object}")))
    } else if let Some(Source::Topic(topic)) = trigger.map(|t| &t.source) {
        (None, Some(format!("//pubsub.googleapis.com/projects/{}/topics/{topic}", triggers.project)), None)
    } else {
        (None, None, None)
    };
    let reason = match (&m.source_subscription, m.delivery_count) {
        (Some(s), Some(n)) => format!("Pub/Sub gave up after {n} delivery attempts on {s}"),
        (Some(s), None) => format!("Pub/Sub gave up on {s}"),
        (None, _) => format!(
            "published straight onto the dead-letter topic (no {SOURCE_SUBSCRIPTION} attribute): a replay cannot \
             tell where it belongs"
        ),
    };
    json!({
        "id": m.id,
        "trigger": trigger.map(|t| &t.name),
        "destination": trigger.map(|t| &t.destination),
        "ce_id": ce_id,
        "ce_source": ce_source,
        "ce_subject": ce_subject,
        "attempts": m.delivery_count,
        "last_status": null,
        "reason": reason,
        "dead_lettered_at": m.dead_lettered_at,
        "hold_subscription": hold,
        "source_subscription": m.source_subscription,
        "published_at": m.published_at,
        "ordering_key": m.ordering_key,
        "attributes": m.attributes,
        "data": m.data,
    })
}

/// One router event or Pub/Sub dead letter as a `list` line (the JSON shape both share).
fn print_event(e: &Value) {
    let text = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    let number = |k: &str| e[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
    let id = match &e["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "  #{:<5} {:<22} → {:<18} {}  attempts={} status={} at {}\n         {}",
        id,
        text("trigger"),
        text("destination"),
        text("ce_subject"),
        number("attempts"),
        number("last_status"),
        text("dead_lettered_at"),
        text("reason")
    );
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
            // Events belong to no tenant: a tenant's listing has none.
            let events: Vec<Value> = match &b.router {
                _ if tenant.is_some() => Vec::new(),
                Some(r) => r.dead_letters().await?.iter().map(serde_json::to_value).collect::<Result<_, _>>()?,
                None => pubsub_events(&b).await?,
            };
            let work = b.state.dead_letters(tenant.as_deref(), 100_000).await?;
            if json {
                let work: Vec<_> = work.iter().map(work_json).collect();
                println!("{}", json!({ "events": events, "work": work }));
                return Ok(());
            }
            if tenant.is_none() {
                if b.router.is_some() {
                    println!("router events ({}):", events.len());
                } else {
                    let holds: Vec<&str> = b.pubsub.iter().map(PubSubDeadLetters::subscription).collect();
                    println!("Pub/Sub dead letters in {} ({}):", holds.join(", "), events.len());
                }
                events.iter().for_each(print_event);
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
            if let Some(w) = b.state.dead_letter(&id).await? {
                let doc = work_json(&w);
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
            if b.router.is_none()
                && let Some(doc) = pubsub_events(&b).await?.into_iter().find(|e| e["id"] == id.as_str())
            {
                println!("{}", if json { doc.to_string() } else { serde_json::to_string_pretty(&doc)? });
                return Ok(());
            }
            anyhow::bail!("no dead letter {id} (see `callflow dead-letters list`)")
        }
        DeadLetterAction::Replay { ids, all, trigger, json } => {
            if ids.is_empty() && !all {
                anyhow::bail!("name dead letters with --id N (repeatable) or use --all [--trigger NAME]");
            }
            let Some(router) = b.router.as_ref() else {
                anyhow::ensure!(trigger.is_none(), "--trigger filters the embedded router's events only");
                return replay_pubsub(&b, ids, all).await;
            };
            let mut ids = ids
                .iter()
                .map(|id| id.parse::<i64>().with_context(|| format!("router dead letter ids are numbers: {id:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let waiting = router.dead_letters().await?;
            if let Some(missing) = ids.iter().find(|id| !waiting.iter().any(|e| e.id == **id)) {
                anyhow::bail!("no router dead letter {missing} (see `dead-letters list`)");
            }
            if all {
                let names: Vec<&str> = b.triggers.triggers.iter().map(|t| t.name.as_str()).collect();
                if let Some(name) = &trigger
                    && !names.contains(&name.as_str())
                {
                    anyhow::bail!("no trigger {name:?} in eventarc/triggers.toml (one of: {})", names.join(", "));
                }
                ids =
                    waiting.iter().filter(|e| trigger.as_ref().is_none_or(|t| &e.trigger == t)).map(|e| e.id).collect();
            }
            let n = if ids.is_empty() { 0 } else { router.replay(Some(ids.clone())).await? };
            if json {
                println!("{}", json!({ "replayed": n, "ids": ids }));
            } else {
                println!("replayed {n} event(s); a running host delivers them now");
            }
            Ok(())
        }
        DeadLetterAction::ReplayLeads { ids, tenant, all, json } => {
            if ids.is_empty() && tenant.is_none() && !all {
                anyhow::bail!("name dead letters with --id ID (repeatable), --tenant TENANT or --all");
            }
            let policy = on_analysis::Settings::from_env()?.policy;
            // Named letters are read one by one; a tenant's or everyone's are listed.
            let letters = if ids.is_empty() {
                b.state.dead_letters(tenant.as_deref(), 100_000).await?
            } else {
                let mut found = Vec::new();
                for id in &ids {
                    found.extend(b.state.dead_letter(id).await?);
                }
                found
            };
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

/// Republish Pub/Sub dead letters on their topics (each then acknowledged on its hold subscription), with a
/// progress bar at a terminal; fails when any could not be replayed (those wait still).
async fn replay_pubsub(b: &Backends, ids: Vec<String>, all: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!b.pubsub.is_empty(), "eventarc/triggers.toml names no dead-letter topic, so nothing is held");
    // With one hold subscription it finds the ids itself; with several, each is asked for the ids it holds.
    let plan: Vec<(&PubSubDeadLetters, Vec<String>)> = if all || b.pubsub.len() == 1 {
        b.pubsub.iter().map(|h| (h, ids.clone())).collect()
    } else {
        let mut plan = Vec::new();
        let mut found = BTreeSet::new();
        for hold in &b.pubsub {
            let held = hold.list(PUBSUB_SCAN_LIMIT).await.map_err(pubsub_error)?;
            let here: Vec<String> = ids.iter().filter(|id| held.iter().any(|m| &m.id == *id)).cloned().collect();
            found.extend(here.iter().cloned());
            if !here.is_empty() {
                plan.push((hold, here));
            }
        }
        if let Some(missing) = ids.iter().find(|id| !found.contains(*id)) {
            anyhow::bail!("no dead letter {missing} waiting (see `callflow dead-letters list`)");
        }
        plan
    };
    // On stderr, and drawn only at a terminal. The length is known once the messages are pulled.
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters done ({per_sec}, {eta} left)")
            .expect("a valid template"),
    );
    let (mut replayed, mut failed, mut truncated) = (0, 0, false);
    for (hold, ids) in plan {
        let selection = if all { Selection::All } else { Selection::Ids(&ids) };
        let base = bar.position();
        let mut progress = |o: &Outcome| {
            bar.set_length(base + o.of as u64);
            match &o.result {
                Ok(topic) => bar.suspend(|| println!("  #{} → {topic}: replayed", o.message.id)),
                Err(why) => bar.suspend(|| println!("  #{}: not replayed, waits still: {why}", o.message.id)),
            }
            bar.inc(1);
        };
        let done = hold.replay(selection, PUBSUB_SCAN_LIMIT, &mut progress).await.map_err(pubsub_error)?;
        replayed += done.replayed.len();
        failed += done.failed.len();
        truncated |= done.truncated;
    }
    bar.finish_and_clear();
    println!("replayed {replayed} dead letter(s) on their topics; Pub/Sub delivers them now");
    if truncated {
        println!("looked at the first {PUBSUB_SCAN_LIMIT} dead letters of a subscription: run it again for the rest");
    }
    anyhow::ensure!(failed == 0, "{failed} dead letter(s) could not be replayed and wait still (reasons above)");
    Ok(())
}
