//! What on-analysis and on-crm-retry share: reading a message about a call, and one delivery attempt — the
//! tenant's workflow (spam gate, service area, minimum score), the CRM push behind the per-(tenant, CRM) circuit
//! breaker kept in the state store, and one commit of the outcome: `delivered` with the CRM record, a scheduled
//! retry (the next `crm-retry` message), or a dead letter with the vendor's message; notifications and the
//! analytics row go in the same commit and are sent after it, so they can never block or repeat a push.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::domain::analysis::Analysis;
use crate::domain::analytics::{CrmPush, StageCost, StageEvent};
use crate::domain::breaker::{Admit, BreakerPolicy};
use crate::domain::crm::{CrmDelivery, CrmProvider, CrmSettings, Lead};
use crate::domain::delivery::{self, CallMessage, CrmRetry, MESSAGE_SCHEMA_VERSION, Next, RetrySchedule};
use crate::domain::tenant::Tenant;
use crate::domain::work::{Completion, NewWork, NoticeWork, PublishMessage, RetryPolicy, Transition};
use crate::domain::workflow::{Notice, NotifyOn, Verdict};
use crate::domain::{CallId, CallRecord, CallState, TenantId};
use crate::ports::{
    AnalyticsSink, Clock, CrmConnector, EventPublisher, LeadPush, Notifier, SecretSource, StageClaim, StateStore,
    TenantDirectory, VendorError,
};
use crate::runtime::cloudevent::{EventError, IncomingEvent};
use crate::runtime::config::{Common, parse};
use crate::runtime::storage_stage::{Deps, Early, refuse};

/// One connector per CRM, shared by every tenant.
#[derive(Clone, Default)]
pub struct Connectors(HashMap<CrmProvider, Arc<dyn CrmConnector>>);

impl Connectors {
    pub fn new(list: Vec<Arc<dyn CrmConnector>>) -> Self {
        Self(list.into_iter().map(|c| (c.provider(), c)).collect())
    }

    /// The real HTTP connectors over one client.
    pub fn real(http: reqwest::Client) -> Self {
        use crate::adapters::{crm_hubspot, crm_pipedrive, crm_salesforce, crm_webhook};
        Self::new(vec![
            Arc::new(crm_hubspot::HubSpotCrm::new(http.clone())),
            Arc::new(crm_salesforce::SalesforceCrm::new(http.clone())),
            Arc::new(crm_pipedrive::PipedriveCrm::new(http.clone())),
            Arc::new(crm_webhook::WebhookCrm::new(http)),
        ])
    }

    pub fn get(&self, provider: CrmProvider) -> Option<&Arc<dyn CrmConnector>> {
        self.0.get(&provider)
    }
}

/// Slack and email senders.
#[derive(Clone)]
pub struct Notifiers {
    pub slack: Arc<dyn Notifier>,
    pub email: Arc<dyn Notifier>,
}

impl Notifiers {
    pub fn real(http: reqwest::Client, sendgrid_url: &str) -> Self {
        use crate::adapters::{notify_sendgrid::SendGridNotifier, notify_slack::SlackNotifier};
        Self {
            slack: Arc::new(SlackNotifier::new(http.clone())),
            email: Arc::new(SendGridNotifier::new(http, sendgrid_url)),
        }
    }
}

/// What on-analysis and on-crm-retry read from the environment (the same variables for both).
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: Common,
    pub policy: Policy,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let common = Common::from_lookup(&var)?;
        let policy = Policy::from_lookup(&common, &var)?;
        Ok(Self { common, policy })
    }
}

/// How deliveries are retried and guarded (the same for both functions).
#[derive(Debug, Clone)]
pub struct Policy {
    pub schedule: RetrySchedule,
    pub breaker: BreakerPolicy,
    /// The real name of the `crm-retry` topic.
    pub retry_topic: String,
    /// How long a delivery holds its claim (a crashed holder's claim is taken over after this).
    pub lease: Duration,
    /// `CALLFLOW_SENDGRID_URL`.
    pub sendgrid_url: String,
    /// The longest a lead held back by an open circuit waits before it comes again (`CALLFLOW_CRM_DEFER_MAX_SECS`):
    /// after a CRM recovers, held leads are delivered within about this long.
    pub defer_max: Duration,
}

