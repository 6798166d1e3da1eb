//! Ports: the operations the functions need from the outside world, named after what the domain does.
//! Functions hold them as `Arc<dyn …>`; adapters (embedded and Google Cloud) implement them.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;

use crate::domain::analytics::AnalyticsRow;
use crate::domain::intake::{IntakeEvent, IntakeOutcome};
use crate::domain::tenant::{SecretRef, Tenant};
use crate::domain::work::{Completion, WorkItem, WorkKind};
use crate::domain::{CallId, CallRecord, TenantId};

/// A failure of an adapter. `retryable` is decided once, here at the boundary, and drives the answer a function
/// gives (5xx: redeliver; 2xx + dead letter: do not).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub message: String,
    pub retryable: bool,
}

impl PortError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// What the store did with an intake event, and the call as it now stands.
#[derive(Debug, Clone)]
pub struct IntakeResult {
    pub outcome: IntakeOutcome,
    pub call: CallRecord,
}

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Record a verified webhook: dedupe ledger, call row and the work it implies (recording fetch, analytics
    /// row), all in one transaction that is durable when this returns. Concurrent deliveries of one event
    /// produce one `Created` and the rest `Duplicate`.
    async fn record_intake(&self, event: IntakeEvent) -> PortResult<IntakeResult>;

    async fn call(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<CallRecord>>;

    /// Claim up to `limit` due work items of the given kinds for `lease`. A claim that is neither completed
    /// nor retried before the lease ends is claimed again (the holder crashed).
    async fn claim_work(&self, kinds: &[WorkKind], limit: usize, lease: Duration) -> PortResult<Vec<WorkItem>>;

    /// Finish a claimed item and apply its effect in one transaction: a conditional state transition (refused
    /// when it would move the call backwards) and follow-up work. False when the lease was lost.
    async fn complete_work(&self, item: &WorkItem, completion: Completion) -> PortResult<bool>;

    /// Finish many claimed items that have no effect beyond being done (delivered analytics rows), in one
    /// write. Returns how many were still held by their lease.
    async fn complete_batch(&self, items: &[WorkItem]) -> PortResult<usize>;

    /// Give a claimed item back to run again at `not_before`, recording the error.
    async fn retry_work(&self, item: &WorkItem, not_before: DateTime<Utc>, error: &str) -> PortResult<()>;

    /// The earliest time any work of these kinds becomes due (None: no work), so workers sleep exactly as long.
    async fn next_due(&self, kinds: &[WorkKind]) -> PortResult<Option<DateTime<Utc>>>;

    /// Claim one unit of an event-driven stage's work on a call, once per `key` (e.g. `transcribe:{generation}`):
    /// `Claimed` to the first asker (or to the next one after a lease ran out or was released), `Busy` while
    /// another holds it, `Done` once finished. This is what makes a redelivered event cost nothing twice.
    async fn claim_stage(&self, tenant: &TenantId, call: &CallId, key: &str, lease: Duration) -> PortResult<Claim>;

    /// Finish a claimed unit: mark it done and apply `completion` (transition, follow-up work, dead letter) in the
    /// same transaction. `false` (nothing changed) when the claim's lease was lost to another holder.
    async fn finish_stage(&self, claim: &StageClaim, completion: Completion) -> PortResult<bool>;

    /// Give a claim back after a failure, so the next delivery may claim it at once.
    async fn release_stage(&self, claim: &StageClaim, error: &str) -> PortResult<()>;

    /// Keep an event a stage refused for good (a poison event: no such call, a malformed object, a foreign
    /// tenant prefix) as a dead letter with its reason. Recording the same event again (a redelivery) adds
    /// nothing: `false` then.
    async fn dead_letter_event(&self, event: RefusedEvent) -> PortResult<bool>;

    /// Dead letters, oldest first: failed work, refused events and stages given up on. `tenant` narrows to one.
    async fn dead_letters(&self, tenant: Option<&str>, limit: usize) -> PortResult<Vec<DeadLetter>>;

    /// One dead letter by the id `dead_letters` gives it; None for an id it never gave.
    async fn dead_letter(&self, id: &str) -> PortResult<Option<DeadLetter>>;

    /// One call's dead letters, oldest first.
    async fn call_dead_letters(&self, tenant: &TenantId, call: &CallId) -> PortResult<Vec<DeadLetter>>;

    /// The call's analysis (stored by a completion that carried one).
    async fn analysis(&self, tenant: &TenantId, call: &CallId)
    -> PortResult<Option<crate::domain::analysis::Analysis>>;

    /// The call's CRM delivery (stored by a completion that carried one).
    async fn delivery(&self, tenant: &TenantId, call: &CallId) -> PortResult<Option<crate::domain::crm::CrmDelivery>>;

    /// Ask the tenant's circuit breaker `key` (e.g. `crm:hubspot`) whether a call may go through now, in one
    /// transaction (so instances share one circuit): `Breaker::admit` on the stored state.
    async fn breaker_admit(
        &self,
        tenant: &TenantId,
        key: &str,
        now: DateTime<Utc>,
        policy: &crate::domain::breaker::BreakerPolicy,
    ) -> PortResult<crate::domain::breaker::Admit>;

    /// Record a call's outcome on the breaker (`Breaker::record`, in one transaction); the transition it caused.
    async fn breaker_record(
        &self,
        tenant: &TenantId,
        key: &str,
        success: bool,
        now: DateTime<Utc>,
        policy: &crate::domain::breaker::BreakerPolicy,
    ) -> PortResult<Option<&'static str>>;

    /// The breaker's stored state (closed and clean when never used).
    async fn breaker(&self, tenant: &TenantId, key: &str) -> PortResult<crate::domain::breaker::Breaker>;

    /// Replay a dead letter once: mark it replayed and, in the same transaction, move its call from
    /// `dead_lettered` back to `revive_to` (when given) and enqueue `follow_up` for its call. `false` (nothing
    /// changed) when it was already replayed or does not exist.
    async fn replay_dead_letter(
        &self,
        id: &str,
        revive_to: Option<crate::domain::CallState>,
        follow_up: Vec<crate::domain::work::NewWork>,
    ) -> PortResult<bool>;

    /// A page of the tenant's calls that `scan` selects, in call-id order after `scan.after`.
    async fn scan_calls(&self, tenant: &TenantId, scan: &CallScan) -> PortResult<Vec<CallRecord>>;

    /// Calls of a tenant whose caller had this phone (E.164) or this email (compared lower-cased), from the lead or
    /// from the analysis's caller details: the calls an erasure request names.
    async fn calls_by_contact(
        &self,
        tenant: &TenantId,
        phone: Option<&str>,
        email: Option<&str>,
    ) -> PortResult<Vec<CallRecord>>;

    /// In one transaction: apply `erasure` to the call (see `CallErasure`) and append `record` to the erasure log
    /// (a second record with the same request id replaces the first). `false` when there is no such call.
    async fn erase_call(&self, erasure: CallErasure, record: ErasureRecord) -> PortResult<bool>;

    /// Keep an erasure request until the erasure job has carried it out. `false` (nothing changed) when a request
    /// with this id exists for the tenant already.
    async fn request_erasure(&self, request: &ErasureRequest) -> PortResult<bool>;

    /// The tenant's erasure requests, oldest first; `pending_only` leaves out those carried out.
    async fn erasure_requests(
        &self,
        tenant: &TenantId,
        pending_only: bool,
        limit: usize,
    ) -> PortResult<Vec<ErasureRequest>>;

    /// Mark a request carried out at `at`, having erased `calls` calls, and forget the phone and email it named (the
    /// request is kept, for the record, without them). `false` when there is no such pending request.
    async fn complete_erasure_request(
        &self,
        tenant: &TenantId,
        id: &str,
        at: DateTime<Utc>,
        calls: u32,
    ) -> PortResult<bool>;

    /// The erasure log of a tenant, newest first.
    async fn erasures(&self, tenant: &TenantId, limit: usize) -> PortResult<Vec<ErasureRecord>>;

    /// A job's resume point per tenant (e.g. `retention` → the last call id handled), so bounded runs continue where
    /// the last stopped; `None` clears it.
    async fn job_cursor(&self, tenant: &TenantId, job: &str) -> PortResult<Option<String>>;

    async fn set_job_cursor(&self, tenant: &TenantId, job: &str, cursor: Option<&str>) -> PortResult<()>;
}

/// Which of a tenant's calls a cleanup job walks: in call-id order, after a cursor, a page at a time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallScan {
    /// Only calls in these states (empty: any state).
    pub states: Vec<crate::domain::CallState>,
    /// Only calls created at or after this (retention's window: what an earlier pass covered is not walked again).
    pub created_from: Option<DateTime<Utc>>,
    /// Only calls created before this (retention).
    pub created_before: Option<DateTime<Utc>>,
    /// Only calls last changed before this (stuck calls).
    pub updated_before: Option<DateTime<Utc>>,
    /// Resume after this call id (the last of the previous page).
    pub after: Option<CallId>,
    pub limit: usize,
}

