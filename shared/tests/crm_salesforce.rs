//! The Salesforce connector against a login server and an API instance answering as Salesforce does (recorded
//! shapes in `fixtures/crm/salesforce/`): one token for many pushes, created vs existing Leads (201, 200, 204 with
//! the id fetched), the same external-id URL on a redelivery, required fields filled, duplicate rules under each
//! policy, an expired session refreshed once, refused credentials, rate limits, server errors, a slow org cut by
//! the timeout and malformed answers.

use std::time::Duration;

use callflow::adapters::crm_salesforce::SalesforceCrm;
use callflow::adapters::http;
use callflow::domain::crm::{CrmSettings, Lead};
use callflow::domain::{CallId, TenantId};
use callflow::ports::{CrmConnector, CrmRecord, LeadPush, Secret, VendorError};
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const APP: &str = r#"{"client_id": "3MVG9connectedApp", "client_secret": "s3cr3t-Value-9"}"#;
const TOKEN_PATH: &str = "/services/oauth2/token";
/// The lead key `acme-remodeling:CAL…` with its `:` encoded, on the default External ID field and version.
const LEAD_PATH: &str =
    "/services/data/v61.0/sobjects/Lead/Callflow_Lead_Key__c/acme-remodeling%3ACAL8154748ae6bd4e278a7cddd38a662f4f";
const CREATED: &str = include_str!("../../fixtures/crm/salesforce/created.json");
const UPDATED: &str = include_str!("../../fixtures/crm/salesforce/updated.json");
const DUPLICATES: &str = include_str!("../../fixtures/crm/salesforce/duplicates_detected.json");
const INVALID_SESSION: &str = include_str!("../../fixtures/crm/salesforce/invalid_session.json");

