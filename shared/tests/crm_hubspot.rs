//! The HubSpot connector against a fake portal that keeps contacts (unique on the upsert's `idProperty`) and calls
//! with their contact associations, answering in HubSpot's recorded shapes: a new caller becomes a contact with the
//! call logged on it; pushing the lead again, or retrying after the call's answer was lost, neither makes a second
//! contact nor logs the call twice; another call from the same caller is logged on the same contact; the contact
//! key follows `id_from`; failures are classified (429 with Retry-After, with HubSpot's rate-limit headers, with
//! neither; 401; 400 and 207 validation errors with HubSpot's message; 500; a slow portal; malformed answers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callflow::adapters::crm_hubspot::HubSpotCrm;
use callflow::adapters::http;
use callflow::domain::crm::{CrmSettings, Lead};
use callflow::domain::{CallId, TenantId};
use callflow::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";
const PHONE: &str = "+15035550148";
const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
const CALLS: &str = "/crm/v3/objects/calls";

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/../fixtures/crm/hubspot/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn target(url: &str, settings: Value) -> CrmSettings {
    let mut v = json!({"provider": "hubspot", "credential": "env:HUBSPOT_TOKEN", "url": url, "timeout_ms": 5000});
    v.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
    let target: CrmSettings = serde_json::from_value(v).unwrap();
    target.validate().unwrap();
    target
}

/// The fixture lead as call `call` (the same caller), its properties mapped by `target`.
fn lead_for(target: &CrmSettings, call: &str) -> LeadPush {
    let mut lead: Lead = serde_json::from_str(include_str!("../../fixtures/crm/lead.json")).unwrap();
    lead.call_id = call.into();
    lead.lead_key = format!("acme-remodeling:{call}");
    LeadPush {
        tenant_id: TenantId::parse("acme-remodeling").unwrap(),
        call_id: CallId::parse(call).unwrap(),
        idempotency_key: lead.lead_key.clone(),
        properties: lead.properties(target),
        document: json!({}),
        lead,
    }
}

const CALL: &str = "CAL8154748ae6bd4e278a7cddd38a662f4f";
const KEY: &str = "acme-remodeling:CAL8154748ae6bd4e278a7cddd38a662f4f";

async fn push(target: &CrmSettings, lead: &LeadPush) -> Result<CrmRecord, VendorError> {
    HubSpotCrm::new(http::client()).push(target, lead, &Secret::new(TOKEN)).await
}

#[derive(Default)]
struct Portal {
    /// (id property value, contact id)
    contacts: Vec<(String, String)>,
    /// (call id, contact id, hs_call_body)
    calls: Vec<(String, String, String)>,
    next_id: u64,
    /// Call creates still to answer too late for the caller's time limit (they are committed all the same).
    late_call_answers: usize,
}

/// A HubSpot portal: contacts unique on the upsert's id value, calls created with their association.
#[derive(Clone, Default)]
struct FakeHubSpot(Arc<Mutex<Portal>>);