/// What `erase_call` removes from a call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallErasure {
    /// Replace the call's lead with this one (the caller already blanked its personal fields), blank the stored
    /// analysis's caller details (name, email, zip, callback time), clear the call's contact keys, and drop the
    /// call's pending notifications (they carry the caller's details). `None`: the lead stays as it is.
    pub lead: Option<crate::domain::LeadDetails>,
    /// Clear `recording_object` (the caller deleted the object first).
    pub recording: bool,
}

/// A request to erase a caller's data (GDPR/CCPA-style), made through the ops interface and carried out by the
/// cleanup job. The phone and email are kept normalised (E.164, lower case) and only until it is carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureRequest {
    pub tenant_id: TenantId,
    /// Unique per tenant, e.g. `era-…`; the erasure log's `request_id`.
    pub id: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub requested_at: DateTime<Utc>,
    /// Set when carried out (then `phone` and `email` are `None`).
    pub completed_at: Option<DateTime<Utc>>,
    /// How many calls it erased.
    pub calls_erased: Option<u32>,
}

/// What an erasure (a caller's request, or retention) removed from one call, kept without the personal data.
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureRecord {
    pub tenant_id: TenantId,
    pub call_id: CallId,
    /// The request it answers (an erasure request id, or `retention:{date}`).
    pub request_id: String,
    /// What was erased, e.g. ["recording", "transcript", "lead contact fields", "analysis caller details"].
    pub erased: Vec<String>,
    pub at: DateTime<Utc>,
}

