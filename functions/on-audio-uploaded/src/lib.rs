//! on-audio-uploaded: validate the finalized recording, claim it once per generation, plan the work (cost skips,
//! CallRail's own transcript, or an engine), transcribe, write the normalized transcript to the transcripts
//! bucket and move the call to `transcribed` — with its analytics row in the same commit.

pub mod stage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use callflow::adapters::pocketsphinx::Pocketsphinx;
use callflow::adapters::speech::{LazySpeechToText, SpeechConfig};
use callflow::domain::tenant::EngineChoice;
use callflow::ports::{AnalyticsSink, Clock, ObjectStore, StateStore, SystemClock, TenantDirectory, Transcriber};
use callflow::runtime::ApiError;
use callflow::runtime::config::{Common, parse};
use callflow::runtime::embedded::Embedded;
use callflow::runtime::google::Google;

/// The trigger whose deliveries this function receives (eventarc/triggers.toml).
pub const TRIGGER: &str = "recording-finalized";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: Common,
    pub recordings_bucket: String,
    pub transcripts_bucket: String,
    pub max_recording_bytes: u64,
    /// The engine for tenants that do not choose one: `CALLFLOW_TRANSCRIBER` = `offline` | `google`; by default
    /// the offline engine in the embedded environment and Speech-to-Text elsewhere.
    pub default_engine: EngineChoice,
    pub speech: SpeechConfig,
    /// Speech-to-Text's list price per audio minute, for the cost estimate in analytics.
    pub speech_usd_per_minute: f64,
    pub pocketsphinx: PathBuf,
    pub sox: PathBuf,
    pub offline_timeout: Duration,
    /// Deliveries of one recording before a retryable failure dead-letters the call (the trigger's own budget
    /// by default, so the call is marked before Eventarc gives up on the event).
    pub max_attempts: u32,
    /// How long a claim on a recording holds: the trigger's request timeout and a margin.
    pub lease: Duration,
}

fn engine(s: &str) -> Option<EngineChoice> {
    match s {
        "offline" => Some(EngineChoice::Offline),
        "google" => Some(EngineChoice::Google),
        _ => None,
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let common = Common::from_lookup(&var)?;
        let trigger = common.trigger(TRIGGER)?;
        let (max_delivery_attempts, timeout) = (trigger.retry.max_delivery_attempts, trigger.timeout);
        let default_engine = match var("CALLFLOW_TRANSCRIBER").filter(|v| !v.is_empty()) {
            Some(v) => {
                engine(&v).ok_or_else(|| anyhow::anyhow!("CALLFLOW_TRANSCRIBER={v:?} is not offline or google"))?
            }
            None if common.google.is_none() => EngineChoice::Offline,
            None => EngineChoice::Google,
        };
        let location: String = parse("CALLFLOW_SPEECH_LOCATION", var("CALLFLOW_SPEECH_LOCATION"), "us".to_owned())?;
        let model: String = parse("CALLFLOW_SPEECH_MODEL", var("CALLFLOW_SPEECH_MODEL"), "chirp_3".to_owned())?;
        let mut speech = SpeechConfig::regional(&common.triggers.project, &location, &model);
        speech.endpoint = parse("CALLFLOW_SPEECH_ENDPOINT", var("CALLFLOW_SPEECH_ENDPOINT"), speech.endpoint)?;
        Ok(Self {
            recordings_bucket: common.bucket("recordings")?,
            transcripts_bucket: common.bucket("transcripts")?,
            max_recording_bytes: parse(
                "CALLFLOW_MAX_RECORDING_BYTES",
                var("CALLFLOW_MAX_RECORDING_BYTES"),
                256 * 1024 * 1024,
            )?,
            default_engine,
            speech,
            speech_usd_per_minute: parse(
                "CALLFLOW_SPEECH_USD_PER_MINUTE",
                var("CALLFLOW_SPEECH_USD_PER_MINUTE"),
                0.016,
            )?,
            pocketsphinx: parse(
                "CALLFLOW_POCKETSPHINX",
                var("CALLFLOW_POCKETSPHINX"),
                PathBuf::from("pocketsphinx_continuous"),
            )?,
            sox: parse("CALLFLOW_SOX", var("CALLFLOW_SOX"), PathBuf::from("sox"))?,
            // Inside the delivery's own deadline, so a slow decode fails here, not as a timed-out delivery.
            offline_timeout: Duration::from_secs(parse(
                "CALLFLOW_OFFLINE_TIMEOUT_SECS",
                var("CALLFLOW_OFFLINE_TIMEOUT_SECS"),
                timeout.as_secs().saturating_sub(30).max(30),
            )?),
            max_attempts: parse(
                "CALLFLOW_TRANSCRIBE_MAX_ATTEMPTS",
                var("CALLFLOW_TRANSCRIBE_MAX_ATTEMPTS"),
                max_delivery_attempts,
            )?
            .max(1),
            lease: timeout + Duration::from_secs(60),
            common,
        })
    }
}

/// The adapters the stage runs on.
#[derive(Clone)]
pub struct Ports {
    pub tenants: Arc<dyn TenantDirectory>,
    pub state: Arc<dyn StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub analytics: Arc<dyn AnalyticsSink>,
    /// Speech-to-Text (connected at first use).
    pub google: Arc<dyn Transcriber>,
    /// The offline engine.
    pub offline: Arc<dyn Transcriber>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Clone)]
pub struct Service {
    pub ports: Ports,
    pub settings: Arc<Settings>,
}

impl Service {
    pub fn new(ports: Ports, settings: Settings) -> Self {
        Self { ports, settings: Arc::new(settings) }
    }

    fn engines(settings: &Settings) -> (Arc<dyn Transcriber>, Arc<dyn Transcriber>) {
        let offline = Pocketsphinx::new(settings.pocketsphinx.clone(), settings.sox.clone(), settings.offline_timeout);
        (Arc::new(LazySpeechToText::new(settings.speech.clone())), Arc::new(offline))
    }

    /// The backends the settings name: embedded, or Google Cloud's (emulators included).
    pub async fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let c = &settings.common;
        match &c.google {
            None => {
                let e = Embedded::open(&c.data_dir, &c.tenants_file, c.triggers.clone(), c.durability)?;
                Ok(Self::with_embedded(&e, settings))
            }
            Some(config) => {
                let g = Google::connect(config, &c.triggers, &c.tenants_file).await?;
                let (google, offline) = Self::engines(settings);
                let ports = Ports {
                    tenants: g.tenants,
                    state: g.state,
                    objects: g.objects,
                    analytics: g.analytics,
                    google,
                    offline,
                    clock: Arc::new(SystemClock),
                };
                Ok(Self::new(ports, settings.clone()))
            }
        }
    }

    /// The stage over already opened embedded backends (the one-process host opens them once for all).
    pub fn with_embedded(e: &Embedded, settings: &Settings) -> Self {
        let (google, offline) = Self::engines(settings);
        let ports = Ports {
            tenants: e.tenants.clone(),
            state: e.state.clone(),
            objects: e.objects.clone(),
            analytics: e.analytics.clone(),
            google,
            offline,
            clock: Arc::new(SystemClock),
        };
        Self::new(ports, settings.clone())
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Eventarc delivers to `/`; the local router and the storage watcher do the same.
pub fn app(service: Service) -> Router {
    Router::new().route("/", post(stage::handle).fallback(method_not_allowed)).fallback(no_route).with_state(service)
}
