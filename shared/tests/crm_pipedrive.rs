//! The Pipedrive connector against a fake company that keeps persons and leads and whose search index can lag
//! writes, answering in Pipedrive's recorded shapes: a new caller becomes a person with a lead; pushing the lead
//! again finds it and creates nothing; a retry inside the search lag still finds the lead on the caller's person;
//! a repeat caller's new call gets a new lead on the same person; a lead without a phone gets a person of its own;
//! failures are classified (429 with Retry-After, with `x-ratelimit-reset`, with neither; 401; 402; 400 with
//! Pipedrive's message; 500; a slow company; malformed answers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callflow::adapters::crm_pipedrive::PipedriveCrm;
use callflow::adapters::http;
use callflow::domain::crm::{CrmSettings, Lead};
use callflow::domain::{CallId, TenantId};
use callflow::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "9f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b";
const PHONE: &str = "+15035550148";
/// A lead custom field's key, as Pipedrive generates them.
const PROJECT_FIELD: &str = "a3c2f1e9b8d7c6a5f4e3d2c1b0a9f8e7d6c5b4a3";
const CALL: &str = "CAL8154748ae6bd4e278a7cddd38a662f4f";
const KEY: &str = "acme-remodeling:CAL8154748ae6bd4e278a7cddd38a662f4f";
const LEAD_SEARCH: &str = "/v1/leads/search";
const PERSON_SEARCH: &str = "/api/v2/persons/search";
const PERSONS: &str = "/api/v2/persons";
const LEADS: &str = "/v1/leads";

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/../fixtures/crm/pipedrive/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn target(url: &str) -> CrmSettings {
    let target: CrmSettings = serde_json::from_value(json!({
        "provider": "pipedrive", "credential": "env:PIPEDRIVE_TOKEN", "url": url, "timeout_ms": 5000,
        "field_mapping": {"project_type": PROJECT_FIELD}
    }))
    .unwrap();
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

async fn push(target: &CrmSettings, lead: &LeadPush) -> Result<CrmRecord, VendorError> {
    PipedriveCrm::new(http::client()).push(target, lead, &Secret::new(TOKEN)).await
}

struct Person {
    id: u64,
    phone: Option<String>,
    indexed: bool,
}

struct PdLead {
    id: String,
    title: String,
    person_id: u64,
    indexed: bool,
}

#[derive(Default)]
struct Company {
    persons: Vec<Person>,
    leads: Vec<PdLead>,
    next_id: u64,
    /// New records stay out of search until `catch_up`.
    lagging: bool,
}

impl Company {
    fn catch_up(&mut self) {
        self.persons.iter_mut().for_each(|p| p.indexed = true);
        self.leads.iter_mut().for_each(|l| l.indexed = true);
    }
}

/// A Pipedrive company: searches read an index that may lag, `GET /v1/leads` and creates the records.
#[derive(Clone, Default)]
struct FakePipedrive(Arc<Mutex<Company>>);

fn query(req: &Request, name: &str) -> Option<String> {
    req.url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

impl Respond for FakePipedrive {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut company = self.0.lock().unwrap();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let ok = |data: Value| ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": data}));
        match (req.method.as_str(), req.url.path()) {
            ("GET", LEAD_SEARCH) => {
                let term = query(req, "term").unwrap();
                assert_eq!(query(req, "fields").as_deref(), Some("title"));
                let items: Vec<Value> = company
                    .leads
                    .iter()
                    .filter(|l| l.indexed && l.title.contains(&term))
                    .map(|l| {
                        json!({"result_score": 0.29, "item": {"id": l.id, "type": "lead", "title": l.title,
                        "person": {"id": l.person_id}, "organization": null, "is_archived": false}})
                    })
                    .collect();
                ok(json!({"items": items}))
            }
            ("GET", PERSON_SEARCH) => {
                let term = query(req, "term").unwrap();
                assert_eq!(query(req, "fields").as_deref(), Some("phone"));
                assert_eq!(query(req, "exact_match").as_deref(), Some("true"));
                let items: Vec<Value> = company
                    .persons
                    .iter()
                    .filter(|p| p.indexed && p.phone.as_deref() == Some(term.as_str()))
                    .map(|p| {
                        let mut item = fixture("person_search.json")["data"]["items"][0].clone();
                        item["item"]["id"] = json!(p.id);
                        item
                    })
                    .collect();
                ok(json!({"items": items}))
            }
            ("GET", LEADS) => {
                let person: u64 = query(req, "person_id").unwrap().parse().unwrap();
                let leads: Vec<Value> = company
                    .leads
                    .iter()
                    .filter(|l| l.person_id == person)
                    .map(|l| json!({"id": l.id, "title": l.title, "person_id": l.person_id, "is_archived": false}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": leads, "additional_data":
                    {"pagination": {"start": 0, "limit": 500, "more_items_in_collection": false}}}))
            }
            ("POST", PERSONS) => {
                company.next_id += 1;
                let id = 40 + company.next_id;
                let phone = body["phones"][0]["value"].as_str().map(str::to_owned);
                let indexed = !company.lagging;
                company.persons.push(Person { id, phone, indexed });
                let mut answer = fixture("person_created.json");
                answer["data"]["id"] = json!(id);
                ResponseTemplate::new(201).set_body_json(answer)
            }
            ("POST", LEADS) => {
                company.next_id += 1;
                let id = format!("adf21080-0e10-11eb-879b-05d71fb4{:04}", company.next_id);
                let title = body["title"].as_str().unwrap().to_owned();
                let person_id = body["person_id"].as_u64().expect("person_id is a number");
                let indexed = !company.lagging;
                company.leads.push(PdLead { id: id.clone(), title, person_id, indexed });
                let mut answer = fixture("lead_created.json");
                answer["data"]["id"] = json!(id);
                answer["data"]["person_id"] = json!(person_id);
                ResponseTemplate::new(201).set_body_json(answer)
            }
            _ => ResponseTemplate::new(404).set_body_json(json!({"success": false, "error": "Not found"})),
        }
    }
}

