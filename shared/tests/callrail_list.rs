//! Listing an account's calls (CallRail API v3 "Listing All Calls") against a stand-in CallRail: the request's
//! shape (path, `Token token=` auth, window, page, per_page, fields, sort), a three-page listing read page by
//! page, listed calls going through the webhook's parser, per_page clamped, and every kind of failure: 429 with
//! and without Retry-After, 401/403 with CallRail's message, 404, 5xx, a slow answer cut by the timeout, a refused
//! connection, and 2xx bodies that are not a page.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use callflow::adapters::callrail::{HttpCallRail, LIST_FIELDS, MAX_PER_PAGE};
use callflow::domain::CallId;
use callflow::domain::callrail::CallRailWebhook;
use callflow::ports::{CallListQuery, CallPage, CallRailClient, Secret, VendorError};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ACCOUNT: &str = "ACC8154748ae6bd4e278a7cddd38a662f4f";
const KEY: &str = "c0ffee0ddba11f00dcafe";
const PATH: &str = "/v3/a/ACC8154748ae6bd4e278a7cddd38a662f4f/calls.json";

const PAGES: [&str; 3] = [
    include_str!("../../fixtures/callrail/list/calls-page-1.json"),
    include_str!("../../fixtures/callrail/list/calls-page-2.json"),
    include_str!("../../fixtures/callrail/list/calls-page-3.json"),
];

/// The fields Listing All Calls returns without `fields=` (CallRail API v3 docs, call object).
const DEFAULT_FIELDS: &[&str] = &[
    "answered",
    "business_phone_number",
    "customer_city",
    "customer_country",
    "customer_name",
    "customer_phone_number",
    "customer_state",
    "direction",
    "duration",
    "id",
    "recording",
    "recording_duration",
    "recording_player",
    "start_time",
    "tracking_phone_number",
    "voicemail",
];