impl ErasureRecord {
    /// Add `what` to what was erased (once): the state store adds what it found of the caller beside the lead.
    pub fn note(&mut self, what: &str) {
        if !self.erased.iter().any(|e| e == what) {
            self.erased.push(what.to_owned());
        }
    }
}

/// An event a stage refused, as the dead letter keeps it. The ids are the event's claims, possibly wrong or
/// empty (they are what made it poison), so they are plain strings here.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedEvent {
    /// The refusing function, e.g. `on-audio-uploaded`.
    pub stage: String,
    pub tenant_id: String,
    pub call_id: String,
    /// The event's identity (CloudEvent `source#id`, or bucket/name#generation): the same event is kept once.
    pub event_key: String,
    /// Enough of the event to inspect and replay it (its type, subject and data).
    pub event: serde_json::Value,
    pub reason: String,
}

impl RefusedEvent {
    /// The dead letter's `kind` for events refused by `stage`.
    pub fn kind(&self) -> String {
        format!("event:{}", self.stage)
    }
}

/// A dead letter as stored: failed work (`kind` = the work kind), a stage that gave up on a call (`kind` = the
/// stage key's first part, e.g. `transcribe`), or a refused event (`event:{stage}`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Stable, for inspecting and replaying it.
    pub id: String,
    pub tenant_id: String,
    pub call_id: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempts: u32,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// When it was replayed (it is kept, for the record).
    pub replayed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageClaim {
    pub tenant_id: TenantId,
    pub call_id: CallId,
    pub key: String,
    pub lease: String,
    /// Including this one.
    pub attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Claimed(StageClaim),
    Busy { until: DateTime<Utc> },
    Done,
}

/// A stored object's facts: what GCS reports and what a finalize event carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub bucket: String,
    pub name: String,
    pub generation: i64,
    pub size: u64,
    pub content_type: String,
    pub md5_base64: String,
    pub crc32c_base64: String,
    pub metadata: BTreeMap<String, String>,
    pub created: DateTime<Utc>,
}

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