impl Respond for FakeHubSpot {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut portal = self.0.lock().unwrap();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let p = req.url.path();
        match (req.method.as_str(), p) {
            ("POST", UPSERT) => {
                let input = &body["inputs"][0];
                let key = input["id"].as_str().unwrap().to_owned();
                let id_property = input["idProperty"].as_str().unwrap();
                assert_eq!(input["properties"][id_property], key.as_str(), "the id property is set on the contact");
                let existing = portal.contacts.iter().find(|(k, _)| *k == key).map(|(_, id)| id.clone());
                let (id, new) = match existing {
                    Some(id) => (id, false),
                    None => {
                        portal.next_id += 1;
                        let id = (500 + portal.next_id).to_string();
                        portal.contacts.push((key, id.clone()));
                        (id, true)
                    }
                };
                let mut answer = fixture("contact_upsert.json");
                answer["results"][0]["id"] = json!(id);
                answer["results"][0]["new"] = json!(new);
                ResponseTemplate::new(200).set_body_json(answer)
            }
            ("GET", p) if p.starts_with("/crm/v4/objects/contacts/") && p.ends_with("/associations/calls") => {
                let contact = p.split('/').nth(5).unwrap();
                let results: Vec<Value> = portal
                    .calls
                    .iter()
                    .filter(|(_, c, _)| c == contact)
                    .map(|(id, _, _)| {
                        json!({"toObjectId": id.parse::<u64>().unwrap(), "associationTypes": [
                            {"category": "HUBSPOT_DEFINED", "typeId": 194, "label": null}]})
                    })
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"results": results}))
            }
            ("POST", "/crm/v3/objects/calls/batch/read") => {
                let results: Vec<Value> = body["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|i| portal.calls.iter().find(|(id, _, _)| i["id"] == id.as_str()))
                    .map(|(id, _, text)| json!({"id": id, "properties": {"hs_call_body": text}, "archived": false}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE", "results": results}))
            }
            ("POST", CALLS) => {
                let contact = body["associations"][0]["to"]["id"].as_str().unwrap().to_owned();
                let text = body["properties"]["hs_call_body"].as_str().unwrap().to_owned();
                portal.next_id += 1;
                let id = (9000 + portal.next_id).to_string();
                portal.calls.push((id.clone(), contact, text));
                let mut answer = fixture("call_created.json");
                answer["id"] = json!(id);
                let template = ResponseTemplate::new(201).set_body_json(answer);
                if portal.late_call_answers > 0 {
                    portal.late_call_answers -= 1;
                    return template.set_delay(Duration::from_secs(3));
                }
                template
            }
            _ => ResponseTemplate::new(404).set_body_json(json!({"status": "error", "message": "no such route"})),
        }
    }
}

/// A fake portal that answers only requests bearing the token.
async fn portal() -> (MockServer, FakeHubSpot) {
    let server = MockServer::start().await;
    let fake = FakeHubSpot::default();
    Mock::given(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    (server, fake)
}

async fn sent(server: &MockServer) -> Vec<(String, String, Value)> {
    let requests = server.received_requests().await.unwrap();
    requests
        .iter()
        .map(|r| {
            let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.method.to_string(), r.url.path().to_owned(), body)
        })
        .collect()
}

fn count(requests: &[(String, String, Value)], verb: &str, route: &str) -> usize {
    requests.iter().filter(|(m, p, _)| m == verb && p == route).count()
}