fn client(server: &MockServer, api_timeout: Duration) -> HttpCallRail {
    HttpCallRail::new(server.uri()).unwrap().with_timeouts(api_timeout, Duration::from_secs(5))
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn day(page: u32, per_page: u32) -> CallListQuery {
    CallListQuery { start: at(2026, 11, 20, 0, 0, 0), end: at(2026, 11, 21, 0, 0, 0), page, per_page }
}

async fn list(server: &MockServer, query: &CallListQuery) -> Result<CallPage, VendorError> {
    client(server, Duration::from_secs(5)).list_calls(ACCOUNT, &Secret::new(KEY), query).await
}

/// A server that answers any listing with `status` and `body`.
async fn answering(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET")).and(path(PATH)).respond_with(response).mount(&server).await;
    server
}

fn page_json(n: usize) -> Value {
    serde_json::from_str(PAGES[n - 1]).unwrap()
}

/// The query parameter `name` of the one request the server received.
async fn received_param(server: &MockServer, name: &str) -> String {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "one request");
    requests[0].url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// All three fixture pages, each served only for its own `page`.
async fn three_pages() -> MockServer {
    let server = MockServer::start().await;
    for (i, body) in PAGES.iter().enumerate() {
        Mock::given(method("GET"))
            .and(path(PATH))
            .and(query_param("page", (i + 1).to_string()))
            .respond_with(ResponseTemplate::new(200).set_body_raw(*body, "application/json"))
            .expect(1)
            .mount(&server)
            .await;
    }
    server
}

/// Every page of the day, read as the reconciler will: page 1, 2, … until `total_pages`.
async fn read_all(server: &MockServer) -> (Vec<CallPage>, Vec<Value>) {
    let mut pages = Vec::new();
    let mut calls = Vec::new();
    let mut page = 1;
    loop {
        let got = list(server, &day(page, 2)).await.unwrap();
        assert_eq!(got.page, page);
        calls.extend(got.calls.iter().cloned());
        let last = got.page >= got.total_pages;
        pages.push(got);
        if last {
            break;
        }
        page += 1;
        assert!(page <= 10, "runaway paging");
    }
    (pages, calls)
}

#[tokio::test]
async fn request_carries_account_auth_window_page_fields_and_sort() {
    let server = MockServer::start().await;
    let fields = LIST_FIELDS.join(",");
    Mock::given(method("GET"))
        .and(path(PATH))
        .and(header("authorization", format!("Token token=\"{KEY}\"").as_str()))
        .and(query_param("start_date", "2026-11-20T00:00:00Z"))
        .and(query_param("end_date", "2026-11-21T00:00:00Z"))
        .and(query_param("page", "2"))
        .and(query_param("per_page", "100"))
        .and(query_param("fields", fields.as_str()))
        .and(query_param("sort", "start_time"))
        .and(query_param("order", "asc"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(PAGES[1], "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    let page = list(&server, &day(2, 100)).await.expect("the request matched every expectation");
    assert_eq!((page.page, page.total_pages, page.total_records, page.calls.len()), (2, 3, 5, 2));
    // No parameter beyond the documented ones (e.g. no relative_pagination, which has no totals).
    let requests = server.received_requests().await.unwrap();
    let names: BTreeSet<String> = requests[0].url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    let expected: BTreeSet<String> =
        ["start_date", "end_date", "page", "per_page", "fields", "sort", "order"].map(String::from).into();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn window_is_widened_to_whole_seconds_never_narrowed() {
    let server = answering(ResponseTemplate::new(200).set_body_raw(PAGES[2], "application/json")).await;
    let query = CallListQuery {
        start: at(2026, 11, 20, 6, 0, 0) + chrono::Duration::milliseconds(750),
        end: at(2026, 11, 20, 7, 0, 0) + chrono::Duration::milliseconds(250),
        page: 1,
        per_page: 250,
    };
    list(&server, &query).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    let param = |name: &str| {
        requests[0].url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    assert_eq!(param("start_date"), "2026-11-20T06:00:00Z");
    assert_eq!(param("end_date"), "2026-11-20T07:00:01Z");
}

#[tokio::test]
async fn three_page_listing_read_page_by_page_with_totals() {
    let server = three_pages().await;
    let (pages, calls) = read_all(&server).await;
    assert_eq!(pages.len(), 3);
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.page as usize, i + 1);
        assert_eq!((page.total_pages, page.total_records), (3, 5));
        assert_eq!(page.calls, page_json(i + 1)["calls"].as_array().unwrap().clone(), "calls kept as sent");
    }
    assert_eq!(pages.iter().map(|p| p.calls.len()).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(calls.len() as u64, pages[0].total_records);
    let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "CALa1b2c3d4e5f60718293a4b5c6d7e8f90",
            "CAL0b7d7c5e9a2f4e1c8d3b6a5f4e3d2c1b",
            "CAL5e6f7a8b9c0d4e1f2a3b4c5d6e7f8a9b",
            "CAL9a8b7c6d5e4f4a3b2c1d0e9f8a7b6c5d",
            "CALc3d4e5f6a7b84c9d0e1f2a3b4c5d6e7f",
        ]
    );
    // wiremock checks on drop that each page was asked for exactly once.
}

#[tokio::test]
async fn every_listed_call_goes_through_the_webhook_parser() {
    let server = three_pages().await;
    let (_, calls) = read_all(&server).await;
    let mut hooks = Vec::new();
    for call in &calls {
        let hook = CallRailWebhook::parse(&serde_json::to_vec(call).unwrap()).expect("a listed call parses");
        let id = hook.call_id().expect("a listed call has its id");
        CallId::parse(id).expect("a listed call id is a valid CallId");
        assert!(!hook.company_ids().expect("a listed call names its company").is_empty());
        hooks.push(hook);
    }
    let first = hooks[0].lead_details();
    assert_eq!(hooks[0].call_id(), Ok("CALa1b2c3d4e5f60718293a4b5c6d7e8f90"));
    assert_eq!(hooks[0].company_ids(), Ok(vec!["COM8154748ae6bd4e278a7cddd38a662f4f"]));
    assert_eq!(first.company_id.as_deref(), Some("COM8154748ae6bd4e278a7cddd38a662f4f"));
    assert_eq!(first.customer_phone.as_deref(), Some("+15125550143"));
    assert_eq!(first.customer_name.as_deref(), Some("Dana Whitfield"));
    assert_eq!(
        first.recording_url.as_deref(),
        Some(
            "https://app.callrail.com/calls/CALa1b2c3d4e5f60718293a4b5c6d7e8f90/recording?access_key=3b91eb1d1f8c4e5a9c0d"
        )
    );
    assert_eq!((first.duration_secs, first.recording_duration_secs), (Some(187), Some(181)));
    assert_eq!((first.answered, first.voicemail), (Some(true), Some(false)));
    assert_eq!(first.call_type.as_deref(), Some("inbound"));
    assert_eq!(first.source_name.as_deref(), Some("Google Ads"));
    assert_eq!(first.lead_status.as_deref(), Some("good_lead"));
    assert_eq!(first.tags, ["kitchen"]);
    assert_eq!(first.utm_campaign.as_deref(), Some("kitchen-remodel-austin"));
    assert_eq!(first.gclid.as_deref(), Some("Cj0KCQiA-kitchen"));
    assert_eq!(first.landing_page_url.as_deref(), Some("https://acme-remodel.example/kitchens"));

    let missed = hooks[2].lead_details();
    assert_eq!((missed.answered, missed.recording_url, missed.recording_duration_secs), (Some(false), None, None));
    assert_eq!(missed.utm_source, None, "null is absent");

    let bayside = hooks[3].lead_details();
    assert_eq!(hooks[3].company_ids(), Ok(vec!["COM0f6b0e3c2f3e4b1d9a7c5e2b4d6f8a10"]));
    assert_eq!(bayside.tags, ["bath", "financing"]);
    assert_eq!(bayside.recording_duration_secs, Some(405));
    assert!(bayside.transcription.as_deref().is_some_and(|t| t.contains("walk-in shower")));

    let outbound = hooks[4].lead_details();
    assert_eq!((outbound.direction.as_deref(), outbound.duration_secs), (Some("outbound"), Some(95)));
    assert_eq!(outbound.landing_page_url, None, "empty strings are absent");
}

/// A call carrying every field the intake reads, as a post-call webhook would (with the API's `id`/`company_id`
/// naming): whatever of it CallRail lists (its default fields plus those we ask for) must give the same lead.
#[tokio::test]
async fn requested_fields_cover_everything_the_intake_reads() {
    let server = answering(ResponseTemplate::new(200).set_body_raw(PAGES[0], "application/json")).await;
    list(&server, &day(1, 250)).await.unwrap();
    let requested = received_param(&server, "fields").await;
    let listed: BTreeSet<&str> = DEFAULT_FIELDS.iter().copied().chain(requested.split(',')).collect();

    let full = json!({
        "id": "CALfull0000000000000000000000000001", "company_id": "COMfull000000000000000000000000001",
        "answered": true, "voicemail": false, "direction": "inbound", "call_type": "inbound", "duration": "61",
        "start_time": "2026-11-20T09:00:00.000-06:00", "customer_name": "Full Name",
        "customer_phone_number": "+15125550001", "customer_city": "Austin", "customer_state": "TX",
        "customer_country": "US", "tracking_phone_number": "+15125550002", "source_name": "Google Ads",
        "recording": "https://app.callrail.com/calls/CALfull/recording", "recording_duration": "60",
        "transcription": "hello", "lead_status": "good_lead", "tags": [{"name": "kitchen", "color": "gray1"}],
        "utm_source": "google", "utm_medium": "cpc", "utm_campaign": "c", "utm_term": "t", "utm_content": "x",
        "gclid": "g", "landing_page_url": "https://example.com/l", "referring_url": "https://example.com/r"
    });
    let whole = CallRailWebhook::parse(full.to_string().as_bytes()).unwrap();
    let lead = whole.lead_details();
    let everything = serde_json::to_value(&lead).unwrap();
    assert_eq!(
        everything.as_object().unwrap().len(),
        full.as_object().unwrap().len() - 1,
        "the full call fills every lead field it can (all but the call id): {everything}"
    );

    let seen: serde_json::Map<String, Value> = full
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| listed.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let missing: Vec<&String> = full.as_object().unwrap().keys().filter(|k| !listed.contains(k.as_str())).collect();
    assert!(missing.is_empty(), "fields the intake reads but the listing would not return: {missing:?}");
    let listed_hook = CallRailWebhook::parse(&serde_json::to_vec(&seen).unwrap()).unwrap();
    assert_eq!(listed_hook.call_id(), whole.call_id());
    assert_eq!(listed_hook.company_ids(), whole.company_ids());
    assert_eq!(listed_hook.lead_details(), lead);
    assert!(!requested.split(',').any(|f| DEFAULT_FIELDS.contains(&f)), "default fields are not asked for again");
}

#[tokio::test]
async fn per_page_is_clamped_to_1_through_250_and_page_starts_at_1() {
    for (asked_page, asked, sent_page, sent) in [(1, 1000, "1", "250"), (0, 0, "1", "1"), (3, 250, "3", "250")] {
        let server = answering(ResponseTemplate::new(200).set_body_raw(PAGES[0], "application/json")).await;
        list(&server, &day(asked_page, asked)).await.unwrap();
        assert_eq!(received_param(&server, "per_page").await, sent, "per_page {asked}");
        assert_eq!(received_param(&server, "page").await, sent_page, "page {asked_page}");
    }
    assert_eq!(MAX_PER_PAGE, 250);
}

#[tokio::test]
async fn rate_limited_with_and_without_retry_after() {
    let body = json!({"error": "Rate limit exceeded"});
    let server =
        answering(ResponseTemplate::new(429).insert_header("retry-after", "120").set_body_json(body.clone())).await;
    let err = list(&server, &day(1, 250)).await.unwrap_err();
    assert!(
        matches!(err, VendorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(120)),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));

    // What CallRail documents: a 429 and no Retry-After.
    let server = answering(ResponseTemplate::new(429).set_body_json(body)).await;
    let err = list(&server, &day(1, 250)).await.unwrap_err();
    assert!(matches!(err, VendorError::RateLimited { retry_after: None }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn unauthorized_and_forbidden_are_permanent_with_callrails_message() {
    let server =
        answering(ResponseTemplate::new(401).set_body_json(json!({"error": "HTTP Token: Access denied."}))).await;
    let err = list(&server, &day(1, 250)).await.unwrap_err();
    match &err {
        VendorError::Status { status: 401, message } => assert_eq!(message, "HTTP Token: Access denied."),
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains(KEY), "the key never reaches an error");

    let server = answering(
        ResponseTemplate::new(403).set_body_json(json!({"error": "You do not have access to this account."})),
    )
    .await;
    let err = list(&server, &day(1, 250)).await.unwrap_err();
    assert!(
        matches!(&err, VendorError::Status { status: 403, message } if message == "You do not have access to this account."),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    let server = answering(ResponseTemplate::new(404).set_body_json(json!({"error": "Not found"}))).await;
    assert!(matches!(list(&server, &day(1, 250)).await.unwrap_err(), VendorError::NotFound));
}

#[tokio::test]
async fn server_errors_are_retryable() {
    for status in [500, 502, 503, 408] {
        let server = answering(ResponseTemplate::new(status).set_body_string("<html>upstream trouble</html>")).await;
        let err = list(&server, &day(1, 250)).await.unwrap_err();
        assert!(matches!(&err, VendorError::Status { status: s, .. } if *s == status), "{status}: {err:?}");
        assert!(err.is_retryable(), "{status}");
        assert!(err.to_string().contains("upstream trouble"), "a body that is not CallRail's error is kept");
    }
}

#[tokio::test]
async fn slow_answer_is_cut_by_the_timeout() {
    let server = answering(
        ResponseTemplate::new(200).set_body_raw(PAGES[0], "application/json").set_delay(Duration::from_secs(5)),
    )
    .await;
    let started = Instant::now();
    let err = client(&server, Duration::from_millis(300))
        .list_calls(ACCOUNT, &Secret::new(KEY), &day(1, 250))
        .await
        .unwrap_err();
    assert!(matches!(err, VendorError::Timeout), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(3), "cut at the API timeout, not the server's pace");
}

#[tokio::test]
async fn refused_connection_is_retryable() {
    // A port nothing listens on (wiremock pools its servers, so a dropped one may answer for another test).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = HttpCallRail::new(format!("http://{closed}"))
        .unwrap()
        .list_calls(ACCOUNT, &Secret::new(KEY), &day(1, 250))
        .await
        .unwrap_err();
    assert!(matches!(err, VendorError::Transport(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn malformed_pages_are_permanent_and_say_what_is_missing() {
    let mut no_calls = page_json(1);
    no_calls.as_object_mut().unwrap().remove("calls");
    let mut no_totals = page_json(1);
    no_totals.as_object_mut().unwrap().remove("total_pages");
    let mut calls_not_array = page_json(1);
    calls_not_array["calls"] = json!({"id": "CAL1"});
    let cases: [(&str, String, &str); 6] = [
        ("missing calls", no_calls.to_string(), "`calls`"),
        ("missing total_pages", no_totals.to_string(), "`total_pages`"),
        ("calls not an array", calls_not_array.to_string(), "`calls`"),
        ("not JSON", "<html>maintenance</html>".into(), "not JSON"),
        ("truncated JSON", PAGES[0][..PAGES[0].len() / 2].to_owned(), "not JSON"),
        ("an array", "[]".into(), "not a JSON object"),
    ];
    for (what, body, says) in cases {
        let server = answering(ResponseTemplate::new(200).set_body_raw(body, "application/json")).await;
        let err = list(&server, &day(1, 250)).await.unwrap_err();
        match &err {
            VendorError::Malformed(message) => assert!(message.contains(says), "{what}: {message}"),
            other => panic!("{what}: expected Malformed, got {other:?}"),
        }
        assert!(!err.is_retryable(), "{what}");
    }
}