pub struct NewObject<'a> {
    pub bucket: &'a str,
    pub name: &'a str,
    pub content_type: &'a str,
    pub metadata: BTreeMap<String, String>,
    /// Writing more than this fails and leaves nothing behind.
    pub max_bytes: u64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Stream an object in. It becomes visible whole or not at all, with a new generation.
    async fn put(&self, object: NewObject<'_>, body: ByteStream) -> PortResult<ObjectInfo>;
    async fn head(&self, bucket: &str, name: &str) -> PortResult<Option<ObjectInfo>>;
    async fn get(&self, bucket: &str, name: &str) -> PortResult<Option<(ObjectInfo, Bytes)>>;
    /// Delete the live object; `false` when there was none (deleting twice is not an error).
    async fn delete(&self, bucket: &str, name: &str) -> PortResult<bool>;
    /// One page of the objects whose names start with `prefix`, in name order. Pass the page's
    /// `next_page_token` back for the next page; `None` there means the listing is complete.
    async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        page_token: Option<&str>,
        page_size: usize,
    ) -> PortResult<ObjectPage>;
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectPage {
    pub objects: Vec<ObjectInfo>,
    pub next_page_token: Option<String>,
}

/// Publishing a message on a topic (Pub/Sub; locally the router). Returns the message id.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        attributes: BTreeMap<String, String>,
        ordering_key: Option<&str>,
    ) -> PortResult<String>;
}

#[async_trait]
pub trait AnalyticsSink: Send + Sync {
    /// Insert rows; a row whose insert_id was already inserted is not inserted again.
    async fn insert(&self, rows: &[AnalyticsRow]) -> PortResult<()>;
}

/// What an analyst's query returned, alike from every backend: column names, and each row's values as JSON
/// (numbers, strings, booleans, null; timestamps as RFC 3339 UTC with microseconds, dates as YYYY-MM-DD).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// Reading the analytics tables and views (the operator's `callflow analytics query`, and the views' tests).
#[async_trait]
pub trait AnalyticsQuery: Send + Sync {
    /// Run one read-only SQL query in the backend's dialect; the tables and views may be named bare.
    async fn query(&self, sql: &str) -> PortResult<QueryResult>;
}

/// A secret value. Debug never prints it.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(**redacted**)")
    }
}

#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn secret(&self, reference: &SecretRef) -> PortResult<Secret>;
}

#[async_trait]
pub trait TenantDirectory: Send + Sync {
    async fn tenant(&self, id: &TenantId) -> PortResult<Option<Arc<Tenant>>>;
    /// Every tenant, in id order (the scheduled jobs walk them).
    async fn list(&self) -> PortResult<Vec<Arc<Tenant>>>;
}

/// A recording as CallRail serves it: a byte stream with its declared type and length.
pub struct RecordingDownload {
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub body: ByteStream,
}

#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    #[error("not found")]
    NotFound,
    #[error("rate limited (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("vendor answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("timed out")]
    Timeout,
    #[error("transport: {0}")]
    Transport(String),
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl VendorError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Timeout | Self::Transport(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 408,
            Self::NotFound | Self::Malformed(_) => false,
        }
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// One page of an account's calls that started in [start, end).
#[derive(Debug, Clone, PartialEq)]
pub struct CallListQuery {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// 1-based.
    pub page: u32,
    /// Calls per page; CallRail allows 1..=250 (clamped).
    pub per_page: u32,
}

/// A page of calls as CallRail lists them: each call object as sent (the fields a post-call webhook carries), so
/// the intake parses it with the webhook's code.
#[derive(Debug, Clone, PartialEq)]
pub struct CallPage {
    pub calls: Vec<serde_json::Value>,
    pub page: u32,
    pub total_pages: u32,
    pub total_records: u64,
}

#[async_trait]
pub trait CallRailClient: Send + Sync {
    /// The call's recording: `recording.json` for its URL, then the audio itself.
    async fn recording(
        &self,
        account_id: &str,
        call_id: &CallId,
        api_key: &Secret,
    ) -> Result<RecordingDownload, VendorError>;

