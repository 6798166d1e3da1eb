//! Webhook signatures: CallRail's (HMAC-SHA1 over the raw body, Base64, header `Signature`) and Standard Webhooks'
//! (HMAC-SHA256 over `id.timestamp.body`, `v1,<base64>`, header `webhook-signature`).
//!
//! Both take a list of keys so a tenant can rotate: the old and new key are both active until CallRail (or the
//! form sender) has switched. Comparisons are constant-time (`Mac::verify_slice`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum SignatureError {
    #[error("no signing key is configured")]
    NoKey,
    #[error("signature header is missing")]
    Missing,
    #[error("signature header is malformed")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
    #[error("timestamp is outside the tolerance window")]
    Stale,
}

/// Verify CallRail's `Signature` header against the raw body with any of the tenant's active keys.
pub fn verify_callrail(keys: &[&[u8]], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKey);
    }
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let expected = B64.decode(header).map_err(|_| SignatureError::Malformed)?;
    if expected.len() != 20 {
        return Err(SignatureError::Malformed);
    }
    for key in keys {
        let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// CallRail's signature for a body (used by tests, the load generator and onboarding checks).
pub fn sign_callrail(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    B64.encode(mac.finalize().into_bytes())
}

/// A Standard Webhooks secret: `whsec_` followed by Base64 of the key bytes.
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let raw = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
    B64.decode(raw)
        .map_err(|_| SignatureError::Malformed)
        .and_then(|k| if k.is_empty() { Err(SignatureError::NoKey) } else { Ok(k) })
}

pub struct StandardWebhookHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verify a Standard Webhooks request. `now` is Unix seconds; `tolerance_secs` bounds replays (5 minutes).
/// The header may carry several space-separated signatures (the sender rotating); one valid `v1` is enough.
pub fn verify_standard_webhook(
    keys: &[&[u8]],
    headers: &StandardWebhookHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKey);
    }
    let (Some(id), Some(ts), Some(sigs)) = (headers.id, headers.timestamp, headers.signature) else {
        return Err(SignatureError::Missing);
    };
    let ts_num: i64 = ts.trim().parse().map_err(|_| SignatureError::Malformed)?;
    // `abs_diff`: a timestamp near i64::MIN must be stale, not an overflow (a panic, or a wrap that passes).
    if now.abs_diff(ts_num) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let candidates: Vec<Vec<u8>> = sigs
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| B64.decode(s).ok())
        .filter(|s| s.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    for key in keys {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        for candidate in &candidates {
            if mac.clone().verify_slice(candidate).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// The `webhook-signature` value for a message (tests, our custom-webhook CRM target, onboarding checks).
pub fn sign_standard_webhook(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector CallRail publishes in its API docs ("Validating Payloads"): key, body, signature.
    const CALLRAIL_KEY: &[u8] = b"072e77e426f92738a72fe23c4d1953b4";
    const CALLRAIL_BODY: &[u8] = include_bytes!("../../../fixtures/callrail/docs-signature-vector.json");
    const CALLRAIL_SIGNATURE: &str = "UZAHbUdfm3GqL7qzilGozGzWV64=";

    #[test]
    fn callrail_published_vector_verifies() {
        assert_eq!(sign_callrail(CALLRAIL_KEY, CALLRAIL_BODY), CALLRAIL_SIGNATURE);
        assert_eq!(verify_callrail(&[CALLRAIL_KEY], CALLRAIL_BODY, Some(CALLRAIL_SIGNATURE)), Ok(()));
    }

    #[test]
    fn callrail_rejects_any_change() {
        let mut body = CALLRAIL_BODY.to_vec();
        body.push(b'\n');
        assert_eq!(verify_callrail(&[CALLRAIL_KEY], &body, Some(CALLRAIL_SIGNATURE)), Err(SignatureError::Mismatch));
        assert_eq!(
            verify_callrail(&[b"another-key"], CALLRAIL_BODY, Some(CALLRAIL_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_callrail(&[CALLRAIL_KEY], CALLRAIL_BODY, None), Err(SignatureError::Missing));
        assert_eq!(
            verify_callrail(&[CALLRAIL_KEY], CALLRAIL_BODY, Some("not base64!")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(verify_callrail(&[], CALLRAIL_BODY, Some(CALLRAIL_SIGNATURE)), Err(SignatureError::NoKey));
    }

    #[test]
    fn callrail_accepts_either_key_during_rotation() {
        let keys: [&[u8]; 2] = [b"new-key", CALLRAIL_KEY];
        assert_eq!(verify_callrail(&keys, CALLRAIL_BODY, Some(CALLRAIL_SIGNATURE)), Ok(()));
    }

    /// The vector shared by the Standard Webhooks reference libraries' sign tests.
    #[test]
    fn standard_webhooks_published_vector_verifies() {
        let key = standard_webhooks_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let (id, ts, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(sign_standard_webhook(&key, id, ts, body), expected);
        let headers =
            |sig| StandardWebhookHeaders { id: Some(id), timestamp: Some("1614265330"), signature: Some(sig) };
        assert_eq!(verify_standard_webhook(&[&key], &headers(expected), body, ts + 10, 300), Ok(()));
        // Rotation: several signatures, one of them ours.
        let rotated = format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {expected}");
        assert_eq!(verify_standard_webhook(&[&key], &headers(&rotated), body, ts, 300), Ok(()));
        assert_eq!(
            verify_standard_webhook(&[&key], &headers(expected), body, ts + 301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_standard_webhook(
                &[&key],
                &headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
                body,
                ts,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_standard_webhook(&[&key], &headers("v2,abc"), body, ts, 300), Err(SignatureError::Malformed));
    }
}
