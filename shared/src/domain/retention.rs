//! What cleanup removes and when: a lead without its personal data, the per-tenant retention of recordings,
//! transcripts and personal fields, and when a call that stopped moving is re-driven or given up. Pure: no I/O;
//! the caller brings the time.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::analysis::{Analysis, CallerDetails};
use super::call::{CallRecord, CallSource, CallState, LeadDetails};
use super::{pii, rules};

/// `[tenant.retention]`: how long each kind of data is kept, in days from the call. Absent fields take the
/// tenant's `retention_days`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    #[serde(default)]
    pub recordings_days: Option<u32>,
    #[serde(default)]
    pub transcripts_days: Option<u32>,
    /// The caller's name, phone, email, address fields, free text and links that may carry them.
    #[serde(default)]
    pub pii_days: Option<u32>,
}

/// The retention in force for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub recordings: u32,
    pub transcripts: u32,
    pub pii: u32,
}

impl RetentionSettings {
    pub fn resolve(&self, retention_days: u32) -> Retention {
        Retention {
            recordings: self.recordings_days.unwrap_or(retention_days),
            transcripts: self.transcripts_days.unwrap_or(retention_days),
            pii: self.pii_days.unwrap_or(retention_days),
        }
    }
}

/// Whether data of a call made at `created` is past `days` at `now`: on the boundary day itself (exactly `days`
/// days later) it is.
pub fn expired(created: DateTime<Utc>, now: DateTime<Utc>, days: u32) -> bool {
    now - created >= chrono::Duration::days(i64::from(days))
}

/// What retention removes from one call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    pub recording: bool,
    pub transcript: bool,
    pub pii: bool,
}

impl Due {
    pub fn any(&self) -> bool {
        self.recording || self.transcript || self.pii
    }
}

impl Retention {
    /// The earliest `created_at` that is not yet due for anything: calls created before it need a look.
    pub fn oldest_kept(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let days = self.recordings.min(self.transcripts).min(self.pii);
        now - chrono::Duration::days(i64::from(days))
    }

    pub fn due(&self, call: &CallRecord, now: DateTime<Utc>) -> Due {
        Due {
            recording: call.source == CallSource::Callrail && expired(call.created_at, now, self.recordings),
            transcript: expired(call.created_at, now, self.transcripts),
            pii: expired(call.created_at, now, self.pii),
        }
    }
}

/// The lead without the caller's personal data, and the names of the fields that held some (for the erasure log,
/// which records what was erased, never the values). Kept: what the call was (answered, voicemail, direction,
/// type, duration, time), the business's own tracking number, and marketing attribution without click ids;
/// links keep their path but lose their query (which can carry an email or a phone).
pub fn scrub(lead: &LeadDetails) -> (LeadDetails, Vec<&'static str>) {
    let mut out = lead.clone();
    let mut erased = vec![];
    macro_rules! blank {
        ($($field:ident),*) => {$(
            if out.$field.take().is_some() {
                erased.push(stringify!($field));
            }
        )*};
    }
    blank!(
        customer_name,
        customer_phone,
        customer_email,
        customer_city,
        customer_zip,
        recording_url,
        transcription,
        message,
        gclid
    );
    for (field, value) in [("landing_page_url", &mut out.landing_page_url), ("referring_url", &mut out.referring_url)] {
        if let Some(url) = value.as_mut()
            && let Some(at) = url.find(['?', '#'])
        {
            url.truncate(at);
            erased.push(field);
        }
    }
    (out, erased)
}

/// What of one caller a call's free text may hold, gathered from the call's lead and analysis before they are
/// blanked: their name (each word of it), phone, email and ZIP. `forget` takes them out of texts the chain wrote
/// beside the lead: a stage's failure reason (a CRM's validation message quotes the lead back), a dead letter, a
/// queued work item, the analysis's reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerTraces {
    /// Lower-cased words of the caller's name (two letters or more), and their ZIP.
    words: Vec<String>,
    /// Lower-cased emails.
    emails: Vec<String>,
}

/// What a forgotten word becomes.
pub const FORGOTTEN: &str = "[erased]";

