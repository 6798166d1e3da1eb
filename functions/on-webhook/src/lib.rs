//! on-webhook: verify, resolve the tenant, dedupe, record the call durably (with the work it implies), answer;
//! then, from that outbox, fetch the recording from CallRail into the recordings bucket.

pub mod intake;
pub mod outbox;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use callflow::adapters::callrail::{DEFAULT_BASE_URL, HttpCallRail};
use callflow::adapters::sqlite::Durability;
use callflow::domain::work::RetryPolicy;
use callflow::eventarc::Triggers;
use callflow::ports::{
    AnalyticsSink, CallRailClient, Clock, ObjectStore, SecretSource, StateStore, SystemClock, TenantDirectory,
};
use callflow::runtime::ApiError;
use callflow::runtime::config::{Common, parse};
use callflow::runtime::embedded::Embedded;
use callflow::runtime::google::{Google, GoogleConfig};

/// Everything configurable, read from the environment (Cloud Run style); defaults run the embedded mode.
#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub data_dir: PathBuf,
    pub tenants_file: PathBuf,
    /// Trigger definitions and the environment whose names they are bound to.
    pub triggers: Triggers,
    pub callrail_api: String,
    /// Timeout of one CallRail API call (the audio download gets longer: it streams megabytes).
    pub callrail_api_timeout: Duration,
    pub recordings_bucket: String,
    /// Where a web form's text is stored as its transcript.
    pub transcripts_bucket: String,
    pub max_body_bytes: usize,
    pub max_recording_bytes: u64,
    pub fetch_retry: RetryPolicy,
    pub fetch_concurrency: usize,
    pub form_tolerance_secs: i64,
    /// Failed signature checks allowed per source address per minute before answers turn into 429.
    pub auth_failures_per_minute: u32,
    /// Behind Cloud Run's front end the peer is Google's proxy: take the client from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
    pub drain: Duration,
    pub durability: Durability,
    /// Outside the embedded environment the Google Cloud backends (on their emulators when those are configured).
    pub google: Option<GoogleConfig>,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Settings from any source of variables (the environment in production; a map in tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let common = Common::from_lookup(&var)?;
        Ok(Self {
            recordings_bucket: common.bucket("recordings")?,
            transcripts_bucket: common.bucket("transcripts")?,
            port: common.port,
            data_dir: common.data_dir,
            tenants_file: common.tenants_file,
            triggers: common.triggers,
            callrail_api: parse("CALLFLOW_CALLRAIL_API", var("CALLFLOW_CALLRAIL_API"), DEFAULT_BASE_URL.to_owned())?,
            callrail_api_timeout: Duration::from_millis(parse(
                "CALLFLOW_CALLRAIL_TIMEOUT_MS",
                var("CALLFLOW_CALLRAIL_TIMEOUT_MS"),
                15_000,
            )?),
            max_body_bytes: 1024 * 1024,
            max_recording_bytes: parse(
                "CALLFLOW_MAX_RECORDING_BYTES",
                var("CALLFLOW_MAX_RECORDING_BYTES"),
                256 * 1024 * 1024,
            )?,
            fetch_retry: RetryPolicy {
                max_attempts: parse("CALLFLOW_FETCH_MAX_ATTEMPTS", var("CALLFLOW_FETCH_MAX_ATTEMPTS"), 8)?,
                base: Duration::from_millis(parse(
                    "CALLFLOW_FETCH_BACKOFF_MS",
                    var("CALLFLOW_FETCH_BACKOFF_MS"),
                    2_000,
                )?),
                max: Duration::from_secs(600),
            },
            fetch_concurrency: parse("CALLFLOW_FETCH_CONCURRENCY", var("CALLFLOW_FETCH_CONCURRENCY"), 8)?,
            form_tolerance_secs: 300,
            auth_failures_per_minute: parse(
                "CALLFLOW_AUTH_FAILURES_PER_MINUTE",
                var("CALLFLOW_AUTH_FAILURES_PER_MINUTE"),
                30,
            )?,
            trust_forwarded_for: parse("CALLFLOW_TRUST_FORWARDED_FOR", var("CALLFLOW_TRUST_FORWARDED_FOR"), false)?,
            drain: common.drain,
            durability: common.durability,
            google: common.google,
        })
    }
}