impl Policy {
    pub fn from_lookup(common: &Common, var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |name: &str| var(name);
        let max_attempts: u32 = parse("CALLFLOW_CRM_MAX_ATTEMPTS", get("CALLFLOW_CRM_MAX_ATTEMPTS"), 8)?;
        let base: u64 = parse("CALLFLOW_CRM_BACKOFF_SECS", get("CALLFLOW_CRM_BACKOFF_SECS"), 30)?;
        let max: u64 = parse("CALLFLOW_CRM_BACKOFF_MAX_SECS", get("CALLFLOW_CRM_BACKOFF_MAX_SECS"), 3600)?;
        let age: u64 = parse("CALLFLOW_CRM_MAX_AGE_HOURS", get("CALLFLOW_CRM_MAX_AGE_HOURS"), 24)?;
        let policy = RetryPolicy {
            max_attempts: max_attempts.max(1),
            base: Duration::from_secs(base.max(1)),
            max: Duration::from_secs(max.max(base.max(1))),
        };
        let trigger = common.trigger("crm-retry")?;
        let timeout = trigger.timeout;
        // An early retry is answered 503 and comes again with the subscription's backoff; every such answer uses
        // one of its delivery attempts. The longest wait must fit in them, with room to spare, or Pub/Sub would
        // dead-letter a message that was only waiting.
        let r = &trigger.retry;
        let patience: Duration = (0..r.max_delivery_attempts.saturating_sub(1))
            .map(|i| r.min_backoff.saturating_mul(1u32 << i.min(20)).min(r.max_backoff))
            .sum();
        anyhow::ensure!(
            policy.max.saturating_mul(2) <= patience,
            "CALLFLOW_CRM_BACKOFF_MAX_SECS={} is more than half of what the crm-retry subscription waits in all \
             ({} s over {} deliveries); lower it or raise the trigger's retry budget in eventarc/triggers.toml",
            policy.max.as_secs(),
            patience.as_secs(),
            r.max_delivery_attempts
        );
        Ok(Self {
            schedule: RetrySchedule { policy, max_age: Duration::from_secs(age.max(1) * 3600) },
            breaker: BreakerPolicy {
                threshold: parse("CALLFLOW_CRM_BREAKER_FAILURES", get("CALLFLOW_CRM_BREAKER_FAILURES"), 5)?,
                cool_down_secs: parse("CALLFLOW_CRM_BREAKER_SECS", get("CALLFLOW_CRM_BREAKER_SECS"), 60)?,
            },
            retry_topic: common.triggers.topics.get("crm-retry").cloned().ok_or_else(|| {
                anyhow::anyhow!("environment {:?} binds no topic to crm-retry", common.triggers.environment)
            })?,
            lease: timeout + Duration::from_secs(60),
            defer_max: Duration::from_secs(parse(
                "CALLFLOW_CRM_DEFER_MAX_SECS",
                get("CALLFLOW_CRM_DEFER_MAX_SECS"),
                300,
            )?),
            sendgrid_url: parse(
                "CALLFLOW_SENDGRID_URL",
                get("CALLFLOW_SENDGRID_URL"),
                "https://api.sendgrid.com".to_owned(),
            )?,
        })
    }
}

#[derive(Clone)]
pub struct Ports {
    pub tenants: Arc<dyn TenantDirectory>,
    pub state: Arc<dyn StateStore>,
    pub analytics: Arc<dyn AnalyticsSink>,
    pub publisher: Arc<dyn EventPublisher>,
    pub secrets: Arc<dyn SecretSource>,
    pub connectors: Connectors,
    pub notifiers: Notifiers,
    pub clock: Arc<dyn Clock>,
}

/// The delivery service both functions are built on.
#[derive(Clone)]
pub struct Delivery {
    pub ports: Ports,
    pub policy: Arc<Policy>,
}