    /// One page of the account's calls that started in the query's window, oldest first, for reconciling calls
    /// whose webhook never arrived (CallRail does not retry webhooks).
    async fn list_calls(
        &self,
        account_id: &str,
        api_key: &Secret,
        query: &CallListQuery,
    ) -> Result<CallPage, VendorError>;
}

/// The recording to transcribe: where it is, and what the engine needs to know about it.
#[derive(Debug, Clone)]
pub struct AudioRef {
    pub bucket: String,
    pub name: String,
    pub generation: i64,
    pub content_type: String,
    pub size: u64,
    /// The call's duration (CallRail reports it), which decides short vs long recognition.
    pub duration_secs: Option<f64>,
    /// BCP-47 language from the tenant's config.
    pub language: String,
}

impl AudioRef {
    pub fn gcs_uri(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.name)
    }
}

/// What an engine heard, before it is labelled with tenant and call.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    /// Engine and model, e.g. `google-speech-v2/chirp_3`.
    pub engine: String,
    pub quality: crate::domain::transcript::Quality,
    pub language: String,
    pub duration_secs: f64,
    pub words: Vec<crate::domain::transcript::Word>,
    /// Audio seconds the engine bills for (0 when it costs nothing).
    pub billed_secs: f64,
}

#[async_trait]
pub trait Transcriber: Send + Sync {
    /// `audio` bytes are passed to engines that read the data themselves; cloud engines read `audio.gcs_uri()`.
    async fn transcribe(&self, audio: &AudioRef, data: Option<Bytes>) -> Result<Recognized, VendorError>;
}

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// One request to a generative model for a JSON answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The model id, e.g. `gemini-2.5-flash`.
    pub model: String,
    pub prompt: crate::domain::analysis::Prompt,
    /// The response schema (OpenAPI subset) the answer must follow.
    pub schema: serde_json::Value,
    /// Earlier turns when an answer did not validate: (the model's answer, our correction), oldest first.
    pub history: Vec<(String, String)>,
    pub max_output_tokens: u32,
}

/// How the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Stop,
    /// Cut at the output limit: the JSON is likely incomplete.
    MaxTokens,
    /// Refused by a safety filter, for the prompt or the answer (the reason as the API gives it).
    Blocked(String),
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
}

#[async_trait]
pub trait LanguageModel: Send + Sync {
    async fn generate(&self, request: &GenerateRequest) -> Result<Generated, VendorError>;
}

/// A lead as a CRM connector pushes it: our lead, its properties after the tenant's field mapping, and the key
/// that makes a second push of the same call find the first record instead of making another.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadPush {
    pub tenant_id: TenantId,
    pub call_id: CallId,
    /// Unique per (tenant, call) (`lead.lead_key`): the CRM-side dedupe key (external id, idempotency key,
    /// `webhook-id`).
    pub idempotency_key: String,
    pub lead: crate::domain::crm::Lead,
    /// CRM properties after the tenant's field mapping (`Lead::properties`).
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// The lead as our JSON document (what the custom webhook sends).
    pub document: serde_json::Value,
}

/// The CRM's record for a pushed lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmRecord {
    pub id: String,
    /// False when the CRM already had it (a redelivery, a push retried after a lost answer, a duplicate rule's
    /// match).
    pub created: bool,
}

#[async_trait]
pub trait CrmConnector: Send + Sync {
    fn provider(&self) -> crate::domain::crm::CrmProvider;
    /// Push one lead to the CRM `target` describes, with the tenant's credential (token, key or signing
    /// secret). Pushing the same lead again must not make a second record.
    async fn push(
        &self,
        target: &crate::domain::crm::CrmSettings,
        lead: &LeadPush,
        credential: &Secret,
    ) -> Result<CrmRecord, VendorError>;
}

/// Sends a notice to people (Slack, email). `credential` is the address's secret: the Slack webhook URL, the
/// SendGrid API key.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn send(
        &self,
        address: &crate::domain::workflow::NoticeAddress,
        notice: &crate::domain::workflow::Notice,
        credential: &Secret,
    ) -> Result<(), VendorError>;
}
