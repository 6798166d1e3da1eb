//! on-transcript over the embedded backends, with the language model replaced by a scripted one (the Gemini
//! adapter has its own tests against a fake of Vertex AI): the rules as the embedded default; Gemini's valid,
//! corrected, twice-invalid, failing and blocked answers; the circuit; redaction before the model; duplicate and
//! concurrent deliveries; poison events; an unreadable transcript. Requests are the router's own.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::sqlite::Durability;
use callflow::domain::analysis::{Intent, ProjectType};
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::transcript::{Quality, Segment, Speaker, Transcript};
use callflow::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{
    Finish, GenerateRequest, Generated, LanguageModel, NewObject, ObjectStore, StateStore, VendorError,
};
use callflow::runtime::embedded::Embedded;
use http_body_util::BodyExt;
use on_transcript::{Ports, Service, Settings};
use serde_json::{Value, json};
use tower::ServiceExt;

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
name = "Acme Remodeling"

[[tenant]]
id = "gem"
name = "Gem Kitchens"
[tenant.analysis]
analyzer = "gemini"
model = "gemini-2.5-pro"
"#;

const GOOD: &str = r#"{"intent": "new_lead", "project_type": "bathroom", "lead_score": 77, "score_reasons": ["wants an estimate"], "urgency": "soon", "budget": "medium", "sentiment": "positive", "spam_likelihood": 4, "summary": "Wants a bathroom remodel.", "caller": {"name": "Maria Lopez", "callback_time": "tomorrow morning"}}"#;

/// A scripted model: answers from a queue (the last repeats), remembers every request.
#[derive(Default)]
struct Model {
    answers: Mutex<VecDeque<Result<Generated, VendorError>>>,
    requests: Mutex<Vec<GenerateRequest>>,
}

fn said(text: &str) -> Result<Generated, VendorError> {
    Ok(Generated { text: text.into(), finish: Finish::Stop, prompt_tokens: 1000, output_tokens: 100 })
}

impl Model {
    fn answer(&self, a: Result<Generated, VendorError>) {
        self.answers.lock().unwrap().push_back(a);
    }
    fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

#[async_trait]
impl LanguageModel for Model {
    async fn generate(&self, request: &GenerateRequest) -> Result<Generated, VendorError> {
        self.requests.lock().unwrap().push(request.clone());
        let mut q = self.answers.lock().unwrap();
        let next = if q.len() > 1 { q.pop_front() } else { q.front().map(copy) };
        next.unwrap_or_else(|| said(GOOD))
    }
}

fn copy(a: &Result<Generated, VendorError>) -> Result<Generated, VendorError> {
    match a {
        Ok(g) => Ok(g.clone()),
        Err(VendorError::RateLimited { retry_after }) => Err(VendorError::RateLimited { retry_after: *retry_after }),
        Err(VendorError::Timeout) => Err(VendorError::Timeout),
        Err(e) => Err(VendorError::Transport(e.to_string())),
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    e: Embedded,
    service: Service,
    model: Arc<Model>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, TENANTS).unwrap();
    let vars = [
        ("CALLFLOW_EVENTARC", repo().join("eventarc").display().to_string()),
        ("CALLFLOW_DATA_DIR", dir.path().join("data").display().to_string()),
        ("CALLFLOW_TENANTS", tenants.display().to_string()),
        ("CALLFLOW_GEMINI_BREAKER_FAILURES", "3".to_owned()),
    ];
    let settings = Settings::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap();
    let c = &settings.common;
    let e = Embedded::open(&c.data_dir, &c.tenants_file, c.triggers.clone(), Durability::Full).unwrap();
    let model = Arc::new(Model::default());
    let ports = Ports {
        tenants: e.tenants.clone(),
        state: e.state.clone(),
        objects: e.objects.clone(),
        analytics: e.analytics.clone(),
        publisher: e.router.clone(),
        llm: model.clone(),
        clock: Arc::new(callflow::ports::SystemClock),
    };
    Harness { _dir: dir, service: Service::new(ports, settings), e, model }
}

fn seg(speaker: Speaker, start: f64, text: &str) -> Segment {
    Segment { speaker, start, end: start + 4.0, text: text.into(), confidence: Some(0.9) }
}

fn transcript(tenant: &str, call: &str) -> Transcript {
    Transcript {
        schema_version: 1,
        tenant_id: tenant.into(),
        call_id: call.into(),
        engine: "google-speech-v2/chirp_3".into(),
        quality: Quality::Standard,
        language: "en-US".into(),
        duration_secs: 40.0,
        segments: vec![
            seg(Speaker::Business, 0.0, "Thanks for calling, this is Dana."),
            seg(
                Speaker::Caller,
                4.0,
                "Hi, this is Maria Lopez. We need a quote to redo our bathroom, a walk in shower.",
            ),
            seg(Speaker::Caller, 8.0, "My email is maria.lopez@example.com and the card for the deposit is 4111 1111"),
            seg(Speaker::Caller, 12.0, "1111 1111. We're at 1423 Maple Street. Call me back tomorrow morning."),
        ],
    }
}

impl Harness {
    async fn call(&self, tenant: &str, call: &str) {
        let event = IntakeEvent {
            tenant_id: TenantId::parse(tenant).unwrap(),
            call_id: CallId::parse(call).unwrap(),
            source: CallSource::Callrail,
            kind: EventKind::PostCall,
            dedupe_key: "post_call".into(),
            payload_sha256: "00".into(),
            payload_bytes: 10,
            lead: LeadDetails {
                answered: Some(true),
                duration_secs: Some(40),
                recording_url: Some("https://api.callrail.com/rec".into()),
                ..LeadDetails::default()
            },
            received_at: chrono::Utc::now(),
        };
        self.e.state.record_intake(event).await.unwrap();
    }

