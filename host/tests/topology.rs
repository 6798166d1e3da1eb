//! The emulator topology end to end: the emulators `scripts/emulators start` runs, provisioned from eventarc/
//! definitions; on-webhook as its own process on its own port over the Google Cloud adapters; the storage watcher
//! as another. A signed CallRail webhook becomes a call row in Spanner, a recording object in the GCS emulator, an
//! analytics row in the BigQuery emulator, and a storage CloudEvent at the next stage's URL; a message on
//! `analysis-complete` reaches its function through a real Pub/Sub push subscription.
//!
//! on-audio-uploaded and on-transcript run as processes of their own: Speech-to-Text (a local fake with the API's
//! shapes: no emulator exists) reads the recording by its gs:// name, the transcript lands in the transcripts
//! bucket, Gemini (a local fake too) analyses it, the call moves to `analysed` in Spanner with its analysis, and
//! on-transcript's message on `analysis-complete` is pushed by the Pub/Sub emulator to on-analysis, a process of
//! its own too, whose first push to the tenant's lead receiver (a local fake) fails with a 503: the `crm-retry`
//! message it publishes is pushed by the emulator to on-crm-retry, whose push succeeds. The call ends `delivered`
//! in Spanner with the receiver's record id, the lead received twice under one idempotency key.
//!
//! Then Cloud Scheduler's part: `callflow scheduler --fire-now cleanup` publishes the `cleanup` schedule's message
//! on `scheduled`, the emulator pushes it to cleanup-scheduled (a process of its own), and its run of the four jobs
//! over every tenant lands as `cleanup_runs` rows in the BigQuery emulator; reconciliation lists the call from the
//! CallRail fake and finds it known (the webhook delivered it).
//!
//! Skipped without emulators, unless CALLFLOW_EMULATORS=required (scripts/test), where their absence fails it.

mod common;
mod emulated;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use callflow::adapters::gcs::GcsObjectStore;
use callflow::adapters::spanner::SpannerStateStore;
use callflow::domain::signature::sign_callrail;
use callflow::domain::{CallId, CallState, TenantId};
use callflow::ports::{ObjectStore, StateStore};
use common::{fixture_tenants, repo};
use emulated::{Process, emulators_present, free_port, sibling_binary};
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &[u8] = b"072e77e426f92738a72fe23c4d1953b4";
const FIXTURE_CALL: &str = "CALa1b2c3d4e5f60718293a4b5c6d7e8f90";
const PROJECT: &str = "callflow-emulators";

#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