impl CallerTraces {
    pub fn of(lead: &LeadDetails, caller: &CallerDetails) -> Self {
        let mut words: Vec<String> = Vec::new();
        for name in [&lead.customer_name, &caller.name].into_iter().flatten() {
            // A word of a name has letters ("Caller 10" must not forget every "10" in a date).
            let words_of_name = name
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 2 && w.chars().any(char::is_alphabetic));
            words.extend(words_of_name.map(str::to_lowercase));
        }
        // A ZIP is five digits or more (ZIP+4, other countries' codes): shorter runs are too common to forget.
        let zips = [&lead.customer_zip, &caller.zip].into_iter().flatten().map(|z| z.trim().to_lowercase());
        words.extend(zips.filter(|z| z.chars().filter(char::is_ascii_alphanumeric).count() >= 5));
        words.retain(|w| !w.is_empty());
        words.sort();
        words.dedup();
        let mut emails: Vec<String> =
            [&lead.customer_email, &caller.email].into_iter().flatten().map(|e| e.trim().to_lowercase()).collect();
        emails.sort();
        emails.dedup();
        Self { words, emails }
    }

    /// `text` without the caller: every phone number and email masked (as in logs, whoever's they are), the known
    /// emails and the words of the caller's name and ZIP replaced by `[erased]`.
    pub fn forget<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = pii::scrub(text);
        for email in &self.emails {
            while let Some(at) = find_ignoring_ascii_case(&out, email) {
                let mut s = out.into_owned();
                s.replace_range(at..at + email.len(), FORGOTTEN);
                out = Cow::Owned(s);
            }
        }
        if self.words.is_empty() || !out.split(|c: char| !c.is_alphanumeric()).any(|w| self.is_word(w)) {
            return out;
        }
        let mut s = String::with_capacity(out.len());
        let mut word = String::new();
        for c in out.chars() {
            if c.is_alphanumeric() {
                word.push(c);
                continue;
            }
            s.push_str(if self.is_word(&word) { FORGOTTEN } else { &word });
            word.clear();
            s.push(c);
        }
        s.push_str(if self.is_word(&word) { FORGOTTEN } else { &word });
        Cow::Owned(s)
    }

    /// Every string inside `value` forgotten (a queued work item's or a dead letter's JSON; numbers stay numbers).
    pub fn forget_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.forget(s).into_owned()),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.forget_json(v)).collect()),
            Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), self.forget_json(v))).collect()),
            other => other.clone(),
        }
    }

    /// A stored JSON text forgotten the same way (text that is not JSON is forgotten as text); borrowed when
    /// nothing in it was the caller's.
    pub fn forget_json_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => {
                let forgotten = self.forget_json(&v);
                if forgotten == v { Cow::Borrowed(text) } else { Cow::Owned(forgotten.to_string()) }
            }
            Err(_) => self.forget(text),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        !w.is_empty() && self.words.binary_search(&w.to_lowercase()).is_ok()
    }
}

fn find_ignoring_ascii_case(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| haystack.is_char_boundary(i) && h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// The analysis without the caller: no contact details, a summary retold from the findings alone (the model's
/// summary is the caller's story in free text, and may name them), and reasons with the caller's words forgotten.
/// What the call was (intent, project, score, urgency, budget, sentiment, spam) stays. Returns what changed, for
/// the erasure log.
pub fn forget_in_analysis(analysis: &mut Analysis, traces: &CallerTraces) -> Vec<&'static str> {
    let mut erased = vec![];
    let f = &mut analysis.findings;
    if f.caller != CallerDetails::default() {
        f.caller = CallerDetails::default();
        erased.push("analysis.caller");
    }
    let retold = rules::retold_summary(f);
    if f.summary != retold {
        f.summary = retold;
        erased.push("analysis.summary");
    }
    let mut reasons_changed = false;
    for reason in &mut f.score_reasons {
        if let Cow::Owned(s) = traces.forget(reason) {
            reasons_changed |= s != *reason;
            *reason = s;
        }
    }
    if reasons_changed {
        erased.push("analysis.score_reasons");
    }
    erased
}

/// How long a call may sit in a state that is not final before the event that should move it is sent again, and
/// how often that is tried before the call is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckPolicy {
    /// `received` with a recording to fetch (the fetch retries for about half an hour on its own).
    pub received: Duration,
    /// `recording_stored` (transcription; long calls on the offline engine take minutes).
    pub recording_stored: Duration,
    /// `transcribed` (analysis).
    pub transcribed: Duration,
    /// `analysed` (delivery: a CRM retry chain may legitimately run for its whole maximum age).
    pub analysed: Duration,
    pub max_redrives: u32,
}

impl Default for StuckPolicy {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            received: minutes(60),
            recording_stored: minutes(60),
            transcribed: minutes(30),
            analysed: minutes(25 * 60),
            max_redrives: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stuck {
    /// Moving, or waiting as it should.
    No,
    /// Send the event that should have moved it again (the stages are idempotent).
    Redrive,
    /// Re-driven `max_redrives` times and still stuck: dead-letter it with this reason.
    GiveUp(String),
}

impl StuckPolicy {
    pub fn limit(&self, state: CallState) -> Option<Duration> {
        match state {
            CallState::Received => Some(self.received),
            CallState::RecordingStored => Some(self.recording_stored),
            CallState::Transcribed => Some(self.transcribed),
            CallState::Analysed => Some(self.analysed),
            _ => None,
        }
    }