impl Delivery {
    /// The backends `common` names: embedded, or Google Cloud's (emulators included).
    pub async fn connect(common: &Common, policy: Policy) -> anyhow::Result<Self> {
        match &common.google {
            None => {
                let e = crate::runtime::embedded::Embedded::open(
                    &common.data_dir,
                    &common.tenants_file,
                    common.triggers.clone(),
                    common.durability,
                )?;
                Ok(Self::with_embedded(&e, policy))
            }
            Some(config) => {
                let g = crate::runtime::google::Google::connect(config, &common.triggers, &common.tenants_file).await?;
                let publisher =
                    Arc::new(crate::adapters::pubsub::PubSubPublisher::connect(&common.triggers.project).await?);
                let http = crate::adapters::http::client();
                let ports = Ports {
                    tenants: g.tenants,
                    state: g.state,
                    analytics: g.analytics,
                    publisher,
                    secrets: g.secrets,
                    connectors: Connectors::real(http.clone()),
                    notifiers: Notifiers::real(http, &policy.sendgrid_url),
                    clock: Arc::new(crate::ports::SystemClock),
                };
                Ok(Self { ports, policy: Arc::new(policy) })
            }
        }
    }

    pub fn with_embedded(e: &crate::runtime::embedded::Embedded, policy: Policy) -> Self {
        let http = crate::adapters::http::client();
        let ports = Ports {
            tenants: e.tenants.clone(),
            state: e.state.clone(),
            analytics: e.analytics.clone(),
            publisher: e.router.clone(),
            secrets: e.secrets.clone(),
            connectors: Connectors::real(http.clone()),
            notifiers: Notifiers::real(http, &policy.sendgrid_url),
            clock: Arc::new(crate::ports::SystemClock),
        };
        Self { ports, policy: Arc::new(policy) }
    }

    /// After a commit: publish the retry message, send the notifications, stream the row (Cloud Run gives CPU
    /// during requests only). Whatever fails waits in the outbox for the next flush.
    pub async fn flush(&self) {
        let p = &self.ports;
        crate::runtime::publish_outbox::flush(p.state.as_ref(), p.publisher.as_ref(), p.clock.as_ref(), 100).await;
        crate::runtime::notify_outbox::flush(p.state.as_ref(), &p.notifiers, p.secrets.as_ref(), p.clock.as_ref(), 50)
            .await;
        crate::runtime::analytics_outbox::flush(p.state.as_ref(), p.analytics.as_ref(), p.clock.as_ref()).await;
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        provider: CrmProvider,
        record_id: String,
        created: bool,
    },
    /// Accepted with no CRM configured (notifications only).
    NoCrm,
    Spam {
        reason: String,
    },
    Skipped {
        reason: String,
    },
    /// The push failed and the next `crm-retry` is scheduled.
    RetryScheduled {
        attempts: u32,
        not_before: DateTime<Utc>,
        error: String,
    },
    /// The circuit is open: not pushed, rescheduled for when it may close.
    Deferred {
        until: DateTime<Utc>,
    },
    /// A retry that came before its time: answered 503 so it comes again with the subscription's backoff.
    NotYet {
        until: DateTime<Utc>,
    },
    DeadLettered {
        reason: String,
    },
    Early(Early),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::NoCrm => "no_crm",
            Self::Spam { .. } => "spam",
            Self::Skipped { .. } => "skipped",
            Self::RetryScheduled { .. } => "retry_scheduled",
            Self::Deferred { .. } => "deferred",
            Self::NotYet { .. } => "not_yet",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Early(e) => e.name(),
        }
    }

    /// Whether the delivery committed something to send (a message, notifications, a row).
    pub fn committed(&self) -> bool {
        !matches!(self, Self::Early(_) | Self::NotYet { .. })
    }

    /// The HTTP answer: 200 when the delivery is done with (whatever its outcome), 503 when it must come again.
    pub fn respond(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        match self {
            Self::Early(early) => crate::runtime::storage_stage::respond(early),
            Self::NotYet { until } => {
                let wait = (*until - Utc::now()).num_seconds().max(1) as u64;
                let mut e = crate::runtime::ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "not_yet",
                    "this retry is not due yet; redeliver later",
                );
                e.retry_after_secs = Some(wait);
                e.into_response()
            }
            done => crate::runtime::storage_stage::acknowledge(done.name()),
        }
    }
}

/// A message about a call, read and checked: the tenant and the call it names exist.
pub struct Admitted<M> {
    pub message: M,
    pub tenant: Arc<Tenant>,
    pub call: CallRecord,
}

