//! Local stand-ins for the vendors the chain talks to, on one loopback port, speaking their documented shapes and
//! answering at once: CallRail's API (a call's `recording.json`, the recording, Listing All Calls), Speech-to-Text
//! v2 (`recognize`, and `batchRecognize` answered done), Vertex AI's Gemini `generateContent`, and a tenant's
//! custom-webhook CRM (Standard Webhooks headers; a `webhook-id` seen before gets 409 with its first record, as
//! `callflow crm-receiver` answers). Each vendor has a switch that makes it fail (an HTTP status with or without
//! `Retry-After`, a body that is not what it documents, or no answer at all), and the CRM keeps every push it
//! received, so a test or a benchmark can count leads per call and time them.
//!
//! For `callflow bench-chain` and the fault suite (`host/tests/faults.rs`); not used by the functions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// How a vendor answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Up,
    /// This status with a JSON error body (Google's shape for Google's APIs), and `Retry-After` if given.
    Fail { status: u16, retry_after: Option<u64> },
    /// 200 with a body that is not the documented shape.
    Garbage,
    /// Accepts the connection and never answers (the client's timeout decides).
    Hang,
}

/// The vendors a switch can take down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    CallRail,
    Speech,
    Gemini,
    Crm,
}

/// What the CRM received for one lead (`webhook-id`).
#[derive(Debug, Clone)]
pub struct CrmLead {
    pub call_id: String,
    /// Pushes received, refused ones included.
    pub pushes: u32,
    /// Pushes answered 201 (the lead created): the CRM creates a lead once per `webhook-id`.
    pub created: u32,
    /// Pushes answered 409 (already created): the chain pushed a lead it had delivered before. Safe (the key
    /// dedupes it) but expected only after a crash between the push and its commit.
    pub conflicts: u32,
    /// When the first 201 was answered.
    pub first_created: Option<Instant>,
    pub lead_score: Option<i64>,
}

#[derive(Default)]
struct Inner {
    modes: HashMap<Vendor, Mode>,
    crm: BTreeMap<String, CrmLead>,
    /// Listing All Calls: account → calls as the API returns them.
    listed: HashMap<String, Vec<Value>>,
}

/// The stand-ins' shared state: switches, what the CRM received, request counters.
#[derive(Default)]
pub struct Vendors {
    inner: Mutex<Inner>,
    /// Fail the first push of one lead in N with 503 (0: never), so a share of leads goes through on-crm-retry.
    crm_fail_first_every: AtomicU64,
    requests: Mutex<HashMap<Vendor, u64>>,
    failed: Mutex<HashMap<Vendor, u64>>,
    leads_seen: AtomicU64,
    created: AtomicU64,
}

/// The caller's words the Speech fake returns, chosen per call: two leads and a robocall.
const SCRIPTS: &[(&str, &[&str])] = &[
    (
        "kitchen",
        &[
            "thanks for calling how can I help",
            "hi I would like a quote for a kitchen remodel new cabinets and an island this spring",
        ],
    ),
    ("roofing", &["good morning", "we have a leak in the roof after the storm can someone come look at it this week"]),
    (
        "spam",
        &[
            "hello",
            "this is an important message about your vehicle's extended warranty press one to speak to an agent",
        ],
    ),
];

fn script_for(call_id: &str) -> usize {
    // FNV-1a: stable across runs, so a benchmark's mix is the same every time.
    let h = call_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (h % SCRIPTS.len() as u64) as usize
}

/// What the Speech fake makes of this call's recording: `kitchen`, `roofing` (leads) or `spam` (a robocall).
pub fn script_of(call_id: &str) -> &'static str {
    SCRIPTS[script_for(call_id)].0
}

/// The call id the fake recording carries (`call=ID;` after its ID3 tag), from the audio Speech-to-Text was sent.
fn call_in_audio(audio: &[u8]) -> String {
    let text = String::from_utf8_lossy(audio);
    text.split_once("call=").and_then(|(_, rest)| rest.split_once(';')).map(|(id, _)| id.to_owned()).unwrap_or_default()
}

