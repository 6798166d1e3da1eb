//! The scheduled cleanup run: which jobs it does, where each stopped (cursors kept in the state store between runs),
//! what a stuck call's re-drive is, the CallRail request budget, and the report each job leaves. Pure: no I/O; the
//! caller brings the time.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::analytics::AnalyticsRow;
use super::call::{CallRecord, CallSource, CallState};
use super::retention::Retention;

/// The four jobs of a run, in the order a run does them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Job {
    Retention,
    Erasure,
    StuckCalls,
    Reconciliation,
}

impl Job {
    pub const ALL: [Job; 4] = [Self::Retention, Self::Erasure, Self::StuckCalls, Self::Reconciliation];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retention => "retention",
            Self::Erasure => "erasure",
            Self::StuckCalls => "stuck-calls",
            Self::Reconciliation => "reconciliation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|j| j.as_str() == s)
    }
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run is asked to do: the schedule's body (`eventarc/triggers.toml`), Cloud Scheduler's HTTP body, or an
/// operator's `callflow cleanup run`. An empty body means every job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default = "all_jobs")]
    pub jobs: Vec<Job>,
    /// List what retention and erasure would remove, what would be re-driven and which calls are missing, and change
    /// nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn all_jobs() -> Vec<Job> {
    Job::ALL.to_vec()
}

impl Default for RunRequest {
    fn default() -> Self {
        Self { jobs: all_jobs(), dry_run: false }
    }
}

impl RunRequest {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if body.trim_ascii().is_empty() {
            return Ok(Self::default());
        }
        let mut request: Self =
            serde_json::from_slice(body).map_err(|e| format!("not a cleanup request ({{\"jobs\": [...]}}): {e}"))?;
        // Run order is fixed (retention before erasure keeps the erasure's work small; reconciliation last, as it
        // waits on CallRail); a job named twice runs once.
        request.jobs = Job::ALL.into_iter().filter(|j| request.jobs.contains(j)).collect();
        Ok(request)
    }
}

/// What retention removes, each on its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionKind {
    Recordings,
    Transcripts,
    Pii,
}

impl RetentionKind {
    pub const ALL: [RetentionKind; 3] = [Self::Recordings, Self::Transcripts, Self::Pii];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recordings => "recordings",
            Self::Transcripts => "transcripts",
            Self::Pii => "pii",
        }
    }

    pub fn days(self, retention: &Retention) -> u32 {
        match self {
            Self::Recordings => retention.recordings,
            Self::Transcripts => retention.transcripts,
            Self::Pii => retention.pii,
        }
    }

    /// Calls created before this are past this kind's retention at `now`. The boundary day is included: a call
    /// made exactly `days` ago is due, so the bound is one microsecond (the stores' finest common unit) later.
    pub fn cutoff(self, retention: &Retention, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::days(i64::from(self.days(retention))) + chrono::Duration::microseconds(1)
    }

    /// The job cursor's name.
    pub fn cursor_name(self) -> String {
        format!("retention:{}", self.as_str())
    }
}

/// One walk over the calls created in [from, upto), in call-id order, resumable after `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPass {
    pub from: Option<DateTime<Utc>>,
    pub upto: DateTime<Utc>,
    #[serde(default)]
    pub after: Option<String>,
}

/// Where retention of one kind stands for a tenant: everything created before `done_upto` has been handled, and
/// maybe a pass over the next window is under way. So each call is visited once per kind, however many calls are
/// kept, and a run that stops early (its budget spent, a crash) resumes in the next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionCursor {
    #[serde(default)]
    pub done_upto: Option<DateTime<Utc>>,
    #[serde(default)]
    pub pass: Option<WindowPass>,
}

impl RetentionCursor {
    /// A stored cursor; an unreadable one starts over (retention is idempotent, so that only costs time).
    pub fn parse(stored: Option<&str>) -> Self {
        stored.and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("cursors serialize")
    }