/// A fake company that answers only requests bearing the token.
async fn company() -> (MockServer, FakePipedrive) {
    let server = MockServer::start().await;
    let fake = FakePipedrive::default();
    Mock::given(header("x-api-token", TOKEN)).respond_with(fake.clone()).mount(&server).await;
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
async fn a_new_caller_becomes_a_person_with_a_lead() {
    let (server, fake) = company().await;
    let target = target(&server.uri());
    let lead = lead_for(&target, CALL);
    let record = push(&target, &lead).await.unwrap();
    assert!(record.created);
    assert_eq!(record.id, fake.0.lock().unwrap().leads[0].id);

    let requests = server.received_requests().await.unwrap();
    let routes: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.url.path())).collect();
    assert_eq!(routes, [("GET", LEAD_SEARCH), ("GET", PERSON_SEARCH), ("POST", PERSONS), ("POST", LEADS)]);
    assert_eq!(query(&requests[0], "term").as_deref(), Some(KEY));
    assert_eq!(query(&requests[1], "term").as_deref(), Some(PHONE), "searched by the E.164 phone");

    let person: Value = serde_json::from_slice(&requests[2].body).unwrap();
    assert_eq!(person["name"], "Dana Whitfield");
    assert_eq!(person["phones"], json!([{"value": PHONE, "primary": true, "label": "mobile"}]));
    assert_eq!(person["emails"][0]["value"], "dana.whitfield@example.com");

    let created: Value = serde_json::from_slice(&requests[3].body).unwrap();
    let title = created["title"].as_str().unwrap();
    assert!(title.starts_with(&lead.lead.title()) && title.ends_with(&format!("[callflow {KEY}]")), "{title}");
    assert_eq!(created["person_id"], 41, "the person just created");
    assert_eq!(created[PROJECT_FIELD], "kitchen", "the mapped custom field");
}