impl Vendors {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set(&self, vendor: Vendor, mode: Mode) {
        self.inner.lock().expect("vendors lock").modes.insert(vendor, mode);
    }

    pub fn mode(&self, vendor: Vendor) -> Mode {
        self.inner.lock().expect("vendors lock").modes.get(&vendor).cloned().unwrap_or_default()
    }

    pub fn fail_first_crm_push_every(&self, n: u64) {
        self.crm_fail_first_every.store(n, Ordering::Relaxed);
    }

    /// Requests each vendor received, and how many of them it failed on purpose.
    pub fn requests(&self, vendor: Vendor) -> (u64, u64) {
        let get = |m: &Mutex<HashMap<Vendor, u64>>| *m.lock().expect("counter lock").get(&vendor).unwrap_or(&0);
        (get(&self.requests), get(&self.failed))
    }

    /// Leads the CRM created (201s), all calls together: cheap to poll.
    pub fn leads_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Every lead the CRM heard of, by `webhook-id`.
    pub fn crm_leads(&self) -> BTreeMap<String, CrmLead> {
        self.inner.lock().expect("vendors lock").crm.clone()
    }

    /// A call for Listing All Calls (`id`, `company_id` and `start_time` are what the listing filters on).
    pub fn list_call(&self, account_id: &str, call: Value) {
        self.inner.lock().expect("vendors lock").listed.entry(account_id.to_owned()).or_default().push(call);
    }

    fn count(&self, vendor: Vendor) -> Option<Response> {
        *self.requests.lock().expect("counter lock").entry(vendor).or_default() += 1;
        let mode = self.mode(vendor);
        let refused = match mode {
            Mode::Up => return None,
            Mode::Fail { status, retry_after } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let body = match vendor {
                    Vendor::Speech | Vendor::Gemini => json!({"error": {"code": status.as_u16(),
                        "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}}),
                    _ => json!({"error": status.canonical_reason().unwrap_or("error")}),
                };
                let mut r = (status, axum::Json(body)).into_response();
                if let Some(secs) = retry_after {
                    r.headers_mut().insert(header::RETRY_AFTER, secs.into());
                }
                r
            }
            Mode::Garbage => {
                (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"oops\": [1, 2").into_response()
            }
            Mode::Hang => {
                // The handler's future is dropped when the client gives up; an hour is "never" here.
                return Some(Response::new(axum::body::Body::from_stream(futures::stream::once(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, std::io::Error>(Bytes::new())
                }))));
            }
        };
        *self.failed.lock().expect("counter lock").entry(vendor).or_default() += 1;
        Some(refused)
    }
}

/// The stand-ins as one axum app.
pub fn app(vendors: Arc<Vendors>) -> Router {
    Router::new()
        .route("/v3/a/{account}/calls/{call}/recording.json", get(recording_json))
        .route("/recordings/{call}", get(recording))
        .route("/v3/a/{account}/calls.json", get(list_calls))
        .route("/v2/projects/{project}/locations/{location}/recognizers/{verb}", post(speech))
        .route("/v1/projects/{project}/locations/{location}/publishers/google/models/{verb}", post(gemini))
        .route("/crm/leads", post(crm))
        .with_state(vendors)
}

/// The stand-ins on a loopback port of the current runtime; returns their base URL.
pub async fn serve(vendors: Arc<Vendors>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app(vendors)).await });
    Ok(url)
}

/// The stand-ins on a thread of their own (named `vendor-fakes`, one-thread runtime), so a benchmark can tell
/// their CPU from the system's.
pub fn serve_on_own_thread(vendors: Arc<Vendors>) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("vendor-fakes".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(anyhow::anyhow!(e)))),
        };
        rt.block_on(async move {
            match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await {
                Ok(listener) => {
                    let url = listener.local_addr().map(|a| format!("http://{a}")).map_err(anyhow::Error::from);
                    let _ = tx.send(url);
                    let _ = axum::serve(listener, app(vendors)).await;
                }
                Err(e) => drop(tx.send(Err(e.into()))),
            }
        });
    })?;
    rx.recv()?
}

