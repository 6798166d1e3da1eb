//! `callflow sign` and `callflow verify`: onboarding checks for a tenant's webhooks. `sign` produces a request
//! signed exactly as CallRail (or a form sender) signs it, with the tenant's active key, to send to on-webhook;
//! `verify` checks a captured request (raw HTTP, as `nc -l` or a request bin saves it) or a body and its headers
//! against the tenant's keys, and says which key matched — or why none did.
//!
//! Keys come from the same tenants file and secret source as on-webhook's (embedded, or Google Cloud by
//! `CALLFLOW_ENVIRONMENT`). The signing and parsing below are pure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use callflow::domain::TenantId;
use callflow::domain::signature::{self, SignatureError, StandardWebhookHeaders};
use callflow::domain::tenant::{SecretRef, Tenant};
use serde_json::json;

/// Which of a tenant's endpoints: CallRail's webhooks, or its signed web forms (Standard Webhooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Callrail,
    Form,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Callrail => "callrail",
            Self::Form => "forms",
        }
    }
}

#[derive(clap::Args)]
pub struct SignArgs {
    #[arg(long)]
    pub tenant: String,
    /// The body to sign, sent byte for byte (CallRail signs the raw body).
    pub body: PathBuf,
    #[arg(long, value_enum, default_value = "callrail")]
    pub kind: Kind,
    /// on-webhook's base URL, for the curl command.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[arg(long)]
    pub tenant: String,
    /// A captured HTTP request: request line, headers, a blank line, the body.
    #[arg(long, conflicts_with = "body")]
    pub request: Option<PathBuf>,
    /// Or the body alone, with its headers given by --header.
    #[arg(long, required_unless_present = "request")]
    pub body: Option<PathBuf>,
    /// A header of the request, NAME: VALUE (repeatable): `Signature` for CallRail; `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature` for a form.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Which endpoint; by default what the request says (its path, or Standard Webhooks headers).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    #[arg(long)]
    pub json: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or("expected NAME: VALUE")?;
    Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
}

/// A request as signed: headers to send with the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
}

/// Sign `body` with `key` (CallRail: the key as given; forms: a `whsec_` secret) at `now`, with `id` as the
/// Standard Webhooks message id.
pub fn sign(kind: Kind, key: &str, body: &[u8], now: i64, id: &str) -> Result<Signed, SignatureError> {
    let headers = match kind {
        Kind::Callrail => vec![("Signature".to_owned(), signature::sign_callrail(key.as_bytes(), body))],
        Kind::Form => {
            let key = signature::standard_webhooks_key(key)?;
            vec![
                ("webhook-id".to_owned(), id.to_owned()),
                ("webhook-timestamp".to_owned(), now.to_string()),
                ("webhook-signature".to_owned(), signature::sign_standard_webhook(&key, id, now, body)),
            ]
        }
    };
    Ok(Signed { headers })
}

/// A captured request: its path (when there is a request line), headers (lower-cased names) and raw body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub path: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Split a raw HTTP/1.1 request (CRLF or LF line ends) into path, headers and body. The body is taken as it is,
/// up to Content-Length when the header says so (a capture may end with a stray newline).
pub fn parse_captured(raw: &[u8]) -> anyhow::Result<Captured> {
    let (head, body) = match find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => match find(raw, b"\n\n") {
            Some(i) => (&raw[..i], &raw[i + 2..]),
            None => anyhow::bail!("no blank line between the headers and the body"),
        },
    };
    let head = std::str::from_utf8(head).context("the headers are not UTF-8")?;
    let mut lines = head.lines();
    let mut captured = Captured::default();
    let first = lines.next().unwrap_or_default();
    if let Some(rest) = first.strip_prefix("POST ").or_else(|| first.strip_prefix("post ")) {
        captured.path = rest.split_whitespace().next().map(str::to_owned);
    } else if let Ok((name, value)) = parse_header(first) {
        captured.headers.insert(name, value);
    }
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (name, value) = parse_header(line).map_err(|e| anyhow::anyhow!("header line {line:?}: {e}"))?;
        captured.headers.insert(name, value);
    }
    let mut body = body.to_vec();
    if let Some(len) = captured.headers.get("content-length") {
        let len: usize = len.parse().with_context(|| format!("Content-Length {len:?}"))?;
        anyhow::ensure!(body.len() >= len, "the body has {} bytes; Content-Length says {len}", body.len());
        body.truncate(len);
    }
    captured.body = body;
    Ok(captured)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Which endpoint a captured request was for: its path, else its headers.
pub fn kind_of(c: &Captured) -> Option<Kind> {
    match c.path.as_deref() {
        Some(p) if p.contains("/webhooks/callrail/") => Some(Kind::Callrail),
        Some(p) if p.contains("/webhooks/forms/") => Some(Kind::Form),
        _ if c.headers.contains_key("webhook-signature") => Some(Kind::Form),
        _ if c.headers.contains_key("signature") => Some(Kind::Callrail),
        _ => None,
    }
}

