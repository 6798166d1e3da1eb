//! A web-form lead as on-webhook reads it (after the signature): parse, lead details, and the lead id derived from
//! the sender's `webhook-id`. Input: `webhook-id` line, then the body (`id\nbody`); no newline means all body.
#![no_main]

use callflow::domain::call::LeadDetails;
use callflow::domain::form::{FormSubmission, form_call_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (webhook_id, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]), &data[i + 1..]),
        None => (Default::default(), data),
    };
    // Any id maps to a path-safe call id, the same one every time.
    let id = form_call_id(&webhook_id);
    assert_eq!(id, form_call_id(&webhook_id));
    assert!(id.as_str().starts_with("FRM") && id.as_str().len() == 35, "{}", id.as_str());

    let Ok(form) = FormSubmission::parse(body) else { return };
    // Accepted means an object. (Not necessarily valid JSON throughout: serde skips unknown fields without
    // checking their strings' UTF-8 or surrogates, so no stricter check is made here.)
    assert_eq!(body.trim_ascii_start().first(), Some(&b'{'));

    let lead = form.lead_details();
    // A form lead always has a way to reach the customer, and the field bounds hold.
    assert!(lead.customer_phone.is_some() || lead.customer_email.is_some(), "no contact in {lead:?}");
    for field in [&lead.customer_name, &lead.customer_phone, &lead.customer_email, &lead.customer_zip, &lead.form_name]
    {
        assert!(field.as_deref().is_none_or(|s| s.len() <= 512 && !s.is_empty() && s == s.trim()));
    }
    assert!(lead.message.as_deref().is_none_or(|s| s.len() <= 8 * 1024));
    assert!(lead.source_name.is_some());

    let json = serde_json::to_string(&lead).expect("a lead serializes");
    let again: LeadDetails = serde_json::from_str(&json).expect("a serialized lead parses");
    assert_eq!(again, lead, "lead round trip through {json}");
    assert_eq!(FormSubmission::parse(body).as_ref(), Ok(&form));
});
