//! CallRail post-call and call-modified webhook payloads.
//!
//! CallRail moved from numeric ids (`id`, `company_id`) to resource ids (`resource_id` = `CAL…`,
//! `company_resource_id` = `COM…`), and its samples still show the old ones: both are accepted. Numbers arrive
//! as strings in some fields (`duration: "13"`) and as numbers in others, so every numeric field takes both.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::call::LeadDetails;

/// The fields we use. Unknown fields are ignored on purpose: CallRail adds fields without notice.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CallRailWebhook {
    #[serde(deserialize_with = "opt_id")]
    pub resource_id: Option<String>,
    #[serde(deserialize_with = "opt_id")]
    pub id: Option<String>,
    #[serde(deserialize_with = "opt_id")]
    pub company_resource_id: Option<String>,
    #[serde(deserialize_with = "opt_id")]
    pub company_id: Option<String>,
    #[serde(deserialize_with = "opt_bool")]
    pub answered: Option<bool>,
    #[serde(deserialize_with = "opt_bool")]
    pub voicemail: Option<bool>,
    #[serde(deserialize_with = "opt_text")]
    pub direction: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub call_type: Option<String>,
    #[serde(deserialize_with = "opt_u32")]
    pub duration: Option<u32>,
    #[serde(deserialize_with = "opt_text")]
    pub start_time: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub customer_name: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub customer_phone_number: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub customer_city: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub customer_state: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub customer_country: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub tracking_phone_number: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub source_name: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub recording: Option<String>,
    #[serde(deserialize_with = "opt_u32")]
    pub recording_duration: Option<u32>,
    #[serde(deserialize_with = "opt_text")]
    pub transcription: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub lead_status: Option<String>,
    #[serde(deserialize_with = "tags")]
    pub tags: Vec<String>,
    #[serde(deserialize_with = "opt_text")]
    pub utm_source: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub utm_medium: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub utm_campaign: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub utm_term: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub utm_content: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub gclid: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub landing_page_url: Option<String>,
    #[serde(deserialize_with = "opt_text")]
    pub referring_url: Option<String>,
    /// Present only on call-modified webhooks: which fields changed.
    pub changes: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRailEventKind {
    PostCall,
    CallModified,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("body is not a JSON object: {0}")]
    Json(String),
    #[error("payload has neither resource_id nor id")]
    MissingCallId,
    #[error("payload has neither company_resource_id nor company_id")]
    MissingCompany,
}

impl CallRailWebhook {
    pub fn parse(body: &[u8]) -> Result<Self, PayloadError> {
        // serde would read a JSON array positionally into the struct: insist on an object.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(PayloadError::Json("expected a JSON object".into()));
        }
        serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))
    }

    /// The call id we key on: the resource id when CallRail sends one, the legacy numeric id otherwise.
    pub fn call_id(&self) -> Result<&str, PayloadError> {
        self.resource_id.as_deref().or(self.id.as_deref()).ok_or(PayloadError::MissingCallId)
    }

    /// Every company id the payload names (resource and/or numeric); the tenant must own one of them.
    pub fn company_ids(&self) -> Result<Vec<&str>, PayloadError> {
        let ids: Vec<&str> =
            [self.company_resource_id.as_deref(), self.company_id.as_deref()].into_iter().flatten().collect();
        if ids.is_empty() { Err(PayloadError::MissingCompany) } else { Ok(ids) }
    }

    /// Call-modified payloads repeat the call and add `changes`; post-call payloads have no `changes`.
    pub fn kind(&self) -> CallRailEventKind {
        if self.changes.is_some() { CallRailEventKind::CallModified } else { CallRailEventKind::PostCall }
    }

    pub fn lead_details(&self) -> LeadDetails {
        LeadDetails {
            company_id: self.company_resource_id.clone().or_else(|| self.company_id.clone()),
            answered: self.answered,
            voicemail: self.voicemail,
            direction: self.direction.clone(),
            call_type: self.call_type.clone(),
            duration_secs: self.duration,
            start_time: self.start_time.clone(),
            customer_name: self.customer_name.clone(),
            customer_phone: self.customer_phone_number.clone(),
            customer_city: self.customer_city.clone(),
            customer_state: self.customer_state.clone(),
            customer_country: self.customer_country.clone(),
            tracking_phone_number: self.tracking_phone_number.clone(),
            source_name: self.source_name.clone(),
            recording_url: self.recording.clone(),
            recording_duration_secs: self.recording_duration,
            transcription: self.transcription.clone(),
            lead_status: self.lead_status.clone(),
            tags: self.tags.clone(),
            utm_source: self.utm_source.clone(),
            utm_medium: self.utm_medium.clone(),
            utm_campaign: self.utm_campaign.clone(),
            utm_term: self.utm_term.clone(),
            utm_content: self.utm_content.clone(),
            gclid: self.gclid.clone(),
            landing_page_url: self.landing_page_url.clone(),
            referring_url: self.referring_url.clone(),
            ..LeadDetails::default()
        }
    }
}

