//! The CallRail webhook body as on-webhook reads it (after the signature): parse, call id, company ids, kind, lead.
//! Input: the raw request body.
#![no_main]

use callflow::domain::call::LeadDetails;
use callflow::domain::callrail::{CallRailEventKind, CallRailWebhook};
use callflow::domain::ids::CallId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(hook) = CallRailWebhook::parse(body) else { return };

    // Accepted means an object. (Not necessarily valid JSON throughout: serde skips unknown fields without
    // checking their strings' UTF-8 or surrogates, so no stricter check is made here.)
    assert_eq!(body.trim_ascii_start().first(), Some(&b'{'));

    // The call id is the resource id, else the numeric id; ids are trimmed and never empty.
    match hook.call_id() {
        Ok(id) => {
            assert!(!id.is_empty() && id == id.trim(), "call id {id:?}");
            assert_eq!(Some(id), hook.resource_id.as_deref().or(hook.id.as_deref()));
            let _ = CallId::parse(id);
        }
        Err(_) => assert!(hook.resource_id.is_none() && hook.id.is_none()),
    }
    match hook.company_ids() {
        Ok(ids) => {
            assert!(!ids.is_empty() && ids.len() <= 2);
            assert!(ids.iter().all(|id| !id.is_empty() && *id == id.trim()), "company ids {ids:?}");
        }
        Err(_) => assert!(hook.company_resource_id.is_none() && hook.company_id.is_none()),
    }
    assert_eq!(hook.kind() == CallRailEventKind::CallModified, hook.changes.is_some());

    // The lead is stored as JSON and read back by later stages: it must survive the round trip unchanged.
    let lead = hook.lead_details();
    assert!(lead.tags.iter().all(|t| !t.is_empty()), "tags {:?}", lead.tags);
    let json = serde_json::to_string(&lead).expect("a lead serializes");
    let again: LeadDetails = serde_json::from_str(&json).expect("a serialized lead parses");
    assert_eq!(again, lead, "lead round trip through {json}");

    // Parsing is a function of the bytes.
    assert_eq!(CallRailWebhook::parse(body).as_ref(), Ok(&hook));
});
