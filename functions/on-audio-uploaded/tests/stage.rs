//! on-audio-uploaded over the embedded backends, with the engines replaced by scripted ones (the real engines have
//! their own tests against a Speech-to-Text fake and real audio): every poison case, duplicate and concurrent
//! deliveries, each cost skip, CallRail's transcript, retryable and permanent engine failures, a crash between
//! writing the transcript and committing, and late or superseded recordings. Requests are the router's own
//! (binary-mode CloudEvents made from the stored object), so what is tested is what the function receives.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use callflow::adapters::local_router::LocalRouter;
use callflow::adapters::sqlite::Durability;
use callflow::domain::intake::{EventKind, IntakeEvent};
use callflow::domain::transcript::{Quality, Speaker, Transcript, Word};
use callflow::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{AudioRef, NewObject, ObjectStore, Recognized, StateStore, Transcriber, VendorError};
use callflow::runtime::embedded::Embedded;
use http_body_util::BodyExt;
use on_audio_uploaded::{Ports, Service, Settings};
use serde_json::{Value, json};
use tower::ServiceExt;

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
name = "Acme"

[[tenant]]
id = "cloudy"
name = "Cloudy Kitchens"
[tenant.transcription]
engine = "google"
language = "es-US"

[[tenant]]
id = "picky"
name = "Picky Baths"
[tenant.transcription]
min_call_secs = 60
min_voicemail_secs = 20
"#;

/// A scripted engine: answers from a queue (the last answer repeats), counts calls, remembers what it was given.
#[derive(Default)]
struct Engine {
    name: &'static str,
    answers: Mutex<VecDeque<Result<Vec<Word>, VendorError>>>,
    calls: Mutex<Vec<(AudioRef, Option<usize>)>>,
    delay: Option<std::time::Duration>,
}

fn words(text: &str) -> Vec<Word> {
    text.split_whitespace()
        .enumerate()
        .map(|(i, w)| Word {
            text: w.to_owned(),
            start: i as f64 * 0.5,
            end: i as f64 * 0.5 + 0.4,
            confidence: Some(0.9),
            speaker_label: Some(if i < 3 { "1" } else { "2" }.to_owned()),
        })
        .collect()
}

impl Engine {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self { name, ..Self::default() })
    }
    fn answer(&self, a: Result<Vec<Word>, VendorError>) {
        self.answers.lock().unwrap().push_back(a);
    }
    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

#[async_trait]
impl Transcriber for Engine {
    async fn transcribe(&self, audio: &AudioRef, data: Option<Bytes>) -> Result<Recognized, VendorError> {
        self.calls.lock().unwrap().push((audio.clone(), data.as_ref().map(Bytes::len)));
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let answer = {
            let mut q = self.answers.lock().unwrap();
            if q.len() > 1 { q.pop_front() } else { q.front().map(clone_answer) }
        };
        let words = answer.unwrap_or_else(|| Ok(words("thanks for calling acme hi I need a kitchen remodel")))?;
        Ok(Recognized {
            engine: self.name.to_owned(),
            quality: if self.name.starts_with("google") { Quality::Standard } else { Quality::Low },
            language: audio.language.clone(),
            duration_secs: 42.0,
            words,
            billed_secs: if self.name.starts_with("google") { 45.0 } else { 0.0 },
        })
    }
}