    async fn put_json(&self, name: &str, body: &[u8], metadata: BTreeMap<String, String>) -> i64 {
        let body = Bytes::copy_from_slice(body);
        let object =
            NewObject { bucket: "transcripts", name, content_type: "application/json", metadata, max_bytes: 1 << 24 };
        self.e.objects.put(object, Box::pin(futures::stream::once(async move { Ok(body) }))).await.unwrap().generation
    }

    /// A transcript as on-audio-uploaded writes it (with its cost in the metadata).
    async fn transcript(&self, t: &Transcript) -> i64 {
        let mut m = meta(&t.tenant_id, &t.call_id);
        m.insert("cost_usd".into(), "0.012000".into());
        self.put_json(&format!("{}/{}.json", t.tenant_id, t.call_id), &serde_json::to_vec(t).unwrap(), m).await
    }

    async fn take_events(&self) -> Vec<Request<Body>> {
        let events = self.e.router.pending().await.unwrap();
        let requests: Vec<_> =
            events.iter().filter(|e| e.destination == "on-transcript").map(LocalRouter::request).collect();
        let db = rusqlite::Connection::open(self.service.settings.common.data_dir.join("router.sqlite")).unwrap();
        db.execute("DELETE FROM events WHERE destination = 'on-transcript'", []).unwrap();
        requests
    }

