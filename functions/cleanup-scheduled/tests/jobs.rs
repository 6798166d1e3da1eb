//! The four jobs, each on the embedded backends and on the emulators (Spanner, GCS): retention on its boundary
//! day, bounded and resumed; an erasure request that leaves no trace of the caller; stuck calls re-driven once per
//! limit until they complete or are dead-lettered; reconciliation against a stand-in CallRail with pages, a 429 and
//! a mix of known and missing calls, within its hourly request budget.

mod support;

use callflow::domain::cleanup::Job;
use callflow::domain::retention::RetentionSettings;
use callflow::domain::work::WorkKind;
use callflow::domain::{CallState, LeadDetails};
use callflow::ports::ErasureRequest;
use serde_json::Value;
use support::{Harness, ids};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

async fn retention_happens_on_the_boundary_day_per_kind_of_data(h: Harness) {
    let t0 = h.now();
    // Recordings go after 30 days, the caller's details after 90, transcripts after a year.
    let edge = h.received("acme", "CALedge", support::dana(), t0 - days(30)).await;
    h.received("acme", "CALyoung", support::dana(), t0 - days(30) + chrono::Duration::seconds(1)).await;
    for call in ["CALedge", "CALyoung"] {
        h.objects_for("acme", call).await;
        h.stored("acme", call).await;
    }
    h.advance("acme", "CALedge", CallState::Analysed).await;
    // Still `received`, its recording stored but not yet named on the call (the fetch's commit is pending): found by
    // the naming contract.
    h.received("acme", "CALlimbo", support::dana(), t0 - days(30)).await;
    h.put(&h.recordings(), "acme/CALlimbo.mp3", b"ID3 audio", "audio/mpeg").await;
    let (rec, tra) = (h.recordings(), h.transcripts());

    let dry = h.run(r#"{"jobs": ["retention"], "dry_run": true}"#).await;
    let r = dry.get(Job::Retention, "acme").unwrap();
    assert_eq!((r.get("recordings"), r.calls.clone()), (2, vec!["CALedge".to_owned(), "CALlimbo".into()]), "{r:?}");
    assert!(h.exists(&rec, "acme/CALedge.mp3").await, "a dry run removes nothing");
    let (t, _) = ids("acme", "x");
    assert!(h.state.job_cursor(&t, "retention:recordings").await.unwrap().is_none(), "nor moves its cursor");

    let run = h.run(r#"{"jobs": ["retention"]}"#).await;
    let r = run.get(Job::Retention, "acme").unwrap();
    assert_eq!((r.get("recordings"), r.get("transcripts"), r.get("pii"), r.complete), (2, 0, 0, true), "{r:?}");
    assert!(!h.exists(&rec, "acme/CALedge.mp3").await, "the boundary day is due");
    assert!(!h.exists(&rec, "acme/CALlimbo.mp3").await);
    assert!(h.exists(&rec, "acme/CALyoung.mp3").await, "a second younger is not");
    assert!(h.exists(&tra, "acme/CALedge.json").await, "transcripts are kept a year");
    let kept = h.call("acme", "CALedge").await;
    assert_eq!(kept.recording_object, None);
    assert_eq!(kept.lead.customer_phone, edge.lead.customer_phone, "personal data is kept 90 days");
    let log = h.state.erasures(&t, 10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].request_id.as_str(), log[0].erased.clone()), ("retention:recordings", vec!["recording".into()]));

    h.clock.advance(chrono::Duration::seconds(1));
    let r = h.run(r#"{"jobs": ["retention"]}"#).await;
    assert_eq!(r.get(Job::Retention, "acme").unwrap().calls, ["CALyoung"], "only the calls that became due");
    assert!(!h.exists(&rec, "acme/CALyoung.mp3").await);

    h.clock.advance(days(60) - chrono::Duration::seconds(1));
    let r = h.run(r#"{"jobs": ["retention"]}"#).await;
    let r = r.get(Job::Retention, "acme").unwrap();
    assert_eq!((r.get("pii"), r.calls.clone()), (2, vec!["CALedge".to_owned(), "CALlimbo".into()]), "{r:?}");
    let scrubbed = h.call("acme", "CALedge").await;
    let (phone, name) = (&scrubbed.lead.customer_phone, &scrubbed.lead.customer_name);
    assert_eq!((phone, name), (&None, &None));
    assert_eq!(scrubbed.lead.landing_page_url.as_deref(), Some("https://acme.example/kitchens"));
    assert_eq!(scrubbed.lead.utm_source.as_deref(), Some("google"), "marketing facts stay");
    let (_, c) = ids("acme", "CALedge");
    let analysis = h.state.analysis(&t, &c).await.unwrap().unwrap();
    assert_eq!(analysis.findings.caller, Default::default());
    assert_eq!(analysis.findings.lead_score, 70, "what the call was about stays");
    let found = h.state.calls_by_contact(&t, Some("+15035550148"), None).await.unwrap();
    assert_eq!(found.iter().map(|c| c.call_id.as_str()).collect::<Vec<_>>(), ["CALyoung"]);
    let log = h.state.erasures(&t, 10).await.unwrap();
    let pii = log.into_iter().find(|e| e.request_id == "retention:pii" && e.call_id.as_str() == "CALedge").unwrap();
    assert!(pii.erased.contains(&"lead.customer_phone".to_owned()) && pii.erased.contains(&"analysis.caller".into()));
    assert!(!format!("{pii:?}").contains("5550148"), "the log names fields, not values");

    let again = h.run(r#"{"jobs": ["retention"]}"#).await;
    let r = again.get(Job::Retention, "acme").unwrap();
    assert_eq!((r.acted(), r.get("scanned")), (0, 0), "each call is visited once per kind: {r:?}");
    assert_eq!(again.get(Job::Retention, "bayside").unwrap().acted(), 0);
}
both!(
    embedded_retention_boundary,
    emulators_retention_boundary,
    retention_happens_on_the_boundary_day_per_kind_of_data
);

async fn retention_is_bounded_per_run_and_resumes_where_it_stopped(h: Harness) {
    let t0 = h.now();
    for i in 0..5 {
        let call = format!("CALold{i}");
        h.received("acme", &call, support::dana(), t0 - days(31)).await;
        h.stored("acme", &call).await;
    }
    let mut done = vec![];
    for expected in [(2, false), (2, false), (1, true)] {
        let run = h.run(r#"{"jobs": ["retention"]}"#).await;
        let r = run.get(Job::Retention, "acme").unwrap();
        assert_eq!((r.get("recordings"), r.complete), expected, "{r:?}");
        done.extend(r.calls.clone());
    }
    done.sort();
    assert_eq!(done, ["CALold0", "CALold1", "CALold2", "CALold3", "CALold4"], "each call once");
    let (t, _) = ids("acme", "x");
    assert_eq!(h.state.erasures(&t, 10).await.unwrap().len(), 5);
}
both!(
    embedded_retention_resumes,
    emulators_retention_resumes,
    retention_is_bounded_per_run_and_resumes_where_it_stopped,
    &[("CALLFLOW_CLEANUP_MAX_ITEMS", "2")]
);

async fn an_erasure_request_leaves_no_trace_of_the_caller(h: Harness) {
    let t0 = h.now();
    // Dana's delivered call, a later one (by email only) still in the chain, and someone else's call.
    h.received("acme", "CALd1", support::dana(), t0 - days(3)).await;
    h.advance("acme", "CALd1", CallState::Analysed).await;
    h.advance("acme", "CALd1", CallState::Delivered).await;
    let by_email = LeadDetails {
        customer_email: Some("Dana@Example.com".into()),
        customer_phone: Some("+1 971 555 0101".into()),
        customer_name: Some("D. Whitfield".into()),
        recording_url: Some("https://api.callrail.com/v3/a/ACC1/calls/CALd2/recording.json".into()),
        ..LeadDetails::default()
    };
    h.received("acme", "CALd2", by_email, t0 - days(1)).await;
    let other = LeadDetails {
        customer_phone: Some("+15035550199".into()),
        customer_name: Some("Lee Park".into()),
        recording_url: Some("https://api.callrail.com/v3/a/ACC1/calls/CALother/recording.json".into()),
        ..LeadDetails::default()
    };
    h.received("acme", "CALother", other, t0).await;
    for call in ["CALd1", "CALd2", "CALother"] {
        h.objects_for("acme", call).await;
    }
    let (t, _) = ids("acme", "x");
    let request = ErasureRequest {
        tenant_id: t.clone(),
        id: "era-0001".into(),
        phone: Some("+15035550148".into()),
        email: Some("dana@example.com".into()),
        requested_at: t0,
        completed_at: None,
        calls_erased: None,
    };
    assert!(h.state.request_erasure(&request).await.unwrap());

    let dry = h.run(r#"{"jobs": ["erasure"], "dry_run": true}"#).await;
    assert_eq!(dry.get(Job::Erasure, "acme").unwrap().calls, ["CALd1", "CALd2"]);
    assert_eq!(h.state.erasure_requests(&t, true, 10).await.unwrap().len(), 1, "a dry run carries nothing out");

    let run = h.run(r#"{"jobs": ["erasure"]}"#).await;
    let r = run.get(Job::Erasure, "acme").unwrap();
    assert_eq!((r.get("requests"), r.get("calls_erased"), r.get("objects_deleted")), (1, 2, 4), "{r:?}");
    assert_eq!(r.get("crm_copies"), 1, "the report says a CRM holds a copy");
    for call in ["CALd1", "CALd2"] {
        assert!(!h.exists(&h.recordings(), &format!("acme/{call}.mp3")).await);
        assert!(!h.exists(&h.transcripts(), &format!("acme/{call}.json")).await);
        let c = h.call("acme", call).await;
        let l = &c.lead;
        assert_eq!(
            (&l.customer_name, &l.customer_phone, &l.customer_email, &l.customer_zip),
            (&None, &None, &None, &None)
        );
        let (_, id) = ids("acme", call);
        if let Some(a) = h.state.analysis(&t, &id).await.unwrap() {
            assert_eq!(a.findings.caller, Default::default());
        }
    }
    let stopped = h.call("acme", "CALd2").await;
    assert_eq!((stopped.state, stopped.state_reason.as_deref()), (CallState::Skipped, Some("erased")));
    assert!(h.exists(&h.recordings(), "acme/CALother.mp3").await, "other callers keep theirs");
    assert_eq!(h.call("acme", "CALother").await.lead.customer_name.as_deref(), Some("Lee Park"));
    assert!(h.state.calls_by_contact(&t, Some("+15035550148"), Some("dana@example.com")).await.unwrap().is_empty());
    assert!(h.state.erasure_requests(&t, true, 10).await.unwrap().is_empty());
    let done = h.state.erasure_requests(&t, false, 10).await.unwrap();
    assert_eq!((done[0].phone.as_ref(), done[0].email.as_ref(), done[0].calls_erased), (None, None, Some(2)));
    let log = h.state.erasures(&t, 10).await.unwrap();
    assert_eq!(log.iter().filter(|e| e.request_id == "era-0001").count(), 2);
    let d1 = log.iter().find(|e| e.call_id.as_str() == "CALd1").unwrap();
    for erased in ["recording", "transcript", "lead.customer_name", "lead.customer_phone", "analysis.caller"] {
        assert!(d1.erased.contains(&erased.to_owned()), "{erased} in {:?}", d1.erased);
    }
    if let Some(e) = &h.embedded {
        let state_file = e.data_dir.join("state.sqlite");
        let text = every_value(&state_file);
        for trace in ["5035550148", "555 0101", "Whitfield", "dana@example.com", "Dana@Example.com", "97214"] {
            assert!(!text.contains(trace), "{trace} is still in the state store");
        }
        assert!(text.contains("Lee Park"), "the check reads the store");
        // Nor in the file's bytes: deleted and replaced values are overwritten (secure_delete), and once the WAL is
        // checkpointed the old page images are gone too.
        let c = rusqlite::Connection::open(&state_file).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        let bytes = std::fs::read(&state_file).unwrap();
        let raw = String::from_utf8_lossy(&bytes);
        for trace in ["5035550148", "Whitfield", "dana@example.com"] {
            assert!(!raw.contains(trace), "{trace} is still in the file's bytes");
        }
        assert!(raw.contains("Lee Park"));
    }
    let again = h.run(r#"{"jobs": ["erasure"]}"#).await;
    assert_eq!(again.get(Job::Erasure, "acme").unwrap().get("requests"), 0);
}
both!(embedded_erasure_no_trace, emulators_erasure_no_trace, an_erasure_request_leaves_no_trace_of_the_caller);

/// Every value of every row of every table of a SQLite file, as text.
fn every_value(file: &std::path::Path) -> String {
    let c = rusqlite::Connection::open(file).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = String::new();
    for table in tables {
        let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                out.push_str(&format!("{v:?}\n"));
            }
        }
    }
    out
}

async fn a_call_stuck_in_analysed_is_redriven_once_and_completes(h: Harness) {
    let t0 = h.now();
    h.received("acme", "CALs1", support::dana(), t0).await;
    h.advance("acme", "CALs1", CallState::Analysed).await;
    Mock::given(method("POST"))
        .and(path("/leads"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": "lead_1"})))
        .mount(&h.crm)
        .await;
    // Its analysis-complete message was lost; a day later nothing has moved it.
    h.clock.advance(chrono::Duration::hours(24));
    let early = h.run(r#"{"jobs": ["stuck-calls"]}"#).await;
    assert_eq!(early.get(Job::StuckCalls, "acme").unwrap().get("stuck"), 0, "a CRM chain may run 24 h");
    h.clock.advance(chrono::Duration::hours(2));
    let run = h.run(r#"{"jobs": ["stuck-calls"]}"#).await;
    assert_eq!(run.get(Job::StuckCalls, "acme").unwrap().get("redriven"), 1);
    let again = h.run(r#"{"jobs": ["stuck-calls"]}"#).await;
    let r = again.get(Job::StuckCalls, "acme").unwrap();
    assert_eq!((r.get("redriven"), r.get("waiting")), (0, 1), "one re-drive per limit: {r:?}");
    let messages = h.published.take("crm-retry");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let outcome = on_crm_retry::stage::process(&h.delivery, Ok(pubsub(&messages[0], "m1"))).await;
    assert_eq!(outcome.name(), "delivered");
    assert_eq!(h.call("acme", "CALs1").await.state, CallState::Delivered);
    assert_eq!(h.crm.received_requests().await.unwrap().len(), 1, "the lead arrived once");
    h.clock.advance(chrono::Duration::hours(30));
    let after = h.run(r#"{"jobs": ["stuck-calls"]}"#).await;
    assert_eq!(after.get(Job::StuckCalls, "acme").unwrap().get("stuck"), 0);
}
both!(embedded_stuck_analysed, emulators_stuck_analysed, a_call_stuck_in_analysed_is_redriven_once_and_completes);

async fn stuck_calls_get_their_own_event_again_and_are_dead_lettered_after_k(h: Harness) {
    let t0 = h.now();
    let (t, _) = ids("acme", "x");
    // received: its fetch finished without moving it (say, a bug) → a new fetch.
    // recording_stored: its finalize event was lost → the recording is written again.
    // transcribed: on-transcript never finishes → re-driven three times, then dead-lettered.
    for call in ["CALr", "CALrs", "CALt"] {
        h.received("acme", call, support::dana(), t0).await;
    }
    let lease = std::time::Duration::from_secs(60);
    let fetches = h.state.claim_work(&[WorkKind::FetchRecording], 10, lease).await.unwrap();
    assert_eq!(fetches.len(), 3);
    for fetch in &fetches {
        assert!(h.state.complete_work(fetch, Default::default()).await.unwrap());
    }
    h.advance("acme", "CALrs", CallState::RecordingStored).await;
    h.put(&h.recordings(), "acme/CALrs.mp3", b"ID3 audio", "audio/mpeg").await;
    let before = h.objects.head(&h.recordings(), "acme/CALrs.mp3").await.unwrap().unwrap();
    h.advance("acme", "CALt", CallState::Transcribed).await;
    h.put(&h.transcripts(), "acme/CALt.json", br#"{"text": "hello"}"#, "application/json").await;

    h.clock.advance(chrono::Duration::minutes(61));
    let r = h.run(r#"{"jobs": ["stuck-calls"]}"#).await;
    let r = r.get(Job::StuckCalls, "acme").unwrap();
    assert_eq!((r.get("stuck"), r.get("redriven")), (3, 3), "{r:?}");
    let refetch =
        h.state.claim_work(&[WorkKind::FetchRecording], 10, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(refetch.iter().map(|w| w.call_id.as_str()).collect::<Vec<_>>(), ["CALr"]);
    assert_eq!(refetch[0].payload["recording_url"], support::dana().recording_url.unwrap().as_str());
    let after = h.objects.head(&h.recordings(), "acme/CALrs.mp3").await.unwrap().unwrap();
    assert!(after.generation > before.generation, "a new generation, so a new finalize event");
    assert_eq!(after.metadata.get("tenant_id").map(String::as_str), Some("acme"), "the naming contract kept");
    assert_eq!(after.metadata.get("redrive").map(String::as_str), Some("1"));

    for n in 2..=3 {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the re-drive's spacing (1 s here)
        h.clock.advance(chrono::Duration::minutes(31));
        let r = h.run(r#"{"jobs": ["stuck-calls"]}"#).await;
        let r = r.get(Job::StuckCalls, "acme").unwrap();
        assert!(r.get("redriven") >= 1, "re-drive {n}: {r:?}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    h.clock.advance(chrono::Duration::minutes(31));
    let r = h.run(r#"{"jobs": ["stuck-calls"]}"#).await;
    assert!(r.get(Job::StuckCalls, "acme").unwrap().get("given_up") >= 1);
    let t_call = h.call("acme", "CALt").await;
    assert_eq!(t_call.state, CallState::DeadLettered);
    assert!(t_call.state_reason.as_deref().unwrap().contains("after 3 re-drives"), "{:?}", t_call.state_reason);
    let letters = h.state.dead_letters(Some("acme"), 10).await.unwrap();
    assert!(letters.iter().any(|d| d.call_id == "CALt" && d.kind == "redrive"), "{letters:?}");
    let _ = t;
}
both!(
    embedded_stuck_redrives,
    emulators_stuck_redrives,
    stuck_calls_get_their_own_event_again_and_are_dead_lettered_after_k,
    &[("CALLFLOW_STUCK_REDRIVE_SPACING_SECS", "1")]
);

/// A Pub/Sub push envelope, as a subscription delivers `data`.
fn pubsub(data: &Value, id: &str) -> callflow::runtime::cloudevent::IncomingEvent {
    use base64::Engine;
    let body = serde_json::json!({
        "message": {"data": base64::engine::general_purpose::STANDARD.encode(data.to_string()), "messageId": id},
        "subscription": "projects/p/subscriptions/crm-retry"
    });
    callflow::runtime::cloudevent::IncomingEvent::from_http(&Default::default(), body.to_string().into()).unwrap()
}

const LIST: &str = "/v3/a/ACC8154748ae6bd4e278a7cddd38a662f4f/calls.json";

fn page(n: u32) -> ResponseTemplate {
    let text = match n {
        1 => include_str!("../../../fixtures/callrail/list/calls-page-1.json"),
        2 => include_str!("../../../fixtures/callrail/list/calls-page-2.json"),
        _ => include_str!("../../../fixtures/callrail/list/calls-page-3.json"),
    };
    ResponseTemplate::new(200).set_body_raw(text, "application/json")
}

async fn mount_pages(h: &Harness) {
    for n in 1..=3u32 {
        Mock::given(method("GET"))
            .and(path(LIST))
            .and(query_param("page", n.to_string()))
            .respond_with(page(n))
            .mount(&h.callrail)
            .await;
    }
}

async fn reconciliation_ingests_exactly_the_calls_the_webhook_missed(h: Harness) {
    let t0 = h.now();
    // The webhook delivered this one.
    let known =
        LeadDetails { answered: Some(true), customer_name: Some("Dana Whitfield".into()), ..Default::default() };
    h.received("acme", "CALa1b2c3d4e5f60718293a4b5c6d7e8f90", known, t0 - chrono::Duration::hours(20)).await;
    Mock::given(method("GET"))
        .and(path(LIST))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&h.callrail)
        .await;
    mount_pages(&h).await;

    let limited = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    let r = limited.get(Job::Reconciliation, "acme").unwrap();
    assert_eq!((r.get("rate_limited"), r.get("ingested"), r.complete), (1, 0, false), "{r:?}");
    let paused = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    assert_eq!(paused.get(Job::Reconciliation, "acme").unwrap().get("requests"), 0, "Retry-After is honoured");
    assert_eq!(h.callrail.received_requests().await.unwrap().len(), 1);

    // Real time passes too: the stores date the work they queue by it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    h.clock.advance(chrono::Duration::seconds(1));
    let run = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    let r = run.get(Job::Reconciliation, "acme").unwrap();
    let counts = (r.get("pages"), r.get("listed"), r.get("ingested"), r.get("known"), r.get("other_companies"));
    assert_eq!(counts, (3, 5, 3, 1, 1), "{r:?}");
    assert!(r.complete);
    let mut ingested = r.calls.clone();
    ingested.sort();
    assert_eq!(
        ingested,
        [
            "CAL0b7d7c5e9a2f4e1c8d3b6a5f4e3d2c1b",
            "CAL5e6f7a8b9c0d4e1f2a3b4c5d6e7f8a9b",
            "CALc3d4e5f6a7b84c9d0e1f2a3b4c5d6e7f"
        ]
    );
    let analytics = rusqlite::Connection::open(h.dir.path().join("analytics.sqlite")).unwrap();
    let reconciled: i64 = analytics
        .query_row("SELECT count(*) FROM calls WHERE event_kind = 'reconciled' AND stage = 'on-webhook'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(reconciled, 3, "each ingested call's intake row says how it came");
    let voicemail = h.call("acme", "CAL0b7d7c5e9a2f4e1c8d3b6a5f4e3d2c1b").await;
    assert_eq!((voicemail.state, voicemail.lead.reconciled), (CallState::Received, Some(true)));
    let unanswered = h.call("acme", "CAL5e6f7a8b9c0d4e1f2a3b4c5d6e7f8a9b").await;
    assert_eq!((unanswered.state, unanswered.state_reason.as_deref()), (CallState::Skipped, Some("unanswered")));
    let known = h.call("acme", "CALa1b2c3d4e5f60718293a4b5c6d7e8f90").await;
    assert_eq!(known.lead.reconciled, None, "a call the webhook delivered is not touched");
    let (t, c) = ids("acme", "CAL9a8b7c6d5e4f4a3b2c1d0e9f8a7b6c5d");
    assert!(h.state.call(&t, &c).await.unwrap().is_none(), "another company's call is not ours");
    let fetches =
        h.state.claim_work(&[WorkKind::FetchRecording], 10, std::time::Duration::from_secs(60)).await.unwrap();
    let mut fetched: Vec<_> = fetches.iter().map(|w| w.call_id.as_str()).collect();
    fetched.sort();
    assert_eq!(
        fetched,
        ["CAL0b7d7c5e9a2f4e1c8d3b6a5f4e3d2c1b", "CALc3d4e5f6a7b84c9d0e1f2a3b4c5d6e7f"],
        "the missed calls' recordings are fetched as the webhook's would be"
    );
    assert_eq!(
        run.get(Job::Reconciliation, "bayside").unwrap().note.as_deref().map(|n| n.contains("API key")),
        Some(true)
    );

    h.clock.advance(chrono::Duration::minutes(10));
    let soon = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    assert_eq!(soon.get(Job::Reconciliation, "acme").unwrap().get("requests"), 0, "one pass an hour");
    h.clock.advance(chrono::Duration::minutes(51));
    let next = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    let r = next.get(Job::Reconciliation, "acme").unwrap();
    assert_eq!((r.get("ingested"), r.get("known")), (0, 4), "the same dedupe as the webhook: {r:?}");
}
both!(embedded_reconciliation, emulators_reconciliation, reconciliation_ingests_exactly_the_calls_the_webhook_missed);

async fn reconciliation_keeps_to_its_hourly_request_budget(h: Harness) {
    mount_pages(&h).await;
    let hour = h.now().duration_trunc(chrono::Duration::hours(1)).unwrap();
    h.clock.set(hour + chrono::Duration::minutes(5));
    let first = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    let r = first.get(Job::Reconciliation, "acme").unwrap();
    assert_eq!((r.get("requests"), r.complete), (2, false), "{r:?}");
    assert!(r.note.as_deref().unwrap().contains("requests are spent"));
    h.clock.advance(chrono::Duration::minutes(15));
    let same_hour = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    assert_eq!(same_hour.get(Job::Reconciliation, "acme").unwrap().get("requests"), 0);
    h.clock.set(hour + chrono::Duration::minutes(60));
    let next_hour = h.run(r#"{"jobs": ["reconciliation"]}"#).await;
    let r = next_hour.get(Job::Reconciliation, "acme").unwrap();
    assert_eq!((r.get("requests"), r.complete), (1, true), "the pass resumes at page 3: {r:?}");
    let pages: Vec<String> = h
        .callrail
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.query_pairs().find(|(k, _)| k == "page").unwrap().1.into_owned())
        .collect();
    assert_eq!(pages, ["1", "2", "3"]);
    let mut ids: Vec<String> = vec![];
    for report in [&first, &next_hour] {
        ids.extend(report.get(Job::Reconciliation, "acme").unwrap().calls.clone());
    }
    assert_eq!(ids.len(), 4, "every missing call once: {ids:?}");
}
both!(
    embedded_reconciliation_budget,
    emulators_reconciliation_budget,
    reconciliation_keeps_to_its_hourly_request_budget,
    &[("CALLFLOW_RECONCILE_REQUESTS_PER_HOUR", "2")]
);

use chrono::DurationRound;

#[test]
fn retention_settings_default_to_the_tenants_days() {
    let r = RetentionSettings::default().resolve(180);
    assert_eq!((r.recordings, r.transcripts, r.pii), (180, 180, 180));
}