    /// Whether `call`, re-driven `redrives` times already, is stuck at `now`.
    pub fn check(&self, call: &CallRecord, now: DateTime<Utc>, redrives: u32) -> Stuck {
        let Some(limit) = self.limit(call.state) else { return Stuck::No };
        let waiting = (now - call.updated_at).to_std().unwrap_or_default();
        if waiting < limit {
            return Stuck::No;
        }
        if redrives >= self.max_redrives {
            let hours = waiting.as_secs() / 3600;
            return Stuck::GiveUp(format!("stuck in {} for {hours} h after {redrives} re-drives", call.state.as_str()));
        }
        Stuck::Redrive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CallId, TenantId};

    fn call(state: CallState, created: DateTime<Utc>, updated: DateTime<Utc>) -> CallRecord {
        CallRecord {
            tenant_id: TenantId::parse("acme").unwrap(),
            call_id: CallId::parse("CAL1").unwrap(),
            source: CallSource::Callrail,
            state,
            state_reason: None,
            lead: LeadDetails::default(),
            recording_object: None,
            created_at: created,
            updated_at: updated,
        }
    }

    #[test]
    fn retention_is_due_on_the_boundary_day_not_before() {
        let t0 = DateTime::UNIX_EPOCH;
        let r =
            RetentionSettings { recordings_days: Some(30), transcripts_days: None, pii_days: Some(90) }.resolve(365);
        assert_eq!(r, Retention { recordings: 30, transcripts: 365, pii: 90 });
        let c = call(CallState::Delivered, t0, t0);
        let day = |d: i64| t0 + chrono::Duration::days(d);
        assert_eq!(r.due(&c, day(30) - chrono::Duration::seconds(1)), Due::default());
        assert_eq!(r.due(&c, day(30)), Due { recording: true, transcript: false, pii: false });
        assert_eq!(r.due(&c, day(90)), Due { recording: true, transcript: false, pii: true });
        assert!(r.due(&c, day(365)).transcript);
        assert_eq!(r.oldest_kept(day(100)), day(70));
        let form = CallRecord { source: CallSource::Form, ..c };
        assert!(!r.due(&form, day(40)).recording, "a form has no recording");
    }

    #[test]
    fn scrubbing_removes_the_callers_data_and_says_which_fields_held_some() {
        let lead = LeadDetails {
            answered: Some(true),
            duration_secs: Some(120),
            customer_name: Some("Dana Whitfield".into()),
            customer_phone: Some("+15035550148".into()),
            customer_email: Some("dana@example.com".into()),
            customer_state: Some("OR".into()),
            message: Some("call me at 503 555 0148".into()),
            utm_source: Some("google".into()),
            gclid: Some("Cj0KCQ".into()),
            landing_page_url: Some("https://acme.example/kitchens?email=dana%40example.com".into()),
            referring_url: Some("https://www.google.com/".into()),
            ..LeadDetails::default()
        };
        let (clean, erased) = scrub(&lead);
        assert_eq!(
            erased,
            ["customer_name", "customer_phone", "customer_email", "message", "gclid", "landing_page_url"]
        );
        assert_eq!(clean.customer_name, None);
        assert_eq!(clean.customer_phone, None);
        assert_eq!(clean.landing_page_url.as_deref(), Some("https://acme.example/kitchens"));
        assert_eq!(clean.referring_url.as_deref(), Some("https://www.google.com/"));
        assert_eq!(
            (clean.answered, clean.duration_secs, clean.customer_state.as_deref()),
            (Some(true), Some(120), Some("OR"))
        );
        assert_eq!(clean.utm_source.as_deref(), Some("google"));
        let json = serde_json::to_string(&clean).unwrap();
        assert!(!json.contains("5550148") && !json.contains("dana"), "{json}");
        assert_eq!(scrub(&clean).1, Vec::<&str>::new(), "scrubbing twice erases nothing more");
    }

    #[test]
    fn stuck_calls_are_redriven_then_given_up() {
        let t0 = DateTime::UNIX_EPOCH;
        let p = StuckPolicy::default();
        let c = call(CallState::Transcribed, t0, t0);
        assert_eq!(p.check(&c, t0 + chrono::Duration::minutes(29), 0), Stuck::No);
        assert_eq!(p.check(&c, t0 + chrono::Duration::minutes(30), 0), Stuck::Redrive);
        assert_eq!(p.check(&c, t0 + chrono::Duration::minutes(30), 2), Stuck::Redrive);
        assert!(
            matches!(p.check(&c, t0 + chrono::Duration::hours(5), 3), Stuck::GiveUp(r) if r.contains("transcribed for 5 h"))
        );
        let waiting_for_crm = call(CallState::Analysed, t0, t0);
        assert_eq!(
            p.check(&waiting_for_crm, t0 + chrono::Duration::hours(24), 0),
            Stuck::No,
            "a CRM retry chain may run 24 h"
        );
        let done = call(CallState::Delivered, t0, t0);
        assert_eq!(p.check(&done, t0 + chrono::Duration::days(30), 9), Stuck::No);
    }

