//! Work that a committed event implies (the outbox), and how failed work is retried.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::call::{CallRecord, CallState};
use super::ids::{CallId, TenantId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkKind {
    /// Download the call's recording from CallRail into the recordings bucket.
    FetchRecording,
    /// Stream one analytics row to the analytics sink.
    Analytics,
    /// Publish one message (a `PublishMessage`) on a topic.
    Publish,
    /// Send one notification (a `NoticeWork`): Slack or email, retried on its own, never touching the lead.
    Notify,
    /// Store a web form's text as the lead's transcript, so forms are analysed and delivered as calls are.
    StoreFormText,
}

/// The queued work whose last error (a vendor's answer) may quote a caller, which an erasure goes through. Not
/// analytics rows (free of personal data by construction, and they must stay valid rows) nor notifications (an
/// erasure drops those whole).
pub const OUTBOX_KINDS_WITH_TEXT: [WorkKind; 3] =
    [WorkKind::FetchRecording, WorkKind::Publish, WorkKind::StoreFormText];

impl WorkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FetchRecording => "fetch_recording",
            Self::Analytics => "analytics",
            Self::Publish => "publish",
            Self::Notify => "notify",
            Self::StoreFormText => "store_form_text",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::FetchRecording, Self::Analytics, Self::Publish, Self::Notify, Self::StoreFormText]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Work to enqueue in the same transaction as the change that implies it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWork {
    pub kind: WorkKind,
    pub payload: serde_json::Value,
}

/// A message to publish, committed with the change it announces (the payload of `WorkKind::Publish`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishMessage {
    /// The real topic name.
    pub topic: String,
    /// The message body (small JSON).
    pub data: serde_json::Value,
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl PublishMessage {
    pub fn work(&self) -> NewWork {
        NewWork { kind: WorkKind::Publish, payload: serde_json::to_value(self).expect("messages serialize") }
    }
}

/// A notification to send, committed with the event it announces (the payload of `WorkKind::Notify`). It names
/// the secret by reference; the value is read when sending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeWork {
    /// The rule that asked for it.
    pub rule: String,
    pub address: super::workflow::NoticeAddress,
    pub notice: super::workflow::Notice,
}

impl NoticeWork {
    pub fn work(&self) -> NewWork {
        NewWork { kind: WorkKind::Notify, payload: serde_json::to_value(self).expect("notices serialize") }
    }
}

/// Claimed work. `lease` identifies this claim: completing or retrying with a stale lease does nothing, so a
/// worker whose lease expired (and whose item another worker took) cannot double-complete it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub id: i64,
    pub tenant_id: TenantId,
    pub call_id: CallId,
    pub kind: WorkKind,
    pub payload: serde_json::Value,
    /// Attempts so far, this one included.
    pub attempts: u32,
    pub lease: String,
}

/// A conditional state change applied with the completion of a work item.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub to: CallState,
    pub reason: Option<String>,
    pub recording_object: Option<String>,
}

impl Transition {
    /// Apply to `record` if the call may move to `to` (never backwards, never out of a terminal state).
    /// Returns whether it moved; every state store calls this inside its transaction.
    pub fn apply(&self, record: &mut CallRecord, now: DateTime<Utc>) -> bool {
        if !record.state.can_move_to(self.to) {
            return false;
        }
        record.state = self.to;
        record.state_reason = self.reason.clone();
        if self.recording_object.is_some() {
            record.recording_object = self.recording_object.clone();
        }
        record.updated_at = now;
        true
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub transition: Option<Transition>,
    pub follow_up: Vec<NewWork>,
    /// Set when the work failed for good: the item is kept as a dead letter with this reason.
    pub dead_letter: Option<String>,
    /// The call's analysis, stored with the transition to `analysed` (replacing any earlier one).
    pub analysis: Option<super::analysis::Analysis>,
    /// The call's CRM record, stored with the transition to `delivered`.
    pub delivery: Option<super::crm::CrmDelivery>,
}

/// Exponential backoff with full jitter, bounded in attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay before the next attempt after `attempts` failed ones, or None when attempts are used up.
    /// `unit` is a uniform random number in [0, 1) supplied by the caller (the domain owns no randomness).
    /// A vendor's own hint (Retry-After) is a floor.
    pub fn next_delay(&self, attempts: u32, unit: f64, floor: Option<Duration>) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let exp = self.base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(self.max);
        // Half fixed, half jitter: retries spread out but never collapse to zero.
        let jittered = exp.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0));
        Some(floor.map_or(jittered, |f| jittered.max(f.min(self.max))))
    }
}

pub fn not_before(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_bounded_and_ends() {
        let p = RetryPolicy { max_attempts: 5, base: Duration::from_secs(2), max: Duration::from_secs(20) };
        let d: Vec<_> = (1..5).map(|a| p.next_delay(a, 1.0, None).unwrap()).collect();
        assert_eq!(d, [2, 4, 8, 16].map(Duration::from_secs));
        assert_eq!(p.next_delay(5, 0.5, None), None);
        assert_eq!(p.next_delay(4, 0.0, None), Some(Duration::from_secs(8)));
        assert_eq!(p.next_delay(1, 0.0, Some(Duration::from_secs(15))), Some(Duration::from_secs(15)));
        assert_eq!(p.next_delay(1, 0.0, Some(Duration::from_secs(3600))), Some(Duration::from_secs(20)));
    }
}
