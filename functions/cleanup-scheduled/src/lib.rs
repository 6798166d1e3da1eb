//! cleanup-scheduled: one run, every 15 minutes (Cloud Scheduler through Pub/Sub, or its HTTP target; locally the
//! router's schedule from `eventarc/triggers.toml`), does four jobs for every tenant, each bounded in items and
//! time, resumable from a cursor kept in the state store, idempotent, and reported as a log line and a
//! `cleanup_runs` analytics row:
//!
//! 1. retention — recordings, transcripts and the caller's personal data past the tenant's days are removed;
//! 2. erasure — requests made with `callflow erasure request` (by phone or email) remove the caller's recordings,
//!    transcripts and personal data from every call of theirs, with an audit record that names what went;
//! 3. stuck calls — a call that sat in a state past its limit gets the event that should have moved it again,
//!    and after K re-drives it is dead-lettered with the reason;
//! 4. reconciliation — calls CallRail lists that no webhook delivered are ingested through the intake's own
//!    transaction (same dedupe), marked reconciled.

pub mod erasure;
pub mod reconcile;
pub mod retention;
pub mod run;
pub mod stage;
pub mod stuck;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use callflow::adapters::callrail::{DEFAULT_BASE_URL, HttpCallRail};
use callflow::domain::cleanup::ReconcileSettings;
use callflow::domain::retention::StuckPolicy;
use callflow::ports::{
    AnalyticsSink, CallRailClient, Clock, EventPublisher, ObjectStore, SecretSource, StateStore, SystemClock,
    TenantDirectory,
};
use callflow::runtime::ApiError;
use callflow::runtime::config::{Common, parse};

/// The trigger whose deliveries this function receives (eventarc/triggers.toml).
pub const TRIGGER: &str = "cleanup-scheduled";

/// Everything configurable, from the environment (see README).
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: Common,
    pub recordings_bucket: String,
    pub transcripts_bucket: String,
    /// The real name of the `crm-retry` topic (a stuck `analysed` call gets a new chain there).
    pub crm_retry_topic: String,
    /// Calls (or erasure requests) one job handles per tenant per run (`CALLFLOW_CLEANUP_MAX_ITEMS`).
    pub max_items: usize,
    /// The time one job may take per run, all tenants together (`CALLFLOW_CLEANUP_JOB_SECS`). Four of them fit in
    /// the trigger's timeout.
    pub job_time: Duration,
    pub stuck: StuckPolicy,
    /// How long a re-drive is given before the next may start (`CALLFLOW_STUCK_REDRIVE_SPACING_SECS`); by default
    /// the state's own limit.
    pub redrive_spacing: Option<Duration>,
    pub reconcile: ReconcileSettings,
    pub callrail_api: String,
    pub callrail_timeout: Duration,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let common = Common::from_lookup(&var)?;
        let get = |name: &str| var(name);
        let minutes = |name: &str, default: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(parse::<u64>(name, get(name), default)?.max(1) * 60))
        };
        let d = StuckPolicy::default();
        let stuck = StuckPolicy {
            received: minutes("CALLFLOW_STUCK_RECEIVED_MINS", d.received.as_secs() / 60)?,
            recording_stored: minutes("CALLFLOW_STUCK_RECORDING_STORED_MINS", d.recording_stored.as_secs() / 60)?,
            transcribed: minutes("CALLFLOW_STUCK_TRANSCRIBED_MINS", d.transcribed.as_secs() / 60)?,
            analysed: minutes("CALLFLOW_STUCK_ANALYSED_MINS", d.analysed.as_secs() / 60)?,
            max_redrives: parse("CALLFLOW_STUCK_MAX_REDRIVES", get("CALLFLOW_STUCK_MAX_REDRIVES"), d.max_redrives)?,
        };
        let r = ReconcileSettings::default();
        let reconcile = ReconcileSettings {
            window: Duration::from_secs(
                parse::<u64>("CALLFLOW_RECONCILE_WINDOW_HOURS", get("CALLFLOW_RECONCILE_WINDOW_HOURS"), 48)?.max(1)
                    * 3600,
            ),
            settle: minutes("CALLFLOW_RECONCILE_SETTLE_MINS", r.settle.as_secs() / 60)?,
            every: minutes("CALLFLOW_RECONCILE_EVERY_MINS", r.every.as_secs() / 60)?,
            requests_per_hour: parse(
                "CALLFLOW_RECONCILE_REQUESTS_PER_HOUR",
                get("CALLFLOW_RECONCILE_REQUESTS_PER_HOUR"),
                r.requests_per_hour,
            )?,
            per_page: r.per_page,
        };
        anyhow::ensure!(
            reconcile.requests_per_hour <= 1000,
            "CALLFLOW_RECONCILE_REQUESTS_PER_HOUR={} is more than CallRail allows a key (1,000 per hour)",
            reconcile.requests_per_hour
        );
        let job_time =
            Duration::from_secs(parse("CALLFLOW_CLEANUP_JOB_SECS", get("CALLFLOW_CLEANUP_JOB_SECS"), 180u64)?.max(1));
        let timeout = common.trigger(TRIGGER)?.timeout;
        anyhow::ensure!(
            job_time.saturating_mul(4) < timeout,
            "CALLFLOW_CLEANUP_JOB_SECS={} leaves four jobs no room in the trigger's {} s timeout",
            job_time.as_secs(),
            timeout.as_secs()
        );
        Ok(Self {
            recordings_bucket: common.bucket("recordings")?,
            transcripts_bucket: common.bucket("transcripts")?,
            crm_retry_topic: common.triggers.topics.get("crm-retry").cloned().ok_or_else(|| {
                anyhow::anyhow!("environment {:?} binds no topic to crm-retry", common.triggers.environment)
            })?,
            max_items: parse("CALLFLOW_CLEANUP_MAX_ITEMS", get("CALLFLOW_CLEANUP_MAX_ITEMS"), 500usize)?.max(1),
            job_time,
            stuck,
            redrive_spacing: get("CALLFLOW_STUCK_REDRIVE_SPACING_SECS")
                .map(|v| parse::<u64>("CALLFLOW_STUCK_REDRIVE_SPACING_SECS", Some(v), 0))
                .transpose()?
                .map(|secs| Duration::from_secs(secs.max(1))),
            reconcile,
            callrail_api: parse("CALLFLOW_CALLRAIL_API", get("CALLFLOW_CALLRAIL_API"), DEFAULT_BASE_URL.to_owned())?,
            callrail_timeout: Duration::from_millis(parse(
                "CALLFLOW_CALLRAIL_TIMEOUT_MS",
                get("CALLFLOW_CALLRAIL_TIMEOUT_MS"),
                15_000,
            )?),
            common,
        })
    }
}

