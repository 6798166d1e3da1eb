use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{CallId, TenantId};

/// Where a call is in the chain. The main line only moves forward; the last three are terminal alternatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Received,
    RecordingStored,
    Transcribed,
    Analysed,
    Delivered,
    Skipped,
    Spam,
    DeadLettered,
}

impl CallState {
    pub const ALL: [CallState; 8] = [
        Self::Received,
        Self::RecordingStored,
        Self::Transcribed,
        Self::Analysed,
        Self::Delivered,
        Self::Skipped,
        Self::Spam,
        Self::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::RecordingStored => "recording_stored",
            Self::Transcribed => "transcribed",
            Self::Analysed => "analysed",
            Self::Delivered => "delivered",
            Self::Skipped => "skipped",
            Self::Spam => "spam",
            Self::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Delivered | Self::Skipped | Self::Spam | Self::DeadLettered)
    }

    fn rank(self) -> u8 {
        match self {
            Self::Received => 0,
            Self::RecordingStored => 1,
            Self::Transcribed => 2,
            Self::Analysed => 3,
            _ => 4,
        }
    }

    /// Whether a stage may move a call from `self` to `to`. Duplicate and late events ask to move a call to a
    /// state it has already passed; this refuses, so they can never move it backwards.
    pub fn can_move_to(self, to: CallState) -> bool {
        !self.is_terminal() && to.rank() > self.rank()
    }
}

impl std::fmt::Display for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSource {
    Callrail,
    Form,
}

impl CallSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Callrail => "callrail",
            Self::Form => "form",
        }
    }
}

/// What we know about the lead, normalised from a CallRail payload or a form. Stored as JSON on the call; later
/// stages read it. PII lives here in fields (the CRM needs it), never in logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeadDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_zip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording_duration_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcription: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_status: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gclid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landing_page_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referring_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ingested by reconciliation (listed by CallRail's API; its webhook never came).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciled: Option<bool>,
}

impl LeadDetails {
    /// The keys a caller's contact details are found by (an erasure request names a phone or an email): the
    /// E.164 form of `customer_phone` and the trimmed, lower-cased `customer_email`.
    pub fn contact_keys(&self) -> (Option<String>, Option<String>) {
        let phone = self.customer_phone.as_deref().and_then(super::crm::e164);
        // Longer than an address can be (RFC 5321: 254): no email, and no unbounded index key.
        let email =
            self.customer_email.as_deref().map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty() && e.len() <= 254);
        (phone, email)
    }

    /// Fold a later event's details into what we have: a field the later event carries wins, a field it lacks
    /// keeps its value. CallRail's call-modified payloads repeat the whole call, so this is also safe for them.
    pub fn merge_from(&mut self, newer: &LeadDetails) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f.clone(); } )* };
        }
        take!(
            company_id,
            answered,
            voicemail,
            direction,
            call_type,
            duration_secs,
            start_time,
            customer_name,
            customer_phone,
            customer_email,
            customer_city,
            customer_state,
            customer_country,
            customer_zip,
            tracking_phone_number,
            source_name,
            recording_url,
            recording_duration_secs,
            transcription,
            lead_status,
            utm_source,
            utm_medium,
            utm_campaign,
            utm_term,
            utm_content,
            gclid,
            landing_page_url,
            referring_url,
            form_name,
            message,
            reconciled
        );
        if !newer.tags.is_empty() {
            self.tags = newer.tags.clone();
        }
    }
}

/// One call (or form lead) as the state store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub tenant_id: TenantId,
    pub call_id: CallId,
    pub source: CallSource,
    pub state: CallState,
    /// Why the call is in a terminal or unusual state (`unanswered`, `no_recording`, a dead-letter reason, ...).
    pub state_reason: Option<String>,
    pub lead: LeadDetails,
    pub recording_object: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        use CallState::*;
        assert!(Received.can_move_to(RecordingStored));
        assert!(Received.can_move_to(Skipped));
        assert!(RecordingStored.can_move_to(DeadLettered));
        assert!(!RecordingStored.can_move_to(Received));
        assert!(!RecordingStored.can_move_to(RecordingStored));
        assert!(!Delivered.can_move_to(DeadLettered));
        assert!(!Skipped.can_move_to(Received));
        for s in CallState::ALL {
            assert_eq!(CallState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn contact_keys_are_normalised() {
        let lead = LeadDetails {
            customer_phone: Some("(503) 555-0148".into()),
            customer_email: Some("  Kay@Example.COM ".into()),
            ..Default::default()
        };
        assert_eq!(lead.contact_keys(), (Some("+15035550148".into()), Some("kay@example.com".into())));
        let blank =
            LeadDetails { customer_phone: Some("n/a".into()), customer_email: Some(" ".into()), ..Default::default() };
        assert_eq!(blank.contact_keys(), (None, None));
        assert_eq!(LeadDetails::default().contact_keys(), (None, None));
        let long = LeadDetails { customer_email: Some(format!("{}@x.com", "a".repeat(300))), ..Default::default() };
        assert_eq!(long.contact_keys().1, None);
    }

    #[test]
    fn merge_keeps_known_fields() {
        let mut a = LeadDetails { customer_name: Some("Kay".into()), duration_secs: Some(10), ..Default::default() };
        let b = LeadDetails { recording_url: Some("https://r".into()), duration_secs: Some(12), ..Default::default() };
        a.merge_from(&b);
        assert_eq!(a.customer_name.as_deref(), Some("Kay"));
        assert_eq!(a.duration_secs, Some(12));
        assert_eq!(a.recording_url.as_deref(), Some("https://r"));
    }
}