/// Read a Pub/Sub-delivered message about a call. Poison (not an event, wrong type, undecodable data, unknown
/// tenant or call) is kept as a dead letter under `event:{stage}` and acknowledged.
pub async fn admit<M: DeserializeOwned + CallMessage>(
    deps: &Deps<'_>,
    stage: &'static str,
    event: Result<IncomingEvent, EventError>,
) -> Result<Admitted<M>, Early> {
    let none = || (String::new(), String::new());
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            let key = format!("unreadable@{}", deps.clock.now().timestamp_nanos_opt().unwrap_or_default());
            return Err(refuse(deps, stage, none(), key, json!({}), e.to_string()).await);
        }
    };
    let kept = |data: serde_json::Value| json!({"id": event.id, "source": event.source, "type": event.ty, "subject": event.subject, "data": data});
    let raw = || serde_json::Value::String(String::from_utf8_lossy(&event.data).into_owned());
    let data = match event.pubsub_message().and_then(|m| m.message.decoded_data()) {
        Ok(d) => d,
        Err(e) => return Err(refuse(deps, stage, none(), event.dedupe_key(), kept(raw()), e.to_string()).await),
    };
    let message: M = match serde_json::from_slice::<M>(&data) {
        Ok(m) if m.schema_version() <= MESSAGE_SCHEMA_VERSION => m,
        Ok(m) => {
            let reason = format!("schema_version {} is newer than this function reads", m.schema_version());
            let body = serde_json::from_slice(&data).unwrap_or_default();
            return Err(refuse(deps, stage, none(), event.dedupe_key(), kept(body), reason).await);
        }
        Err(e) => {
            let text = serde_json::Value::String(String::from_utf8_lossy(&data).into_owned());
            let reason = format!("not an {}: {e}", M::NAME);
            return Err(refuse(deps, stage, none(), event.dedupe_key(), kept(text), reason).await);
        }
    };
    let claimed = (message.tenant_id().to_owned(), message.call_id().to_owned());
    let body = serde_json::from_slice(&data).unwrap_or_default();
    let (Ok(tenant_id), Ok(call_id)) = (TenantId::parse(message.tenant_id()), CallId::parse(message.call_id())) else {
        return Err(
            refuse(deps, stage, claimed, event.dedupe_key(), kept(body), "malformed tenant or call id".into()).await
        );
    };
    let tenant = match deps.tenants.tenant(&tenant_id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(refuse(deps, stage, claimed, event.dedupe_key(), kept(body), "unknown tenant".into()).await);
        }
        Err(e) => return Err(Early::Retry { error: format!("tenant directory: {e}") }),
    };
    let call = match deps.state.call(&tenant_id, &call_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(refuse(deps, stage, claimed, event.dedupe_key(), kept(body), "no such call".into()).await);
        }
        Err(e) => return Err(Early::Retry { error: format!("state store: {e}") }),
    };
    Ok(Admitted { message, tenant, call })
}

/// Where a call must be for a delivery: `analysed`. Past it (delivered, spam, skipped, dead-lettered): a late or
/// duplicate message, acknowledged with no effect.
pub fn ready(call: &CallRecord) -> Result<(), Early> {
    match call.state {
        CallState::Analysed => Ok(()),
        s if s.is_terminal() => Err(Early::NotNeeded { why: format!("the call is already {s}") }),
        // The message is published after the analysis commits, so this is a replay against a call that moved
        // on; a redelivery later will not change that.
        s => Err(Early::NotNeeded { why: format!("the call is {s}, not analysed") }),
    }
}

/// One delivery attempt, holding `claim` (step `seq` of `chain`).
pub struct Attempt<'a> {
    stage: &'static str,
    tenant: &'a Tenant,
    call: &'a CallRecord,
    claim: StageClaim,
    chain: String,
    seq: u32,
    /// Failed pushes before this one.
    failed_before: u32,
    first_failed_at: Option<DateTime<Utc>>,
    started: Instant,
    /// A circuit transition this attempt caused: committed as an analytics row with its outcome.
    breaker_transition: Option<&'static str>,
    /// The push's own time in milliseconds, once the CRM was called: a `crm_deliveries` row goes with the outcome.
    pushed_ms: Option<f64>,
}