    #[test]
    fn forgetting_a_caller_takes_their_name_phone_email_and_zip_out_of_free_text() {
        let lead = LeadDetails {
            customer_name: Some("Dana Whitfield".into()),
            customer_phone: Some("+15125550143".into()),
            customer_email: Some("Dana.W@Example.com".into()),
            ..LeadDetails::default()
        };
        let heard = CallerDetails { name: Some("Dana O'Hara".into()), zip: Some("97214".into()), ..Default::default() };
        let t = CallerTraces::of(&lead, &heard);
        let reason = "webhook refused the lead: vendor answered 422: {\"error\":\"duplicate contact: DANA Whitfield \
                      <dana.w@example.com>, phone (512) 555-0143, zip 97214; O'Hara\"}";
        let forgotten = t.forget(reason);
        for trace in ["DANA", "Whitfield", "dana.w", "555-0143", "97214", "Hara"] {
            assert!(!forgotten.contains(trace), "{trace} in {forgotten}");
        }
        assert!(
            forgotten.starts_with("webhook refused the lead: vendor answered 422: {\"error\":\"duplicate contact: ")
        );
        assert!(forgotten.contains("[erased] [erased]"), "{forgotten}");
        // A name's number is not a word of it: dates and ids keep their digits.
        let numbered = LeadDetails { customer_name: Some("Caller 10".into()), ..LeadDetails::default() };
        let t10 = CallerTraces::of(&numbered, &CallerDetails::default());
        assert_eq!(t10.forget("2026-10-13T20:38:01Z caller"), "2026-10-13T20:38:01Z [erased]");
        // Words that merely contain a name stay; text without the caller is returned as it is.
        assert_eq!(t.forget("Danaher Whitfields"), "Danaher Whitfields");
        assert!(matches!(t.forget("stuck in transcribed for 2 h"), Cow::Borrowed(_)));
        // JSON keeps its shape: numbers stay numbers, strings are forgotten.
        let json =
            serde_json::json!({"not_before": 1732312345678_i64, "lead": {"name": "Dana Whitfield", "tags": ["97214"]}});
        let out = t.forget_json(&json);
        assert_eq!(out["not_before"], 1732312345678_i64);
        assert_eq!(out["lead"]["name"], "[erased] [erased]");
        assert_eq!(out["lead"]["tags"][0], "[erased]");
        assert_eq!(t.forget_json_text("not json: Dana"), "not json: [erased]");
        assert_eq!(CallerTraces::of(&LeadDetails::default(), &CallerDetails::default()).forget("Dana"), "Dana");
    }

    #[test]
    fn an_analysis_forgets_the_caller_and_keeps_what_the_call_was() {
        use crate::domain::analysis::{Intent, ProjectType};
        let mut a: Analysis = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "analyzer": "gemini-2.5-flash", "intent": "new_lead", "project_type": "kitchen",
            "lead_score": 82, "score_reasons": ["Dana wants it done this month", "clear budget"], "urgency": "soon",
            "budget": "medium", "sentiment": "positive", "spam_likelihood": 3,
            "summary": "Dana Whitfield wants her kitchen redone. Call back after 5.",
            "caller": {"name": "Dana Whitfield", "callback_time": "after 5"},
            "usage": {"prompt_tokens": 900, "output_tokens": 120, "cost_usd": 0.0004}, "redactions": 0
        }))
        .unwrap();
        let lead = LeadDetails { customer_name: Some("Dana Whitfield".into()), ..LeadDetails::default() };
        let t = CallerTraces::of(&lead, &a.findings.caller);
        let erased = forget_in_analysis(&mut a, &t);
        assert_eq!(erased, ["analysis.caller", "analysis.summary", "analysis.score_reasons"]);
        let f = &a.findings;
        assert_eq!(f.caller, CallerDetails::default());
        assert_eq!(f.summary, "The caller asked about a kitchen project.");
        assert_eq!(f.score_reasons, ["[erased] wants it done this month", "clear budget"]);
        assert_eq!(
            (f.intent, f.project_type, f.lead_score, f.spam_likelihood),
            (Intent::NewLead, ProjectType::Kitchen, 82, 3)
        );
        assert_eq!(forget_in_analysis(&mut a, &t), Vec::<&str>::new(), "forgetting twice changes nothing more");
    }
}
