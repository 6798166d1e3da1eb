//! What an accepted webhook does to a call: the pure decision the state store applies inside its transaction.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::analytics::StageEvent;
use super::call::{CallRecord, CallSource, CallState, LeadDetails};
use super::ids::{CallId, TenantId};
use super::work::{NewWork, WorkKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    PostCall,
    CallModified,
    Form,
    /// A call CallRail's API lists and the webhook never delivered, ingested by the reconciliation job. Its
    /// dedupe key is the post-call webhook's, so whichever of the two comes second is a duplicate.
    Reconciled,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PostCall => "post_call",
            Self::CallModified => "call_modified",
            Self::Form => "form",
            Self::Reconciled => "reconciled",
        }
    }
}

/// A verified, parsed webhook, ready to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct IntakeEvent {
    pub tenant_id: TenantId,
    pub call_id: CallId,
    pub source: CallSource,
    pub kind: EventKind,
    /// The idempotency key within the call. Post-call: `post_call`, so CallRail's duplicates collapse. Call-modified:
    /// `call_modified:<body hash>`, because one call can be modified several times and each change must land,
    /// while a byte-identical redelivery must not. Form: `form:<webhook-id>`.
    pub dedupe_key: String,
    pub payload_sha256: String,
    pub payload_bytes: u64,
    pub lead: LeadDetails,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// The event was seen before: nothing changed.
    Duplicate,
    /// A new call.
    Created,
    /// Known call; details merged, no new work.
    Updated,
    /// Known call that lacked its recording and now has one: fetch it.
    Reopened,
}

impl IntakeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Reopened => "reopened",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct IntakePlan {
    pub outcome: IntakeOutcome,
    pub record: CallRecord,
    /// Work to commit with the call: the recording fetch it implies, if any, and always its analytics row.
    pub work: Vec<NewWork>,
}

/// The stage recorded in analytics rows for intake.
pub const INTAKE_STAGE: &str = "on-webhook";

/// The analytics row of an accepted event; it travels through the outbox, so it lands once.
fn analytics_work(record: &CallRecord, outcome: IntakeOutcome, event: &IntakeEvent) -> NewWork {
    let row = StageEvent {
        call: record,
        stage: INTAKE_STAGE,
        outcome: outcome.as_str(),
        event_kind: Some(event.kind.as_str()),
        at: event.received_at,
        stage_duration_ms: None,
        attempts: None,
        bytes: Some(event.payload_bytes),
        cost_usd: None,
        reason: record.state_reason.as_deref(),
        engine: None,
        audio_secs: None,
    }
    .into_row(&event.dedupe_key);
    row.work()
}

pub const REASON_UNANSWERED: &str = "unanswered";
pub const REASON_NO_RECORDING: &str = "no_recording";

fn fetch_work(lead: &LeadDetails) -> NewWork {
    NewWork { kind: WorkKind::FetchRecording, payload: json!({ "recording_url": lead.recording_url }) }
}

/// Where a new call starts, and what work that implies.
fn initial_state(source: CallSource, lead: &LeadDetails) -> (CallState, Option<&'static str>, Vec<NewWork>) {
    match source {
        // Form leads carry their text in the submission: it becomes their transcript, and from there they are
        // analysed and delivered as calls are. There is no recording to fetch.
        CallSource::Form => {
            (CallState::Received, None, vec![NewWork { kind: WorkKind::StoreFormText, payload: json!({}) }])
        }
        CallSource::Callrail if lead.recording_url.is_some() => (CallState::Received, None, vec![fetch_work(lead)]),
        CallSource::Callrail if lead.answered == Some(false) && lead.voicemail != Some(true) => {
            (CallState::Skipped, Some(REASON_UNANSWERED), Vec::new())
        }
        CallSource::Callrail => (CallState::Skipped, Some(REASON_NO_RECORDING), Vec::new()),
    }
}

/// Decide what a (non-duplicate) event does to the call. The caller has already checked the dedupe ledger.
pub fn plan(existing: Option<CallRecord>, event: &IntakeEvent) -> IntakePlan {
    let mut plan = decide(existing, event);
    plan.work.push(analytics_work(&plan.record, plan.outcome, event));
    plan
}