/// The adapters the jobs run on.
#[derive(Clone)]
pub struct Ports {
    pub tenants: Arc<dyn TenantDirectory>,
    pub state: Arc<dyn StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub analytics: Arc<dyn AnalyticsSink>,
    pub publisher: Arc<dyn EventPublisher>,
    pub callrail: Arc<dyn CallRailClient>,
    pub secrets: Arc<dyn SecretSource>,
    pub clock: Arc<dyn Clock>,
}

/// The function's state. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub ports: Ports,
    pub settings: Arc<Settings>,
}

impl Service {
    pub fn new(ports: Ports, settings: Settings) -> Self {
        Self { ports, settings: Arc::new(settings) }
    }

    /// The backends the settings name: embedded, or Google Cloud's (emulators included).
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let common = &settings.common;
        match &common.google {
            None => {
                let e = callflow::runtime::embedded::Embedded::open(
                    &common.data_dir,
                    &common.tenants_file,
                    common.triggers.clone(),
                    common.durability,
                )?;
                Self::with_embedded(&e, settings)
            }
            Some(config) => {
                let g =
                    callflow::runtime::google::Google::connect(config, &common.triggers, &common.tenants_file).await?;
                let publisher =
                    Arc::new(callflow::adapters::pubsub::PubSubPublisher::connect(&common.triggers.project).await?);
                let ports = Ports {
                    tenants: g.tenants,
                    state: g.state,
                    objects: g.objects,
                    analytics: g.analytics,
                    publisher,
                    callrail: callrail(settings)?,
                    secrets: g.secrets,
                    clock: Arc::new(SystemClock),
                };
                Ok(Self::new(ports, settings.clone()))
            }
        }
    }

    /// Over already opened embedded backends (the host opens them once for every function).
    pub fn with_embedded(e: &callflow::runtime::embedded::Embedded, settings: &Settings) -> anyhow::Result<Self> {
        let ports = Ports {
            tenants: e.tenants.clone(),
            state: e.state.clone(),
            objects: e.objects.clone(),
            analytics: e.analytics.clone(),
            publisher: e.router.clone(),
            callrail: callrail(settings)?,
            secrets: e.secrets.clone(),
            clock: Arc::new(SystemClock),
        };
        Ok(Self::new(ports, settings.clone()))
    }
}

fn callrail(settings: &Settings) -> anyhow::Result<Arc<dyn CallRailClient>> {
    Ok(Arc::new(
        HttpCallRail::new(settings.callrail_api.clone())?
            .with_timeouts(settings.callrail_timeout, settings.callrail_timeout),
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Eventarc (a Pub/Sub message on `scheduled`) and Cloud Scheduler's HTTP target both deliver to `/`.
pub fn app(service: Service) -> Router {
    Router::new().route("/", post(stage::handle).fallback(method_not_allowed)).fallback(no_route).with_state(service)
}
