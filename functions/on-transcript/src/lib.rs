//! on-transcript: validate the finalized transcript, claim it once per generation, redact it, analyse it (Gemini
//! with the rules as the fallback, or the rules alone), and commit the analysis with the call's move to
//! `analysed`, its analytics row and its `analysis-complete` message — then publish and stream them.

pub mod stage;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use callflow::adapters::gemini::{Gemini, GeminiConfig};
use callflow::adapters::pubsub::PubSubPublisher;
use callflow::domain::breaker::{Breaker, BreakerPolicy};
use callflow::domain::tenant::AnalyzerChoice;
use callflow::ports::{
    AnalyticsSink, Clock, EventPublisher, LanguageModel, ObjectStore, StateStore, SystemClock, TenantDirectory,
};
use callflow::runtime::ApiError;
use callflow::runtime::config::{Common, parse};
use callflow::runtime::embedded::Embedded;
use callflow::runtime::google::Google;

/// The trigger whose deliveries this function receives (eventarc/triggers.toml).
pub const TRIGGER: &str = "transcript-finalized";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: Common,
    pub transcripts_bucket: String,
    /// The real name of the `analysis-complete` topic.
    pub analysis_topic: String,
    /// For tenants that name none: `CALLFLOW_ANALYZER` = `rules` | `gemini`; by default the rules in the
    /// embedded environment, Gemini elsewhere.
    pub default_analyzer: AnalyzerChoice,
    /// `CALLFLOW_GEMINI_MODEL`.
    pub default_model: String,
    pub gemini: GeminiConfig,
    pub max_output_tokens: u32,
    /// List prices per million tokens, for the cost estimate (Gemini 2.5 Flash by default).
    pub usd_per_million_input: f64,
    pub usd_per_million_output: f64,
    pub breaker: BreakerPolicy,
    pub max_attempts: u32,
    pub lease: Duration,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let common = Common::from_lookup(&var)?;
        let trigger = common.trigger(TRIGGER)?;
        let (max_delivery_attempts, timeout) = (trigger.retry.max_delivery_attempts, trigger.timeout);
        let default_analyzer = match var("CALLFLOW_ANALYZER").filter(|v| !v.is_empty()).as_deref() {
            Some("rules") => AnalyzerChoice::Rules,
            Some("gemini") => AnalyzerChoice::Gemini,
            Some(other) => anyhow::bail!("CALLFLOW_ANALYZER={other:?} is not rules or gemini"),
            None if common.google.is_none() => AnalyzerChoice::Rules,
            None => AnalyzerChoice::Gemini,
        };
        let location: String =
            parse("CALLFLOW_GEMINI_LOCATION", var("CALLFLOW_GEMINI_LOCATION"), "us-central1".into())?;
        let mut gemini = GeminiConfig::regional(&common.triggers.project, &location);
        gemini.endpoint = parse("CALLFLOW_GEMINI_ENDPOINT", var("CALLFLOW_GEMINI_ENDPOINT"), gemini.endpoint)?;
        gemini.timeout =
            Duration::from_millis(parse("CALLFLOW_GEMINI_TIMEOUT_MS", var("CALLFLOW_GEMINI_TIMEOUT_MS"), 30_000)?);
        Ok(Self {
            transcripts_bucket: common.bucket("transcripts")?,
            analysis_topic: common.triggers.topics.get("analysis-complete").cloned().ok_or_else(|| {
                anyhow::anyhow!("environment {:?} binds no topic to analysis-complete", common.triggers.environment)
            })?,
            default_analyzer,
            default_model: parse("CALLFLOW_GEMINI_MODEL", var("CALLFLOW_GEMINI_MODEL"), "gemini-2.5-flash".into())?,
            gemini,
            max_output_tokens: 1024,
            usd_per_million_input: parse(
                "CALLFLOW_GEMINI_USD_PER_M_INPUT",
                var("CALLFLOW_GEMINI_USD_PER_M_INPUT"),
                0.30,
            )?,
            usd_per_million_output: parse(
                "CALLFLOW_GEMINI_USD_PER_M_OUTPUT",
                var("CALLFLOW_GEMINI_USD_PER_M_OUTPUT"),
                2.50,
            )?,
            breaker: BreakerPolicy {
                threshold: parse("CALLFLOW_GEMINI_BREAKER_FAILURES", var("CALLFLOW_GEMINI_BREAKER_FAILURES"), 5)?,
                cool_down_secs: parse("CALLFLOW_GEMINI_BREAKER_SECS", var("CALLFLOW_GEMINI_BREAKER_SECS"), 60)?,
            },
            max_attempts: parse(
                "CALLFLOW_ANALYSE_MAX_ATTEMPTS",
                var("CALLFLOW_ANALYSE_MAX_ATTEMPTS"),
                max_delivery_attempts,
            )?
            .max(1),
            lease: timeout + Duration::from_secs(60),
            common,
        })
    }
}

#[derive(Clone)]
pub struct Ports {
    pub tenants: Arc<dyn TenantDirectory>,
    pub state: Arc<dyn StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub analytics: Arc<dyn AnalyticsSink>,
    pub publisher: Arc<dyn EventPublisher>,
    /// Gemini (connected at first use).
    pub llm: Arc<dyn LanguageModel>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Clone)]
pub struct Service {
    pub ports: Ports,
    pub settings: Arc<Settings>,
    /// The LLM's circuit, per instance: after repeated failures calls go straight to the rules for a while.
    pub breaker: Arc<Mutex<Breaker>>,
}

impl Service {
    pub fn new(ports: Ports, settings: Settings) -> Self {
        Self { ports, settings: Arc::new(settings), breaker: Arc::default() }
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
                let ports = Ports {
                    tenants: g.tenants,
                    state: g.state,
                    objects: g.objects,
                    analytics: g.analytics,
                    publisher: Arc::new(PubSubPublisher::connect(&c.triggers.project).await?),
                    llm: Arc::new(Gemini::new(settings.gemini.clone())),
                    clock: Arc::new(SystemClock),
                };
                Ok(Self::new(ports, settings.clone()))
            }
        }
    }

    /// The stage over already opened embedded backends; messages go to the local router.
    pub fn with_embedded(e: &Embedded, settings: &Settings) -> Self {
        let ports = Ports {
            tenants: e.tenants.clone(),
            state: e.state.clone(),
            objects: e.objects.clone(),
            analytics: e.analytics.clone(),
            publisher: e.router.clone(),
            llm: Arc::new(Gemini::new(settings.gemini.clone())),
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

/// Eventarc delivers to `/`.
pub fn app(service: Service) -> Router {
    Router::new().route("/", post(stage::handle).fallback(method_not_allowed)).fallback(no_route).with_state(service)
}
