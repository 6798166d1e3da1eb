//! Webhook signature checks on attacker-controlled headers: CallRail's `Signature` and Standard Webhooks'
//! `webhook-id` / `webhook-timestamp` / `webhook-signature`, plus the `whsec_` secret parser.
//! Input, split on the first four newlines: `key\nid\ntimestamp\nsignature\nbody` (missing parts are absent headers).
#![no_main]

use callflow::domain::signature::{
    SignatureError, StandardWebhookHeaders, sign_callrail, sign_standard_webhook, standard_webhooks_key,
    verify_callrail, verify_standard_webhook,
};
use libfuzzer_sys::fuzz_target;

/// The clock on-webhook would read (Unix seconds; any realistic value) and its default tolerance.
const NOW: i64 = 1_750_000_000;
const TOLERANCE: i64 = 300;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let key = parts.next().unwrap_or_default();
    let text = |p: Option<&[u8]>| p.map(|b| String::from_utf8_lossy(b).into_owned());
    let (id, ts, sig) = (text(parts.next()), text(parts.next()), text(parts.next()));
    let body = parts.next().unwrap_or_default();

    // CallRail: whatever the header, an error or a match; a match means the header is the body's HMAC.
    let got = verify_callrail(&[key], body, sig.as_deref());
    let good = sign_callrail(key, body);
    if got.is_ok() {
        assert_eq!(sig.as_deref().map(str::trim), Some(good.as_str()), "accepted a signature that is not the HMAC");
    }
    assert_eq!(verify_callrail(&[key], body, Some(&good)), Ok(()));
    assert_eq!(verify_callrail(&[b"another key", key], body, Some(&good)), Ok(()), "rotation");
    assert_eq!(verify_callrail(&[], body, sig.as_deref()), Err(SignatureError::NoKey));

    // Standard Webhooks: the secret as configured, then the request's three headers.
    // on-webhook verifies with the decoded `whsec_` key; a line that is not one is used as raw key bytes here.
    let secret = String::from_utf8_lossy(key);
    let key = match standard_webhooks_key(&secret) {
        Ok(k) => {
            assert!(!k.is_empty());
            k
        }
        Err(_) => key.to_vec(),
    };
    let key = key.as_slice();
    let headers = StandardWebhookHeaders { id: id.as_deref(), timestamp: ts.as_deref(), signature: sig.as_deref() };
    let got = verify_standard_webhook(&[key], &headers, body, NOW, TOLERANCE);
    if got.is_ok() {
        let (id, ts) = (id.as_deref().unwrap(), ts.as_deref().unwrap());
        let ts_num: i64 = ts.trim().parse().expect("an accepted timestamp is a number");
        assert!(NOW.checked_sub(ts_num).is_some_and(|d| d.abs() <= TOLERANCE), "accepted stale timestamp {ts:?}");
        // The signature covers exactly `id.timestamp.body` as sent; only a canonical timestamp can match ours.
        if ts == ts_num.to_string() {
            let ours = sign_standard_webhook(key, id, ts_num, body);
            assert!(
                sig.as_deref().unwrap().split_whitespace().any(|s| s == ours),
                "accepted a signature we did not make"
            );
        }
    }
    // A signature made now verifies; the same one an hour later is stale.
    if let Some(id) = id.as_deref() {
        let ours = sign_standard_webhook(key, id, NOW, body);
        let now = NOW.to_string();
        let signed = StandardWebhookHeaders { id: Some(id), timestamp: Some(&now), signature: Some(&ours) };
        assert_eq!(verify_standard_webhook(&[key], &signed, body, NOW, TOLERANCE), Ok(()));
        assert_eq!(verify_standard_webhook(&[key], &signed, body, NOW + 3600, TOLERANCE), Err(SignatureError::Stale));
    }
});