async fn recording_json(
    State(v): State<Arc<Vendors>>,
    Path((_account, call)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = v.count(Vendor::CallRail) {
        return r;
    }
    if !headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).is_some_and(|a| a.starts_with("Token token="))
    {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "HTTP Token: Access denied."}))).into_response();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    axum::Json(json!({"url": format!("http://{host}/recordings/{call}")})).into_response()
}

/// A few KB standing for the MP3 (the Speech fake does not decode it).
async fn recording(State(v): State<Arc<Vendors>>, Path(call): Path<String>) -> Response {
    if let Some(r) = v.count(Vendor::CallRail) {
        return r;
    }
    let mut body = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    body.extend(format!("call={call};").bytes());
    body.resize(8 * 1024, 0xff);
    ([(header::CONTENT_TYPE, "audio/mpeg")], body).into_response()
}

async fn list_calls(
    State(v): State<Arc<Vendors>>,
    Path(account): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = v.count(Vendor::CallRail) {
        return r;
    }
    let time = |k: &str| q.get(k).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc));
    let (start, end) = (time("start_date"), time("end_date"));
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per_page: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(100).clamp(1, 250);
    let inner = v.inner.lock().expect("vendors lock");
    let calls: Vec<&Value> = inner
        .listed
        .get(&account)
        .map(|calls| {
            calls
                .iter()
                .filter(|c| {
                    let at = c["start_time"].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok());
                    at.is_some_and(|t| start.is_none_or(|s| t >= s) && end.is_none_or(|e| t <= e))
                })
                .collect()
        })
        .unwrap_or_default();
    let total_pages = calls.len().div_ceil(per_page).max(1);
    let slice: Vec<&Value> = calls.iter().skip((page - 1) * per_page).take(per_page).copied().collect();
    axum::Json(json!({"page": page, "per_page": per_page, "total_pages": total_pages,
                      "total_records": calls.len(), "calls": slice}))
    .into_response()
}

/// gs://bucket/tenant/CALL.ext: the call is the file's stem.
fn stem(uri: &str) -> String {
    uri.rsplit('/').next().and_then(|f| f.split('.').next()).unwrap_or_default().to_owned()
}

fn words(lines: &[&str]) -> (Vec<Value>, f64) {
    let mut at = 0.3;
    let mut out = Vec::new();
    for (turn, line) in lines.iter().enumerate() {
        for w in line.split(' ') {
            out.push(json!({"startOffset": format!("{at:.3}s"), "endOffset": format!("{:.3}s", at + 0.3),
                            "word": w, "confidence": 0.92, "speakerLabel": if turn % 2 == 0 { "1" } else { "2" }}));
            at += 0.4;
        }
        at += 0.8;
    }
    (out, at)
}

fn speech_results(call_id: &str) -> Value {
    let (_, lines) = SCRIPTS[script_for(call_id)];
    let (words, end) = words(lines);
    json!([{"alternatives": [{"transcript": lines.join(" "), "confidence": 0.92, "words": words}],
            "resultEndOffset": format!("{end:.3}s"), "languageCode": "en-us"}])
}