#[tokio::test]
async fn a_new_caller_becomes_a_contact_with_the_call_logged_on_it() {
    let (server, _) = portal().await;
    let target = target(&server.uri(), json!({"field_mapping": {"lead_score": "callflow_score"}}));
    let lead = lead_for(&target, CALL);
    let record = push(&target, &lead).await.unwrap();
    assert_eq!(record, CrmRecord { id: "501".into(), created: true });

    let requests = sent(&server).await;
    let routes: Vec<&str> = requests.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(routes, [UPSERT, CALLS], "a new contact has no calls to look through");
    let input = &requests[0].2["inputs"][0];
    assert_eq!(input["idProperty"], "callflow_phone");
    assert_eq!(input["id"], PHONE);
    let properties = &input["properties"];
    assert_eq!(properties["callflow_phone"], PHONE);
    assert_eq!((&properties["firstname"], &properties["lastname"]), (&json!("Dana"), &json!("Whitfield")));
    assert_eq!(properties["email"], "dana.whitfield@example.com");
    assert_eq!(properties["callflow_score"], 82, "the tenant's mapping is applied");

    let call = &requests[1].2;
    assert_eq!(call["associations"][0]["to"]["id"], "501");
    assert_eq!(
        call["associations"][0]["types"][0],
        json!({"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194})
    );
    let p = &call["properties"];
    assert_eq!(p["hs_call_title"], lead.lead.title());
    assert_eq!(p["hs_timestamp"], "2026-11-20T23:04:05.000Z", "the call's start, in UTC");
    assert_eq!(p["hs_call_duration"], "247000", "milliseconds");
    assert_eq!(p["hs_call_from_number"], PHONE);
    assert_eq!((&p["hs_call_status"], &p["hs_call_direction"]), (&json!("COMPLETED"), &json!("INBOUND")));
    assert_eq!(p["hs_call_recording_url"], lead.lead.recording_url.as_deref().unwrap());
    let body = p["hs_call_body"].as_str().unwrap();
    assert!(body.contains("full kitchen remodel"), "{body}");
    assert!(body.contains("Lead score 82 (high)") && body.contains("project: kitchen"), "{body}");
    assert!(body.contains(&format!("[callflow lead {KEY}]")), "{body}");
}

#[tokio::test]
async fn pushing_the_lead_again_neither_makes_a_contact_nor_logs_the_call_twice() {
    let (server, fake) = portal().await;
    let target = target(&server.uri(), json!({}));
    let lead = lead_for(&target, CALL);
    let first = push(&target, &lead).await.unwrap();
    let again = push(&target, &lead).await.unwrap();
    assert_eq!(again, CrmRecord { id: first.id.clone(), created: false });
    let requests = sent(&server).await;
    assert_eq!(count(&requests, "POST", CALLS), 1, "the call is logged once");
    assert_eq!(count(&requests, "POST", "/crm/v3/objects/calls/batch/read"), 1, "the second push looked");
    let stored = |fake: &FakeHubSpot| {
        let portal = fake.0.lock().unwrap();
        (portal.contacts.len(), portal.calls.len())
    };
    assert_eq!(stored(&fake), (1, 1));

    // The same caller calls again: the same contact, a second call logged on it.
    let next = push(&target, &lead_for(&target, "CAL2d0e6bd4e278a7cddd38a662f4f81547")).await.unwrap();
    assert_eq!(next, CrmRecord { id: first.id, created: false });
    assert_eq!(stored(&fake), (1, 2));
}

#[tokio::test]
async fn a_retry_after_the_calls_answer_was_lost_finds_the_logged_call() {
    let (server, fake) = portal().await;
    fake.0.lock().unwrap().late_call_answers = 1;
    let mut target = target(&server.uri(), json!({}));
    target.timeout_ms = 500;
    let lead = lead_for(&target, CALL);
    let err = push(&target, &lead).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout) && err.is_retryable(), "{err:?}");
    assert_eq!(fake.0.lock().unwrap().calls.len(), 1, "HubSpot committed the call all the same");

    let retry = push(&target, &lead).await.unwrap();
    assert_eq!(retry, CrmRecord { id: "501".into(), created: false });
    let portal = fake.0.lock().unwrap();
    assert_eq!((portal.contacts.len(), portal.calls.len()), (1, 1), "no second contact, no second call");
}

#[tokio::test]
async fn the_contact_key_follows_id_from_and_logging_can_be_off() {
    let (server, fake) = portal().await;
    let by_call = target(
        &server.uri(),
        json!({"hubspot": {"id_property": "callflow_lead_key", "id_from": "call_id", "log_call": false}}),
    );
    let record = push(&by_call, &lead_for(&by_call, CALL)).await.unwrap();
    assert!(record.created);
    let requests = sent(&server).await;
    assert_eq!(requests.len(), 1, "no call logged: {requests:?}");
    assert_eq!(requests[0].2["inputs"][0]["idProperty"], "callflow_lead_key");
    assert_eq!(requests[0].2["inputs"][0]["id"], KEY);

    // Keyed on the phone, a lead whose number could not be read falls back to its lead key.
    let by_phone = target(&server.uri(), json!({}));
    let mut phoneless = lead_for(&by_phone, "CAL0000000000000000000000000000000a");
    phoneless.lead.phone = None;
    phoneless.properties = phoneless.lead.properties(&by_phone);
    assert!(push(&by_phone, &phoneless).await.unwrap().created);
    let requests = sent(&server).await;
    let input = &requests[1].2["inputs"][0];
    assert_eq!(input["id"], "acme-remodeling:CAL0000000000000000000000000000000a");
    assert_eq!(input["properties"]["callflow_phone"], input["id"]);
    assert!(requests[2].2["properties"].get("hs_call_from_number").is_none());
    assert_eq!(fake.0.lock().unwrap().contacts.len(), 2);
}