fn json_body(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// The org: its My Domain (where tokens are issued) and the instance its tokens name (where the API answers).
struct Org {
    login: MockServer,
    api: MockServer,
}

/// A token answer naming `api` as the instance, with the given access token.
fn token_answer(api: &MockServer, access_token: &str) -> ResponseTemplate {
    let mut token = json_body(include_str!("../../fixtures/crm/salesforce/token.json"));
    token["instance_url"] = json!(api.uri());
    token["access_token"] = json!(access_token);
    ResponseTemplate::new(200).set_body_json(token)
}

impl Org {
    /// An org whose login server issues `tok-1` to anyone asking.
    async fn start() -> Self {
        let org = Self::bare().await;
        Mock::given(method("POST"))
            .and(path(TOKEN_PATH))
            .respond_with(token_answer(&org.api, "tok-1"))
            .mount(&org.login)
            .await;
        org
    }

    async fn bare() -> Self {
        Self { login: MockServer::start().await, api: MockServer::start().await }
    }

    fn target(&self, on_duplicate: &str, timeout: Duration) -> CrmSettings {
        serde_json::from_value(json!({
            "provider": "salesforce", "credential": "env:SF", "url": self.login.uri(),
            "timeout_ms": timeout.as_millis() as u64, "salesforce": {"on_duplicate": on_duplicate}
        }))
        .unwrap()
    }

    async fn upserts(&self, answer: ResponseTemplate) {
        Mock::given(method("PATCH")).and(path(LEAD_PATH)).respond_with(answer).mount(&self.api).await;
    }

    async fn requests(server: &MockServer, verb: &str) -> Vec<Request> {
        server.received_requests().await.unwrap().into_iter().filter(|r| r.method.as_str() == verb).collect()
    }

    async fn tokens_issued(&self) -> usize {
        Self::requests(&self.login, "POST").await.len()
    }

    async fn patches(&self) -> Vec<Request> {
        Self::requests(&self.api, "PATCH").await
    }
}

fn fixture_lead() -> Lead {
    serde_json::from_str(include_str!("../../fixtures/crm/lead.json")).unwrap()
}

fn lead_push(lead: Lead, target: &CrmSettings) -> LeadPush {
    LeadPush {
        tenant_id: TenantId::parse("acme-remodeling").unwrap(),
        call_id: CallId::parse("CAL8154748ae6bd4e278a7cddd38a662f4f").unwrap(),
        idempotency_key: lead.lead_key.clone(),
        properties: lead.properties(target),
        document: lead.document("acme-remodeling"),
        lead,
    }
}

async fn push(crm: &SalesforceCrm, target: &CrmSettings) -> Result<CrmRecord, VendorError> {
    crm.push(target, &lead_push(fixture_lead(), target), &Secret::new(APP)).await
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn a_new_lead_is_created_then_updated_in_place_with_one_cached_token() {
    let org = Org::start().await;
    Mock::given(method("PATCH"))
        .and(path(LEAD_PATH))
        .respond_with(ResponseTemplate::new(201).set_body_string(CREATED))
        .up_to_n_times(1)
        .mount(&org.api)
        .await;
    org.upserts(ResponseTemplate::new(200).set_body_string(UPDATED)).await;
    let crm = SalesforceCrm::new(http::client());
    let target = org.target("link", secs(5));

    let first = push(&crm, &target).await.unwrap();
    assert_eq!(first, CrmRecord { id: "00QKd000003XyZaMAK".into(), created: true });
    let again = push(&crm, &target).await.unwrap();
    assert_eq!(again, CrmRecord { id: "00QKd000003XyZaMAK".into(), created: false }, "a redelivery updates");

    assert_eq!(org.tokens_issued().await, 1, "the token is reused across pushes");
    let form = String::from_utf8(Org::requests(&org.login, "POST").await[0].body.clone()).unwrap();
    for part in ["grant_type=client_credentials", "client_id=3MVG9connectedApp", "client_secret=s3cr3t-Value-9"] {
        assert!(form.contains(part), "{form}");
    }
    let patches = org.patches().await;
    assert_eq!(patches.len(), 2);
    for p in &patches {
        assert_eq!(p.url.path(), LEAD_PATH, "both pushes upsert on the same external id");
        assert_eq!(p.headers.get("authorization").unwrap(), "Bearer tok-1");
    }
    let body: Value = serde_json::from_slice(&patches[0].body).unwrap();
    assert_eq!(body["LastName"], "Whitfield");
    assert_eq!(body["FirstName"], "Dana");
    assert_eq!(body["Company"], "Dana Whitfield");
    assert_eq!(body["Phone"], "+15035550148");
    assert_eq!(body["Rating"], "Hot");

    // Another connected app on the same org gets its own token.
    let other = r#"{"client_id": "3MVG9another", "client_secret": "x"}"#;
    crm.push(&target, &lead_push(fixture_lead(), &target), &Secret::new(other)).await.unwrap();
    assert_eq!(org.tokens_issued().await, 2);
}

#[tokio::test]
async fn an_existing_lead_answered_without_a_body_has_its_id_fetched() {
    let org = Org::start().await;
    org.upserts(ResponseTemplate::new(204)).await;
    Mock::given(method("GET"))
        .and(path(LEAD_PATH))
        .and(query_param("fields", "Id"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(include_str!("../../fixtures/crm/salesforce/lead_id.json")),
        )
        .expect(1)
        .mount(&org.api)
        .await;
    let crm = SalesforceCrm::new(http::client());
    let record = push(&crm, &org.target("link", secs(5))).await.unwrap();
    assert_eq!(record, CrmRecord { id: "00QKd000003XyZaMAK".into(), created: false });
    assert_eq!(org.tokens_issued().await, 1);
}

#[tokio::test]
async fn salesforces_required_fields_are_filled_and_the_external_id_stays_in_the_url() {
    let org = Org::start().await;
    org.upserts(ResponseTemplate::new(201).set_body_string(CREATED)).await;
    // The tenant maps the company elsewhere and writes the lead key to the External ID field itself.
    let mut target = org.target("link", secs(5));
    target.field_mapping.insert("company".into(), "Caller_Name__c".into());
    target.field_mapping.insert("lead_key".into(), "Callflow_Lead_Key__c".into());
    let mut nameless = fixture_lead();
    (nameless.name, nameless.first_name, nameless.last_name) = (None, None, None);
    let crm = SalesforceCrm::new(http::client());
    crm.push(&target, &lead_push(nameless, &target), &Secret::new(APP)).await.unwrap();

    let body: Value = serde_json::from_slice(&org.patches().await[0].body).unwrap();
    assert_eq!(body["LastName"], "Unknown");
    assert_eq!(body["Company"], "Unknown");
    assert!(body.get("Callflow_Lead_Key__c").is_none(), "the external id is in the URL, not the body: {body}");

    // A one-word name is the last name (Salesforce requires one), not also the first.
    let org = Org::start().await;
    org.upserts(ResponseTemplate::new(201).set_body_string(CREATED)).await;
    let target = org.target("link", secs(5));
    let mut single = fixture_lead();
    (single.name, single.first_name, single.last_name) = (Some("Dana".into()), Some("Dana".into()), None);
    crm.push(&target, &lead_push(single, &target), &Secret::new(APP)).await.unwrap();
    let body: Value = serde_json::from_slice(&org.patches().await[0].body).unwrap();
    assert_eq!((body["LastName"].as_str(), body.get("FirstName")), (Some("Dana"), None));
    assert_eq!(body["Company"], "Dana");
}

#[tokio::test]
async fn a_duplicate_rule_match_is_linked_under_the_link_policy() {
    let org = Org::start().await;
    org.upserts(ResponseTemplate::new(400).set_body_string(DUPLICATES)).await;
    let record = push(&SalesforceCrm::new(http::client()), &org.target("link", secs(5))).await.unwrap();
    assert_eq!(record, CrmRecord { id: "00QKd000002DupLMAS".into(), created: false }, "the matched Lead");
    assert_eq!(org.patches().await.len(), 1);

    // The correct spelling is read too; a rule that names no record cannot be linked.
    let org = Org::start().await;
    let mut unnamed = json_body(DUPLICATES);
    let result = unnamed[0].as_object_mut().unwrap().remove("duplicateResut").unwrap();
    unnamed[0]["duplicateResult"] = result;
    unnamed[0]["duplicateResult"]["matchResults"][0]["matchRecords"] = json!([]);
    org.upserts(ResponseTemplate::new(400).set_body_json(unnamed)).await;
    let err = push(&SalesforceCrm::new(http::client()), &org.target("link", secs(5))).await.unwrap_err();
    assert!(matches!(&err, VendorError::Status { status: 400, message } if message.contains("no matching record")));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_duplicate_rule_that_allows_saving_is_overridden_under_allow_save() {
    let org = Org::start().await;
    Mock::given(method("PATCH"))
        .and(path(LEAD_PATH))
        .and(header("sforce-duplicate-rule-header", "allowSave=true"))
        .respond_with(ResponseTemplate::new(201).set_body_string(CREATED))
        .mount(&org.api)
        .await;
    org.upserts(ResponseTemplate::new(400).set_body_string(DUPLICATES)).await;
    let record = push(&SalesforceCrm::new(http::client()), &org.target("allow_save", secs(5))).await.unwrap();
    assert_eq!(record, CrmRecord { id: "00QKd000003XyZaMAK".into(), created: true });
    let patches = org.patches().await;
    assert_eq!(patches.len(), 2);
    assert!(patches[0].headers.get("sforce-duplicate-rule-header").is_none(), "the first try respects the rule");
    assert_eq!(patches[0].body, patches[1].body, "the same Lead, sent again");

    // A rule that blocks saving outright is permanent, after one try.
    let org = Org::start().await;
    let mut blocking = json_body(DUPLICATES);
    blocking[0]["duplicateResut"]["allowSave"] = json!(false);
    org.upserts(ResponseTemplate::new(400).set_body_json(blocking)).await;
    let err = push(&SalesforceCrm::new(http::client()), &org.target("allow_save", secs(5))).await.unwrap_err();
    assert!(matches!(&err, VendorError::Status { status: 400, message } if message.contains("does not allow")));
    assert!(!err.is_retryable());
    assert_eq!(org.patches().await.len(), 1);
}

#[tokio::test]
async fn a_duplicate_rule_is_a_permanent_failure_under_reject() {
    let org = Org::start().await;
    org.upserts(ResponseTemplate::new(400).set_body_string(DUPLICATES)).await;
    let err = push(&SalesforceCrm::new(http::client()), &org.target("reject", secs(5))).await.unwrap_err();
    match &err {
        VendorError::Status { status: 400, message } => {
            assert!(message.contains("Use one of these records?"), "{message}");
            assert!(message.contains("Standard_Lead_Duplicate_Rule"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(org.patches().await.len(), 1);
}

#[tokio::test]
async fn an_expired_session_fetches_one_new_token_and_repeats_the_push() {
    let org = Org::bare().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer(&org.api, "tok-old"))
        .up_to_n_times(1)
        .mount(&org.login)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer(&org.api, "tok-new"))
        .mount(&org.login)
        .await;
    Mock::given(method("PATCH"))
        .and(path(LEAD_PATH))
        .and(header("authorization", "Bearer tok-old"))
        .respond_with(ResponseTemplate::new(401).set_body_string(INVALID_SESSION))
        .mount(&org.api)
        .await;
    Mock::given(method("PATCH"))
        .and(path(LEAD_PATH))
        .and(header("authorization", "Bearer tok-new"))
        .respond_with(ResponseTemplate::new(201).set_body_string(CREATED))
        .mount(&org.api)
        .await;
    let crm = SalesforceCrm::new(http::client());
    let target = org.target("link", secs(5));
    assert!(push(&crm, &target).await.unwrap().created);
    assert_eq!((org.tokens_issued().await, org.patches().await.len()), (2, 2));
    // The new token is the cached one now.
    push(&crm, &target).await.unwrap();
    assert_eq!((org.tokens_issued().await, org.patches().await.len()), (2, 3));
}

#[tokio::test]
async fn a_session_refused_again_after_a_new_token_is_permanent_without_looping() {
    let org = Org::start().await;
    org.upserts(ResponseTemplate::new(401).set_body_string(INVALID_SESSION)).await;
    let err = push(&SalesforceCrm::new(http::client()), &org.target("link", secs(5))).await.unwrap_err();
    assert!(matches!(&err, VendorError::Status { status: 401, message } if message.contains("INVALID_SESSION_ID")));
    assert!(!err.is_retryable());
    assert_eq!((org.tokens_issued().await, org.patches().await.len()), (2, 2));
}

#[tokio::test]
async fn a_bad_client_secret_is_a_permanent_401_with_salesforces_description() {
    let org = Org::bare().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_string(include_str!("../../fixtures/crm/salesforce/token_invalid_client.json")),
        )
        .mount(&org.login)
        .await;
    let err = push(&SalesforceCrm::new(http::client()), &org.target("link", secs(5))).await.unwrap_err();
    match &err {
        VendorError::Status { status: 401, message } => {
            assert!(message.contains("invalid_client") && message.contains("invalid client credentials"), "{message}");
            assert!(!message.contains("s3cr3t"), "the secret stays out of errors: {message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(org.patches().await.is_empty());

    // A credential that is not the connected app's JSON is refused before asking anyone.
    let target = org.target("link", secs(5));
    let err = SalesforceCrm::new(http::client())
        .push(&target, &lead_push(fixture_lead(), &target), &Secret::new("s3cr3t-not-json"))
        .await
        .unwrap_err();
    assert!(matches!(&err, VendorError::Status { status: 401, message } if !message.contains("s3cr3t")), "{err:?}");
    assert_eq!(org.tokens_issued().await, 1);
}

#[tokio::test]
async fn a_refresh_token_credential_uses_the_refresh_token_grant() {
    let org = Org::bare().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=5Aep861rt"))
        .respond_with(token_answer(&org.api, "tok-r"))
        .mount(&org.login)
        .await;
    org.upserts(ResponseTemplate::new(201).set_body_string(CREATED)).await;
    let app = r#"{"client_id": "3MVG9connectedApp", "client_secret": "s", "refresh_token": "5Aep861rt"}"#;
    let target = org.target("link", secs(5));
    let record = SalesforceCrm::new(http::client())
        .push(&target, &lead_push(fixture_lead(), &target), &Secret::new(app))
        .await
        .unwrap();
    assert!(record.created);
    assert_eq!(org.patches().await[0].headers.get("authorization").unwrap(), "Bearer tok-r");
}

#[tokio::test]
async fn failures_are_classified_for_retry_or_dead_letter() {
    let cases: Vec<(ResponseTemplate, &str, bool)> = vec![
        (ResponseTemplate::new(429).insert_header("retry-after", "30"), "429 after 30", true),
        (ResponseTemplate::new(429), "429", true),
        (
            ResponseTemplate::new(403)
                .insert_header("sforce-limit-info", "api-usage=15000/15000")
                .set_body_string(include_str!("../../fixtures/crm/salesforce/request_limit_exceeded.json")),
            "limit",
            true,
        ),
        (ResponseTemplate::new(503).insert_header("retry-after", "7"), "503 after 7", true),
        (
            ResponseTemplate::new(500).set_body_string(r#"[{"message":"boom","errorCode":"UNKNOWN_EXCEPTION"}]"#),
            "500",
            true,
        ),
        (
            ResponseTemplate::new(400)
                .set_body_string(include_str!("../../fixtures/crm/salesforce/required_field_missing.json")),
            "400",
            false,
        ),
        (
            ResponseTemplate::new(300)
                .set_body_string(include_str!("../../fixtures/crm/salesforce/multiple_choices.json")),
            "300",
            false,
        ),
        (
            ResponseTemplate::new(404)
                .set_body_json(json!({"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"})),
            "404",
            false,
        ),
    ];
    for (template, what, retryable) in cases {
        let org = Org::start().await;
        org.upserts(template).await;
        let err = push(&SalesforceCrm::new(http::client()), &org.target("link", secs(5))).await.unwrap_err();
        match (&err, what) {
            (VendorError::RateLimited { retry_after }, "429 after 30") => assert_eq!(*retry_after, Some(secs(30))),
            (VendorError::RateLimited { retry_after: None }, "429" | "limit") => {}
            (VendorError::RateLimited { retry_after }, "503 after 7") => assert_eq!(*retry_after, Some(secs(7))),
            (VendorError::Status { status: 500, message }, "500") => {
                assert!(message.contains("UNKNOWN_EXCEPTION: boom"))
            }
            (VendorError::Status { status: 400, message }, "400") => {
                assert_eq!(message, "REQUIRED_FIELD_MISSING: Required fields are missing: [Company] (fields: Company)")
            }
            (VendorError::Status { status: 300, message }, "300") => assert!(message.contains("several Leads")),
            (VendorError::Status { status: 404, message }, "404") => {
                assert!(message.contains("NOT_FOUND: The requested resource does not exist"))
            }
            other => panic!("{what}: unexpected {other:?}"),
        }
        assert_eq!(err.is_retryable(), retryable, "{what}");
        assert_eq!(org.patches().await.len(), 1, "{what}: no retry inside the connector");
    }
}

#[tokio::test]
async fn a_slow_org_is_cut_by_the_time_limit() {
    let org = Org::start().await;
    org.upserts(ResponseTemplate::new(201).set_body_string(CREATED).set_delay(secs(3))).await;
    let started = std::time::Instant::now();
    let err =
        push(&SalesforceCrm::new(http::client()), &org.target("link", Duration::from_millis(300))).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout) && err.is_retryable(), "{err:?}");
    assert!(started.elapsed() < secs(2));

    let org = Org::bare().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_answer(&org.api, "tok-1").set_delay(secs(3)))
        .mount(&org.login)
        .await;
    let err =
        push(&SalesforceCrm::new(http::client()), &org.target("link", Duration::from_millis(300))).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout), "the token request has the same limit: {err:?}");
}

#[tokio::test]
async fn malformed_successes_are_not_taken_for_records() {
    for answer in [
        ResponseTemplate::new(201).set_body_string("<html>maintenance</html>"),
        ResponseTemplate::new(201).set_body_json(json!({"success": true, "errors": []})),
    ] {
        let org = Org::start().await;
        org.upserts(answer).await;
        let err = push(&SalesforceCrm::new(http::client()), &org.target("link", secs(5))).await.unwrap_err();
        assert!(matches!(err, VendorError::Malformed(_)) && !err.is_retryable(), "{err:?}");
    }

    let org = Org::bare().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"token_type": "Bearer"})))
        .mount(&org.login)
        .await;
    let err = push(&SalesforceCrm::new(http::client()), &org.target("link", secs(5))).await.unwrap_err();
    assert!(matches!(err, VendorError::Malformed(_)), "{err:?}");
    assert!(org.patches().await.is_empty());
}