fn clone_answer(a: &Result<Vec<Word>, VendorError>) -> Result<Vec<Word>, VendorError> {
    match a {
        Ok(w) => Ok(w.clone()),
        Err(VendorError::Status { status, message }) => {
            Err(VendorError::Status { status: *status, message: message.clone() })
        }
        Err(VendorError::RateLimited { retry_after }) => Err(VendorError::RateLimited { retry_after: *retry_after }),
        Err(VendorError::Malformed(m)) => Err(VendorError::Malformed(m.clone())),
        Err(e) => Err(VendorError::Transport(e.to_string())),
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    e: Embedded,
    service: Service,
    google: Arc<Engine>,
    offline: Arc<Engine>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(tune: impl FnOnce(&mut Settings)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(&tenants, TENANTS).unwrap();
    let vars = [
        ("CALLFLOW_EVENTARC", repo().join("eventarc").display().to_string()),
        ("CALLFLOW_DATA_DIR", dir.path().join("data").display().to_string()),
        ("CALLFLOW_TENANTS", tenants.display().to_string()),
    ];
    let mut settings =
        Settings::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap();
    tune(&mut settings);
    let c = &settings.common;
    let e = Embedded::open(&c.data_dir, &c.tenants_file, c.triggers.clone(), Durability::Full).unwrap();
    let (google, offline) = (Engine::new("google-speech-v2/chirp_3"), Engine::new("pocketsphinx/en-us"));
    let ports = Ports {
        tenants: e.tenants.clone(),
        state: e.state.clone(),
        objects: e.objects.clone(),
        analytics: e.analytics.clone(),
        google: google.clone(),
        offline: offline.clone(),
        clock: Arc::new(callflow::ports::SystemClock),
    };
    let service = Service::new(ports, settings);
    Harness { _dir: dir, e, service, google, offline }
}

fn lead(answered: bool, voicemail: bool, secs: u32) -> LeadDetails {
    LeadDetails {
        answered: Some(answered),
        voicemail: Some(voicemail),
        duration_secs: Some(secs),
        recording_url: Some("https://api.callrail.com/rec".into()),
        customer_phone: Some("+12145550101".into()),
        ..LeadDetails::default()
    }
}

impl Harness {
    async fn call(&self, tenant: &str, call: &str, lead: LeadDetails) {
        let event = IntakeEvent {
            tenant_id: TenantId::parse(tenant).unwrap(),
            call_id: CallId::parse(call).unwrap(),
            source: CallSource::Callrail,
            kind: EventKind::PostCall,
            dedupe_key: "post_call".into(),
            payload_sha256: "00".into(),
            payload_bytes: 10,
            lead,
            received_at: chrono::Utc::now(),
        };
        self.e.state.record_intake(event).await.unwrap();
    }

    async fn state(&self, tenant: &str, call: &str) -> (CallState, Option<String>) {
        let c =
            self.e.state.call(&TenantId::parse(tenant).unwrap(), &CallId::parse(call).unwrap()).await.unwrap().unwrap();
        (c.state, c.state_reason)
    }

    /// Store a recording as on-webhook does; returns its generation. The router records its finalize event.
    async fn recording(&self, tenant: &str, call: &str) -> i64 {
        self.put("recordings", &format!("{tenant}/{call}.mp3"), "audio/mpeg", meta(tenant, call), b"ID3 audio").await
    }

    async fn put(
        &self,
        bucket: &str,
        name: &str,
        content_type: &str,
        metadata: BTreeMap<String, String>,
        body: &[u8],
    ) -> i64 {
        let body = Bytes::copy_from_slice(body);
        let object = NewObject { bucket, name, content_type, metadata, max_bytes: 1 << 30 };
        self.e.objects.put(object, Box::pin(futures::stream::once(async move { Ok(body) }))).await.unwrap().generation
    }

    /// The finalize events the router holds for this stage, as requests, oldest first; they are taken.
    async fn take_events(&self) -> Vec<Request<Body>> {
        let events = self.e.router.pending().await.unwrap();
        let requests: Vec<_> =
            events.iter().filter(|e| e.destination == "on-audio-uploaded").map(LocalRouter::request).collect();
        let db = rusqlite::Connection::open(self.service.settings.common.data_dir.join("router.sqlite")).unwrap();
        db.execute("DELETE FROM events", []).unwrap();
        requests
    }

    async fn one_event(&self) -> Request<Body> {
        let mut events = self.take_events().await;
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    async fn send(&self, req: Request<Body>) -> (u16, Value) {
        let resp = on_audio_uploaded::app(self.service.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn transcript(&self, tenant: &str, call: &str) -> Option<(BTreeMap<String, String>, Transcript)> {
        let (info, body) = self.e.objects.get("transcripts", &format!("{tenant}/{call}.json")).await.unwrap()?;
        Some((info.metadata, serde_json::from_slice(&body).unwrap()))
    }

    async fn dead_letters(&self) -> Vec<callflow::ports::DeadLetter> {
        self.e.state.dead_letters(None, 100).await.unwrap()
    }

    fn analytics(&self) -> Vec<Row> {
        let db = rusqlite::Connection::open(self.service.settings.common.data_dir.join("analytics.sqlite")).unwrap();
        let mut stmt = db
            .prepare(
                "SELECT call_id, outcome, engine, audio_secs, cost_usd, reason FROM calls
                 WHERE stage = 'on-audio-uploaded' ORDER BY event_time",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

/// An analytics row of this stage: call, outcome, engine, audio seconds, cost, reason.
type Row = (String, String, Option<String>, Option<f64>, Option<f64>, Option<String>);

fn meta(tenant: &str, call: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("tenant_id".into(), tenant.into()), ("call_id".into(), call.into())])
}

/// A request like `req` with its StorageObjectData changed by `f`.
async fn with_data(req: Request<Body>, f: impl FnOnce(&mut Value)) -> Request<Body> {
    let (parts, body) = req.into_parts();
    let mut data: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    f(&mut data);
    Request::from_parts(parts, Body::from(data.to_string()))
}

#[tokio::test]
async fn a_recording_becomes_a_diarized_transcript_and_the_call_moves_on() {
    let h = harness().await;
    h.call("cloudy", "CAL1", lead(true, false, 42)).await;
    let generation = h.recording("cloudy", "CAL1").await;
    let (status, body) = h.send(h.one_event().await).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("transcribed")));

    assert_eq!(h.state("cloudy", "CAL1").await.0, CallState::Transcribed);
    let (metadata, t) = h.transcript("cloudy", "CAL1").await.expect("the transcript object");
    assert_eq!((t.tenant_id.as_str(), t.call_id.as_str(), t.schema_version), ("cloudy", "CAL1", 1));
    assert_eq!(
        (t.engine.as_str(), t.quality, t.language.as_str()),
        ("google-speech-v2/chirp_3", Quality::Standard, "es-US")
    );
    assert_eq!(t.segments.len(), 2, "{t:?}");
    assert_eq!((t.segments[0].speaker, t.segments[0].text.as_str()), (Speaker::Business, "thanks for calling"));
    assert_eq!(t.segments[1].speaker, Speaker::Caller);
    assert!(t.segments[1].text.contains("kitchen remodel"));
    assert_eq!(metadata["recording_generation"], generation.to_string());
    assert_eq!((metadata["engine"].as_str(), metadata["quality"].as_str()), ("google-speech-v2/chirp_3", "standard"));
    assert_eq!((metadata["tenant_id"].as_str(), metadata["call_id"].as_str()), ("cloudy", "CAL1"));

    // Speech-to-Text reads the object itself: it got the gs:// location and the tenant's language, no bytes.
    let (audio, bytes) = h.google.calls.lock().unwrap()[0].clone();
    assert_eq!(
        (audio.gcs_uri().as_str(), audio.language.as_str(), bytes),
        ("gs://recordings/cloudy/CAL1.mp3", "es-US", None)
    );
    assert_eq!(audio.duration_secs, Some(42.0));
    assert_eq!(h.offline.calls(), 0);

    // The analytics row: engine, audio seconds and the estimated cost (45 billed seconds at $0.016/min).
    let rows = h.analytics();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (call, outcome, engine, audio_secs, cost, _) = &rows[0];
    assert_eq!(
        (call.as_str(), outcome.as_str(), engine.as_deref()),
        ("CAL1", "transcribed", Some("google-speech-v2/chirp_3"))
    );
    assert_eq!(*audio_secs, Some(42.0));
    assert!((cost.unwrap() - 0.012).abs() < 1e-9, "{cost:?}");

    // The transcript's own finalize event is recorded for the next stage.
    let next = h.e.router.pending().await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].trigger.as_str(), next[0].destination.as_str()), ("transcript-finalized", "on-transcript"));
}

#[tokio::test]
async fn the_offline_engine_gets_the_bytes_and_is_the_embedded_default() {
    let h = harness().await;
    h.call("acme", "CAL2", lead(true, false, 30)).await;
    h.recording("acme", "CAL2").await;
    assert_eq!(h.send(h.one_event().await).await.0, 200);
    let (audio, bytes) = h.offline.calls.lock().unwrap()[0].clone();
    assert_eq!((bytes, audio.content_type.as_str()), (Some(9), "audio/mpeg"));
    let (_, t) = h.transcript("acme", "CAL2").await.unwrap();
    assert_eq!((t.engine.as_str(), t.quality), ("pocketsphinx/en-us", Quality::Low));
    assert_eq!(h.analytics()[0].4, Some(0.0), "the offline engine costs nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_concurrent_deliveries_transcribe_once() {
    let h = harness_with(|_| {}).await;
    let slow = Arc::new(Engine {
        name: "pocketsphinx/en-us",
        delay: Some(std::time::Duration::from_millis(300)),
        ..Engine::default()
    });
    let mut service = h.service.clone();
    service.ports.offline = slow.clone();
    h.call("acme", "CAL3", lead(true, false, 30)).await;
    h.recording("acme", "CAL3").await;
    let req = h.one_event().await;
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let make = || Request::from_parts(parts.clone(), Body::from(body.clone()));
    // Five deliveries at once: one transcribes, the others find it busy and ask to come again.
    let answers = futures::future::join_all((0..5).map(|_| {
        let (service, req) = (service.clone(), make());
        async move { on_audio_uploaded::app(service).oneshot(req).await.unwrap().status().as_u16() }
    }))
    .await;
    assert_eq!(answers.iter().filter(|s| **s == 200).count(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|s| **s == 503).count(), 4, "{answers:?}");
    // Redelivered later: acknowledged, nothing runs again (the call is past this stage).
    for _ in 0..3 {
        let resp = on_audio_uploaded::app(service.clone()).oneshot(make()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["outcome"], "not_needed");
    }
    assert_eq!(slow.calls(), 1, "one transcription, one charge");
    assert_eq!(h.analytics().len(), 1);
    // One transcript generation: the router saw one finalize event for it.
    let transcripts = h.e.router.pending().await.unwrap();
    assert_eq!(transcripts.iter().filter(|e| e.trigger == "transcript-finalized").count(), 1);
}

#[tokio::test]
async fn cost_skips_move_the_call_to_skipped_with_the_reason_and_call_no_engine() {
    let h = harness().await;
    // (tenant, call, lead, reason): acme takes the defaults (15 s calls, 8 s voicemails); picky has 60 s / 20 s.
    let cases = [
        ("acme", "CALunanswered", lead(false, false, 40), "unanswered"),
        ("acme", "CALshortvm", lead(false, true, 6), "short_voicemail"),
        ("acme", "CALshort", lead(true, false, 9), "short_call"),
        ("picky", "CALshort60", lead(true, false, 45), "short_call"),
        ("picky", "CALshortvm20", lead(false, true, 12), "short_voicemail"),
    ];
    for (tenant, call, lead, reason) in cases {
        h.call(tenant, call, lead).await;
        h.recording(tenant, call).await;
        let (status, body) = h.send(h.one_event().await).await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("skipped")), "{call}");
        assert_eq!(h.state(tenant, call).await, (CallState::Skipped, Some(reason.to_owned())), "{call}");
        assert!(h.transcript(tenant, call).await.is_none());
    }
    // Just over each threshold is transcribed.
    h.call("picky", "CALlongvm", lead(false, true, 20)).await;
    h.recording("picky", "CALlongvm").await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "transcribed");
    assert_eq!(h.offline.calls() + h.google.calls(), 1);
    let reasons: Vec<_> = h.analytics().into_iter().filter_map(|r| r.5).collect();
    assert_eq!(reasons, ["unanswered", "short_voicemail", "short_call", "short_call", "short_voicemail"]);
}