#[tokio::test]
async fn pushing_the_lead_again_finds_it_and_creates_nothing() {
    let (server, fake) = company().await;
    let target = target(&server.uri());
    let lead = lead_for(&target, CALL);
    let first = push(&target, &lead).await.unwrap();
    let before = server.received_requests().await.unwrap().len();
    let again = push(&target, &lead).await.unwrap();
    assert_eq!(again, CrmRecord { id: first.id, created: false });
    let requests = sent(&server).await;
    assert_eq!(requests.len() - before, 1, "one search found it: {:?}", &requests[before..]);
    assert_eq!((count(&requests, "POST", PERSONS), count(&requests, "POST", LEADS)), (1, 1));
    let company = fake.0.lock().unwrap();
    assert_eq!((company.persons.len(), company.leads.len()), (1, 1));
}

#[tokio::test]
async fn a_retry_inside_the_search_lag_finds_the_lead_on_the_callers_person() {
    let (server, fake) = company().await;
    {
        let mut company = fake.0.lock().unwrap();
        company.persons.push(Person { id: 7, phone: Some(PHONE.into()), indexed: true });
        company.lagging = true;
    }
    let target = target(&server.uri());
    let lead = lead_for(&target, CALL);
    let first = push(&target, &lead).await.unwrap();
    assert!(first.created);
    // The lead is not searchable yet; the retry lists the person's leads instead.
    let again = push(&target, &lead).await.unwrap();
    assert_eq!(again, CrmRecord { id: first.id, created: false });
    let requests = sent(&server).await;
    assert_eq!(count(&requests, "POST", LEADS), 1, "{requests:?}");
    assert_eq!(count(&requests, "POST", PERSONS), 0, "the caller's person is reused");
    assert_eq!(fake.0.lock().unwrap().leads.len(), 1);
}

#[tokio::test]
async fn a_repeat_callers_new_call_is_a_new_lead_on_the_same_person() {
    let (server, fake) = company().await;
    let target = target(&server.uri());
    push(&target, &lead_for(&target, CALL)).await.unwrap();
    fake.0.lock().unwrap().catch_up();
    let next = push(&target, &lead_for(&target, "CAL2d0e6bd4e278a7cddd38a662f4f81547")).await.unwrap();
    assert!(next.created);
    let company = fake.0.lock().unwrap();
    assert_eq!(company.persons.len(), 1);
    assert_eq!(company.leads.len(), 2);
    assert_eq!(company.leads[1].person_id, company.persons[0].id);
    assert!(company.leads[1].title.contains("[callflow acme-remodeling:CAL2d0e6bd4e278a7cddd38a662f4f81547]"));
}

#[tokio::test]
async fn a_lead_without_a_phone_gets_a_person_of_its_own() {
    let (server, fake) = company().await;
    let target = target(&server.uri());
    let mut lead = lead_for(&target, CALL);
    lead.lead.phone = None;
    lead.lead.name = None;
    assert!(push(&target, &lead).await.unwrap().created);
    let requests = sent(&server).await;
    assert_eq!(count(&requests, "GET", PERSON_SEARCH), 0, "nothing to search on");
    let person = &requests.iter().find(|(m, p, _)| m == "POST" && p == PERSONS).unwrap().2;
    assert_eq!(person["name"], "Unknown caller");
    assert!(person.get("phones").is_none(), "{person}");
    // Still found again by its lead key.
    fake.0.lock().unwrap().catch_up();
    assert!(!push(&target, &lead).await.unwrap().created);
    assert_eq!(fake.0.lock().unwrap().persons.len(), 1);
}

/// A company whose `verb route` answers `template`; the other routes answer as for a new caller.
async fn answering(verb: &str, route: &str, template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method(verb)).and(path(route)).respond_with(template).with_priority(1).mount(&server).await;
    let nothing = json!({"success": true, "data": {"items": []}});
    for (verb, route, status, answer) in [
        ("GET", LEAD_SEARCH, 200, nothing.clone()),
        ("GET", PERSON_SEARCH, 200, nothing),
        ("POST", PERSONS, 201, fixture("person_created.json")),
        ("POST", LEADS, 201, fixture("lead_created.json")),
    ] {
        let template = ResponseTemplate::new(status).set_body_json(answer);
        Mock::given(method(verb)).and(path(route)).respond_with(template).mount(&server).await;
    }
    server
}