async fn speech(
    State(v): State<Arc<Vendors>>,
    Path((_p, _l, verb)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = v.count(Vendor::Speech) {
        return r;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match verb.as_str() {
        "_:recognize" => {
            // The recording is named by its call (gs://bucket/tenant/CALL.mp3); sent inline, it carries the id.
            use base64::Engine as _;
            let call = match (request["uri"].as_str(), request["content"].as_str()) {
                (Some(uri), _) => stem(uri),
                (None, Some(c)) => {
                    call_in_audio(&base64::engine::general_purpose::STANDARD.decode(c).unwrap_or_default())
                }
                (None, None) => String::new(),
            };
            axum::Json(json!({"results": speech_results(&call), "metadata": {"totalBilledDuration": "15s"}}))
                .into_response()
        }
        "_:batchRecognize" => {
            let uri = request["files"][0]["uri"].as_str().unwrap_or("gs://b/o").to_owned();
            let call = stem(&uri);
            axum::Json(json!({
                "name": "projects/p/locations/us/operations/op-fake", "done": true,
                "response": {
                    "@type": "type.googleapis.com/google.cloud.speech.v2.BatchRecognizeResponse",
                    "results": {uri.clone(): {"uri": uri, "inlineResult": {"transcript": {"results": speech_results(&call)}}}},
                    "totalBilledDuration": "95s"
                }
            }))
            .into_response()
        }
        _ => {
            (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"code": 404, "status": "NOT_FOUND"}}))).into_response()
        }
    }
}

async fn gemini(State(v): State<Arc<Vendors>>, body: Bytes) -> Response {
    if let Some(r) = v.count(Vendor::Gemini) {
        return r;
    }
    let prompt = String::from_utf8_lossy(&body).to_lowercase();
    let answer = if prompt.contains("warranty") {
        json!({"intent": "spam_robocall", "project_type": "none", "lead_score": 0, "score_reasons": ["recorded sales pitch"],
               "urgency": "unknown", "budget": "unknown", "sentiment": "neutral", "spam_likelihood": 96,
               "summary": "A recorded message about a vehicle warranty.", "caller": {}})
    } else {
        let (project, score) = if prompt.contains("roof") { ("roofing", 77) } else { ("kitchen", 84) };
        json!({"intent": "new_lead", "project_type": project, "lead_score": score, "score_reasons": ["wants an estimate"],
               "urgency": "soon", "budget": "high", "sentiment": "positive", "spam_likelihood": 2,
               "summary": format!("The caller wants {project} work and an estimate."), "caller": {"callback_time": "tomorrow"}})
    };
    axum::Json(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": answer.to_string()}]}, "finishReason": 1}],
        "usageMetadata": {"promptTokenCount": 412, "candidatesTokenCount": 61, "totalTokenCount": 473},
        "modelVersion": "gemini-2.5-flash"
    }))
    .into_response()
}

async fn crm(State(v): State<Arc<Vendors>>, headers: HeaderMap, body: Bytes) -> Response {
    let webhook_id = headers.get("webhook-id").and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
    let document: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // The connector's document: {"type": "lead", "schema_version", "tenant_id", "lead": {...}}.
    let lead = &document["lead"];
    let (call_id, score) = (lead["call_id"].as_str().unwrap_or_default().to_owned(), lead["lead_score"].as_i64());
    let refused = v.count(Vendor::Crm);
    let mut inner = v.inner.lock().expect("vendors lock");
    let known = inner.crm.contains_key(&webhook_id);
    let lead = inner.crm.entry(webhook_id).or_insert_with(|| CrmLead {
        call_id,
        pushes: 0,
        created: 0,
        conflicts: 0,
        first_created: None,
        lead_score: score,
    });
    lead.pushes += 1;
    if let Some(r) = refused {
        return r;
    }
    let every = v.crm_fail_first_every.load(Ordering::Relaxed);
    if !known && every > 0 && v.leads_seen.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
        *v.failed.lock().expect("counter lock").entry(Vendor::Crm).or_default() += 1;
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "try again"}))).into_response();
    }
    if lead.created > 0 {
        lead.conflicts += 1;
        return (StatusCode::CONFLICT, axum::Json(json!({"id": lead.call_id, "error": "already received"})))
            .into_response();
    }
    lead.created += 1;
    v.created.fetch_add(1, Ordering::Relaxed);
    lead.first_created = Some(Instant::now());
    (StatusCode::CREATED, axum::Json(json!({"id": lead.call_id}))).into_response()
}