#[tokio::test]
async fn callrails_own_transcript_is_used_without_an_engine() {
    let h = harness().await;
    let mut l = lead(true, false, 60);
    l.transcription =
        Some("Agent: Acme Remodeling, this is Dana.\nCaller: Hi, I'd like a quote for a bathroom.".into());
    h.call("cloudy", "CALcr", l).await;
    h.recording("cloudy", "CALcr").await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "transcribed");
    let (_, t) = h.transcript("cloudy", "CALcr").await.unwrap();
    assert_eq!((t.engine.as_str(), t.quality), ("callrail", Quality::Provided));
    assert_eq!(t.segments.iter().map(|s| s.speaker).collect::<Vec<_>>(), [Speaker::Business, Speaker::Caller]);
    assert_eq!(h.google.calls() + h.offline.calls(), 0);
    assert_eq!(h.analytics()[0].4, Some(0.0));
}

#[tokio::test]
async fn every_poison_event_is_dead_lettered_with_its_reason_and_acknowledged() {
    let h = harness().await;
    h.call("acme", "CALok", lead(true, false, 30)).await;
    h.recording("acme", "CALok").await;
    let template = h.one_event().await;
    let (parts, body) = template.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let base = || Request::from_parts(parts.clone(), Body::from(body.clone()));

    let mut cases: Vec<(&str, Request<Body>)> = vec![
        ("wrong bucket", with_data(base(), |d| d["bucket"] = json!("transcripts")).await),
        ("not {tenant}/{call}", with_data(base(), |d| d["name"] = json!("CALok.mp3")).await),
        ("foreign tenant prefix", with_data(base(), |d| d["metadata"]["tenant_id"] = json!("globex")).await),
        ("empty", with_data(base(), |d| d["size"] = json!("0")).await),
        ("not audio", with_data(base(), |d| d["contentType"] = json!("text/html")).await),
        ("oversize", with_data(base(), |d| d["size"] = json!((1u64 << 40).to_string())).await),
        (
            "unknown tenant",
            with_data(base(), |d| {
                d["name"] = json!("nobody/CALok.mp3");
                d["metadata"]["tenant_id"] = json!("nobody");
            })
            .await,
        ),
        (
            "unknown call",
            with_data(base(), |d| {
                d["name"] = json!("acme/CALghost.mp3");
                d["metadata"]["call_id"] = json!("CALghost");
            })
            .await,
        ),
        ("not StorageObjectData", with_data(base(), |d| *d = json!({"hello": "world"})).await),
    ];
    let (mut p2, _) = base().into_parts();
    p2.headers.insert("ce-type", "google.cloud.pubsub.topic.v1.messagePublished".parse().unwrap());
    cases.push(("wrong event type", Request::from_parts(p2, Body::from(body.clone()))));
    cases.push((
        "not a CloudEvent",
        Request::post("/").header("content-type", "application/json").body(Body::from("{")).unwrap(),
    ));
    let n = cases.len();
    for (what, req) in cases {
        let (status, answer) = h.send(req).await;
        assert_eq!((status, answer["outcome"].as_str()), (200, Some("refused")), "{what}");
    }
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), n, "{dead:#?}");
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    for want in [
        "bucket",
        "is not {tenant}/{call}",
        "does not match",
        "empty",
        "content type",
        "byte limit",
        "unknown tenant",
        "no such call",
        "StorageObjectData",
        "unexpected event type",
        "not a CloudEvent",
    ] {
        assert!(reasons.iter().any(|r| r.contains(want)), "no reason mentions {want:?}: {reasons:#?}");
    }
    assert!(dead.iter().all(|d| d.kind == "event:on-audio-uploaded"));
    let foreign = dead.iter().find(|d| d.reason.contains("does not match")).unwrap();
    assert_eq!((foreign.tenant_id.as_str(), foreign.call_id.as_str()), ("acme", "CALok"));
    assert_eq!(foreign.payload["event"]["data"]["metadata"]["tenant_id"], "globex", "the event is kept to inspect");
    // Nothing changed: the call waits for its real recording, no engine ran, no transcript exists.
    assert_eq!(h.state("acme", "CALok").await.0, CallState::Received);
    assert_eq!(h.offline.calls() + h.google.calls(), 0);
    assert!(h.transcript("acme", "CALok").await.is_none());
    // A redelivered poison event is kept once.
    let again = with_data(base(), |d| d["bucket"] = json!("transcripts")).await;
    assert_eq!(h.send(again).await.0, 200);
    assert_eq!(h.dead_letters().await.len(), n);
    // And the real event still works.
    assert_eq!(h.send(base()).await.1["outcome"], "transcribed");
}