#[tokio::test]
async fn failures_are_classified_for_retry_or_dead_letter() {
    let limited = || {
        ResponseTemplate::new(429)
            .set_body_json(json!({"success": false, "error": "Request over limit", "errorCode": 429}))
    };
    let cases: Vec<(&str, &str, ResponseTemplate, &str, bool)> = vec![
        ("GET", LEAD_SEARCH, limited().insert_header("retry-after", "4"), "RateLimited(4s)", true),
        (
            "POST",
            LEADS,
            limited().insert_header("x-ratelimit-limit", "80").insert_header("x-ratelimit-reset", "2"),
            "RateLimited(2s)",
            true,
        ),
        ("GET", LEAD_SEARCH, limited(), "RateLimited(none)", true),
        ("GET", LEAD_SEARCH, ResponseTemplate::new(401).set_body_json(fixture("error_401.json")), "401", false),
        (
            "POST",
            PERSONS,
            ResponseTemplate::new(402)
                .set_body_json(json!({"success": false, "error": "Payment required", "errorCode": 402})),
            "402",
            false,
        ),
        ("POST", LEADS, ResponseTemplate::new(400).set_body_json(fixture("error_400_custom_field.json")), "400", false),
        ("GET", PERSON_SEARCH, ResponseTemplate::new(502).set_body_string("<html>Bad gateway</html>"), "502", true),
        ("GET", LEAD_SEARCH, ResponseTemplate::new(200).set_body_string("not json"), "Malformed", false),
        ("POST", PERSONS, ResponseTemplate::new(201).set_body_json(json!({"success": true})), "Malformed", false),
        (
            "POST",
            LEADS,
            ResponseTemplate::new(201).set_body_json(json!({"success": true, "data": {"title": "x"}})),
            "Malformed",
            false,
        ),
    ];
    for (verb, route, template, what, retryable) in cases {
        let server = answering(verb, route, template).await;
        let target = target(&server.uri());
        let err = push(&target, &lead_for(&target, CALL)).await.unwrap_err();
        match (&err, what) {
            (VendorError::RateLimited { retry_after: Some(d) }, "RateLimited(4s)") => {
                assert_eq!(*d, Duration::from_secs(4))
            }
            (VendorError::RateLimited { retry_after: Some(d) }, "RateLimited(2s)") => {
                assert_eq!(*d, Duration::from_secs(2))
            }
            (VendorError::RateLimited { retry_after: None }, "RateLimited(none)") => {}
            (VendorError::Status { status: 401, message }, "401") => {
                assert!(message.starts_with("Unauthorized (Please check developers.pipedrive.com"), "{message}")
            }
            (VendorError::Status { status: 402, message }, "402") => assert_eq!(message, "Payment required"),
            (VendorError::Status { status: 400, message }, "400") => {
                assert!(message.contains(&format!("Custom field '{PROJECT_FIELD}' value is invalid")), "{message}")
            }
            (VendorError::Status { status: 502, message }, "502") => assert!(message.contains("Bad gateway")),
            (VendorError::Malformed(_), "Malformed") => {}
            other => panic!("{what} ({verb} {route}): unexpected {other:?}"),
        }
        assert_eq!(err.is_retryable(), retryable, "{what}");
        assert!(!format!("{err} {err:?}").contains(TOKEN), "{what}: the token leaked");
    }
}

#[tokio::test]
async fn a_slow_company_is_cut_by_the_time_limit_and_a_refused_connection_is_retryable() {
    let server = answering("POST", LEADS, ResponseTemplate::new(201).set_delay(Duration::from_secs(3))).await;
    let mut target = target(&server.uri());
    target.timeout_ms = 300;
    let started = std::time::Instant::now();
    let err = push(&target, &lead_for(&target, CALL)).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout) && err.is_retryable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let target = self::target(&format!("http://{closed}"));
    let err = push(&target, &lead_for(&target, CALL)).await.unwrap_err();
    assert!(matches!(err, VendorError::Transport(_)) && err.is_retryable(), "{err:?}");
    assert!(!format!("{err:?}").contains(TOKEN));
}