fn decide(existing: Option<CallRecord>, event: &IntakeEvent) -> IntakePlan {
    let Some(mut record) = existing else {
        let (state, reason, work) = initial_state(event.source, &event.lead);
        return IntakePlan {
            outcome: IntakeOutcome::Created,
            record: CallRecord {
                tenant_id: event.tenant_id.clone(),
                call_id: event.call_id.clone(),
                source: event.source,
                state,
                state_reason: reason.map(str::to_owned),
                lead: event.lead.clone(),
                recording_object: None,
                created_at: event.received_at,
                updated_at: event.received_at,
            },
            work,
        };
    };
    let lacked_recording = record.lead.recording_url.is_none();
    record.lead.merge_from(&event.lead);
    record.updated_at = event.received_at;
    // A recording that arrives late (CallRail's call-modified) moves a call that was parked for lack of one.
    let parked = record.state == CallState::Skipped
        && matches!(record.state_reason.as_deref(), Some(REASON_NO_RECORDING | REASON_UNANSWERED));
    if lacked_recording && parked && record.lead.recording_url.is_some() {
        record.state = CallState::Received;
        record.state_reason = None;
        let work = vec![fetch_work(&record.lead)];
        return IntakePlan { outcome: IntakeOutcome::Reopened, record, work };
    }
    IntakePlan { outcome: IntakeOutcome::Updated, record, work: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetches(p: &IntakePlan) -> usize {
        p.work.iter().filter(|w| w.kind == WorkKind::FetchRecording).count()
    }

    fn event(kind: EventKind, lead: LeadDetails) -> IntakeEvent {
        IntakeEvent {
            tenant_id: TenantId::parse("acme").unwrap(),
            call_id: CallId::parse("CAL1").unwrap(),
            source: CallSource::Callrail,
            kind,
            dedupe_key: kind.as_str().into(),
            payload_sha256: String::new(),
            payload_bytes: 0,
            lead,
            received_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn recorded_call_is_received_with_a_fetch() {
        let lead = LeadDetails { answered: Some(true), recording_url: Some("https://r".into()), ..Default::default() };
        let p = plan(None, &event(EventKind::PostCall, lead));
        assert_eq!((p.outcome, p.record.state), (IntakeOutcome::Created, CallState::Received));
        assert_eq!(fetches(&p), 1);
        assert_eq!(p.work.iter().filter(|w| w.kind == WorkKind::Analytics).count(), 1, "one analytics row");
    }

    #[test]
    fn unanswered_and_unrecorded_calls_are_parked_with_a_reason() {
        let p = plan(None, &event(EventKind::PostCall, LeadDetails { answered: Some(false), ..Default::default() }));
        assert_eq!((p.record.state, p.record.state_reason.as_deref()), (CallState::Skipped, Some("unanswered")));
        assert_eq!(fetches(&p), 0);
        let p = plan(None, &event(EventKind::PostCall, LeadDetails { answered: Some(true), ..Default::default() }));
        assert_eq!(p.record.state_reason.as_deref(), Some("no_recording"));
    }

    #[test]
    fn late_recording_reopens_a_parked_call_once() {
        let first = plan(None, &event(EventKind::PostCall, LeadDetails { answered: Some(true), ..Default::default() }));
        let modified = LeadDetails { recording_url: Some("https://r".into()), ..Default::default() };
        let p = plan(Some(first.record), &event(EventKind::CallModified, modified.clone()));
        assert_eq!((p.outcome, p.record.state), (IntakeOutcome::Reopened, CallState::Received));
        assert_eq!(fetches(&p), 1);
        // Another modification of the same call does not fetch again.
        let again = plan(Some(p.record), &event(EventKind::CallModified, modified));
        assert_eq!(again.outcome, IntakeOutcome::Updated);
        assert_eq!(fetches(&again), 0);
    }

    #[test]
    fn modification_never_moves_an_advanced_call_back() {
        let lead = LeadDetails { recording_url: Some("https://r".into()), ..Default::default() };
        let mut rec = plan(None, &event(EventKind::PostCall, lead.clone())).record;
        rec.state = CallState::Analysed;
        let p = plan(Some(rec), &event(EventKind::CallModified, LeadDetails { tags: vec!["good".into()], ..lead }));
        assert_eq!((p.outcome, p.record.state), (IntakeOutcome::Updated, CallState::Analysed));
        assert_eq!(p.record.lead.tags, ["good"]);
    }
}
