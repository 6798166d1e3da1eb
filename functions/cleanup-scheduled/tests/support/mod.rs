//! A cleanup-scheduled service over either backend — embedded (SQLite, a directory with the local router) or the
//! emulators (Spanner, the GCS emulator) — with a clock the test moves, a captured publisher, a stand-in CallRail
//! and a CRM receiver; and on-crm-retry over the same state, so a re-driven lead can finish its chain.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use callflow::adapters::callrail::HttpCallRail;
use callflow::adapters::sqlite::Durability;
use callflow::domain::analysis::{
    ANALYSIS_SCHEMA_VERSION, Analysis, Budget, CallerDetails, Findings, Intent, ProjectType, Sentiment, Urgency, Usage,
};
use callflow::domain::cleanup::RunRequest;
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::work::{Completion, Transition};
use callflow::domain::{CallId, CallRecord, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{Claim, Clock, EventPublisher, NewObject, ObjectStore, PortResult, StateStore};
use callflow::runtime::embedded::Embedded;
use callflow::runtime::lead_delivery::{Connectors, Delivery, Notifiers, Policy};
use chrono::{DateTime, Utc};
use cleanup_scheduled::run::RunReport;
use cleanup_scheduled::{Ports, Service, Settings};
use serde_json::Value;
use wiremock::MockServer;

pub const ACCOUNT: &str = "ACC8154748ae6bd4e278a7cddd38a662f4f";
pub const COMPANY: &str = "COM8154748ae6bd4e278a7cddd38a662f4f";
pub const CRM_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Emulators,
}