/// A portal whose `route` answers `template`; the other routes answer as for a new contact.
async fn answering(route: &str, template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path(route)).respond_with(template).with_priority(1).mount(&server).await;
    Mock::given(method("POST"))
        .and(path(UPSERT))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("contact_upsert.json")))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(CALLS))
        .respond_with(ResponseTemplate::new(201).set_body_json(fixture("call_created.json")))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn failures_are_classified_for_retry_or_dead_letter() {
    let limited = || ResponseTemplate::new(429).set_body_json(fixture("error_429.json"));
    let cases: Vec<(&str, ResponseTemplate, &str, bool)> = vec![
        (UPSERT, limited().insert_header("retry-after", "7"), "RateLimited(7s)", true),
        (
            UPSERT,
            limited()
                .insert_header("x-hubspot-ratelimit-interval-milliseconds", "10000")
                .insert_header("x-hubspot-ratelimit-max", "190")
                .insert_header("x-hubspot-ratelimit-remaining", "0"),
            "RateLimited(interval)",
            true,
        ),
        (
            UPSERT,
            limited()
                .insert_header("x-hubspot-ratelimit-interval-milliseconds", "10000")
                .insert_header("x-hubspot-ratelimit-remaining", "12"),
            "RateLimited(none)",
            true,
        ),
        (UPSERT, ResponseTemplate::new(401).set_body_json(fixture("error_401.json")), "401", false),
        (UPSERT, ResponseTemplate::new(400).set_body_json(fixture("error_400_validation.json")), "400", false),
        (UPSERT, ResponseTemplate::new(207).set_body_json(fixture("contact_upsert_207_errors.json")), "207", false),
        (UPSERT, ResponseTemplate::new(500).set_body_string("upstream exploded"), "500", true),
        (UPSERT, ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"), "Malformed", false),
        (UPSERT, ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE"})), "Malformed", false),
        (
            CALLS,
            ResponseTemplate::new(403).set_body_json(json!({
                "status": "error", "category": "MISSING_SCOPES", "correlationId": "x",
                "message": "This app hasn't been granted all required scopes to make this call."
            })),
            "403 call",
            false,
        ),
        (CALLS, ResponseTemplate::new(201).set_body_json(json!({"properties": {}})), "Malformed", false),
    ];
    for (route, template, what, retryable) in cases {
        let server = answering(route, template).await;
        let target = target(&server.uri(), json!({}));
        let err = push(&target, &lead_for(&target, CALL)).await.unwrap_err();
        match (&err, what) {
            (VendorError::RateLimited { retry_after: Some(d) }, "RateLimited(7s)") => {
                assert_eq!(*d, Duration::from_secs(7))
            }
            (VendorError::RateLimited { retry_after: Some(d) }, "RateLimited(interval)") => {
                assert_eq!(*d, Duration::from_secs(10))
            }
            (VendorError::RateLimited { retry_after: None }, "RateLimited(none)") => {}
            (VendorError::Status { status: 401, message }, "401") => {
                assert!(message.contains("INVALID_AUTHENTICATION: Authentication credentials not found"), "{message}")
            }
            (VendorError::Status { status: 400, message }, "400") => {
                assert!(message.contains("not a unique property"), "{message}")
            }
            (VendorError::Status { status: 400, message }, "207") => {
                assert!(message.contains("PROPERTY_DOESNT_EXIST") && message.contains("callflow_score"), "{message}")
            }
            (VendorError::Status { status: 500, message }, "500") => assert!(message.contains("exploded")),
            (VendorError::Status { status: 403, message }, "403 call") => {
                assert!(message.contains("logging the call") && message.contains("required scopes"), "{message}")
            }
            (VendorError::Malformed(_), "Malformed") => {}
            other => panic!("{what}: unexpected {other:?}"),
        }
        assert_eq!(err.is_retryable(), retryable, "{what}");
        assert!(!format!("{err} {err:?}").contains(TOKEN), "{what}: the token leaked");
    }
}

#[tokio::test]
async fn a_slow_portal_is_cut_by_the_time_limit_and_a_refused_connection_is_retryable() {
    let server = answering(UPSERT, ResponseTemplate::new(200).set_delay(Duration::from_secs(3))).await;
    let mut target = target(&server.uri(), json!({}));
    target.timeout_ms = 300;
    let started = std::time::Instant::now();
    let err = push(&target, &lead_for(&target, CALL)).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout) && err.is_retryable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let target = self::target(&format!("http://{closed}"), json!({}));
    let err = push(&target, &lead_for(&target, CALL)).await.unwrap_err();
    assert!(matches!(err, VendorError::Transport(_)) && err.is_retryable(), "{err:?}");
    assert!(!format!("{err:?}").contains(TOKEN));
}