    /// The pass to work on: the one under way, or a new one up to `cutoff` when that is past what is done. (A
    /// longer retention set later moves the cutoff back: nothing to do until time catches up.)
    pub fn pass(&self, cutoff: DateTime<Utc>) -> Option<WindowPass> {
        if let Some(pass) = &self.pass {
            return Some(pass.clone());
        }
        match self.done_upto {
            Some(done) if done >= cutoff => None,
            from => Some(WindowPass { from, upto: cutoff, after: None }),
        }
    }

    /// After a page: the pass goes on after `last`, or (the window walked to its end) it is done.
    pub fn advance(&self, pass: &WindowPass, last: Option<&str>, finished: bool) -> Self {
        if finished {
            return Self { done_upto: Some(pass.upto), pass: None };
        }
        let after = last.map(str::to_owned).or_else(|| pass.after.clone());
        Self { done_upto: self.done_upto, pass: Some(WindowPass { after, ..pass.clone() }) }
    }
}

/// How a stuck call is moved again: the event that should have moved it, sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redrive {
    /// `received`, from CallRail: fetch the recording again (a new fetch work item for on-webhook's worker).
    FetchRecording { recording_url: String },
    /// `received`, a web form: store its text as the transcript again.
    StoreFormText,
    /// `recording_stored`: rewrite the recording in place, whose new generation's finalize event wakes
    /// on-audio-uploaded.
    RewriteRecording,
    /// `transcribed`: rewrite the transcript in place (on-transcript).
    RewriteTranscript,
    /// `analysed`: a new crm-retry chain (on-crm-retry); the first chain has ended or was lost.
    NewCrmChain,
}

impl Redrive {
    pub fn name(&self) -> &'static str {
        match self {
            Self::FetchRecording { .. } => "fetch_recording",
            Self::StoreFormText => "store_form_text",
            Self::RewriteRecording => "rewrite_recording",
            Self::RewriteTranscript => "rewrite_transcript",
            Self::NewCrmChain => "new_crm_chain",
        }
    }

    /// The re-drive for a call stuck in its state, or why there is none (it is dead-lettered with that reason).
    pub fn for_call(call: &CallRecord) -> Result<Self, String> {
        match (call.state, call.source) {
            (CallState::Received, CallSource::Form) => Ok(Self::StoreFormText),
            (CallState::Received, CallSource::Callrail) => match &call.lead.recording_url {
                Some(url) => Ok(Self::FetchRecording { recording_url: url.clone() }),
                None => Err("received without a recording to fetch".into()),
            },
            (CallState::RecordingStored, _) => Ok(Self::RewriteRecording),
            (CallState::Transcribed, _) => Ok(Self::RewriteTranscript),
            (CallState::Analysed, _) => Ok(Self::NewCrmChain),
            (state, _) => Err(format!("{state} is not a state a call waits in")),
        }
    }
}

/// The claim that counts a call's re-drives from `state` and spaces them: held for the state's limit, taken again
/// (one more attempt) only after it runs out.
pub fn redrive_claim_key(state: CallState) -> String {
    format!("redrive:{}", state.as_str())
}

/// Reconciliation's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// How far back each pass lists (CallRail never retries a webhook; 48 h covers a weekend's outage on our side).
    pub window: Duration,
    /// Calls that started more recently than this are left to their webhook (it may still be on its way, and a
    /// call in progress has no recording yet).
    pub settle: Duration,
    /// A new pass starts at most this often per tenant.
    pub every: Duration,
    /// CallRail API requests reconciliation may make per tenant per clock hour. CallRail allows 1,000 per hour per
    /// API key, and the recording downloads use the same key: the default, 500, keeps any rolling hour within it.
    pub requests_per_hour: u32,
    /// Calls per page (CallRail allows up to 250).
    pub per_page: u32,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(48 * 3600),
            settle: Duration::from_secs(30 * 60),
            every: Duration::from_secs(3600),
            requests_per_hour: 500,
            per_page: 250,
        }
    }
}

/// One listing of [start, end), page by page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcilePass {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The next page to ask for (1-based).
    pub next_page: u32,
}