impl<'a> Attempt<'a> {
    /// on-analysis's push: the first step of the call's chain (`crm:a:0`).
    pub fn first(
        stage: &'static str,
        tenant: &'a Tenant,
        call: &'a CallRecord,
        claim: StageClaim,
        started: Instant,
    ) -> Self {
        Self {
            stage,
            tenant,
            call,
            claim,
            chain: "a".into(),
            seq: 0,
            failed_before: 0,
            first_failed_at: None,
            started,
            breaker_transition: None,
            pushed_ms: None,
        }
    }

    /// The step a `crm-retry` message stands for.
    pub fn retry(
        stage: &'static str,
        tenant: &'a Tenant,
        call: &'a CallRecord,
        claim: StageClaim,
        message: &CrmRetry,
        started: Instant,
    ) -> Self {
        Self {
            stage,
            tenant,
            call,
            claim,
            chain: message.chain.clone(),
            seq: message.seq,
            failed_before: message.attempts,
            first_failed_at: Some(message.first_failed_at),
            started,
            breaker_transition: None,
            pushed_ms: None,
        }
    }
}

pub async fn deliver(service: &Delivery, mut a: Attempt<'_>) -> Outcome {
    let p = &service.ports;
    let analysis = match p.state.analysis(&a.call.tenant_id, &a.call.call_id).await {
        Ok(Some(analysis)) => analysis,
        Ok(None) => return dead_letter(service, &a, None, "the call has no stored analysis".into()).await,
        Err(e) => return release(service, &a, format!("reading the analysis: {e}")).await,
    };
    let findings = &analysis.findings;
    let zip = findings.caller.zip.as_deref().or(a.call.lead.customer_zip.as_deref());
    match a.tenant.workflow.decide(findings, zip) {
        Verdict::Spam { reason } => {
            let outcome = Outcome::Spam { reason: reason.clone() };
            finish(service, &a, CallState::Spam, Some(reason), Completion::default(), outcome).await
        }
        Verdict::Skip { reason } => {
            let outcome = Outcome::Skipped { reason: reason.clone() };
            finish(service, &a, CallState::Skipped, Some(reason), Completion::default(), outcome).await
        }
        Verdict::Push { review, tags } => {
            let lead = Lead::new(a.call, &analysis, review, tags);
            match &a.tenant.crm {
                Some(crm) => push(service, &mut a, &analysis, crm, lead).await,
                None => {
                    let notices = lead_notices(a.tenant, &analysis, &lead, None);
                    let completion = Completion { follow_up: notices, ..Completion::default() };
                    let why = Some("no CRM configured".to_owned());
                    finish(service, &a, CallState::Skipped, why, completion, Outcome::NoCrm).await
                }
            }
        }
    }
}