/// A clock the test moves.
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }
    pub fn advance(&self, d: chrono::Duration) {
        *self.0.lock().unwrap() += d;
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
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub service: Service,
    pub state: Arc<dyn StateStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub clock: Arc<ManualClock>,
    pub published: Arc<Captured>,
    pub callrail: MockServer,
    pub crm: MockServer,
    /// on-crm-retry's service over the same state (a re-driven lead finishes its chain through it).
    pub delivery: Delivery,
    /// The embedded backends (None on the emulators).
    pub embedded: Option<Embedded>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `acme`: recordings 30 days, personal data 90, transcripts a year; a CallRail account and a webhook CRM.
/// `bayside`: everything 30 days, no CallRail API key.
fn tenants(crm: &str) -> String {
    format!(
        r#"
[[tenant]]
id = "acme"
name = "Acme Remodeling"
retention_days = 365
[tenant.retention]
recordings_days = 30
pii_days = 90
[tenant.callrail]
account_id = "{ACCOUNT}"
company_ids = ["{COMPANY}"]
api_key = "file:callrail-key"
[tenant.crm]
provider = "webhook"
credential = "file:crm-secret"
url = "{crm}/leads"
timeout_ms = 400

[[tenant]]
id = "bayside"
name = "Bayside Bath"
retention_days = 30
[tenant.callrail]
account_id = "ACC2"
company_ids = ["COM2"]
"#
    )
}

fn required() -> bool {
    std::env::var("CALLFLOW_EMULATORS").as_deref() == Ok("required")
}

/// The harness, or None on the emulators when they are not running (unless CALLFLOW_EMULATORS=required, where
/// that fails the test).
pub async fn harness(backend: Backend, extra: &[(&str, &str)]) -> Option<Harness> {
    let callrail = MockServer::start().await;
    let crm = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tenants_file = dir.path().join("tenants.toml");
    std::fs::write(&tenants_file, tenants(&crm.uri())).unwrap();
    std::fs::write(dir.path().join("callrail-key"), "c0ffee0ddba11f00dcafe").unwrap();
    std::fs::write(dir.path().join("crm-secret"), CRM_SECRET).unwrap();
    let mut vars: Vec<(String, String)> = vec![
        ("CALLFLOW_EVENTARC".into(), repo().join("eventarc").display().to_string()),
        ("CALLFLOW_DATA_DIR".into(), dir.path().join("data").display().to_string()),
        ("CALLFLOW_TENANTS".into(), tenants_file.display().to_string()),
        ("CALLFLOW_CALLRAIL_API".into(), callrail.uri()),
        ("CALLFLOW_CALLRAIL_TIMEOUT_MS".into(), "2000".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let lookup = |name: &str| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut settings = Settings::from_lookup(lookup).unwrap();
    let policy = Policy::from_lookup(&settings.common, &lookup).unwrap();
    let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
    let published = Arc::new(Captured::default());
    let e = Embedded::open(
        &settings.common.data_dir,
        &settings.common.tenants_file,
        settings.common.triggers.clone(),
        Durability::Full,
    )
    .unwrap();
    let (state, objects, embedded): (Arc<dyn StateStore>, Arc<dyn ObjectStore>, _) = match backend {
        Backend::Embedded => (e.state.clone(), e.objects.clone(), Some(e)),
        Backend::Emulators => {
            let (state, objects, buckets) = emulators().await?;
            (settings.recordings_bucket, settings.transcripts_bucket) = buckets;
            (state, objects, None)
        }
    };
    let tenants = Arc::new(callflow::adapters::tenants_file::FileTenants::load(&tenants_file).unwrap());
    let secrets = Arc::new(callflow::adapters::local_secrets::LocalSecrets::new(dir.path()));
    let analytics = Arc::new(
        callflow::adapters::sqlite::SqliteAnalytics::open(&dir.path().join("analytics.sqlite"), Durability::Full)
            .unwrap(),
    );
    let ports = Ports {
        tenants: tenants.clone(),
        state: state.clone(),
        objects: objects.clone(),
        analytics: analytics.clone(),
        publisher: published.clone(),
        callrail: Arc::new(HttpCallRail::new(callrail.uri()).unwrap()),
        secrets: secrets.clone(),
        clock: clock.clone(),
    };
    let http = callflow::adapters::http::client();
    let delivery = Delivery {
        ports: callflow::runtime::lead_delivery::Ports {
            tenants,
            state: state.clone(),
            analytics,
            publisher: published.clone(),
            secrets,
            connectors: Connectors::real(http.clone()),
            notifiers: Notifiers::real(http, &policy.sendgrid_url),
            clock: clock.clone(),
        },
        policy: Arc::new(policy),
    };
    let service = Service::new(ports, settings);
    Some(Harness { backend, dir, service, state, objects, clock, published, callrail, crm, delivery, embedded })
}

type EmulatorPorts = (Arc<dyn StateStore>, Arc<dyn ObjectStore>, (String, String));

async fn emulators() -> Option<EmulatorPorts> {
    let spanner = std::env::var("SPANNER_EMULATOR_HOST").ok().filter(|h| !h.is_empty());
    let gcs = std::env::var("STORAGE_EMULATOR_HOST").ok().filter(|h| !h.is_empty());
    let (Some(_), Some(gcs)) = (spanner, gcs) else {
        assert!(!required(), "CALLFLOW_EMULATORS=required but the emulators are not set: run scripts/emulators start");
        eprintln!("skipped: no emulators (eval \"$(scripts/emulators env)\" after scripts/emulators start)");
        return None;
    };
    let instance = std::env::var("CALLFLOW_SPANNER_INSTANCE")
        .unwrap_or_else(|_| "projects/callflow-emulators/instances/callflow".to_owned());
    let database = format!("{instance}/databases/c{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    callflow::adapters::spanner::migrate(&database).await.expect("create the database with the schema");
    let state = Arc::new(callflow::adapters::spanner::SpannerStateStore::connect(&database).await.unwrap());
    let gcs = if gcs.contains("://") { gcs } else { format!("http://{gcs}") };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let buckets = (format!("rec-{}", &suffix[..12]), format!("tra-{}", &suffix[..12]));
    for bucket in [&buckets.0, &buckets.1] {
        let created = reqwest::Client::new()
            .post(format!("{gcs}/storage/v1/b?project=callflow-emulators"))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success(), "create bucket: {}", created.status());
    }
    let objects = Arc::new(callflow::adapters::gcs::GcsObjectStore::connect().await.unwrap());
    Some((state, objects, buckets))
}

pub fn ids(tenant: &str, call: &str) -> (TenantId, CallId) {
    (TenantId::parse(tenant).unwrap(), CallId::parse(call).unwrap())
}

pub fn findings() -> Findings {
    Findings {
        intent: Intent::NewLead,
        project_type: ProjectType::Kitchen,
        lead_score: 70,
        score_reasons: vec!["wants an estimate".into()],
        urgency: Urgency::Soon,
        budget: Budget::High,
        sentiment: Sentiment::Positive,
        spam_likelihood: 0,
        summary: "Wants a kitchen remodel with an island.".into(),
        caller: CallerDetails {
            name: Some("Dana Whitfield".into()),
            email: Some("dana@example.com".into()),
            zip: Some("97214".into()),
            callback_time: Some("tomorrow morning".into()),
        },
    }
}

/// The caller most tests erase: Dana, phone (503) 555-0148.
pub fn dana() -> LeadDetails {
    LeadDetails {
        answered: Some(true),
        duration_secs: Some(200),
        customer_phone: Some("(503) 555-0148".into()),
        customer_name: Some("Dana Whitfield".into()),
        customer_city: Some("Portland".into()),
        customer_zip: Some("97214".into()),
        recording_url: Some("https://api.callrail.com/v3/a/ACC1/calls/CAL1/recording.json".into()),
        utm_source: Some("google".into()),
        landing_page_url: Some("https://acme.example/kitchens?phone=5035550148".into()),
        ..LeadDetails::default()
    }
}

impl Harness {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A CallRail call received at `at` (as the webhook records it).
    pub async fn received(&self, tenant: &str, call: &str, lead: LeadDetails, at: DateTime<Utc>) -> CallRecord {
        let (t, c) = ids(tenant, call);
        let event = IntakeEvent {
            tenant_id: t,
            call_id: c,
            source: CallSource::Callrail,
            kind: EventKind::PostCall,
            dedupe_key: "post_call".into(),
            payload_sha256: "00".into(),
            payload_bytes: 10,
            lead,
            received_at: at,
        };
        self.state.record_intake(event).await.unwrap().call
    }

    /// Move a call forward to `to` through a stage claim (as a stage would), storing an analysis when `analysed`.
    pub async fn advance(&self, tenant: &str, call: &str, to: CallState) {
        let (t, c) = ids(tenant, call);
        let key = format!("test:{}", to.as_str());
        let Claim::Claimed(claim) =
            self.state.claim_stage(&t, &c, &key, std::time::Duration::from_secs(60)).await.unwrap()
        else {
            panic!("claim")
        };
        let analysis = (to == CallState::Analysed).then(|| Analysis {
            schema_version: ANALYSIS_SCHEMA_VERSION,
            analyzer: "rules/1".into(),
            fallback_reason: None,
            findings: findings(),
            usage: Usage::default(),
            redactions: 0,
        });
        let completion = Completion {
            transition: Some(Transition { to, reason: None, recording_object: None }),
            analysis,
            ..Completion::default()
        };
        assert!(self.state.finish_stage(&claim, completion).await.unwrap());
    }

    /// The call's recording stored, as the fetch leaves it: `recording_stored`, the object named on the call.
    pub async fn stored(&self, tenant: &str, call: &str) {
        let name = format!("{tenant}/{call}.mp3");
        self.put(&self.recordings(), &name, b"ID3 audio", "audio/mpeg").await;
        let (t, c) = ids(tenant, call);
        let lease = std::time::Duration::from_secs(60);
        let Claim::Claimed(claim) = self.state.claim_stage(&t, &c, "test:stored", lease).await.unwrap() else {
            panic!("claim")
        };
        let to = CallState::RecordingStored;
        let recording_object = Some(format!("{}/{name}", self.recordings()));
        let completion =
            Completion { transition: Some(Transition { to, reason: None, recording_object }), ..Completion::default() };
        assert!(self.state.finish_stage(&claim, completion).await.unwrap());
    }

    pub async fn call(&self, tenant: &str, call: &str) -> CallRecord {
        let (t, c) = ids(tenant, call);
        self.state.call(&t, &c).await.unwrap().unwrap()
    }

    pub fn recordings(&self) -> String {
        self.service.settings.recordings_bucket.clone()
    }

    pub fn transcripts(&self) -> String {
        self.service.settings.transcripts_bucket.clone()
    }

    pub async fn put(&self, bucket: &str, name: &str, body: &'static [u8], content_type: &str) {
        let metadata = std::collections::BTreeMap::from([
            ("tenant_id".to_owned(), name.split('/').next().unwrap().to_owned()),
            ("call_id".to_owned(), name.split('/').nth(1).unwrap().split('.').next().unwrap().to_owned()),
        ]);
        let object = NewObject { bucket, name, content_type, metadata, max_bytes: 1 << 20 };
        self.objects
            .put(object, Box::pin(futures::stream::once(async move { Ok(Bytes::from_static(body)) })))
            .await
            .unwrap();
    }

    /// A call's recording and transcript, stored as the stages name them.
    pub async fn objects_for(&self, tenant: &str, call: &str) {
        self.put(&self.recordings(), &format!("{tenant}/{call}.mp3"), b"ID3 audio", "audio/mpeg").await;
        self.put(
            &self.transcripts(),
            &format!("{tenant}/{call}.json"),
            br#"{"text": "Dana here"}"#,
            "application/json",
        )
        .await;
    }

    pub async fn exists(&self, bucket: &str, name: &str) -> bool {
        self.objects.head(bucket, name).await.unwrap().is_some()
    }

    pub async fn run(&self, body: &str) -> RunReport {
        let request = RunRequest::parse(body.as_bytes()).unwrap();
        cleanup_scheduled::run::run(&self.service, &request, &self.now().to_rfc3339()).await.unwrap()
    }
}

/// Each test runs on both backends: `both!(embedded_x, emulators_x, x)` makes the two tests from `async fn
/// x(h: Harness)`.
#[macro_export]
macro_rules! both {
    ($embedded:ident, $emulators:ident, $name:ident) => {
        $crate::both!($embedded, $emulators, $name, &[]);
    };
    ($embedded:ident, $emulators:ident, $name:ident, $extra:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            let h = support::harness(support::Backend::Embedded, $extra).await.unwrap();
            $name(h).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $emulators() {
            if let Some(h) = support::harness(support::Backend::Emulators, $extra).await {
                $name(h).await;
            }
        }
    };
}