/// Requests made in the current clock hour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourBudget {
    #[serde(default)]
    pub hour: Option<DateTime<Utc>>,
    #[serde(default)]
    pub used: u32,
}

impl HourBudget {
    /// Take one request if the hour has one left.
    pub fn take(&mut self, now: DateTime<Utc>, per_hour: u32) -> bool {
        let hour = now.duration_trunc(chrono::Duration::hours(1)).unwrap_or(now);
        if self.hour != Some(hour) {
            *self = Self { hour: Some(hour), used: 0 };
        }
        if self.used >= per_hour {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Where reconciliation stands for a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileCursor {
    #[serde(default)]
    pub pass: Option<ReconcilePass>,
    /// When the last pass started (the next starts `every` later).
    #[serde(default)]
    pub last_started: Option<DateTime<Utc>>,
    #[serde(default)]
    pub budget: HourBudget,
    /// CallRail answered 429 with Retry-After: no request before this.
    #[serde(default)]
    pub paused_until: Option<DateTime<Utc>>,
}

impl ReconcileCursor {
    pub fn parse(stored: Option<&str>) -> Self {
        stored.and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("cursors serialize")
    }

    /// The pass to work on now: the one under way, or a new one when the last started `every` ago.
    pub fn pass(&mut self, now: DateTime<Utc>, s: &ReconcileSettings) -> Option<ReconcilePass> {
        if let Some(pass) = &self.pass {
            return Some(pass.clone());
        }
        let every = chrono::Duration::from_std(s.every).unwrap_or(chrono::Duration::MAX);
        if self.last_started.is_some_and(|t| now - t < every) {
            return None;
        }
        let end = now - chrono::Duration::from_std(s.settle).unwrap_or_default();
        let start = now - chrono::Duration::from_std(s.window).unwrap_or_default();
        self.last_started = Some(now);
        self.pass = Some(ReconcilePass { start, end, next_page: 1 });
        self.pass.clone()
    }
}

/// An erasure request's phone and email, normalised the way calls are keyed (E.164, lower case), or why not.
pub fn erasure_target(phone: Option<&str>, email: Option<&str>) -> Result<(Option<String>, Option<String>), String> {
    let phone = match phone.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => Some(super::crm::e164(p).ok_or("the phone is not a phone number (use E.164, e.g. +15035550148)")?),
        None => None,
    };
    let email = match email.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => {
            let e = e.to_lowercase();
            let ok = e.len() <= 254 && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
            if !ok {
                return Err("the email is not an email address".into());
            }
            Some(e)
        }
        None => None,
    };
    if phone.is_none() && email.is_none() {
        return Err("name the caller by phone or email (or both)".into());
    }
    Ok((phone, email))
}

pub const CLEANUP_STAGE: &str = "cleanup-scheduled";
pub const CLEANUP_RUNS_TABLE: &str = "cleanup_runs";
pub const CLEANUP_RUNS_SCHEMA: &str = include_str!("../../schemas/analytics/cleanup_runs.json");

/// What one job did for one tenant in one run: a log line and a `cleanup_runs` row. Call ids only, never the
/// caller's details.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    pub job: Job,
    pub tenant_id: String,
    pub dry_run: bool,
    /// Counters, e.g. `scanned`, `erased`, `objects_deleted`, `redriven`, `ingested`, `requests`.
    pub counts: BTreeMap<&'static str, u64>,
    /// Whether the job reached the end of its work (false: its budget ran out; the next run resumes).
    pub complete: bool,
    /// Call ids acted on (or, in a dry run, that would be), at most `LISTED` of them.
    pub calls: Vec<String>,
    /// Failures that did not stop the job (each item is tried again next run).
    pub errors: Vec<String>,
    pub note: Option<String>,
    pub duration_ms: f64,
}

impl JobReport {
    /// Calls listed in a report (a dry run's listing is the point; beyond this, the counts say how many).
    pub const LISTED: usize = 1000;

