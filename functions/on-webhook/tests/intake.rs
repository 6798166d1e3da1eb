//! on-webhook's intake as CallRail and form senders see it: every answer, and what is (not) stored.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;

const DOCS: &str = "callrail/docs-signature-vector.json";
const NEW_IDS: &str = "callrail/post-call-resource-ids.json";

fn nothing_stored(h: &Harness) {
    assert_eq!(h.count("SELECT COUNT(*) FROM calls"), 0, "a call was stored");
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox"), 0, "work was queued");
    assert_eq!(h.count("SELECT COUNT(*) FROM intake_ledger"), 0, "the ledger was written");
}

fn assert_error(status: StatusCode, body: &serde_json::Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn callrails_documented_sample_is_accepted_and_recorded_with_its_work() {
    let h = harness().await;
    let body = fixture(DOCS);
    let (status, json) = h.send(callrail_request(ACME, &body, Some("UZAHbUdfm3GqL7qzilGozGzWV64="))).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["call_id"], "766970532");
    assert_eq!(json["duplicate"], false);
    // A voicemail with a recording: received, and its fetch is queued with the analytics row, atomically.
    assert_eq!(json["state"], "received");
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording'"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'analytics'"), 1);
}

#[tokio::test]
async fn bad_requests_get_a_clear_error_and_change_nothing() {
    let h = harness().await;
    let body = fixture(NEW_IDS);
    let good_sig = sign(ACME_KEY, &body);

    let (s, j) = h.send(callrail_request(ACME, &body, None)).await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, j) = h.send(callrail_request(ACME, &body, Some(&sign(b"wrong key", &body)))).await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, j) = h.send(callrail_request(ACME, &body, Some("not-base64!!"))).await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");
    // One byte changed after signing.
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let (s, j) = h.send(callrail_request(ACME, &tampered, Some(&good_sig))).await;
    assert_error(s, &j, StatusCode::UNAUTHORIZED, "unauthorized");

    let (s, j) = h.send(callrail_request("no-such-tenant", &body, Some(&good_sig))).await;
    assert_error(s, &j, StatusCode::NOT_FOUND, "not_found");
    let (s, j) = h.send(callrail_request("../etc", &body, Some(&good_sig))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{j}");

    let malformed = br#"{"resource_id": "CAL1", "answered": tru"#;
    let (s, j) = h.post_callrail(ACME, malformed, ACME_KEY).await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "bad_request");
    let (s, j) = h.post_callrail(ACME, b"[]", ACME_KEY).await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "bad_request");
    let (s, j) =
        h.post_callrail(ACME, br#"{"company_resource_id": "COM8154748ae6bd4e278a7cddd38a662f4f"}"#, ACME_KEY).await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "bad_request");
    let (s, j) = h.post_callrail(ACME, br#"{"resource_id": "CAL/../x", "company_id": 155920786}"#, ACME_KEY).await;
    assert_error(s, &j, StatusCode::BAD_REQUEST, "bad_request");

    let mut huge = b"{\"resource_id\": \"CAL1\", \"pad\": \"".to_vec();
    huge.resize(1024 * 1024 + 10, b'x');
    huge.extend_from_slice(b"\"}");
    let (s, j) = h.post_callrail(ACME, &huge, ACME_KEY).await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Same without a Content-Length: counted while reading.
    let stream =
        futures::stream::iter(huge.chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let req = Request::post(format!("/webhooks/callrail/{ACME}"))
        .header("content-type", "application/json")
        .header("signature", sign(ACME_KEY, &huge))
        .body(Body::from_stream(stream))
        .unwrap();
    let (s, j) = h.send(req).await;
    assert_error(s, &j, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let req = Request::get(format!("/webhooks/callrail/{ACME}")).body(Body::empty()).unwrap();
    let (s, j) = h.send(req).await;
    assert_error(s, &j, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    let req = Request::post(format!("/webhooks/callrail/{ACME}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("signature", &good_sig)
        .body(Body::from(body.clone()))
        .unwrap();
    let (s, j) = h.send(req).await;
    assert_error(s, &j, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    // Signed correctly by Acme, but for a company Acme does not own.
    let foreign = fixture("callrail/post-call-bayside.json");
    let (s, j) = h.post_callrail(ACME, &foreign, ACME_KEY).await;
    assert_error(s, &j, StatusCode::FORBIDDEN, "forbidden");

    nothing_stored(&h);
}

#[tokio::test]
async fn one_tenants_key_never_touches_another_tenant() {
    let h = harness().await;
    let acme_body = fixture(NEW_IDS);
    // Acme's correctly signed webhook posted on Bayside's path.
    let (s, _) = h.post_callrail(BAYSIDE, &acme_body, ACME_KEY).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Bayside's webhook signed with Acme's key on Acme's path: signature passes, the company does not.
    let bay_body = fixture("callrail/post-call-bayside.json");
    let (s, _) = h.post_callrail(ACME, &bay_body, ACME_KEY).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    nothing_stored(&h);
    let (s, j) = h.post_callrail(BAYSIDE, &bay_body, BAYSIDE_KEY).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(h.count("SELECT COUNT(*) FROM calls WHERE tenant_id = 'bayside-baths'"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM calls WHERE tenant_id = 'acme-remodeling'"), 0);
}

#[tokio::test]
async fn both_keys_work_while_a_tenant_rotates() {
    let h = harness().await;
    let body = fixture("callrail/post-call-bayside.json");
    let (s, _) = h.post_callrail(BAYSIDE, &body, BAYSIDE_OLD_KEY).await;
    assert_eq!(s, StatusCode::OK);
    let (s, j) = h.post_callrail(BAYSIDE, &body, BAYSIDE_KEY).await;
    assert_eq!((s, j["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
}

#[tokio::test]
async fn a_tenant_without_keys_rejects_everything() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("config").join("tenants.toml");
    std::fs::create_dir_all(tenants.parent().unwrap()).unwrap();
    std::fs::write(
        &tenants,
        r#"
        [[tenant]]
        id = "nokeys"
        name = "No keys yet"
        [tenant.callrail]
        account_id = "ACC1"
        company_ids = ["155920786"]
        [[tenant]]
        id = "missing-secret"
        name = "Key file missing"
        [tenant.callrail]
        account_id = "ACC1"
        company_ids = ["155920786"]
        signing_keys = ["file:does-not-exist"]
        "#,
    )
    .unwrap();
    let mut settings = test_settings(dir.path().to_owned(), "http://127.0.0.1:9".into());
    settings.tenants_file = tenants;
    let service = on_webhook::Service::embedded(&settings).await.unwrap();
    let h = Harness { service, dir, callrail: wiremock::MockServer::start().await };
    let body = fixture(DOCS);
    for tenant in ["nokeys", "missing-secret"] {
        let (s, j) = h.send(callrail_request(tenant, &body, Some("UZAHbUdfm3GqL7qzilGozGzWV64="))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{tenant}: {j}");
        // Without any signature header either.
        let (s, _) = h.send(callrail_request(tenant, &body, None)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    nothing_stored(&h);
}

#[tokio::test]
async fn a_redelivered_call_answers_200_and_does_nothing_new() {
    let h = harness().await;
    let body = fixture(NEW_IDS);
    let (s, first) = h.post_callrail(ACME, &body, ACME_KEY).await;
    assert_eq!((s, first["duplicate"].as_bool()), (StatusCode::OK, Some(false)));
    let (s, again) = h.post_callrail(ACME, &body, ACME_KEY).await;
    assert_eq!((s, again["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(h.count("SELECT COUNT(*) FROM calls"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording'"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'analytics'"), 1);
}

#[tokio::test]
async fn fifty_concurrent_deliveries_make_one_call_and_one_fetch() {
    let h = harness().await;
    let call = "CALa1b2c3d4e5f60718293a4b5c6d7e8f90";
    h.serve_recording(ACME_ACCOUNT, ACME_API_KEY, call, b"ID3 fake mp3").await;
    let body = fixture(NEW_IDS);
    let sig = sign(ACME_KEY, &body);
    let app = on_webhook::app(h.service.clone());
    let answers = futures::future::join_all((0..50).map(|_| {
        let app = app.clone();
        let req = callrail_request(ACME, &body, Some(&sig));
        tokio::spawn(async move {
            use tower::ServiceExt;
            app.oneshot(req).await.unwrap().status()
        })
    }))
    .await;
    assert!(answers.iter().all(|s| *s.as_ref().unwrap() == StatusCode::OK), "{answers:?}");
    assert_eq!(h.count("SELECT COUNT(*) FROM calls"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording'"), 1);
    // Drain twice: the second pass must find nothing to fetch.
    let (_, first) = on_webhook::outbox::drain_pass(&h.service).await;
    let (_, second) = on_webhook::outbox::drain_pass(&h.service).await;
    assert_eq!((first.len(), second.len()), (1, 0));
    let fetches = h.callrail.received_requests().await.unwrap();
    assert_eq!(fetches.iter().filter(|r| r.url.path().ends_with("recording.json")).count(), 1);
    assert_eq!(h.analytics("SELECT COUNT(*) FROM calls WHERE outcome = 'created'"), 1);
}

#[tokio::test]
async fn a_late_recording_in_call_modified_moves_the_call_forward() {
    let h = harness().await;
    let call = "CALlaterecording000000000000000000001";
    let (s, j) = h.post_callrail(ACME, &fixture("callrail/post-call-recording-pending.json"), ACME_KEY).await;
    assert_eq!((s, j["state"].as_str()), (StatusCode::OK, Some("skipped")));
    assert_eq!(h.call_state(call), Some(("skipped".into(), Some("no_recording".into()))));
    h.serve_recording(ACME_ACCOUNT, ACME_API_KEY, call, b"ID3 late").await;
    let modified = fixture("callrail/call-modified-recording.json");
    let (s, j) = h.post_callrail(ACME, &modified, ACME_KEY).await;
    assert_eq!((s, j["state"].as_str(), j["duplicate"].as_bool()), (StatusCode::OK, Some("received"), Some(false)));
    // The same call-modified again is a duplicate.
    let (_, j) = h.post_callrail(ACME, &modified, ACME_KEY).await;
    assert_eq!(j["duplicate"], true);
    on_webhook::outbox::drain_pass(&h.service).await;
    assert_eq!(h.call_state(call).unwrap().0, "recording_stored");
    assert_eq!(std::fs::read(h.object_path(ACME, call)).unwrap(), b"ID3 late");
}

#[tokio::test]
async fn unanswered_calls_are_parked_with_their_reason_and_fetch_nothing() {
    let h = harness().await;
    let (s, j) = h.post_callrail(ACME, &fixture("callrail/post-call-unanswered.json"), ACME_KEY).await;
    assert_eq!((s, j["state"].as_str()), (StatusCode::OK, Some("skipped")));
    assert_eq!(h.call_state("CALunanswered00000000000000000000001").unwrap().1.as_deref(), Some("unanswered"));
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox WHERE kind = 'fetch_recording'"), 0);
    on_webhook::outbox::drain_pass(&h.service).await;
    assert_eq!(h.analytics("SELECT COUNT(*) FROM calls WHERE reason = 'unanswered'"), 1);
}

#[tokio::test]
async fn repeated_signature_failures_are_throttled_but_valid_webhooks_never_are() {
    let h = harness().await;
    let body = fixture(NEW_IDS);
    let limit = h.service.settings.auth_failures_per_minute as usize;
    let mut statuses = Vec::new();
    for _ in 0..limit + 5 {
        statuses.push(h.send(callrail_request(ACME, &body, Some(&sign(b"bad", &body)))).await.0);
    }
    assert!(statuses[..limit].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses[limit..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // Same source address, valid signatures: a burst goes through untouched.
    for i in 0..200 {
        let mut hook: serde_json::Value = serde_json::from_slice(&body).unwrap();
        hook["resource_id"] = format!("CALburst{i:04}").into();
        let b = serde_json::to_vec(&hook).unwrap();
        assert_eq!(h.post_callrail(ACME, &b, ACME_KEY).await.0, StatusCode::OK);
    }
    assert_eq!(h.count("SELECT COUNT(*) FROM calls"), 200);
}

#[tokio::test]
async fn signed_forms_are_accepted_once_and_bad_ones_are_refused() {
    let h = harness().await;
    let body = fixture("forms/estimate-request.json");
    let now = chrono::Utc::now().timestamp();
    let (s, j) = h.send(form_request(ACME, ACME_FORMS, "msg_estimate_1", now, &body)).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let call_id = j["call_id"].as_str().unwrap().to_owned();
    assert!(call_id.starts_with("FRM"));
    // The sender retries the same message: same lead, nothing new.
    let (s, j) = h.send(form_request(ACME, ACME_FORMS, "msg_estimate_1", now, &body)).await;
    assert_eq!(
        (s, j["duplicate"].as_bool(), j["call_id"].as_str()),
        (StatusCode::OK, Some(true), Some(call_id.as_str()))
    );
    assert_eq!(h.count("SELECT COUNT(*) FROM calls WHERE source = 'form'"), 1);

    let stale = form_request(ACME, ACME_FORMS, "msg_estimate_2", now - 301, &body);
    assert_eq!(h.send(stale).await.0, StatusCode::UNAUTHORIZED);
    let other_tenant = form_request(BAYSIDE, ACME_FORMS, "msg_estimate_3", now, &body);
    assert_eq!(h.send(other_tenant).await.0, StatusCode::UNAUTHORIZED);
    let no_contact = form_request(ACME, ACME_FORMS, "msg_estimate_4", now, br#"{"name": "Anon", "message": "hi"}"#);
    assert_eq!(h.send(no_contact).await.0, StatusCode::BAD_REQUEST);
    let mut unsigned = form_request(ACME, ACME_FORMS, "msg_estimate_5", now, &body);
    unsigned.headers_mut().remove("webhook-signature");
    assert_eq!(h.send(unsigned).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.count("SELECT COUNT(*) FROM calls"), 1);
}

#[tokio::test]
async fn form_floods_are_limited_per_tenant() {
    let h = harness().await;
    let now = chrono::Utc::now().timestamp();
    let mut ok = 0;
    let mut limited = 0;
    // Bayside allows 60 a minute.
    for i in 0..70 {
        let body = format!(r#"{{"phone": "+1619555{i:04}"}}"#);
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        match h.send(form_request(BAYSIDE, secret, &format!("msg_{i}"), now, body.as_bytes())).await.0 {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (60, 10));
    // Acme's budget is its own.
    let body = fixture("forms/estimate-request.json");
    assert_eq!(h.send(form_request(ACME, ACME_FORMS, "msg_acme", now, &body)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_health() {
    let h = harness().await;
    let (s, j) = h.send(Request::post("/nope").body(Body::empty()).unwrap()).await;
    assert_error(s, &j, StatusCode::NOT_FOUND, "not_found");
}
