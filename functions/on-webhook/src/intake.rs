//! The two intake endpoints. Order of checks: tenant (404), content type (415), body size (413), signature over
//! the raw bytes (401; fail closed), JSON (400), company ownership (403), then one durable write and the answer.
//! Nothing is stored before every check has passed.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use callflow::domain::callrail::{CallRailEventKind, CallRailWebhook};
use callflow::domain::form::{FormSubmission, form_call_id};
use callflow::domain::intake::{EventKind, IntakeEvent, IntakeOutcome};
use callflow::domain::signature::{self, SignatureError, StandardWebhookHeaders};
use callflow::domain::tenant::{SecretRef, Tenant};
use callflow::domain::{CallId, CallSource, TenantId};
use callflow::runtime::ApiError;
use callflow::runtime::body::{is_json, read_limited};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Service;

fn client_ip(service: &Service, req: &Request) -> IpAddr {
    if service.settings.trust_forwarded_for
        && let Some(ip) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            // The last hop was appended by the trusted front end; earlier ones are whatever the client said.
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return ip;
    }
    req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

async fn tenant(service: &Service, raw: &str) -> Result<Arc<Tenant>, ApiError> {
    let id = TenantId::parse(raw).map_err(|_| ApiError::not_found("unknown tenant"))?;
    match service.ports.tenants.tenant(&id).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(ApiError::not_found("unknown tenant")),
        Err(e) => Err(ApiError::unavailable(&e.message)),
    }
}

/// Resolve signing keys. A reference that does not resolve counts as no key: fail closed, and say so in the log.
async fn keys(service: &Service, tenant: &Tenant, refs: &[SecretRef]) -> Vec<String> {
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        match service.ports.secrets.secret(r).await {
            Ok(s) => out.push(s.expose().to_owned()),
            Err(e) => tracing::error!(tenant_id = %tenant.id, error = %e, "signing key unavailable; rejecting"),
        }
    }
    out
}