/// Stands in for the functions that do not exist yet (on-transcript, on-analysis): records what arrives.
async fn receiver() -> (String, Inbox) {
    let inbox = Inbox::default();
    let app = axum::Router::new().fallback(post({
        let inbox = inbox.clone();
        move |headers: HeaderMap, body: Bytes| async move {
            inbox.0.lock().unwrap().push((headers, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            axum::http::StatusCode::NO_CONTENT
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, inbox)
}

/// A query on the BigQuery emulator: each row's cells as text; None until it answers with rows.
async fn bq_rows(http: &reqwest::Client, bigquery: &str, sql: String) -> Option<Vec<Vec<String>>> {
    let answer: Value = http
        .post(format!("{bigquery}/bigquery/v2/projects/{PROJECT}/queries"))
        .json(&json!({"query": sql, "useLegacySql": false}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let cell = |c: &Value| match &c["v"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(
        answer["rows"]
            .as_array()?
            .iter()
            .map(|r| r["f"].as_array().into_iter().flatten().map(cell).collect())
            .collect(),
    )
}

async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_crosses_the_emulator_topology() {
    if !emulators_present() {
        return;
    }
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let database = format!("projects/{PROJECT}/instances/callflow/databases/e2e-{suffix}");
    let dataset = format!("e2e_{suffix}");
    let triggers = callflow::eventarc::load(&repo().join("eventarc"), "emulators").unwrap();
    let (stand_in, _inbox) = receiver().await;
    let (analysis_port, retry_port, cleanup_port) = (free_port(), free_port(), free_port());
    let push_to = |function: &str| match function {
        "on-analysis" => Some(format!("http://127.0.0.1:{analysis_port}/")),
        "on-crm-retry" => Some(format!("http://127.0.0.1:{retry_port}/")),
        "cleanup-scheduled" => Some(format!("http://127.0.0.1:{cleanup_port}/")),
        _ => Some(stand_in.clone()),
    };

    // Provision as `callflow provision` does, with the lead-delivery triggers pushing to their processes.
    let started = Instant::now();
    let done = callflow_host::topology::provision(&triggers, &database, &dataset, &push_to).await.unwrap();
    eprintln!("provisioned in {} ms: {:?}", started.elapsed().as_millis(), done);
    assert!(done.subscriptions.iter().any(|s| s == "eventarc-analysis-complete"));
    assert!(done.subscriptions.iter().any(|s| s == "eventarc-cleanup-scheduled"));
    // Every table the sinks stream to, then the analysts' views over them.
    let made: Vec<String> = callflow::domain::analytics::TABLES
        .iter()
        .chain(callflow::domain::analytics::VIEWS)
        .map(|(name, _)| format!("{dataset}.{name}"))
        .collect();
    assert_eq!(done.tables, made);
    // Provisioning again converges: existing resources are kept or brought to the definitions, not an error.
    callflow_host::topology::provision(&triggers, &database, &dataset, &push_to).await.unwrap();

    // The subscription carries the trigger's policies.
    let pubsub = std::env::var("PUBSUB_EMULATOR_HOST").unwrap();
    let pubsub = if pubsub.contains("://") { pubsub } else { format!("http://{pubsub}") };
    let sub: Value = reqwest::get(format!("{pubsub}/v1/projects/{PROJECT}/subscriptions/eventarc-analysis-complete"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sub["pushConfig"]["pushEndpoint"], format!("http://127.0.0.1:{analysis_port}/"));
    assert_eq!(sub["deadLetterPolicy"]["maxDeliveryAttempts"], 10);
    assert_eq!(sub["deadLetterPolicy"]["deadLetterTopic"], format!("projects/{PROJECT}/topics/dead-letters"));
    assert_eq!(sub["retryPolicy"]["minimumBackoff"], "10s");
    let sub: Value = reqwest::get(format!("{pubsub}/v1/projects/{PROJECT}/subscriptions/eventarc-cleanup-scheduled"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sub["topic"], format!("projects/{PROJECT}/topics/scheduled"));
    assert_eq!(sub["pushConfig"]["pushEndpoint"], format!("http://127.0.0.1:{cleanup_port}/"));
    // The emulator's subscriptions outlive a test: schedule messages an earlier run (or a running topology's
    // scheduler) left waiting for their next attempt would reach this run's cleanup-scheduled and spend its
    // reconciliation pass. Seeking to now acknowledges them.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let sought = reqwest::Client::new()
        .post(format!("{pubsub}/v1/projects/{PROJECT}/subscriptions/eventarc-cleanup-scheduled:seek"))
        .json(&json!({ "time": now }))
        .send()
        .await
        .unwrap();
    assert!(sought.status().is_success(), "seek: {}", sought.status());

    // The vendor: CallRail's API serving the recording.
    let callrail = MockServer::start().await;
    let call = format!("CAL{}", uuid::Uuid::new_v4().simple());
    Mock::given(method("GET"))
        .and(path_regex("recording.json$"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "url": format!("{}/audio/{call}.mp3", callrail.uri()) })),
        )
        .mount(&callrail)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("/audio/"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(&b"ID3 topology"[..], "audio/mpeg"))
        .mount(&callrail)
        .await;
    // The other vendor: Speech-to-Text v2, answering Recognize for a call under a minute with two speakers.
    let speech = MockServer::start().await;
    let word = |w: &str, start: f64, speaker: &str| {
        json!({"startOffset": format!("{start:.1}s"), "endOffset": format!("{:.1}s", start + 0.4), "word": w,
               "confidence": 0.9, "speakerLabel": speaker})
    };
    Mock::given(method("POST"))
        .and(path_regex(r"^/v2/projects/callflow-emulators/locations/us/recognizers/_:recognize$"))
        .and(wiremock::matchers::body_partial_json(
            json!({"uri": format!("gs://callflow-recordings/acme-remodeling/{call}.mp3")}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "results": [{
                "alternatives": [{"transcript": "Acme Remodeling. I need a new roof.", "words": [
                    word("Acme", 0.2, "1"), word("Remodeling.", 0.6, "1"), word("I", 2.0, "2"), word("need", 2.4, "2"),
                    word("a", 2.8, "2"), word("new", 3.2, "2"), word("roof.", 3.6, "2")]}],
                "resultEndOffset": "4.0s", "languageCode": "en-us"
            }],
            "metadata": {"totalBilledDuration": "45s"}
        })))
        .expect(1)
        .mount(&speech)
        .await;

    // And Vertex AI: Gemini answering with a valid analysis for the roofing call.
    let vertex = MockServer::start().await;
    let analysis = json!({"intent": "new_lead", "project_type": "roofing", "lead_score": 88,
        "score_reasons": ["needs a new roof"], "urgency": "soon", "budget": "unknown", "sentiment": "neutral",
        "spam_likelihood": 1, "summary": "Needs a new roof."});
    Mock::given(method("POST"))
        .and(path_regex(r"^/v1/projects/callflow-emulators/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": analysis.to_string()}]}, "finishReason": 1}],
            "usageMetadata": {"promptTokenCount": 640, "candidatesTokenCount": 52, "totalTokenCount": 692},
            "modelVersion": "gemini-2.5-flash"
        })))
        .expect(1)
        .mount(&vertex)
        .await;

    // The tenant's lead receiver (custom-webhook CRM): down for the first push, then up.
    let crm = MockServer::start().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/leads"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&crm)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/leads"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "lead-7"})))
        .mount(&crm)
        .await;
    let tenants_dir = tempfile::tempdir().unwrap();
    let tenants = fixture_tenants(tenants_dir.path(), &crm.uri());

    // The processes: each function on its own port over Spanner/GCS/BigQuery, with its own vendor settings, and
    // the storage watcher.
    let port = free_port();
    let watcher_dir = tempfile::tempdir().unwrap();
    let spawn_started = Instant::now();
    let function = |name: &str, port: u16, vars: &[(&str, String)]| {
        Process(
            Command::new(sibling_binary(name))
                .current_dir(repo())
                .env("PORT", port.to_string())
                .env("CALLFLOW_ENVIRONMENT", "emulators")
                .env("CALLFLOW_TENANTS", &tenants)
                .env("CALLFLOW_SPANNER_DATABASE", &database)
                .env("CALLFLOW_BIGQUERY_DATASET", &dataset)
                .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let _webhook = function("on-webhook", port, &[("CALLFLOW_CALLRAIL_API", callrail.uri())]);
    let audio_port = free_port();
    let _audio = function(
        "on-audio-uploaded",
        audio_port,
        &[("CALLFLOW_TRANSCRIBER", "google".into()), ("CALLFLOW_SPEECH_ENDPOINT", speech.uri())],
    );
    let transcript_port = free_port();
    let _transcript = function(
        "on-transcript",
        transcript_port,
        &[("CALLFLOW_ANALYZER", "gemini".into()), ("CALLFLOW_GEMINI_ENDPOINT", vertex.uri())],
    );
    // on-analysis and on-crm-retry, retrying after a second rather than half a minute.
    let fast_retries = [("CALLFLOW_CRM_BACKOFF_SECS", "1".to_owned())];
    let _analysis = function("on-analysis", analysis_port, &fast_retries);
    let _retry = function("on-crm-retry", retry_port, &fast_retries);
    // cleanup-scheduled, whose reconciliation asks the CallRail fake, never the real API.
    let _cleanup = function("cleanup-scheduled", cleanup_port, &[("CALLFLOW_CALLRAIL_API", callrail.uri())]);
    let _watcher = Process(
        Command::new(env!("CARGO_BIN_EXE_callflow"))
            .current_dir(repo())
            .args(["watch-storage", "--interval-ms", "100", "--deliver"])
            .arg(format!("on-audio-uploaded=http://127.0.0.1:{audio_port}"))
            .arg("--deliver")
            .arg(format!("on-transcript=http://127.0.0.1:{transcript_port}"))
            .env("CALLFLOW_ENVIRONMENT", "emulators")
            .env("CALLFLOW_DATA_DIR", watcher_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("on-webhook to listen", Duration::from_secs(30), async || {
        http.get(format!("{base}/healthz")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    eprintln!("on-webhook ready {} ms after spawn", spawn_started.elapsed().as_millis());

    // The webhook, signed as CallRail signs it.
    let body = std::fs::read_to_string(repo().join("fixtures/callrail/post-call-resource-ids.json"))
        .unwrap()
        .replace(FIXTURE_CALL, &call)
        .replace(r#""duration": "187""#, r#""duration": "45""#)
        .replace(r#""recording_duration": "181""#, r#""recording_duration": "44""#);
    assert!(body.contains(r#""duration": "45""#), "the fixture's duration was replaced");
    // CallRail's call list (reconciliation): Acme's account lists this call, Bayside's nothing.
    let listed: Value = serde_json::from_str(&body).unwrap();
    Mock::given(method("GET"))
        .and(path_regex(r"^/v3/a/ACC8154748ae6bd4e278a7cddd38a662f4f/calls\.json$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"page": 1, "per_page": 100, "total_pages": 1, "total_records": 1, "calls": [listed]}),
        ))
        .mount(&callrail)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/v3/a/ACC0f6b0e3c2f3e4b1d9a7c5e2b4d6f8a10/calls\.json$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"page": 1, "per_page": 100, "total_pages": 0, "total_records": 0, "calls": []})),
        )
        .mount(&callrail)
        .await;
    let sent = Instant::now();
    let answer = http
        .post(format!("{base}/webhooks/callrail/acme-remodeling"))
        .header("content-type", "application/json")
        .header("signature", sign_callrail(KEY, body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let again = http
        .post(format!("{base}/webhooks/callrail/acme-remodeling"))
        .header("content-type", "application/json")
        .header("signature", sign_callrail(KEY, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.json::<Value>().await.unwrap()["duplicate"], true, "a redelivery is a duplicate");

    // GCS: the recording, with its metadata.
    let objects = GcsObjectStore::connect().await.unwrap();
    let name = format!("acme-remodeling/{call}.mp3");
    let (info, data) = wait_for("the recording object", Duration::from_secs(30), async || {
        objects.get("callflow-recordings", &name).await.unwrap()
    })
    .await;
    assert_eq!(&data[..], b"ID3 topology");
    assert_eq!(info.metadata.get("call_id").map(String::as_str), Some(call.as_str()));

    // Spanner: the call, transcribed once the watcher delivered the recording's event to on-audio-uploaded.
    let state = SpannerStateStore::connect(&database).await.unwrap();
    let (tenant, call_id) = (TenantId::parse("acme-remodeling").unwrap(), CallId::parse(&call).unwrap());
    let record = wait_for("the call to reach transcribed", Duration::from_secs(60), async || {
        state.call(&tenant, &call_id).await.unwrap().filter(|c| c.state == CallState::Transcribed)
    })
    .await;
    eprintln!("webhook → transcribed: {} ms", sent.elapsed().as_millis());
    assert_eq!(record.recording_object.as_deref().map(|o| o.contains(&name)), Some(true));

    // GCS: the transcript, diarized, made from that very generation.
    let transcript_name = format!("acme-remodeling/{call}.json");
    let (t_info, t_data) = objects.get("callflow-transcripts", &transcript_name).await.unwrap().expect("transcript");
    let transcript: Value = serde_json::from_slice(&t_data).unwrap();
    assert_eq!(transcript["engine"], "google-speech-v2/chirp_3");
    assert_eq!(transcript["segments"][0]["speaker"], "business");
    assert_eq!(transcript["segments"][1]["speaker"], "caller");
    assert_eq!(transcript["segments"][1]["text"], "I need a new roof.");
    assert_eq!(t_info.metadata.get("recording_generation"), Some(&info.generation.to_string()));

    // on-transcript, through the watcher: the call analysed by Gemini, the analysis stored in Spanner.
    wait_for("the call to reach analysed", Duration::from_secs(60), async || {
        state.call(&tenant, &call_id).await.unwrap().filter(|c| c.state == CallState::Analysed)
    })
    .await;
    eprintln!("webhook → analysed: {} ms", sent.elapsed().as_millis());
    let stored = state.analysis(&tenant, &call_id).await.unwrap().expect("the analysis");
    assert_eq!(stored.analyzer, "gemini/gemini-2.5-flash");
    assert_eq!(stored.findings.project_type, callflow::domain::analysis::ProjectType::Roofing);
    assert_eq!((stored.usage.prompt_tokens, stored.usage.output_tokens), (640, 52));
    let asked: Value = serde_json::from_slice(&vertex.received_requests().await.unwrap()[0].body).unwrap();
    assert!(asked["contents"][0]["parts"][0]["text"].as_str().unwrap().contains("I need a new roof."));

    // BigQuery: the intake's analytics row (and the fetch's), streamed by on-webhook.
    let bigquery = std::env::var("BIGQUERY_EMULATOR_HOST").unwrap();
    let bigquery = if bigquery.contains("://") { bigquery } else { format!("http://{bigquery}") };
    let outcomes = wait_for("the analytics rows", Duration::from_secs(30), async || {
        let sql = format!(
            "SELECT DISTINCT outcome FROM `{PROJECT}.{dataset}.calls` WHERE call_id = '{call}' \
             AND stage NOT IN ('on-analysis', 'on-crm-retry') ORDER BY outcome"
        );
        let outcomes: Vec<String> = bq_rows(&http, &bigquery, sql).await?.into_iter().map(|r| r[0].clone()).collect();
        (outcomes.len() >= 4).then_some(outcomes)
    })
    .await;
    assert_eq!(outcomes, ["analysed", "created", "recording_stored", "transcribed"]);

    // Pub/Sub: on-transcript's message on analysis-complete, pushed by the emulator (raw push envelope, no ce-*)
    // to on-analysis, whose push fails; its crm-retry message, pushed to on-crm-retry, delivers the lead.
    let delivered = wait_for("the call to reach delivered", Duration::from_secs(90), async || {
        state.call(&tenant, &call_id).await.unwrap().filter(|c| c.state == CallState::Delivered)
    })
    .await;
    eprintln!("webhook → delivered (one CRM failure and its retry): {} ms", sent.elapsed().as_millis());
    assert_eq!(delivered.state_reason, None);
    let record = state.delivery(&tenant, &call_id).await.unwrap().expect("the CRM record on the call");
    assert_eq!((record.provider.as_str(), record.record_id.as_str(), record.attempts), ("webhook", "lead-7", 2));
    let pushes: Vec<_> = crm.received_requests().await.unwrap();
    assert_eq!(pushes.len(), 2, "one failed push, one that worked");
    let key = format!("acme-remodeling:{call}");
    assert!(pushes.iter().all(|p| p.headers.get("webhook-id").unwrap() == key.as_str()));
    let lead: Value = serde_json::from_slice(&pushes[1].body).unwrap();
    assert_eq!(lead["lead"]["project_type"], "roofing");
    let outcomes = wait_for("the delivery rows", Duration::from_secs(30), async || {
        let sql = format!(
            "SELECT stage, outcome FROM `{PROJECT}.{dataset}.calls` WHERE call_id = '{call}' \
             AND stage IN ('on-analysis', 'on-crm-retry') ORDER BY stage"
        );
        let rows: Vec<String> =
            bq_rows(&http, &bigquery, sql).await?.into_iter().map(|r| format!("{}:{}", r[0], r[1])).collect();
        (rows.len() >= 2).then_some(rows)
    })
    .await;
    assert_eq!(outcomes, ["on-analysis:retry_scheduled", "on-crm-retry:delivered"]);
    // The analysts' view on BigQuery sees the call as delivered after two pushes.
    let lead = wait_for("the call in the leads view", Duration::from_secs(30), async || {
        let sql = format!(
            "SELECT analysed, qualified, delivered, crm_pushes, crm_provider, project_type \
             FROM `{PROJECT}.{dataset}.leads` WHERE call_id = '{call}'"
        );
        let row = bq_rows(&http, &bigquery, sql).await?.into_iter().next()?;
        (row[2] == "1" && row[3] == "2").then_some(row)
    })
    .await;
    assert_eq!(lead, ["1", "1", "1", "2", "webhook", "roofing"]);

    // Cloud Scheduler's part: the `cleanup` schedule fired now, pushed by the emulator to cleanup-scheduled.
    wait_for("cleanup-scheduled to listen", Duration::from_secs(30), async || {
        http.get(format!("http://127.0.0.1:{cleanup_port}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let fired = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_callflow"))
        .current_dir(repo())
        .args(["scheduler", "--fire-now", "cleanup"])
        .env("CALLFLOW_ENVIRONMENT", "emulators")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "callflow scheduler --fire-now cleanup failed");
    let said = String::from_utf8(out.stdout).unwrap();
    // "cleanup: published message N on scheduled (schedule_time 2026-…Z)": the run is named by that slot.
    let run_id = said.split("schedule_time ").nth(1).and_then(|r| r.split(')').next()).expect(&said).to_owned();
    let tenants_n = 2;
    let runs = wait_for("the cleanup_runs rows", Duration::from_secs(30), async || {
        let sql = format!(
            "SELECT DISTINCT tenant_id, job, complete, counts FROM `{PROJECT}.{dataset}.cleanup_runs` \
             WHERE run_id = '{run_id}' ORDER BY tenant_id, job"
        );
        let rows = bq_rows(&http, &bigquery, sql).await?;
        (rows.len() >= 4 * tenants_n).then_some(rows)
    })
    .await;
    eprintln!("scheduler fired → cleanup_runs rows: {} ms", fired.elapsed().as_millis());
    let jobs: Vec<String> = runs.iter().map(|r| format!("{}:{}:{}", r[0], r[1], r[2])).collect();
    assert_eq!(
        jobs,
        [
            "acme-remodeling:erasure:true",
            "acme-remodeling:reconciliation:true",
            "acme-remodeling:retention:true",
            "acme-remodeling:stuck-calls:true",
            "bayside-baths:erasure:true",
            "bayside-baths:reconciliation:true",
            "bayside-baths:retention:true",
            "bayside-baths:stuck-calls:true",
        ],
        "{runs:?}"
    );
    // Reconciliation listed the call the webhook delivered: known, not ingested again.
    let counts: Value = serde_json::from_str(&runs[1][3]).unwrap();
    assert_eq!((counts["listed"].as_u64(), counts["known"].as_u64()), (Some(1), Some(1)), "{counts}");
    assert_eq!(counts.get("ingested"), None, "{counts}");
}
