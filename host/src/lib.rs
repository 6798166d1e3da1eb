//! The one-process host (embedded mode): opens the embedded backends once, builds every function over them,
//! hosts each trigger destination on the local router, and serves the public webhook endpoint on one port.
//! Each function still builds and runs alone as its own binary for Cloud Run.

pub mod scheduler;
pub mod terraform;
pub mod topology;
pub mod vendors;

use std::sync::Arc;

use callflow::adapters::local_router::LocalRouter;
use callflow::ports::SystemClock;
use callflow::runtime::embedded::Embedded;

/// Every hosted function's settings, read from one environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub webhook: on_webhook::Settings,
    pub audio: on_audio_uploaded::Settings,
    pub transcript: on_transcript::Settings,
    /// on-analysis and on-crm-retry share one delivery policy (the same variables).
    pub delivery: on_analysis::Settings,
    pub cleanup: cleanup_scheduled::Settings,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            webhook: on_webhook::Settings::from_lookup(&var)?,
            audio: on_audio_uploaded::Settings::from_lookup(&var)?,
            transcript: on_transcript::Settings::from_lookup(&var)?,
            delivery: on_analysis::Settings::from_lookup(&var)?,
            cleanup: cleanup_scheduled::Settings::from_lookup(&var)?,
        })
    }
}

pub struct Host {
    pub embedded: Embedded,
    pub router: Arc<LocalRouter>,
    /// The public function: CallRail and form webhooks.
    pub webhook: on_webhook::Service,
    pub audio: on_audio_uploaded::Service,
    pub transcript: on_transcript::Service,
    /// on-analysis and on-crm-retry.
    pub delivery: callflow::runtime::lead_delivery::Delivery,
    /// Retention, erasure, stuck calls and reconciliation, woken by the router's `cleanup` schedule.
    pub cleanup: cleanup_scheduled::Service,
    /// The webhook's settings: the host serves on its port and drains with its window.
    pub settings: on_webhook::Settings,
}

/// Concurrent deliveries per function (Cloud Run's per-instance concurrency plays this part there).
pub const DELIVERY_CONCURRENCY: usize = 8;

impl Host {
    /// Publish messages and send notifications whose inline attempt failed (they wait in the outbox with
    /// backoff), and messages an operator's replay enqueued, until `stop`.
    pub async fn publish_leftovers(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (state, router) = (self.embedded.state.clone(), self.router.clone());
        let (notifiers, secrets) = (&self.delivery.ports.notifiers, self.embedded.secrets.as_ref());
        while !*stop.borrow() {
            callflow::runtime::publish_outbox::flush(state.as_ref(), router.as_ref(), &SystemClock, 100).await;
            callflow::runtime::notify_outbox::flush(state.as_ref(), notifiers, secrets, &SystemClock, 50).await;
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The host's background work, until `stop`: on-webhook's outbox (recording fetches), the router (deliveries,
    /// retries, schedules) and the leftovers of the publish and notification outboxes.
    pub fn spawn_workers(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let host = self.clone();
        vec![
            tokio::spawn(on_webhook::outbox::run(self.webhook.clone(), stop.clone())),
            tokio::spawn(self.router.clone().run(stop.clone())),
            tokio::spawn(async move { host.publish_leftovers(stop).await }),
        ]
    }

    pub async fn open(all: Settings) -> anyhow::Result<Self> {
        let settings = all.webhook;
        let embedded =
            Embedded::open(&settings.data_dir, &settings.tenants_file, settings.triggers.clone(), settings.durability)?;
        embedded.router.release_leases().await?;
        let router = embedded.router.clone();
        let webhook = on_webhook::Service::with_embedded(&embedded, &settings).await?;
        let audio = on_audio_uploaded::Service::with_embedded(&embedded, &all.audio);
        let transcript = on_transcript::Service::with_embedded(&embedded, &all.transcript);
        let delivery = callflow::runtime::lead_delivery::Delivery::with_embedded(&embedded, all.delivery.policy);
        let cleanup = cleanup_scheduled::Service::with_embedded(&embedded, &all.cleanup)?;
        let host = Self { embedded, router, webhook, audio, transcript, delivery, cleanup, settings };
        for name in Self::ROUTED {
            host.mount(name);
        }
        for t in host.router.unhosted_triggers() {
            tracing::info!(
                trigger = %t.name,
                destination = %t.destination,
                "no function for this trigger in this host yet; its events are kept until one is hosted"
            );
        }
        Ok(host)
    }

    /// The functions the router delivers to (on-webhook is the host's HTTP endpoint).
    pub const ROUTED: [&'static str; 5] =
        ["on-audio-uploaded", "on-transcript", "on-analysis", "on-crm-retry", "cleanup-scheduled"];

    /// Host the function `name` on the router (again, after `LocalRouter::unhost`); false for a name not in
    /// `ROUTED`.
    pub fn mount(&self, name: &str) -> bool {
        let (app, concurrency) = match name {
            "on-audio-uploaded" => (on_audio_uploaded::app(self.audio.clone()), DELIVERY_CONCURRENCY),
            "on-transcript" => (on_transcript::app(self.transcript.clone()), DELIVERY_CONCURRENCY),
            "on-analysis" => (on_analysis::app(self.delivery.clone()), DELIVERY_CONCURRENCY),
            "on-crm-retry" => (on_crm_retry::app(self.delivery.clone()), DELIVERY_CONCURRENCY),
            // One run at a time: a run that outlasts its slot is not overlapped by the next.
            "cleanup-scheduled" => (cleanup_scheduled::app(self.cleanup.clone()), 1),
            _ => return false,
        };
        self.router.host(name, app, concurrency);
        true
    }
}