async fn push(service: &Delivery, a: &mut Attempt<'_>, analysis: &Analysis, crm: &CrmSettings, lead: Lead) -> Outcome {
    let (p, policy) = (&service.ports, &service.policy);
    let provider = crm.provider;
    let breaker = format!("crm:{provider}");
    let now = p.clock.now();
    match p.state.breaker_admit(&a.call.tenant_id, &breaker, now, &policy.breaker).await {
        Ok(Admit::Reject) => return defer(service, a, &breaker, &lead).await,
        Ok(admit) => {
            if admit == Admit::Probe {
                tracing::info!(breaker = %breaker, "circuit half-open: this push is the probe");
            }
        }
        Err(e) => return release(service, a, format!("reading the circuit breaker: {e}")).await,
    }
    let credential = match p.secrets.secret(&crm.credential).await {
        Ok(c) => c,
        Err(e) if e.retryable => {
            return failed(service, a, &lead, VendorError::Transport(format!("secret: {e}"))).await;
        }
        Err(e) => return dead_letter(service, a, Some(&lead), format!("the {provider} credential: {e}")).await,
    };
    let Some(connector) = p.connectors.get(provider) else {
        return dead_letter(service, a, Some(&lead), format!("no connector for {provider}")).await;
    };
    let push = LeadPush {
        tenant_id: a.call.tenant_id.clone(),
        call_id: a.call.call_id.clone(),
        idempotency_key: lead.lead_key.clone(),
        properties: lead.properties(crm),
        document: lead.document(a.call.tenant_id.as_str()),
        lead,
    };
    // A connector makes a few requests at most, each under crm.timeout_ms; this bounds them together.
    let limit = Duration::from_millis(crm.timeout_ms.saturating_mul(4));
    let push_started = Instant::now();
    let pushed = match tokio::time::timeout(limit, connector.push(crm, &push, &credential)).await {
        Ok(result) => result,
        Err(_) => Err(VendorError::Timeout),
    };
    a.pushed_ms = Some(push_started.elapsed().as_secs_f64() * 1e3);
    // A permanent refusal (validation, auth) is about this lead or this tenant's setup: the CRM answered, so it
    // is up. Only failures a retry could cure count against the circuit.
    let healthy = pushed.as_ref().map_or_else(|e| !e.is_retryable(), |_| true);
    match p.state.breaker_record(&a.call.tenant_id, &breaker, healthy, p.clock.now(), &policy.breaker).await {
        Ok(Some(transition)) => {
            tracing::warn!(breaker = %breaker, transition, metric = "crm_breaker_transition", "circuit {transition}");
            a.breaker_transition = Some(transition);
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "recording the circuit breaker failed"),
    }
    let LeadPush { lead, .. } = push;
    match pushed {
        Ok(record) => {
            let delivery = CrmDelivery {
                provider: provider.as_str().into(),
                record_id: record.id.clone(),
                created: record.created,
                attempts: a.failed_before.saturating_add(1),
                review: lead.review,
                delivered_at: p.clock.now(),
            };
            let notices = lead_notices(a.tenant, analysis, &lead, Some((provider.as_str(), &record.id)));
            let completion = Completion { follow_up: notices, delivery: Some(delivery), ..Completion::default() };
            let outcome = Outcome::Delivered { provider, record_id: record.id, created: record.created };
            finish(service, a, CallState::Delivered, None, completion, outcome).await
        }
        Err(e) if e.is_retryable() => failed(service, a, &lead, e).await,
        Err(e) => dead_letter(service, a, Some(&lead), format!("{provider} refused the lead: {e}")).await,
    }
}

/// A retryable failure: schedule the next push, or give up.
async fn failed(service: &Delivery, a: &Attempt<'_>, lead: &Lead, error: VendorError) -> Outcome {
    let now = service.ports.clock.now();
    // Saturating: the count comes from a message, which may say anything.
    let attempts = a.failed_before.saturating_add(1);
    let first = a.first_failed_at.unwrap_or(now);
    match service.policy.schedule.after_failure(attempts, first, now, rand::random::<f64>(), error.retry_after()) {
        Next::RetryAt(at) => {
            let message = next_message(&service.policy.retry_topic, a, attempts, at, first, error.to_string());
            let outcome = Outcome::RetryScheduled { attempts, not_before: at, error: error.to_string() };
            let completion = Completion { follow_up: vec![message], ..Completion::default() };
            commit(service, a, None, completion, outcome, Some(&error.to_string())).await
        }
        Next::GiveUp(why) => dead_letter(service, a, Some(lead), format!("{error} ({why})")).await,
    }
}

/// The circuit is open: reschedule for when it may let a probe through, without calling the vendor.
async fn defer(service: &Delivery, a: &Attempt<'_>, breaker: &str, lead: &Lead) -> Outcome {
    let (p, policy) = (&service.ports, &service.policy);
    let now = p.clock.now();
    let state = match p.state.breaker(&a.call.tenant_id, breaker).await {
        Ok(s) => s,
        Err(e) => return release(service, a, format!("reading the circuit breaker: {e}")).await,
    };
    let first = a.first_failed_at.unwrap_or(now);
    if now - first >= chrono::Duration::from_std(policy.schedule.max_age).unwrap_or_default() {
        let reason = format!("the {breaker} circuit stayed open past the maximum age");
        return dead_letter(service, a, Some(lead), reason).await;
    }
    let reopen = [state.open_until, state.probe_until].into_iter().flatten().max().unwrap_or(now);
    let cool_down = Duration::from_secs(policy.breaker.cool_down_secs.max(1).unsigned_abs());
    let deferrals = a.seq.saturating_sub(a.failed_before);
    let until = delivery::deferred_until(reopen, now, deferrals, cool_down, policy.defer_max, rand::random::<f64>());
    let message = next_message(&policy.retry_topic, a, a.failed_before, until, first, "circuit open".into());
    let completion = Completion { follow_up: vec![message], ..Completion::default() };
    commit(service, a, None, completion, Outcome::Deferred { until }, Some("circuit open")).await
}