/// A failed signature: 401, or 429 once this address has failed too often. Valid requests never reach this,
/// so a legitimate CallRail burst from an address that also sent garbage is not throttled.
fn auth_failure(service: &Service, ip: IpAddr, tenant: &TenantId, err: SignatureError) -> ApiError {
    if service.auth_failures.check_key(&ip).is_err() {
        return ApiError::too_many_requests(60);
    }
    tracing::debug!(tenant_id = %tenant, reason = %err, "signature check failed");
    match err {
        SignatureError::NoKey => ApiError::unauthorized("no signing key is configured for this tenant"),
        SignatureError::Missing => ApiError::unauthorized("signature header is missing"),
        SignatureError::Stale => ApiError::unauthorized("webhook-timestamp is outside the tolerance window"),
        SignatureError::Malformed | SignatureError::Mismatch => ApiError::unauthorized("invalid signature"),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn record(service: &Service, event: IntakeEvent, started: Instant) -> Result<Json<Value>, ApiError> {
    let (tenant_id, call_id, kind) = (event.tenant_id.clone(), event.call_id.clone(), event.kind);
    let result = service.ports.state.record_intake(event).await.map_err(|e| ApiError::unavailable(&e.message))?;
    if matches!(result.outcome, IntakeOutcome::Created | IntakeOutcome::Reopened) {
        service.work_added.notify_one();
    }
    tracing::info!(
        tenant_id = %tenant_id,
        call_id = %call_id,
        kind = kind.as_str(),
        outcome = result.outcome.as_str(),
        state = %result.call.state,
        latency_us = started.elapsed().as_micros() as u64,
        "webhook accepted"
    );
    Ok(Json(json!({
        "status": "accepted",
        "call_id": call_id,
        "duplicate": result.outcome == IntakeOutcome::Duplicate,
        "state": result.call.state,
    })))
}

/// One log line per rejected request, in one place. Rate-limited rejections are not logged one by one: they
/// are what a flood looks like, and logging each would turn the flood into a logging bill.
fn logged(tenant: &str, ip: IpAddr, result: Result<Json<Value>, ApiError>) -> Result<Json<Value>, ApiError> {
    match &result {
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
            tracing::debug!(tenant = tenant, source_ip = %ip, "rejected: rate limited");
        }
        Err(e) if e.status.is_client_error() => {
            let (status, code) = (e.status.as_u16(), e.code);
            tracing::warn!(tenant = tenant, source_ip = %ip, status, code, reason = %e.message, "webhook rejected");
        }
        _ => {}
    }
    result
}

/// What both endpoints check first: the tenant, the content type, and the raw body within its bound.
async fn tenant_and_body(
    service: &Service,
    tenant_raw: &str,
    req: Request,
) -> Result<(Arc<Tenant>, HeaderMap, bytes::Bytes), ApiError> {
    let tenant = tenant(service, tenant_raw).await?;
    let (parts, body) = req.into_parts();
    if !is_json(&parts.headers) {
        return Err(ApiError::unsupported_media_type("application/json"));
    }
    let body = read_limited(&parts.headers, body, service.settings.max_body_bytes).await?;
    Ok((tenant, parts.headers, body))
}

/// `POST /webhooks/callrail/{tenant}`: post-call and call-modified webhooks.
pub async fn callrail(
    State(service): State<Service>,
    tenant_raw: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let ip = client_ip(&service, &req);
    // A path segment that is not UTF-8 names no tenant: the same JSON 404 as any unknown tenant.
    let Ok(Path(tenant_raw)) = tenant_raw else {
        return logged("(not UTF-8)", ip, Err(ApiError::not_found("unknown tenant")));
    };
    logged(&tenant_raw, ip, callrail_inner(&service, &tenant_raw, ip, req).await)
}

async fn callrail_inner(
    service: &Service,
    tenant_raw: &str,
    ip: IpAddr,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let (tenant, headers, body) = tenant_and_body(service, tenant_raw, req).await?;
    let refs = tenant.callrail.as_ref().map(|c| c.signing_keys.as_slice()).unwrap_or_default();
    let keys = keys(service, &tenant, refs).await;
    let key_bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    signature::verify_callrail(&key_bytes, &body, header(&headers, "signature"))
        .map_err(|e| auth_failure(service, ip, &tenant.id, e))?;

    let payload = CallRailWebhook::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let call_id = payload
        .call_id()
        .map_err(|e| ApiError::bad_request(e.to_string()))
        .and_then(|id| CallId::parse(id).map_err(|e| ApiError::bad_request(e.to_string())))?;
    let companies = payload.company_ids().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !tenant.owns_company(&companies) {
        return Err(ApiError::forbidden("the payload's company does not belong to this tenant"));
    }
    let digest = hex::encode(Sha256::digest(&body));
    let (kind, dedupe_key) = match payload.kind() {
        CallRailEventKind::PostCall => (EventKind::PostCall, "post_call".to_owned()),
        CallRailEventKind::CallModified => (EventKind::CallModified, format!("call_modified:{digest}")),
    };
    let event = IntakeEvent {
        tenant_id: tenant.id.clone(),
        call_id,
        source: CallSource::Callrail,
        kind,
        dedupe_key,
        payload_sha256: digest,
        payload_bytes: body.len() as u64,
        lead: payload.lead_details(),
        received_at: service.ports.clock.now(),
    };
    record(service, event, started).await
}

fn form_limiter(service: &Service, tenant: &Tenant) -> Arc<governor::DefaultDirectRateLimiter> {
    let per_minute = tenant.forms.as_ref().map_or(120, |f| f.per_minute);
    let mut limits = service.form_limits.lock().expect("form limiter lock");
    limits
        .entry(tenant.id.to_string())
        .or_insert_with(|| {
            let quota = governor::Quota::per_minute(NonZeroU32::new(per_minute.max(1)).expect("at least 1"));
            Arc::new(governor::RateLimiter::direct(quota))
        })
        .clone()
}

/// `POST /webhooks/forms/{tenant}`: web-form and direct-API leads signed with Standard Webhooks.
pub async fn form(
    State(service): State<Service>,
    tenant_raw: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let ip = client_ip(&service, &req);
    // A path segment that is not UTF-8 names no tenant: the same JSON 404 as any unknown tenant.
    let Ok(Path(tenant_raw)) = tenant_raw else {
        return logged("(not UTF-8)", ip, Err(ApiError::not_found("unknown tenant")));
    };
    logged(&tenant_raw, ip, form_inner(&service, &tenant_raw, ip, req).await)
}

async fn form_inner(service: &Service, tenant_raw: &str, ip: IpAddr, req: Request) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let (tenant, headers, body) = tenant_and_body(service, tenant_raw, req).await?;
    let refs = tenant.forms.as_ref().map(|f| f.signing_keys.as_slice()).unwrap_or_default();
    let secrets = keys(service, &tenant, refs).await;
    let keys: Vec<Vec<u8>> = secrets.iter().filter_map(|s| signature::standard_webhooks_key(s).ok()).collect();
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let headers = StandardWebhookHeaders {
        id: header(&headers, "webhook-id"),
        timestamp: header(&headers, "webhook-timestamp"),
        signature: header(&headers, "webhook-signature"),
    };
    let now = service.ports.clock.now().timestamp();
    signature::verify_standard_webhook(&key_refs, &headers, &body, now, service.settings.form_tolerance_secs)
        .map_err(|e| auth_failure(service, ip, &tenant.id, e))?;
    let webhook_id = headers.id.expect("verified above");

    if form_limiter(service, &tenant).check().is_err() {
        return Err(ApiError::too_many_requests(1));
    }
    let submission = FormSubmission::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event = IntakeEvent {
        tenant_id: tenant.id.clone(),
        call_id: form_call_id(webhook_id),
        source: CallSource::Form,
        kind: EventKind::Form,
        dedupe_key: "form".to_owned(),
        payload_sha256: hex::encode(Sha256::digest(&body)),
        payload_bytes: body.len() as u64,
        lead: submission.lead_details(),
        received_at: service.ports.clock.now(),
    };
    record(service, event, started).await
}