#[tokio::test]
async fn a_web_form_has_no_recording() {
    let h = harness().await;
    let event = IntakeEvent {
        tenant_id: TenantId::parse("acme").unwrap(),
        call_id: CallId::parse("FRMx1").unwrap(),
        source: CallSource::Form,
        kind: EventKind::Form,
        dedupe_key: "form".into(),
        payload_sha256: "00".into(),
        payload_bytes: 10,
        lead: LeadDetails::default(),
        received_at: chrono::Utc::now(),
    };
    h.e.state.record_intake(event).await.unwrap();
    h.recording("acme", "FRMx1").await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "refused");
    assert!(h.dead_letters().await[0].reason.contains("web form"));
}

#[tokio::test]
async fn retryable_engine_failures_are_redelivered_then_dead_letter_the_call() {
    let h = harness_with(|s| s.max_attempts = 3).await;
    h.google.answer(Err(VendorError::RateLimited { retry_after: None }));
    h.google.answer(Ok(words("hello there")));
    h.call("cloudy", "CALretry", lead(true, false, 30)).await;
    h.recording("cloudy", "CALretry").await;
    let req = h.one_event().await;
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let make = || Request::from_parts(parts.clone(), Body::from(body.clone()));
    assert_eq!(h.send(make()).await.0, 503, "429 from Speech-to-Text: redeliver");
    assert_eq!(h.state("cloudy", "CALretry").await.0, CallState::Received, "unchanged");
    assert_eq!(h.send(make()).await.1["outcome"], "transcribed", "the next delivery claims it at once");
    assert_eq!(h.google.calls(), 2);

    // Always failing: the trigger's attempts run out and the call is dead-lettered, not left waiting.
    h.google.answers.lock().unwrap().clear();
    h.google.answer(Err(VendorError::Status { status: 503, message: "backend unavailable".into() }));
    h.call("cloudy", "CALdown", lead(true, false, 30)).await;
    h.recording("cloudy", "CALdown").await;
    let req = h.one_event().await;
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let make = || Request::from_parts(parts.clone(), Body::from(body.clone()));
    assert_eq!(h.send(make()).await.0, 503);
    assert_eq!(h.send(make()).await.0, 503);
    let (status, answer) = h.send(make()).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("dead_lettered")));
    let (state, reason) = h.state("cloudy", "CALdown").await;
    assert_eq!(state, CallState::DeadLettered);
    assert!(reason.unwrap().contains("after 3 attempts"));
    let dead = h.dead_letters().await;
    assert_eq!((dead.len(), dead[0].kind.as_str(), dead[0].attempts), (1, "transcribe", 3));
    assert_eq!(h.send(make()).await.1["outcome"], "not_needed", "a later redelivery changes nothing");
}

