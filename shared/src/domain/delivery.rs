//! Lead delivery between functions: the messages on `analysis-complete` and `crm-retry`, when a failed push is
//! tried again (and when it is given up), and the notices people get. Pure: no I/O; the caller brings the time
//! and the randomness.
//!
//! A call's pushes form one chain of stage claims, `crm:{chain}:{seq}`: on-analysis holds `crm:a:0`, each
//! `crm-retry` message the next `seq`. A step is marked done in the same transaction that enqueues its successor,
//! so a redelivered message finds its step done and the chain never forks. A replayed dead letter starts a new
//! chain (`r{dead letter id}`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::crm::Lead;
use super::work::RetryPolicy;
use super::workflow::Notice;

pub const MESSAGE_SCHEMA_VERSION: u32 = 1;

/// The first push's claim (on-analysis).
pub const FIRST_CLAIM: &str = "crm:a:0";

/// A message naming a call (every message between stages does).
pub trait CallMessage {
    /// The message's name in errors, e.g. `analysis-complete`.
    const NAME: &'static str;
    fn schema_version(&self) -> u32;
    fn tenant_id(&self) -> &str;
    fn call_id(&self) -> &str;
}

/// `analysis-complete`, as on-transcript publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisComplete {
    pub schema_version: u32,
    pub tenant_id: String,
    pub call_id: String,
    #[serde(default)]
    pub transcript_generation: Option<String>,
    #[serde(default)]
    pub analyzer: Option<String>,
}

impl CallMessage for AnalysisComplete {
    const NAME: &'static str = "analysis-complete message";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
    fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
    fn call_id(&self) -> &str {
        &self.call_id
    }
}

/// `crm-retry`: push this call's lead again, not before `not_before`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmRetry {
    pub schema_version: u32,
    pub tenant_id: String,
    pub call_id: String,
    /// `a` for the chain on-analysis starts, `r{id}` for a replayed dead letter.
    pub chain: String,
    /// This message's place in the chain (on-analysis's push is 0).
    pub seq: u32,
    /// Pushes that failed so far (a push the open circuit held back is not one).
    pub attempts: u32,
    pub not_before: DateTime<Utc>,
    /// The first failure: max age is counted from here.
    pub first_failed_at: DateTime<Utc>,
    pub last_error: String,
}

impl CallMessage for CrmRetry {
    const NAME: &'static str = "crm-retry message";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
    fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
    fn call_id(&self) -> &str {
        &self.call_id
    }
}

impl CrmRetry {
    pub fn claim_key(&self) -> String {
        format!("crm:{}:{}", self.chain, self.seq)
    }

    /// The first message of a replay of dead letter `id`: due now, attempts counted afresh.
    pub fn replay(tenant_id: &str, call_id: &str, id: &str, now: DateTime<Utc>) -> Self {
        Self {
            schema_version: MESSAGE_SCHEMA_VERSION,
            tenant_id: tenant_id.into(),
            call_id: call_id.into(),
            chain: format!("r{id}"),
            seq: 1,
            attempts: 0,
            not_before: now,
            first_failed_at: now,
            last_error: "replayed by an operator".into(),
        }
    }
}

impl CrmRetry {
    /// The first message of the chain the stuck-calls job starts for a call that sat in `analysed` past its limit
    /// (its first chain ended or was lost): chain `s{redrive}`, due now, attempts counted afresh.
    pub fn redrive(tenant_id: &str, call_id: &str, redrive: u32, now: DateTime<Utc>) -> Self {
        Self {
            chain: format!("s{redrive}"),
            last_error: "re-driven: the call sat in analysed past its limit".into(),
            ..Self::replay(tenant_id, call_id, "", now)
        }
    }
}

/// Where the push at claim `chain`/`seq` goes next after a failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    RetryAt(DateTime<Utc>),
    GiveUp(String),
}

/// Exponential backoff with jitter, bounded by attempts and by age.
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    pub policy: RetryPolicy,
    pub max_age: Duration,
}

impl RetrySchedule {
    /// After `attempts` failed pushes (this one included), the first at `first_failed_at`. `floor` is the
    /// vendor's own wait (Retry-After); `unit` a uniform random number in [0, 1).
    pub fn after_failure(
        &self,
        attempts: u32,
        first_failed_at: DateTime<Utc>,
        now: DateTime<Utc>,
        unit: f64,
        floor: Option<Duration>,
    ) -> Next {
        let age = (now - first_failed_at).to_std().unwrap_or_default();
        if age >= self.max_age {
            return Next::GiveUp(format!("gave up after {attempts} attempts over {}", human(age)));
        }
        match self.policy.next_delay(attempts, unit, floor) {
            None => Next::GiveUp(format!("gave up after {attempts} attempts over {}", human(age))),
            Some(delay) => {
                // The last try happens at the age limit rather than never.
                // Checked: `first_failed_at` comes from a message, and a date near the end of time must not panic.
                let deadline = chrono::Duration::from_std(self.max_age)
                    .ok()
                    .and_then(|age| first_failed_at.checked_add_signed(age))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                Next::RetryAt(super::work::not_before(now, delay).min(deadline))
            }
        }
    }
}

