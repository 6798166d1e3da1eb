//! Web-form and direct-API leads, sent to `/webhooks/forms/{tenant}` signed with Standard Webhooks.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::call::LeadDetails;
use super::ids::CallId;

const MAX_FIELD: usize = 512;
const MAX_MESSAGE: usize = 8 * 1024;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct FormSubmission {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub zip: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub message: Option<String>,
    pub form_name: Option<String>,
    pub page_url: Option<String>,
    pub referrer: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    pub gclid: Option<String>,
    pub submitted_at: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("body is not a JSON object: {0}")]
    Json(String),
    #[error("a form lead needs a phone or an email")]
    NoContact,
    #[error("field {0} is too long")]
    TooLong(&'static str),
}

fn clean(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

impl FormSubmission {
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(FormError::Json("expected a JSON object".into()));
        }
        let form: Self = serde_json::from_slice(body).map_err(|e| FormError::Json(e.to_string()))?;
        if clean(&form.phone).is_none() && clean(&form.email).is_none() {
            return Err(FormError::NoContact);
        }
        for (name, v) in [
            ("name", &form.name),
            ("phone", &form.phone),
            ("email", &form.email),
            ("zip", &form.zip),
            ("form_name", &form.form_name),
            ("page_url", &form.page_url),
        ] {
            if v.as_deref().is_some_and(|s| s.len() > MAX_FIELD) {
                return Err(FormError::TooLong(name));
            }
        }
        if form.message.as_deref().is_some_and(|s| s.len() > MAX_MESSAGE) {
            return Err(FormError::TooLong("message"));
        }
        Ok(form)
    }

    pub fn lead_details(&self) -> LeadDetails {
        LeadDetails {
            customer_name: clean(&self.name),
            customer_phone: clean(&self.phone),
            customer_email: clean(&self.email),
            customer_zip: clean(&self.zip),
            customer_city: clean(&self.city),
            customer_state: clean(&self.state),
            message: clean(&self.message),
            form_name: clean(&self.form_name),
            landing_page_url: clean(&self.page_url),
            referring_url: clean(&self.referrer),
            utm_source: clean(&self.utm_source),
            utm_medium: clean(&self.utm_medium),
            utm_campaign: clean(&self.utm_campaign),
            utm_term: clean(&self.utm_term),
            utm_content: clean(&self.utm_content),
            gclid: clean(&self.gclid),
            start_time: clean(&self.submitted_at),
            source_name: clean(&self.utm_source).or_else(|| Some("Web form".to_owned())),
            ..LeadDetails::default()
        }
    }
}

/// A form lead's id, derived from the sender's `webhook-id` so a redelivered submission maps to the same lead.
pub fn form_call_id(webhook_id: &str) -> CallId {
    let digest = Sha256::digest(webhook_id.as_bytes());
    CallId::parse(&format!("FRM{}", &hex::encode(digest)[..32])).expect("hex is path-safe")
}