fn next_message(
    topic: &str,
    a: &Attempt<'_>,
    attempts: u32,
    at: DateTime<Utc>,
    first: DateTime<Utc>,
    error: String,
) -> NewWork {
    let retry = CrmRetry {
        schema_version: MESSAGE_SCHEMA_VERSION,
        tenant_id: a.call.tenant_id.to_string(),
        call_id: a.call.call_id.to_string(),
        chain: a.chain.clone(),
        seq: a.seq + 1,
        attempts,
        not_before: at,
        first_failed_at: first,
        last_error: error,
    };
    PublishMessage {
        topic: topic.to_owned(),
        data: serde_json::to_value(&retry).expect("messages serialize"),
        attributes: BTreeMap::from([
            ("tenant_id".to_owned(), retry.tenant_id.clone()),
            ("call_id".to_owned(), retry.call_id),
            ("not_before".to_owned(), at.to_rfc3339()),
        ]),
    }
    .work()
}

fn lead_notices(tenant: &Tenant, analysis: &Analysis, lead: &Lead, crm: Option<(&str, &str)>) -> Vec<NewWork> {
    let mut out = vec![];
    for rule in tenant.workflow.notifications.iter().filter(|r| r.matches_lead(&analysis.findings, lead.review)) {
        let notice = delivery::lead_notice(&tenant.name, lead, crm);
        out.extend(notices(&rule.name, rule.addresses(), notice));
    }
    out
}

fn notices(rule: &str, addresses: Vec<crate::domain::workflow::NoticeAddress>, notice: Notice) -> Vec<NewWork> {
    addresses
        .into_iter()
        .map(|address| NoticeWork { rule: rule.into(), address, notice: notice.clone() }.work())
        .collect()
}

async fn dead_letter(service: &Delivery, a: &Attempt<'_>, lead: Option<&Lead>, reason: String) -> Outcome {
    let mut follow_up = vec![];
    if let (Some(lead), Some(crm)) = (lead, &a.tenant.crm) {
        for rule in a.tenant.workflow.notifications.iter().filter(|r| r.on == NotifyOn::CrmFailed) {
            let notice = delivery::crm_failed_notice(&a.tenant.name, crm.provider.as_str(), lead, &reason);
            follow_up.extend(notices(&rule.name, rule.addresses(), notice));
        }
    }
    let completion = Completion { follow_up, dead_letter: Some(reason.clone()), ..Completion::default() };
    let outcome = Outcome::DeadLettered { reason: reason.clone() };
    finish(service, a, CallState::DeadLettered, Some(reason), completion, outcome).await
}

async fn finish(
    service: &Delivery,
    a: &Attempt<'_>,
    to: CallState,
    reason: Option<String>,
    mut completion: Completion,
    outcome: Outcome,
) -> Outcome {
    completion.transition = Some(Transition { to, reason: reason.clone(), recording_object: None });
    commit(service, a, Some(to), completion, outcome, reason.as_deref()).await
}

