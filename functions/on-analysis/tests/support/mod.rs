//! The lead-delivery harness on-analysis's and on-crm-retry's tests share: the embedded backends in a temporary
//! directory, the real connectors and notifiers pointed at local fakes (a tenant's signed-webhook receiver, Slack,
//! SendGrid), a clock the test moves, and a publisher that keeps what is published so a test can deliver the
//! `crm-retry` chain itself.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use callflow::adapters::sqlite::Durability;
use callflow::domain::analysis::{
    ANALYSIS_SCHEMA_VERSION, Analysis, Budget, CallerDetails, Findings, Intent, ProjectType, Sentiment, Urgency, Usage,
};
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::work::{Completion, Transition};
use callflow::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{Claim, Clock, EventPublisher, PortResult, StateStore};
use callflow::runtime::cloudevent::IncomingEvent;
use callflow::runtime::embedded::Embedded;
use callflow::runtime::lead_delivery::{Connectors, Delivery, Notifiers, Policy, Ports};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use wiremock::MockServer;

pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A clock the test moves.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
    pub fn now_for_tests(&self) -> DateTime<Utc> {
        self.now()
    }
    pub fn advance(&self, secs: i64) {
        *self.0.lock().unwrap() += chrono::Duration::seconds(secs);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Keeps what is published: (topic, data).
#[derive(Default)]
pub struct Captured(Mutex<Vec<(String, Value)>>);

impl Captured {
    /// Put a message back (not delivered yet).
    pub fn put_back(&self, topic: &str, data: Value) {
        self.0.lock().unwrap().push((topic.to_owned(), data));
    }

    pub fn take(&self, topic: &str) -> Vec<Value> {
        let mut all = self.0.lock().unwrap();
        let (wanted, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|(t, _)| t == topic);
        *all = rest;
        wanted.into_iter().map(|(_, v)| v).collect()
    }
}

#[async_trait]
impl EventPublisher for Captured {
    async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        _attributes: std::collections::BTreeMap<String, String>,
        _ordering_key: Option<&str>,
    ) -> PortResult<String> {
        let mut all = self.0.lock().unwrap();
        all.push((topic.to_owned(), serde_json::from_slice(&data).unwrap()));
        Ok(all.len().to_string())
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub e: Embedded,
    pub service: Delivery,
    pub clock: Arc<ManualClock>,
    pub published: Arc<Captured>,
    /// The tenant's lead receiver (custom-webhook CRM).
    pub crm: MockServer,
    /// Slack's incoming webhook and SendGrid.
    pub notify: MockServer,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Tenants: `acme` pushes to the receiver with a workflow (spam gate, service area around Portland, minimum
/// score, a hot-lead Slack rule and a CRM-failure email rule); `solo` has no CRM.
pub fn tenants(crm: &str) -> String {
    format!(
        r#"
[[tenant]]
id = "acme"
name = "Acme Remodeling"
[tenant.crm]
provider = "webhook"
credential = "file:acme-webhook-secret"
url = "{crm}/leads"
timeout_ms = 400
[tenant.workflow]
min_score = 20
spam = {{ threshold = 80, review_from = 50 }}
service_area = {{ zips = ["98660"], office = {{ lat = 45.52, lon = -122.68 }}, radius_miles = 30, outside = "skip" }}
[[tenant.workflow.notifications]]
name = "hot-leads"
min_score = 80
slack = {{ webhook = "file:acme-slack-url" }}
[[tenant.workflow.notifications]]
name = "crm-down"
on = "crm_failed"
email = {{ to = ["ops@acme.example"], from = "callflow@acme.example", api_key = "file:acme-sendgrid-key" }}

[[tenant]]
id = "solo"
name = "Solo Builder"
[[tenant.workflow.notifications]]
name = "every-lead"
slack = {{ webhook = "file:acme-slack-url" }}
"#
    )
}

pub async fn harness() -> Harness {
    harness_with(&[]).await
}

pub async fn harness_with(extra: &[(&str, &str)]) -> Harness {
    let crm = MockServer::start().await;
    let notify = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants_file = dir.path().join("tenants.toml");
    std::fs::write(&tenants_file, tenants(&crm.uri())).unwrap();
    std::fs::write(dir.path().join("acme-webhook-secret"), WEBHOOK_SECRET).unwrap();
    std::fs::write(dir.path().join("acme-slack-url"), format!("{}/slack/T000/B000/XXXX", notify.uri())).unwrap();
    std::fs::write(dir.path().join("acme-sendgrid-key"), "SG.test-key").unwrap();
    let mut vars: Vec<(String, String)> = vec![
        ("CALLFLOW_EVENTARC".into(), repo().join("eventarc").display().to_string()),
        ("CALLFLOW_DATA_DIR".into(), dir.path().join("data").display().to_string()),
        ("CALLFLOW_TENANTS".into(), tenants_file.display().to_string()),
        ("CALLFLOW_SENDGRID_URL".into(), notify.uri()),
        ("CALLFLOW_CRM_BREAKER_FAILURES".into(), "3".into()),
        ("CALLFLOW_CRM_BREAKER_SECS".into(), "60".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let lookup = |name: &str| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let common = callflow::runtime::config::Common::from_lookup(&lookup).unwrap();
    let policy = Policy::from_lookup(&common, &lookup).unwrap();
    let e = Embedded::open(&common.data_dir, &common.tenants_file, common.triggers.clone(), Durability::Full).unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
    let published = Arc::new(Captured::default());
    let http = callflow::adapters::http::client();
    let ports = Ports {
        tenants: e.tenants.clone(),
        state: e.state.clone(),
        analytics: e.analytics.clone(),
        publisher: published.clone(),
        secrets: e.secrets.clone(),
        connectors: Connectors::real(http.clone()),
        notifiers: Notifiers::real(http, &policy.sendgrid_url),
        clock: clock.clone(),
    };
    let service = Delivery { ports, policy: Arc::new(policy) };
    Harness { dir, e, service, clock, published, crm, notify }
}

pub fn findings(score: u8, spam: u8, zip: Option<&str>) -> Findings {
    Findings {
        intent: Intent::NewLead,
        project_type: ProjectType::Kitchen,
        lead_score: score,
        score_reasons: vec!["wants an estimate".into()],
        urgency: Urgency::Soon,
        budget: Budget::High,
        sentiment: Sentiment::Positive,
        spam_likelihood: spam,
        summary: "Wants a kitchen remodel with an island.".into(),
        caller: CallerDetails {
            name: Some("Dana Whitfield".into()),
            email: Some("dana@example.com".into()),
            zip: zip.map(str::to_owned),
            callback_time: Some("tomorrow morning".into()),
        },
    }
}

pub fn ids(tenant: &str, call: &str) -> (TenantId, CallId) {
    (TenantId::parse(tenant).unwrap(), CallId::parse(call).unwrap())
}

impl Harness {
    /// A call as on-transcript leaves it: `analysed`, with its analysis stored.
    pub async fn analysed(&self, tenant: &str, call: &str, findings: Findings) {
        let (t, c) = ids(tenant, call);
        let event = IntakeEvent {
            tenant_id: t.clone(),
            call_id: c.clone(),
            source: CallSource::Callrail,
            kind: EventKind::PostCall,
            dedupe_key: "post_call".into(),
            payload_sha256: "00".into(),
            payload_bytes: 10,
            lead: LeadDetails {
                answered: Some(true),
                duration_secs: Some(200),
                customer_phone: Some("(503) 555-0148".into()),
                customer_name: Some("Dana Whitfield".into()),
                recording_url: Some("https://api.callrail.com/v3/a/ACC1/calls/CAL1/recording.json".into()),
                ..LeadDetails::default()
            },
            received_at: Utc::now(),
        };
        self.e.state.record_intake(event).await.unwrap();
        let Claim::Claimed(claim) =
            self.e.state.claim_stage(&t, &c, "analyse:1", std::time::Duration::from_secs(60)).await.unwrap()
        else {
            panic!("claim")
        };
        let analysis = Analysis {
            schema_version: ANALYSIS_SCHEMA_VERSION,
            analyzer: "rules/1".into(),
            fallback_reason: None,
            findings,
            usage: Usage::default(),
            redactions: 0,
        };
        let completion = Completion {
            transition: Some(Transition { to: CallState::Analysed, reason: None, recording_object: None }),
            analysis: Some(analysis),
            ..Completion::default()
        };
        assert!(self.e.state.finish_stage(&claim, completion).await.unwrap());
    }

    pub async fn state(&self, tenant: &str, call: &str) -> (CallState, Option<String>) {
        let (t, c) = ids(tenant, call);
        let record = self.e.state.call(&t, &c).await.unwrap().unwrap();
        (record.state, record.state_reason)
    }

    pub async fn delivery(&self, tenant: &str, call: &str) -> Option<callflow::domain::crm::CrmDelivery> {
        let (t, c) = ids(tenant, call);
        self.e.state.delivery(&t, &c).await.unwrap()
    }

    /// Requests the fake CRM received.
    pub async fn pushes(&self) -> Vec<wiremock::Request> {
        self.crm.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/leads").collect()
    }

    pub async fn notifications(&self, path_prefix: &str) -> Vec<wiremock::Request> {
        let all = self.notify.received_requests().await.unwrap();
        all.into_iter().filter(|r| r.url.path().starts_with(path_prefix)).collect()
    }

    /// After a delivery: what `handle` does after a commit (publish, notify, stream).
    pub async fn flush(&self) {
        self.service.flush().await;
    }
}

/// A Pub/Sub push envelope (no `ce-*` headers), as the emulator and plain push subscriptions send.
pub fn pubsub(data: &Value, message_id: &str) -> IncomingEvent {
    use base64::Engine;
    let body = json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data.to_string()),
            "messageId": message_id,
            "attributes": {}
        },
        "subscription": "projects/callflow-local/subscriptions/test"
    });
    IncomingEvent::from_http(&axum::http::HeaderMap::new(), Bytes::from(body.to_string())).unwrap()
}

pub fn analysis_complete(tenant: &str, call: &str) -> Value {
    json!({"schema_version": 1, "tenant_id": tenant, "call_id": call, "transcript_generation": "1", "analyzer": "rules/1"})
}