    async fn one_event(&self) -> Request<Body> {
        let mut events = self.take_events().await;
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    async fn send(&self, req: Request<Body>) -> (u16, Value) {
        let resp = on_transcript::app(self.service.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn state(&self, tenant: &str, call: &str) -> CallState {
        let id = (TenantId::parse(tenant).unwrap(), CallId::parse(call).unwrap());
        self.e.state.call(&id.0, &id.1).await.unwrap().unwrap().state
    }

    async fn analysis(&self, tenant: &str, call: &str) -> Option<callflow::domain::analysis::Analysis> {
        let id = (TenantId::parse(tenant).unwrap(), CallId::parse(call).unwrap());
        self.e.state.analysis(&id.0, &id.1).await.unwrap()
    }

    /// Messages on analysis-complete the router holds for on-analysis: (data, attributes).
    async fn messages(&self) -> Vec<(Value, Value)> {
        use base64::Engine;
        let events = self.e.router.pending().await.unwrap();
        events
            .iter()
            .filter(|e| e.trigger == "analysis-complete")
            .map(|e| {
                let body: Value = serde_json::from_slice(&e.body).unwrap();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(body["message"]["data"].as_str().unwrap())
                    .unwrap();
                (serde_json::from_slice(&data).unwrap(), body["message"]["attributes"].clone())
            })
            .collect()
    }

    /// The call's `analyses` and `costs` rows: (analyzer, score, spam, tokens in, tokens out) and (api calls, usd).
    fn facts(&self, call: &str) -> (Vec<Value>, Vec<Value>) {
        let db = rusqlite::Connection::open(self.service.settings.common.data_dir.join("analytics.sqlite")).unwrap();
        let analyses = db
            .prepare("SELECT analyzer, lead_score, spam_likelihood, prompt_tokens, output_tokens, intent FROM analyses WHERE call_id = ?1")
            .unwrap()
            .query_map([call], |r| {
                Ok(json!([r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?,
                          r.get::<_, i64>(4)?, r.get::<_, String>(5)?]))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let costs = db
            .prepare("SELECT stage, api_calls, usd FROM costs WHERE call_id = ?1")
            .unwrap()
            .query_map([call], |r| Ok(json!([r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, f64>(2)?])))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (analyses, costs)
    }

    fn rows(&self) -> Vec<Value> {
        let db = rusqlite::Connection::open(self.service.settings.common.data_dir.join("analytics.sqlite")).unwrap();
        let mut stmt = db
            .prepare(
                "SELECT outcome, engine, prompt_tokens, output_tokens, cost_usd, call_cost_usd, reason
                 FROM calls WHERE stage = 'on-transcript'",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(json!({"outcome": r.get::<_, String>(0)?, "engine": r.get::<_, Option<String>>(1)?,
                      "prompt_tokens": r.get::<_, Option<i64>>(2)?, "output_tokens": r.get::<_, Option<i64>>(3)?,
                      "cost_usd": r.get::<_, Option<f64>>(4)?, "call_cost_usd": r.get::<_, Option<f64>>(5)?,
                      "reason": r.get::<_, Option<String>>(6)?}))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}

fn meta(tenant: &str, call: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("tenant_id".into(), tenant.into()), ("call_id".into(), call.into())])
}

async fn twice(req: Request<Body>) -> impl Fn() -> Request<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    move || Request::from_parts(parts.clone(), Body::from(body.clone()))
}

#[tokio::test]
async fn the_rules_analyse_by_default_embedded_and_the_call_moves_on_with_its_message() {
    let h = harness().await;
    h.call("acme", "CAL1").await;
    let generation = h.transcript(&transcript("acme", "CAL1")).await;
    let (status, body) = h.send(h.one_event().await).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("analysed")));
    assert_eq!(h.state("acme", "CAL1").await, CallState::Analysed);
    let a = h.analysis("acme", "CAL1").await.unwrap();
    assert_eq!((a.analyzer.as_str(), a.fallback_reason.as_deref()), ("rules/1", None));
    assert_eq!((a.findings.intent, a.findings.project_type), (Intent::NewLead, ProjectType::Bathroom));
    assert!(a.redactions >= 3, "card, email, address: {}", a.redactions);
    // Contact details for the CRM come from the raw words: the email too, which the analyzer only saw redacted.
    assert_eq!(a.findings.caller.email.as_deref(), Some("maria.lopez@example.com"));
    assert_eq!(a.findings.caller.name.as_deref(), Some("Maria Lopez"));
    assert_eq!(h.model.calls(), 0, "the rules need no model");

    let messages = h.messages().await;
    assert_eq!(messages.len(), 1);
    let (data, attributes) = &messages[0];
    assert_eq!(data["schema_version"], 1);
    assert_eq!((data["tenant_id"].as_str(), data["call_id"].as_str()), (Some("acme"), Some("CAL1")));
    assert_eq!(data["transcript_generation"], generation.to_string());
    assert_eq!(attributes["call_id"], "CAL1");
    assert!(data.get("findings").is_none() && !data.to_string().contains("Maria"), "the message carries ids only");