#[tokio::test]
async fn a_permanent_engine_failure_dead_letters_the_call_at_once() {
    let h = harness().await;
    h.offline.answer(Err(VendorError::Malformed("undecodable audio: sox FAIL formats".into())));
    h.call("acme", "CALbad", lead(true, false, 30)).await;
    h.recording("acme", "CALbad").await;
    let (status, answer) = h.send(h.one_event().await).await;
    assert_eq!((status, answer["outcome"].as_str()), (200, Some("dead_lettered")));
    let (state, reason) = h.state("acme", "CALbad").await;
    assert_eq!(state, CallState::DeadLettered);
    assert!(reason.unwrap().contains("undecodable audio"));
    assert_eq!(h.analytics()[0].1, "dead_lettered");
    assert!(h.transcript("acme", "CALbad").await.is_none());
}

#[tokio::test]
async fn a_transcript_written_before_a_crash_is_reused_not_paid_twice() {
    let h = harness_with(|s| s.lease = std::time::Duration::from_millis(1)).await;
    h.call("cloudy", "CALcrash", lead(true, false, 30)).await;
    let generation = h.recording("cloudy", "CALcrash").await;
    let req = h.one_event().await;
    // The crashed attempt: it claimed the recording, paid Speech-to-Text, wrote the transcript, then died.
    let claim =
        h.e.state
            .claim_stage(
                &TenantId::parse("cloudy").unwrap(),
                &CallId::parse("CALcrash").unwrap(),
                &format!("transcribe:{generation}"),
                std::time::Duration::from_millis(1),
            )
            .await
            .unwrap();
    assert!(matches!(claim, callflow::ports::Claim::Claimed(_)));
    let earlier = Transcript {
        schema_version: 1,
        tenant_id: "cloudy".into(),
        call_id: "CALcrash".into(),
        engine: "google-speech-v2/chirp_3".into(),
        quality: Quality::Standard,
        language: "es-US".into(),
        duration_secs: 30.0,
        segments: vec![],
    };
    let mut m = meta("cloudy", "CALcrash");
    m.insert("recording_generation".into(), generation.to_string());
    h.put("transcripts", "cloudy/CALcrash.json", "application/json", m, &serde_json::to_vec(&earlier).unwrap()).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    assert_eq!(h.send(req).await.1["outcome"], "transcribed");
    assert_eq!(h.google.calls(), 0, "no second charge");
    assert_eq!(h.state("cloudy", "CALcrash").await.0, CallState::Transcribed);
}

#[tokio::test]
async fn late_and_superseded_recordings_change_nothing() {
    let h = harness().await;
    h.call("acme", "CALlate", lead(true, false, 30)).await;
    h.recording("acme", "CALlate").await;
    let first = h.one_event().await;
    // A second generation replaces the first before the first event is handled.
    h.recording("acme", "CALlate").await;
    let second = h.one_event().await;
    let (parts, body) = first.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let first = || Request::from_parts(parts.clone(), Body::from(body.clone()));
    assert_eq!(h.send(first()).await.1["outcome"], "not_needed");
    assert_eq!(h.state("acme", "CALlate").await.0, CallState::Received);
    assert_eq!(h.send(first()).await.1["outcome"], "duplicate", "that generation is done");
    assert_eq!(h.send(second).await.1["outcome"], "transcribed");
    // A third generation after the call was transcribed: the call is past this stage.
    h.take_events().await;
    h.recording("acme", "CALlate").await;
    assert_eq!(h.send(h.one_event().await).await.1["outcome"], "not_needed");
    assert_eq!(h.offline.calls(), 1);
    assert!(h.dead_letters().await.is_empty());
}