type KeyedLimiter<K> = governor::DefaultKeyedRateLimiter<K>;

/// The function's state: its ports and settings. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub ports: Ports,
    pub settings: Arc<Settings>,
    /// Wakes the outbox worker when a commit added work.
    pub work_added: Arc<tokio::sync::Notify>,
    auth_failures: Arc<KeyedLimiter<std::net::IpAddr>>,
    /// When `/internal/outbox/drain` last ran (ms since the epoch): it runs at most once a second.
    last_drain_ms: Arc<std::sync::atomic::AtomicU64>,
    form_limits: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<governor::DefaultDirectRateLimiter>>>>,
}

/// The adapters a Service runs on: embedded ones from `Service::embedded`, others (fakes, Google Cloud) by hand.
#[derive(Clone)]
pub struct Ports {
    pub tenants: Arc<dyn TenantDirectory>,
    pub secrets: Arc<dyn SecretSource>,
    pub state: Arc<dyn StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub analytics: Arc<dyn AnalyticsSink>,
    pub callrail: Arc<dyn CallRailClient>,
    pub clock: Arc<dyn Clock>,
}

impl Service {
    pub fn new(ports: Ports, settings: Settings) -> Self {
        let per_minute = NonZeroU32::new(settings.auth_failures_per_minute.max(1)).expect("at least 1");
        Self {
            ports,
            settings: Arc::new(settings),
            work_added: Arc::new(tokio::sync::Notify::new()),
            auth_failures: Arc::new(governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute))),
            form_limits: Arc::default(),
            last_drain_ms: Arc::default(),
        }
    }

    /// The embedded mode, standalone: opens the embedded backends itself. In this mode recordings still get their
    /// finalize events recorded (durably, in `router.sqlite`); the one-process host is what delivers them.
    /// The backends the settings name: embedded, or Google Cloud's (emulators included).
    pub async fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        match &settings.google {
            None => Self::embedded(settings).await,
            Some(config) => {
                let g = Google::connect(config, &settings.triggers, &settings.tenants_file).await?;
                let ports = Ports {
                    tenants: g.tenants,
                    secrets: g.secrets,
                    state: g.state,
                    objects: g.objects,
                    analytics: g.analytics,
                    callrail: Self::callrail(settings)?,
                    clock: Arc::new(SystemClock),
                };
                Ok(Self::new(ports, settings.clone()))
            }
        }
    }

    fn callrail(settings: &Settings) -> anyhow::Result<Arc<dyn CallRailClient>> {
        Ok(Arc::new(
            HttpCallRail::new(settings.callrail_api.clone())?
                .with_timeouts(settings.callrail_api_timeout, Duration::from_secs(300)),
        ))
    }

    pub async fn embedded(settings: &Settings) -> anyhow::Result<Self> {
        let e =
            Embedded::open(&settings.data_dir, &settings.tenants_file, settings.triggers.clone(), settings.durability)?;
        e.router.release_leases().await?;
        Self::with_embedded(&e, settings).await
    }

    /// on-webhook over already opened embedded backends (the host opens them once for every function).
    pub async fn with_embedded(e: &Embedded, settings: &Settings) -> anyhow::Result<Self> {
        let released = e.state.release_all_leases().await?;
        if released > 0 {
            tracing::info!(released, "resuming work interrupted by the previous stop");
        }
        let ports = Ports {
            tenants: e.tenants.clone(),
            secrets: e.secrets.clone(),
            state: e.state.clone(),
            objects: e.objects.clone(),
            analytics: e.analytics.clone(),
            callrail: Self::callrail(settings)?,
            clock: Arc::new(SystemClock),
        };
        Ok(Self::new(ports, settings.clone()))
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub fn app(service: Service) -> Router {
    Router::new()
        .route("/webhooks/callrail/{tenant}", post(intake::callrail).fallback(method_not_allowed))
        .route("/webhooks/forms/{tenant}", post(intake::form).fallback(method_not_allowed))
        .route("/internal/outbox/drain", post(outbox::drain_endpoint).fallback(method_not_allowed))
        .fallback(no_route)
        .with_state(service)
}