    let rows = h.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["outcome"].as_str(), rows[0]["engine"].as_str()), (Some("analysed"), Some("rules/1")));
    assert_eq!(rows[0]["call_cost_usd"], 0.012, "the transcript's cost carried into the call's");
    assert!(!rows[0].to_string().contains("Maria"), "no PII in analytics");
}

#[tokio::test]
async fn gemini_sees_redacted_text_and_its_valid_answer_is_the_analysis() {
    let h = harness().await;
    h.call("gem", "CAL2").await;
    h.transcript(&transcript("gem", "CAL2")).await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "analysed");
    let a = h.analysis("gem", "CAL2").await.unwrap();
    assert_eq!((a.analyzer.as_str(), a.findings.lead_score), ("gemini/gemini-2.5-pro", 77));
    assert_eq!((a.usage.prompt_tokens, a.usage.output_tokens), (1000, 100));
    assert!((a.usage.cost_usd - (1000.0 * 0.30 + 100.0 * 2.50) / 1e6).abs() < 1e-12);
    assert_eq!(a.findings.caller.email.as_deref(), Some("maria.lopez@example.com"));

    let request = h.model.requests.lock().unwrap()[0].clone();
    assert_eq!(request.model, "gemini-2.5-pro");
    let sent = format!("{}\n{}", request.prompt.system, request.prompt.user);
    for secret in ["4111", "maria.lopez@example.com", "1423 Maple"] {
        assert!(!sent.contains(secret), "{secret} reached the model: {sent}");
    }
    assert!(sent.contains("[card number]") && sent.contains("Gem Kitchens"));
    let row = &h.rows()[0];
    assert_eq!((row["prompt_tokens"].as_i64(), row["output_tokens"].as_i64()), (Some(1000), Some(100)));
    // What analysts count: the findings in `analyses`, the model's one request and its price in `costs`.
    let (analyses, costs) = h.facts("CAL2");
    assert_eq!(analyses, vec![json!(["gemini/gemini-2.5-pro", 77, a.findings.spam_likelihood, 1000, 100, "new_lead"])]);
    assert_eq!(costs, vec![json!(["on-transcript", 1, a.usage.cost_usd])]);
}

#[tokio::test]
async fn an_invalid_answer_is_corrected_once_then_the_rules_take_over() {
    let h = harness().await;
    h.model.answer(said(r#"{"intent": "lead"}"#));
    h.model.answer(said(GOOD));
    h.call("gem", "CAL3").await;
    h.transcript(&transcript("gem", "CAL3")).await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "analysed");
    let a = h.analysis("gem", "CAL3").await.unwrap();
    assert_eq!(a.analyzer, "gemini/gemini-2.5-pro");
    assert_eq!(h.model.calls(), 2);
    let second = h.model.requests.lock().unwrap()[1].clone();
    assert_eq!(second.history.len(), 1);
    assert!(second.history[0].1.contains("intent \"lead\" is not one of"), "{:?}", second.history);
    let (_, costs) = h.facts("CAL3");
    assert_eq!(costs[0][1], 2, "the correction was a second billable request");

    // Invalid twice: the rules answer, and say why.
    h.model.answers.lock().unwrap().clear();
    h.model.answer(said("Sure! Here is your JSON"));
    h.call("gem", "CAL4").await;
    h.transcript(&transcript("gem", "CAL4")).await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "analysed");
    let a = h.analysis("gem", "CAL4").await.unwrap();
    assert_eq!(a.analyzer, "rules/1");
    assert!(a.fallback_reason.as_deref().unwrap().contains("invalid answer twice"), "{:?}", a.fallback_reason);
    assert_eq!(a.usage.prompt_tokens, 2000, "both attempts are paid for and counted");
    assert_eq!(h.model.calls(), 4);
}