/// Commit the claim as done with `completion` plus the analytics row.
async fn commit(
    service: &Delivery,
    a: &Attempt<'_>,
    to: Option<CallState>,
    mut completion: Completion,
    outcome: Outcome,
    reason: Option<&str>,
) -> Outcome {
    let now = service.ports.clock.now();
    let mut after = a.call.clone();
    if let Some(to) = to {
        after.state = to;
    }
    let provider = a.tenant.crm.as_ref().map(|c| c.provider.as_str());
    let row = StageEvent {
        call: &after,
        stage: a.stage,
        outcome: outcome.name(),
        event_kind: Some(if a.seq == 0 { "analysis_complete" } else { "crm_retry" }),
        at: now,
        stage_duration_ms: Some(a.started.elapsed().as_secs_f64() * 1e3),
        attempts: Some(a.failed_before.saturating_add(u32::from(matches!(outcome, Outcome::Delivered { .. })))),
        bytes: None,
        cost_usd: None,
        reason,
        engine: provider,
        audio_secs: None,
    }
    .into_row(&a.claim.key);
    completion.follow_up.push(row.work());
    if let (Some(latency_ms), Some(provider)) = (a.pushed_ms, provider) {
        let created = match &outcome {
            Outcome::Delivered { created, .. } => Some(*created),
            _ => None,
        };
        let push = CrmPush {
            call: &after,
            stage: a.stage,
            provider,
            outcome: outcome.name(),
            attempt: a.failed_before.saturating_add(1),
            created,
            latency_ms,
            at: now,
        };
        completion.follow_up.push(push.into_row(&a.claim.key).work());
        // CRM APIs are not billed per request, but their quotas are: counted, at no cost.
        let cost = StageCost {
            call: &after,
            stage: a.stage,
            engine: Some(provider),
            audio_secs: None,
            prompt_tokens: None,
            output_tokens: None,
            api_calls: 1,
            usd: 0.0,
            at: now,
        };
        completion.follow_up.push(cost.into_row(&a.claim.key).work());
    }
    if let Some(transition) = a.breaker_transition {
        // Counted in analytics: one row per transition, on the call whose push caused it.
        let breaker = format!("crm:{}", provider.unwrap_or("none"));
        let row = StageEvent {
            call: &after,
            stage: "crm-breaker",
            outcome: transition,
            event_kind: None,
            at: now,
            stage_duration_ms: None,
            attempts: None,
            bytes: None,
            cost_usd: None,
            reason: Some(&breaker),
            engine: provider,
            audio_secs: None,
        }
        .into_row(&format!("{}:breaker", a.claim.key));
        completion.follow_up.push(row.work());
    }
    match service.ports.state.finish_stage(&a.claim, completion).await {
        Ok(true) => outcome,
        Ok(false) => Outcome::Early(Early::Busy { until: now }),
        Err(e) => release(service, a, format!("committing: {e}")).await,
    }
}

async fn release(service: &Delivery, a: &Attempt<'_>, error: String) -> Outcome {
    let _ = service.ports.state.release_stage(&a.claim, &error).await;
    Outcome::Early(Early::Retry { error })
}

/// One line per delivery, at the level its outcome deserves.
pub fn log(outcome: &Outcome, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match outcome {
        Outcome::Delivered { provider, record_id, created } => {
            tracing::info!(provider = %provider, record_id = %record_id, created, stage_ms = ms, "lead delivered")
        }
        Outcome::RetryScheduled { attempts, not_before, error } => {
            tracing::warn!(attempts, not_before = %not_before, error = %error, "push failed; retry scheduled")
        }
        Outcome::Deferred { until } => tracing::warn!(until = %until, "circuit open; push deferred"),
        Outcome::DeadLettered { reason } => tracing::error!(reason = %reason, "lead dead-lettered"),
        Outcome::Spam { reason } | Outcome::Skipped { reason } => {
            tracing::info!(outcome = outcome.name(), reason = %reason, "lead not pushed")
        }
        other => tracing::info!(outcome = other.name(), "no delivery"),
    }
}

/// Replay a CRM dead letter (`kind` = `crm`) once its tenant has fixed their CRM: the call goes back to
/// `analysed` and a new `crm-retry` chain starts now, in one transaction. `false` when it was already replayed.
pub async fn replay(
    state: &dyn StateStore,
    policy: &Policy,
    letter: &crate::ports::DeadLetter,
    now: DateTime<Utc>,
) -> crate::ports::PortResult<bool> {
    if letter.kind != "crm" {
        return Err(crate::ports::PortError::permanent(format!(
            "dead letter {} is a {} dead letter; only crm ones replay here",
            letter.id, letter.kind
        )));
    }
    let retry = CrmRetry::replay(&letter.tenant_id, &letter.call_id, &letter.id, now);
    let message = PublishMessage {
        topic: policy.retry_topic.clone(),
        data: serde_json::to_value(&retry).expect("messages serialize"),
        attributes: BTreeMap::from([
            ("tenant_id".to_owned(), retry.tenant_id.clone()),
            ("call_id".to_owned(), retry.call_id.clone()),
        ]),
    };
    state.replay_dead_letter(&letter.id, Some(CallState::Analysed), vec![message.work()]).await
}