/// An id given as a number or a string; empty strings and null mean absent.
fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Free text; CallRail sends "" for absent values, which we treat as absent so merges do not erase data.
fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0).round() as u64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f.max(0.0).round() as u64),
        _ => None,
    }
    .map(|v| v.min(u64::from(u32::MAX)) as u32))
}

fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => Some(b),
        Value::String(s) => match s.as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_u64().map(|v| v != 0),
        _ => None,
    })
}

/// Tags come as `["a","b"]`, as objects with a `name`, or as a comma-separated string.
fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../../fixtures/callrail/", $name))
        };
    }

    /// Parse → normalise → serialise → parse again gives the same lead: no field is lost or reshaped.
    fn round_trip(body: &[u8]) -> CallRailWebhook {
        let hook = CallRailWebhook::parse(body).unwrap();
        let lead = hook.lead_details();
        let again: LeadDetails = serde_json::from_str(&serde_json::to_string(&lead).unwrap()).unwrap();
        assert_eq!(again, lead);
        hook
    }

    #[test]
    fn legacy_numeric_ids() {
        let hook = round_trip(fixture!("docs-signature-vector.json"));
        assert_eq!(hook.call_id(), Ok("766970532"));
        assert_eq!(hook.company_ids(), Ok(vec!["155920786"]));
        assert_eq!(hook.kind(), CallRailEventKind::PostCall);
        let lead = hook.lead_details();
        assert_eq!((lead.answered, lead.voicemail, lead.duration_secs), (Some(false), Some(true), Some(13)));
        assert_eq!(lead.recording_duration_secs, Some(8));
        assert_eq!(lead.transcription, None, "empty strings are absent");
        assert_eq!(lead.utm_campaign.as_deref(), Some("Google AdWords"));
    }

    #[test]
    fn resource_ids_win_over_numeric_ones() {
        let hook = round_trip(fixture!("post-call-resource-ids.json"));
        assert_eq!(hook.call_id(), Ok("CALa1b2c3d4e5f60718293a4b5c6d7e8f90"));
        assert_eq!(hook.company_ids(), Ok(vec!["COM8154748ae6bd4e278a7cddd38a662f4f"]));
        let lead = hook.lead_details();
        assert_eq!((lead.duration_secs, lead.recording_duration_secs), (Some(187), Some(181)));
        assert_eq!(lead.tags, ["kitchen"]);
        let both = br#"{"id": 5, "resource_id": "CALx", "company_id": 9, "company_resource_id": "COMy"}"#;
        let hook = CallRailWebhook::parse(both).unwrap();
        assert_eq!(hook.call_id(), Ok("CALx"));
        assert_eq!(hook.company_ids(), Ok(vec!["COMy", "9"]));
    }

    #[test]
    fn missing_optional_fields() {
        let hook = round_trip(fixture!("post-call-minimal.json"));
        let lead = hook.lead_details();
        assert_eq!(lead.duration_secs, Some(42));
        assert_eq!((lead.customer_phone, lead.recording_url, lead.voicemail), (None, None, None));
        assert!(lead.tags.is_empty());
    }

    #[test]
    fn call_modified_is_told_apart_and_tag_objects_are_read() {
        let hook = round_trip(fixture!("call-modified-recording.json"));
        assert_eq!(hook.kind(), CallRailEventKind::CallModified);
        assert!(hook.lead_details().recording_url.is_some());
        assert_eq!(round_trip(fixture!("post-call-bayside.json")).tags, ["bath"]);
    }

    #[test]
    fn payloads_without_ids_or_that_are_not_objects_are_errors() {
        assert_eq!(CallRailWebhook::parse(b"{}").unwrap().call_id(), Err(PayloadError::MissingCallId));
        assert_eq!(CallRailWebhook::parse(br#"{"id": 1}"#).unwrap().company_ids(), Err(PayloadError::MissingCompany));
        for bad in [&b"[]"[..], b"null", b"{\"id\": ", b"\"x\""] {
            assert!(CallRailWebhook::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