#[tokio::test]
async fn failures_blocks_and_an_open_circuit_fall_back_to_the_rules() {
    let h = harness().await;
    let cases: Vec<(Result<Generated, VendorError>, &str)> = vec![
        (Err(VendorError::RateLimited { retry_after: None }), "rate limited"),
        (Err(VendorError::Timeout), "timed out"),
        (
            Ok(Generated {
                text: String::new(),
                finish: Finish::Blocked("prompt: SAFETY".into()),
                prompt_tokens: 10,
                output_tokens: 0,
            }),
            "blocked",
        ),
    ];
    for (i, (answer, why)) in cases.into_iter().enumerate() {
        h.model.answers.lock().unwrap().clear();
        h.model.answer(answer);
        let call = format!("CALfail{i}");
        h.call("gem", &call).await;
        h.transcript(&transcript("gem", &call)).await;
        assert_eq!(h.send(h.one_event().await).await.1["outcome"], "analysed", "{why}");
        let a = h.analysis("gem", &call).await.unwrap();
        assert_eq!(a.analyzer, "rules/1", "{why}");
        assert!(a.fallback_reason.as_deref().unwrap().contains(why), "{why}: {:?}", a.fallback_reason);
        assert_eq!(h.rows().last().unwrap()["reason"].as_str(), a.fallback_reason.as_deref());
    }
    // A blocked answer is the model's verdict, not an outage: it reset the count. Three service failures in a row
    // (the threshold here) open the circuit; then no call reaches the model until the cool-down ends.
    h.model.answers.lock().unwrap().clear();
    h.model.answer(Err(VendorError::Status { status: 503, message: "unavailable".into() }));
    for call in ["CALopen1", "CALopen2", "CALopen3"] {
        h.call("gem", call).await;
        h.transcript(&transcript("gem", call)).await;
        assert_eq!(h.send(h.one_event().await).await.1["outcome"], "analysed");
    }
    let calls = h.model.calls();
    h.call("gem", "CALopen4").await;
    h.transcript(&transcript("gem", "CALopen4")).await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "analysed");
    assert_eq!(h.model.calls(), calls, "no call reaches the model while the circuit is open");
    let last = h.analysis("gem", "CALopen4").await.unwrap();
    assert_eq!((last.analyzer.as_str(), last.fallback_reason.as_deref()), ("rules/1", Some("gemini: circuit open")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_concurrent_deliveries_analyse_once_and_publish_once() {
    let h = harness().await;
    h.call("gem", "CALdup").await;
    h.transcript(&transcript("gem", "CALdup")).await;
    let make = twice(h.one_event().await).await;
    let answers = futures::future::join_all((0..5).map(|_| {
        let (service, req) = (h.service.clone(), make());
        async move { on_transcript::app(service).oneshot(req).await.unwrap().status().as_u16() }
    }))
    .await;
    assert_eq!(answers.iter().filter(|s| **s == 200).count() + answers.iter().filter(|s| **s == 503).count(), 5);
    for _ in 0..3 {
        assert_eq!(h.send(make()).await.0, 200);
    }
    assert_eq!(h.model.calls(), 1, "one analysis, one charge");
    assert_eq!(h.messages().await.len(), 1, "one message");
    assert_eq!(h.rows().len(), 1);
}

#[tokio::test]
async fn poison_is_dead_lettered_and_an_unreadable_transcript_dead_letters_the_call() {
    let h = harness().await;
    h.call("acme", "CALp").await;
    // Not a transcript: the call is dead-lettered with the reason (our own stage wrote nonsense).
    h.put_json("acme/CALp.json", b"{\"not\": \"a transcript\"}", meta("acme", "CALp")).await;
    let (status, body) = h.send(h.one_event().await).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("dead_lettered")));
    assert_eq!(h.state("acme", "CALp").await, CallState::DeadLettered);
    // A transcript for a call that does not exist, and one under another tenant's prefix: refused, nothing changes.
    h.put_json("acme/CALghost.json", b"{}", meta("acme", "CALghost")).await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "refused");
    h.call("acme", "CALx").await;
    h.put_json("acme/CALx.json", b"{}", meta("gem", "CALx")).await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "refused");
    assert_eq!(h.state("acme", "CALx").await, CallState::Received);
    let dead = h.e.state.dead_letters(None, 10).await.unwrap();
    let kinds: Vec<&str> = dead.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["analyse", "event:on-transcript", "event:on-transcript"]);
    assert!(h.messages().await.is_empty());
}