/// What verification found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The signature is the key's (1-based among the tenant's active keys). For a form, `age_secs` is how old
    /// the timestamp is: on-webhook accepts it only within its tolerance.
    Valid {
        key: usize,
        age_secs: Option<i64>,
    },
    Invalid(SignatureError),
}

/// Check `c` against each key in turn (to name the one that matched). A form's timestamp is checked for its
/// signature whatever its age; the age is reported, since a capture is usually older than the tolerance.
pub fn verify(kind: Kind, keys: &[String], c: &Captured, now: i64) -> Verdict {
    if keys.is_empty() {
        return Verdict::Invalid(SignatureError::NoKey);
    }
    let mut last = SignatureError::Mismatch;
    for (i, key) in keys.iter().enumerate() {
        let result = match kind {
            Kind::Callrail => {
                signature::verify_callrail(&[key.as_bytes()], &c.body, c.headers.get("signature").map(String::as_str))
            }
            Kind::Form => match signature::standard_webhooks_key(key) {
                Err(e) => Err(e),
                Ok(k) => {
                    let h = StandardWebhookHeaders {
                        id: c.headers.get("webhook-id").map(String::as_str),
                        timestamp: c.headers.get("webhook-timestamp").map(String::as_str),
                        signature: c.headers.get("webhook-signature").map(String::as_str),
                    };
                    signature::verify_standard_webhook(&[&k], &h, &c.body, now, i64::MAX)
                }
            },
        };
        match result {
            Ok(()) => {
                let age = (kind == Kind::Form)
                    .then(|| c.headers.get("webhook-timestamp").and_then(|t| t.trim().parse::<i64>().ok()))
                    .flatten()
                    .map(|ts| now - ts);
                return Verdict::Valid { key: i + 1, age_secs: age };
            }
            // Missing or malformed headers fail the same way for every key.
            Err(e @ (SignatureError::Missing | SignatureError::Malformed)) => return Verdict::Invalid(e),
            Err(e) => last = e,
        }
    }
    Verdict::Invalid(last)
}

/// The tenant and its active keys for `kind`, from the tenants file and secret source of the environment's
/// backends. Through cleanup-scheduled's ports, not on-webhook's: opening on-webhook's embedded service hands back
/// every lease and claim (it resumes work after a crash), which would disturb a host running on the same data.
async fn tenant_keys(tenant: &str, kind: Kind) -> anyhow::Result<(std::sync::Arc<Tenant>, Vec<String>)> {
    let settings = cleanup_scheduled::Settings::from_env()?;
    let service = cleanup_scheduled::Service::connect(&settings).await?;
    let id = TenantId::parse(tenant).map_err(|e| anyhow::anyhow!("tenant {tenant:?}: {e}"))?;
    let t = service
        .ports
        .tenants
        .tenant(&id)
        .await
        .map_err(|e| anyhow::anyhow!("reading tenants: {}", e.message))?
        .with_context(|| format!("no tenant {tenant:?} in {}", settings.common.tenants_file.display()))?;
    let refs: Vec<SecretRef> = match kind {
        Kind::Callrail => t.callrail.as_ref().map(|c| c.signing_keys.clone()).unwrap_or_default(),
        Kind::Form => t.forms.as_ref().map(|f| f.signing_keys.clone()).unwrap_or_default(),
    };
    anyhow::ensure!(!refs.is_empty(), "tenant {tenant:?} has no {} signing key configured", kind.path());
    let mut keys = Vec::new();
    for r in &refs {
        let secret =
            service.ports.secrets.secret(r).await.map_err(|e| anyhow::anyhow!("signing key: {}", e.message))?;
        keys.push(secret.expose().to_owned());
    }
    Ok((t, keys))
}

pub async fn run_sign(args: SignArgs) -> anyhow::Result<()> {
    let body = std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?;
    let (tenant, keys) = tenant_keys(&args.tenant, args.kind).await?;
    let now = chrono::Utc::now().timestamp();
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    // The first key is the active one; the others are still accepted while a rotation completes.
    let signed = sign(args.kind, &keys[0], &body, now, &id).map_err(|e| anyhow::anyhow!("signing key: {e}"))?;
    let url = format!("{}/webhooks/{}/{}", args.url.trim_end_matches('/'), args.kind.path(), tenant.id);
    if args.json {
        let headers: serde_json::Map<String, serde_json::Value> =
            signed.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        println!("{}", json!({"tenant": tenant.id.as_str(), "kind": args.kind.path(), "url": url, "headers": headers}));
        return Ok(());
    }
    let mut curl = format!("curl -sS -X POST '{url}' -H 'Content-Type: application/json'");
    for (k, v) in &signed.headers {
        curl.push_str(&format!(" -H '{k}: {v}'"));
    }
    curl.push_str(&format!(" --data-binary @'{}'", args.body.display()));
    println!("{curl}");
    Ok(())
}