    pub fn new(job: Job, tenant_id: &str, dry_run: bool) -> Self {
        Self {
            job,
            tenant_id: tenant_id.to_owned(),
            dry_run,
            counts: BTreeMap::new(),
            complete: true,
            calls: vec![],
            errors: vec![],
            note: None,
            duration_ms: 0.0,
        }
    }

    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.counts.entry(name).or_default() += n;
    }

    pub fn listed(&mut self, call: &str) {
        if self.calls.len() < Self::LISTED {
            self.calls.push(call.to_owned());
        }
    }

    pub fn error(&mut self, e: impl Into<String>) {
        self.count("errors", 1);
        if self.errors.len() < 20 {
            self.errors.push(e.into());
        }
    }

    pub fn get(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// The `cleanup_runs` row; `run_id` names the run (the schedule slot), so a redelivered run's rows replace
    /// rather than add.
    pub fn row(&self, run_id: &str, at: DateTime<Utc>) -> AnalyticsRow {
        let insert_id = format!("{run_id}:{}:{}", self.tenant_id, self.job);
        let counts: BTreeMap<&str, u64> = self.counts.iter().map(|(k, v)| (*k, *v)).collect();
        let fields = json!({
            "insert_id": insert_id,
            "event_time": at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "run_id": run_id,
            "tenant_id": self.tenant_id,
            "job": self.job.as_str(),
            "dry_run": self.dry_run,
            "complete": self.complete,
            "scanned": self.get("scanned"),
            "acted": self.acted(),
            "errors": self.get("errors"),
            "counts": serde_json::to_string(&counts).expect("counts serialize"),
            "duration_ms": self.duration_ms,
            "note": self.note,
        });
        let Value::Object(mut fields) = fields else { unreachable!("an object literal") };
        fields.retain(|_, v| !v.is_null());
        AnalyticsRow { table: CLEANUP_RUNS_TABLE.into(), insert_id, fields }
    }

    /// The job's main count: recordings, transcripts and personal data removed from calls; calls erased;
    /// re-driven or given up; calls ingested.
    pub fn acted(&self) -> u64 {
        match self.job {
            Job::Retention => self.get("recordings") + self.get("transcripts") + self.get("pii"),
            Job::Erasure => self.get("calls_erased"),
            Job::StuckCalls => self.get("redriven") + self.get("given_up"),
            Job::Reconciliation => self.get("ingested"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallId, LeadDetails, TenantId};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn requests_name_jobs_or_mean_all() {
        assert_eq!(RunRequest::parse(b"").unwrap(), RunRequest::default());
        assert_eq!(RunRequest::parse(b" {} ").unwrap().jobs, Job::ALL);
        let r =
            RunRequest::parse(br#"{"jobs": ["reconciliation", "retention", "retention"], "dry_run": true}"#).unwrap();
        assert_eq!(r.jobs, [Job::Retention, Job::Reconciliation]);
        assert!(r.dry_run);
        assert!(RunRequest::parse(br#"{"jobs": ["vacuum"]}"#).unwrap_err().contains("vacuum"));
        assert!(RunRequest::parse(br#"{"jobs": [], "force": true}"#).unwrap_err().contains("force"));
        assert!(RunRequest::parse(b"[1]").is_err());
    }

    #[test]
    fn retention_walks_each_window_once_and_resumes() {
        let mut c = RetentionCursor::default();
        let cut1 = at("2026-01-10T00:00:00Z");
        let pass = c.pass(cut1).unwrap();
        assert_eq!(pass, WindowPass { from: None, upto: cut1, after: None });
        c = c.advance(&pass, Some("CAL5"), false);
        assert_eq!(c.pass(at("2026-01-11T00:00:00Z")).unwrap().after.as_deref(), Some("CAL5"), "resumes its pass");
        let pass = c.pass(cut1).unwrap();
        c = c.advance(&pass, None, true);
        assert_eq!(c, RetentionCursor { done_upto: Some(cut1), pass: None });
        assert_eq!(c.pass(cut1), None, "nothing new");
        assert_eq!(c.pass(at("2026-01-01T00:00:00Z")), None, "a longer retention waits for time to catch up");
        let next = c.pass(at("2026-01-11T00:00:00Z")).unwrap();
        assert_eq!(next.from, Some(cut1), "only the new day");
        assert_eq!(RetentionCursor::parse(Some(&c.encode())), c);
        assert_eq!(RetentionCursor::parse(Some("garbage")), RetentionCursor::default());
    }

    #[test]
    fn reconciliation_passes_are_spaced_and_the_budget_is_per_clock_hour() {
        let s = ReconcileSettings::default();
        let mut c = ReconcileCursor::default();
        let now = at("2026-03-01T12:10:00Z");
        let pass = c.pass(now, &s).unwrap();
        assert_eq!((pass.start, pass.end), (at("2026-02-27T12:10:00Z"), at("2026-03-01T11:40:00Z")));
        c.pass = None;
        assert_eq!(c.pass(now + chrono::Duration::minutes(59), &s), None);
        assert!(c.pass(now + chrono::Duration::minutes(60), &s).is_some());
        let mut b = HourBudget::default();
        assert!((0..3).all(|_| b.take(now, 3)));
        assert!(!b.take(at("2026-03-01T12:59:59Z"), 3));
        assert!(b.take(at("2026-03-01T13:00:00Z"), 3), "a new hour");
    }

    #[test]
    fn each_stuck_state_has_its_redrive() {
        let mut call = CallRecord {
            tenant_id: TenantId::parse("acme").unwrap(),
            call_id: CallId::parse("CAL1").unwrap(),
            source: CallSource::Callrail,
            state: CallState::Received,
            state_reason: None,
            lead: LeadDetails { recording_url: Some("https://r".into()), ..Default::default() },
            recording_object: None,
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        };
        assert_eq!(Redrive::for_call(&call), Ok(Redrive::FetchRecording { recording_url: "https://r".into() }));
        call.lead.recording_url = None;
        assert!(Redrive::for_call(&call).is_err());
        call.source = CallSource::Form;
        assert_eq!(Redrive::for_call(&call), Ok(Redrive::StoreFormText));
        for (state, r) in [
            (CallState::RecordingStored, Redrive::RewriteRecording),
            (CallState::Transcribed, Redrive::RewriteTranscript),
            (CallState::Analysed, Redrive::NewCrmChain),
        ] {
            call.state = state;
            assert_eq!(Redrive::for_call(&call), Ok(r));
        }
        call.state = CallState::Delivered;
        assert!(Redrive::for_call(&call).is_err());
    }

    #[test]
    fn erasure_targets_are_normalised_or_refused() {
        assert_eq!(
            erasure_target(Some("(503) 555-0148"), Some(" Dana@Example.COM ")).unwrap(),
            (Some("+15035550148".into()), Some("dana@example.com".into()))
        );
        assert_eq!(erasure_target(None, Some("a@b.co")).unwrap(), (None, Some("a@b.co".into())));
        assert!(erasure_target(Some("call me"), None).unwrap_err().contains("phone"));
        assert!(erasure_target(None, Some("dana")).unwrap_err().contains("email"));
        assert!(erasure_target(Some(" "), None).unwrap_err().contains("phone or email"));
    }

    #[test]
    fn reports_become_rows_that_fit_their_table() {
        let mut r = JobReport::new(Job::Erasure, "acme", false);
        r.count("scanned", 10);
        r.count("calls_erased", 4);
        r.count("objects_deleted", 6);
        r.listed("CAL1");
        let row = r.row("2026-03-01T12:15:00Z", at("2026-03-01T12:15:03Z"));
        crate::domain::analytics::validate(&row).unwrap();
        assert_eq!(row.fields["acted"], 4);
        assert_eq!(row.fields["counts"], r#"{"calls_erased":4,"objects_deleted":6,"scanned":10}"#);
        assert!(!row.fields.contains_key("note"));
    }
}