/// When a push the open circuit held back comes again: not before the circuit may let a probe through, and,
/// for a lead held back again and again, later each time (doubling from the cool-down up to `cap`), so a long
/// outage does not cycle every held lead once per cool-down. Spread by a tenth of the wait (`unit` in [0, 1)) so
/// held leads do not return as one burst.
pub fn deferred_until(
    reopen: DateTime<Utc>,
    now: DateTime<Utc>,
    deferrals: u32,
    cool_down: Duration,
    cap: Duration,
    unit: f64,
) -> DateTime<Utc> {
    let wait = cool_down.saturating_mul(1u32 << deferrals.min(20)).min(cap.max(cool_down));
    let spread = wait.mul_f64(0.1 * unit.clamp(0.0, 1.0)) + Duration::from_secs(1);
    super::work::not_before(reopen.max(now), Duration::ZERO).max(super::work::not_before(now, wait))
        + chrono::Duration::from_std(spread).unwrap_or_default()
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// The notice for a delivered lead (or one accepted with no CRM): what sales needs to call back now.
pub fn lead_notice(tenant_name: &str, lead: &Lead, crm: Option<(&str, &str)>) -> Notice {
    let mut fields = vec![
        ("Score".to_owned(), format!("{} ({})", lead.lead_score, lead.score_band)),
        ("Project".to_owned(), lead.project_type.clone()),
        ("Urgency".to_owned(), lead.urgency.clone()),
    ];
    if let Some(phone) = &lead.phone {
        fields.push(("Phone".into(), phone.clone()));
    }
    if let Some(zip) = &lead.zip {
        fields.push(("ZIP".into(), zip.clone()));
    }
    if let Some(t) = &lead.callback_time {
        fields.push(("Call back".into(), t.clone()));
    }
    if !lead.tags.is_empty() {
        fields.push(("Tags".into(), lead.tags.join(", ")));
    }
    if let Some((provider, id)) = crm {
        fields.push(("CRM".into(), format!("{provider} {id}")));
    }
    let review = if lead.review { " — review before calling" } else { "" };
    Notice {
        title: format!("New {} lead for {tenant_name}: {}{review}", lead.score_band, lead.title()),
        text: lead.summary.clone(),
        fields,
    }
}

/// The notice for a lead the CRM refused for good: the tenant must fix their CRM and replay it.
pub fn crm_failed_notice(tenant_name: &str, provider: &str, lead: &Lead, reason: &str) -> Notice {
    let mut fields = vec![("Call".to_owned(), lead.call_id.clone()), ("Reason".to_owned(), reason.to_owned())];
    if let Some(phone) = &lead.phone {
        fields.push(("Phone".into(), phone.clone()));
    }
    Notice {
        title: format!("{tenant_name}: a lead did not reach {provider}"),
        text: format!(
            "{} could not be delivered and is kept as a dead letter. Fix the CRM connection, then replay it \
             (`callflow dead-letters --replay`).",
            lead.title()
        ),
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            policy: RetryPolicy { max_attempts: 5, base: Duration::from_secs(30), max: Duration::from_secs(600) },
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn retries_back_off_honour_the_vendor_and_end() {
        let t0 = DateTime::UNIX_EPOCH;
        let s = schedule();
        assert_eq!(s.after_failure(1, t0, t0, 1.0, None), Next::RetryAt(t0 + chrono::Duration::seconds(30)));
        assert_eq!(s.after_failure(3, t0, t0, 1.0, None), Next::RetryAt(t0 + chrono::Duration::seconds(120)));
        assert_eq!(s.after_failure(3, t0, t0, 0.0, None), Next::RetryAt(t0 + chrono::Duration::seconds(60)));
        assert_eq!(
            s.after_failure(1, t0, t0, 0.0, Some(Duration::from_secs(90))),
            Next::RetryAt(t0 + chrono::Duration::seconds(90)),
            "Retry-After is a floor"
        );
        assert!(matches!(s.after_failure(5, t0, t0, 0.5, None), Next::GiveUp(r) if r.contains("5 attempts")));
        let late = t0 + chrono::Duration::seconds(3500);
        assert_eq!(
            s.after_failure(4, t0, late, 1.0, None),
            Next::RetryAt(t0 + chrono::Duration::seconds(3600)),
            "the last try is at the age limit"
        );
        let too_old = t0 + chrono::Duration::seconds(3600);
        assert!(matches!(s.after_failure(2, t0, too_old, 0.5, None), Next::GiveUp(r) if r.contains("60 min")));
    }

    #[test]
    fn held_leads_back_off_up_to_the_cap() {
        let t0 = DateTime::UNIX_EPOCH;
        let (cool, cap) = (Duration::from_secs(60), Duration::from_secs(300));
        let at = |reopen: i64, deferrals| {
            deferred_until(t0 + chrono::Duration::seconds(reopen), t0, deferrals, cool, cap, 0.0)
        };
        assert_eq!(at(60, 0), t0 + chrono::Duration::seconds(61), "first: when the circuit may probe");
        assert_eq!(at(10, 1), t0 + chrono::Duration::seconds(121));
        assert_eq!(at(10, 2), t0 + chrono::Duration::seconds(241));
        assert_eq!(at(10, 9), t0 + chrono::Duration::seconds(301), "capped");
        assert_eq!(at(900, 9), t0 + chrono::Duration::seconds(901), "never before the circuit may probe");
        let spread = deferred_until(t0, t0, 9, cool, cap, 0.99);
        assert!(spread > t0 + chrono::Duration::seconds(330), "{spread}");
    }

    #[test]
    fn claims_form_one_chain_per_call() {
        let t0 = DateTime::UNIX_EPOCH;
        let r = CrmRetry::replay("acme", "CAL1", "17", t0);
        assert_eq!(r.claim_key(), "crm:r17:1");
        assert_ne!(r.claim_key(), FIRST_CLAIM);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<CrmRetry>(&json).unwrap(), r);
    }
}