/// Exit status: 0 when the signature is valid, 1 when it is not.
pub async fn run_verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let captured = match (&args.request, &args.body) {
        (Some(path), _) => {
            parse_captured(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)?
        }
        (None, Some(path)) => Captured {
            path: None,
            headers: args.headers.iter().cloned().collect(),
            body: std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        },
        (None, None) => anyhow::bail!("give --request or --body"),
    };
    let kind = args.kind.or_else(|| kind_of(&captured)).context(
        "cannot tell CallRail from a form: the request has neither a webhook path nor signature headers; say --kind",
    )?;
    let (tenant, keys) = tenant_keys(&args.tenant, kind).await?;
    let verdict = verify(kind, &keys, &captured, chrono::Utc::now().timestamp());
    let tolerance = on_webhook::Settings::from_env()?.form_tolerance_secs;
    let (valid, text, out) = match &verdict {
        Verdict::Valid { key, age_secs } => {
            let stale = age_secs.is_some_and(|a| a.abs() > tolerance);
            let mut text = format!("valid: signed with {}'s {} key {key} of {}", tenant.id, kind.path(), keys.len());
            if let Some(age) = age_secs {
                text.push_str(&format!(
                    "; timestamp {age} s old{}",
                    if stale {
                        format!(" (on-webhook would refuse it now: tolerance {tolerance} s)")
                    } else {
                        String::new()
                    }
                ));
            }
            let out = json!({"valid": true, "kind": kind.path(), "key": key, "keys": keys.len(), "age_secs": age_secs, "stale": stale});
            (true, text, out)
        }
        Verdict::Invalid(e) => (
            false,
            format!("invalid: {e} (checked against {} {} key(s) of {})", keys.len(), kind.path(), tenant.id),
            json!({"valid": false, "kind": kind.path(), "reason": e.to_string(), "keys": keys.len()}),
        ),
    };
    if args.json {
        println!("{out}");
    } else {
        println!("{text}");
    }
    Ok(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn captured_from(signed: &Signed, body: &[u8], path: &str) -> Captured {
        let mut raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in &signed.headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body);
        raw.extend_from_slice(b"\n");
        parse_captured(&raw).unwrap()
    }

    #[test]
    fn a_signed_callrail_request_verifies_and_names_its_key() {
        let body = br#"{"resource_id":"CAL1","answered":true}"#;
        let keys = vec!["old-key".to_owned(), "new-key".to_owned()];
        let signed = sign(Kind::Callrail, "new-key", body, 0, "").unwrap();
        let c = captured_from(&signed, body, "/webhooks/callrail/acme");
        assert_eq!(c.body, body, "Content-Length drops the stray newline");
        assert_eq!(kind_of(&c), Some(Kind::Callrail));
        assert_eq!(verify(Kind::Callrail, &keys, &c, 0), Verdict::Valid { key: 2, age_secs: None });
        let mut tampered = c;
        tampered.body[3] ^= 1;
        assert_eq!(verify(Kind::Callrail, &keys, &tampered, 0), Verdict::Invalid(SignatureError::Mismatch));
        assert_eq!(verify(Kind::Callrail, &[], &tampered, 0), Verdict::Invalid(SignatureError::NoKey));
    }

    #[test]
    fn callrails_published_vector_verifies() {
        let body = include_bytes!("../../fixtures/callrail/docs-signature-vector.json");
        let mut c = Captured { body: body.to_vec(), ..Captured::default() };
        c.headers.insert("signature".into(), "UZAHbUdfm3GqL7qzilGozGzWV64=".into());
        let keys = vec!["072e77e426f92738a72fe23c4d1953b4".to_owned()];
        assert_eq!(verify(Kind::Callrail, &keys, &c, 0), Verdict::Valid { key: 1, age_secs: None });
    }

    #[test]
    fn a_signed_form_verifies_at_any_age_and_reports_it() {
        let body = br#"{"name":"Priya"}"#;
        let signed = sign(Kind::Form, FORM_SECRET, body, 1_000, "msg_1").unwrap();
        let c = captured_from(&signed, body, "/webhooks/forms/acme");
        assert_eq!(kind_of(&c), Some(Kind::Form));
        let keys = vec![FORM_SECRET.to_owned()];
        assert_eq!(verify(Kind::Form, &keys, &c, 1_000 + 3_600), Verdict::Valid { key: 1, age_secs: Some(3_600) });
        let other = vec!["whsec_".to_owned() + "c2VjcmV0LW51bWJlci10d28="];
        assert_eq!(verify(Kind::Form, &other, &c, 1_000), Verdict::Invalid(SignatureError::Mismatch));
        let mut no_sig = c;
        no_sig.headers.remove("webhook-signature");
        assert_eq!(verify(Kind::Form, &keys, &no_sig, 1_000), Verdict::Invalid(SignatureError::Missing));
    }

    #[test]
    fn captures_without_a_request_line_or_with_lf_line_ends_parse() {
        let c = parse_captured(b"Signature: abc=\ncontent-type: application/json\n\n{\"a\":1}").unwrap();
        assert_eq!(c.path, None);
        assert_eq!(c.headers["signature"], "abc=");
        assert_eq!(c.body, b"{\"a\":1}");
        assert!(parse_captured(b"POST / HTTP/1.1\r\nHost: x").is_err(), "no blank line");
        let short = parse_captured(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}");
        assert!(short.unwrap_err().to_string().contains("Content-Length says 10"));
    }
}
