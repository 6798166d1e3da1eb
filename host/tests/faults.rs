//! The whole-chain fault suite (issue 9), in process: the one-process host on its embedded backends with every
//! vendor faked over loopback HTTP (`callflow_host::vendors`: CallRail's API, Speech-to-Text, Gemini, Acme's
//! custom-webhook CRM), the public webhook endpoint served on a port, and the host's own workers (outbox, router,
//! leftovers) running as `callflow serve` runs them. Trigger retries are cut to 1–2 s (`chain::fast_eventarc`).
//!
//! - A duplicate storm: every CallRail webhook 2–5 times, concurrently, shuffled, some copies after the call has
//!   ended; every event the router delivers to a function sent again 1–4 times to the same function, some
//!   copies delayed up to 300 ms. One lead per lead call, each robocall `spam`, each vendor asked once per call.
//! - The CRM down (503, then 429 with Retry-After), Speech-to-Text failing (within and beyond the retry budget)
//!   and Gemini failing (503, garbage, no answer): what the design promises for each, and every lead once.

mod chain;
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use callflow::domain::signature::{sign_callrail, sign_standard_webhook, standard_webhooks_key};
use callflow::domain::{CallId, CallRecord, CallState, TenantId};
use callflow::ports::StateStore;
use callflow_host::vendors::{self, CrmLead, Mode, Vendor, Vendors};
use callflow_host::{Host, Settings};
use chain::{ACME, expected_state, is_lead, until};
use common::repo;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tower::ServiceExt;

/// The functions the router delivers to (on-webhook is the public endpoint).
const ROUTED: [&str; 5] = ["on-audio-uploaded", "on-transcript", "on-analysis", "on-crm-retry", "cleanup-scheduled"];

/// The seed of the storm's choices: `CALLFLOW_FAULTS_SEED` to replay a run, else a fixed one.
fn seed() -> u64 {
    std::env::var("CALLFLOW_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x0009_5eed)
}

/// The host against the fakes, serving the public endpoint, with its workers running.
struct Chain {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    vendors: Arc<Vendors>,
    host: Arc<Host>,
    url: String,
    client: reqwest::Client,
    key: Vec<u8>,
    tenant: TenantId,
    _stop: tokio::sync::watch::Sender<bool>,
    started: Instant,
}

impl Chain {
    async fn start(attempts: &[(&str, u32)], extra: &[(&str, &str)]) -> Self {
        let vendors = Vendors::new();
        let vendor_url = vendors::serve(vendors.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let vars = chain::host_env(dir.path(), &vendor_url, attempts, extra);
        let settings =
            Settings::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).unwrap();
        let host = Arc::new(Host::open(settings).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, on_webhook::app(host.webhook.clone())).into_future());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        drop(host.spawn_workers(stop_rx));
        Self {
            data: dir.path().join("data"),
            _dir: dir,
            vendors,
            host,
            url,
            client: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
            key: chain::callrail_key(),
            tenant: TenantId::parse(ACME).unwrap(),
            _stop: stop,
            started: Instant::now(),
        }
    }

    /// A signed CallRail webhook: the status and the JSON answer (status 0 when there was no answer).
    async fn post_call(&self, body: &[u8]) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/webhooks/callrail/{ACME}", self.url))
            .header("content-type", "application/json")
            .header("signature", sign_callrail(&self.key, body))
            .body(body.to_vec())
            .send()
            .await;
        match resp {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// A web form signed as a Standard Webhooks sender signs it (a retry keeps its `webhook-id`).
    async fn post_form(&self, webhook_id: &str, body: &[u8]) -> (u16, Value) {
        let secret = std::fs::read_to_string(repo().join("fixtures/secrets/acme-forms-secret")).unwrap();
        let key = standard_webhooks_key(&secret).unwrap();
        let ts = chrono::Utc::now().timestamp();
        let resp = self
            .client
            .post(format!("{}/webhooks/forms/{ACME}", self.url))
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign_standard_webhook(&key, webhook_id, ts, body))
            .body(body.to_vec())
            .send()
            .await;
        match resp {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// New calls `n0..n0+count` of test `tag`, each sent once; returns their ids.
    async fn send_calls(&self, tag: u16, n0: usize, count: usize) -> Vec<String> {
        let ids: Vec<String> = (n0..n0 + count).map(|n| chain::call_id(tag, n)).collect();
        let sends = ids.iter().enumerate().map(|(i, id)| async move {
            let body = chain::post_call(id, n0 + i).to_string();
            let (status, answer) = self.post_call(body.as_bytes()).await;
            assert_eq!(status, 200, "webhook for {id}: {answer}");
        });
        futures::future::join_all(sends).await;
        ids
    }

    async fn call(&self, id: &str) -> Option<CallRecord> {
        self.host.embedded.state.call(&self.tenant, &CallId::parse(id).unwrap()).await.unwrap()
    }

    /// Whether every call is where `want` says; else the first that is not, and where it is.
    async fn check_states(&self, ids: &[String], want: impl Fn(&str) -> CallState) -> Result<(), String> {
        for id in ids {
            let call = self.call(id).await;
            let state = call.as_ref().map(|c| c.state);
            if state != Some(want(id)) {
                let reason = call.and_then(|c| c.state_reason).unwrap_or_default();
                return Err(format!(
                    "{id} ({}) is {state:?} {reason:?}, expected {:?}",
                    vendors::script_of(id),
                    want(id)
                ));
            }
        }
        Ok(())
    }

    /// Waits until every call is in its right terminal state.
    async fn wait_terminal(&self, what: &str, ids: &[String], limit: Duration) {
        until(what, limit, || self.check_states(ids, expected_state)).await;
    }

    /// Waits until nothing is left to do: no routed event waiting or in flight, no work in the outbox, and no
    /// extra copy of the storm still running.
    async fn wait_quiet(&self, storm: Option<&Storm>, limit: Duration) {
        until("the chain going quiet", limit, || async {
            let events = self.host.router.pending().await.unwrap();
            let work = self.host.embedded.state.pending_work().await.unwrap();
            let copies = storm.map_or(0, |s| s.in_flight.load(Ordering::SeqCst));
            if events.is_empty() && work.is_empty() && copies == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} routed events, {} work items, {copies} storm copies in flight",
                    events.len(),
                    work.len()
                ))
            }
        })
        .await;
    }

    /// The CRM's leads by call (from each lead's `webhook-id`, `{tenant}:{call}`, the chain's idempotency key).
    fn crm_by_call(&self) -> BTreeMap<String, Vec<CrmLead>> {
        let mut out: BTreeMap<String, Vec<CrmLead>> = BTreeMap::new();
        for (key, lead) in self.vendors.crm_leads() {
            let call = key.split_once(':').map_or(key.as_str(), |(_, call)| call).to_owned();
            out.entry(call).or_default().push(lead);
        }
        out
    }

    /// Exactly one lead created at the CRM for each of `leads`, under one `webhook-id`, and nothing for
    /// `not_leads`. Returns (pushes, conflicts) over `leads`.
    fn assert_one_lead_each(&self, leads: &[String], not_leads: &[String]) -> (u32, u32) {
        let crm = self.crm_by_call();
        let (mut pushes, mut conflicts) = (0, 0);
        for id in leads {
            let got = crm.get(id).map(Vec::as_slice).unwrap_or_default();
            assert_eq!(got.len(), 1, "call {id}: {} webhook-ids at the CRM, expected one: {got:?}", got.len());
            assert_eq!(got[0].created, 1, "call {id}: the CRM created {} leads, expected exactly one", got[0].created);
            assert_eq!(&got[0].call_id, id, "the lead's document names its call");
            pushes += got[0].pushes;
            conflicts += got[0].conflicts;
        }
        for id in not_leads {
            assert!(!crm.contains_key(id), "robocall {id} reached the CRM: {:?}", crm.get(id));
        }
        (pushes, conflicts)
    }

    async fn rows(&self, sql: &str) -> Vec<(String, String, i64)> {
        let db = self.data.join("analytics.sqlite");
        let sql = sql.to_owned();
        tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(db).unwrap();
            let mut stmt = c.prepare(&sql).unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// Analytics rows of the delivery stages (and the CRM breaker's transitions): outcome → count.
    async fn delivery_outcomes(&self) -> BTreeMap<String, i64> {
        let rows = self
            .rows(
                "SELECT stage, outcome, COUNT(*) FROM calls
                 WHERE stage IN ('on-analysis', 'on-crm-retry', 'crm-breaker') GROUP BY stage, outcome",
            )
            .await;
        let mut out = BTreeMap::new();
        for (stage, outcome, n) in rows {
            let key = if stage == "crm-breaker" { format!("breaker {outcome}") } else { outcome };
            *out.entry(key).or_default() += n;
        }
        out
    }

    async fn no_dead_letters(&self) {
        let routed = self.host.router.dead_letters().await.unwrap();
        assert!(routed.is_empty(), "the router dead-lettered events: {routed:?}");
        let kept = self.host.embedded.state.dead_letters(None, 100).await.unwrap();
        assert!(kept.is_empty(), "dead letters kept: {kept:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The duplicate storm.

/// What the storm's extra copies of routed events got back.
#[derive(Default)]
struct Storm {
    originals: AtomicU64,
    copies: AtomicU64,
    acked: AtomicU64,
    busy: AtomicU64,
    other: Mutex<Vec<(String, u16)>>,
    in_flight: AtomicI64,
}

fn rebuild(parts: &axum::http::request::Parts, body: &Bytes) -> Request<Body> {
    let mut req = Request::new(Body::from(body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    req
}

/// `inner` behind a layer that, for each request, also sends 1–4 copies of it (same headers and body) to `inner`
/// concurrently, about half of them after 1–300 ms, and answers with the original's answer.
fn storm(name: &'static str, inner: Router, rng: Arc<Mutex<StdRng>>, stats: Arc<Storm>) -> Router {
    let service = tower::service_fn(move |req: Request<Body>| {
        let (inner, rng, stats) = (inner.clone(), rng.clone(), stats.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let delays: Vec<u64> = {
                let mut rng = rng.lock().unwrap();
                let n = rng.random_range(1..=4);
                (0..n).map(|_| if rng.random_bool(0.5) { 0 } else { rng.random_range(1..=300) }).collect()
            };
            for delay in delays {
                let (copy, inner, stats) = (rebuild(&parts, &body), inner.clone(), stats.clone());
                stats.copies.fetch_add(1, Ordering::SeqCst);
                stats.in_flight.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let status = inner.oneshot(copy).await.map_or(0, |r| r.status().as_u16());
                    match status {
                        200 | 204 => stats.acked.fetch_add(1, Ordering::SeqCst),
                        // Another copy holds the claim: the router would deliver it again.
                        503 => stats.busy.fetch_add(1, Ordering::SeqCst),
                        s => {
                            stats.other.lock().unwrap().push((name.to_owned(), s));
                            0
                        }
                    };
                    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            stats.originals.fetch_add(1, Ordering::SeqCst);
            inner.oneshot(rebuild(&parts, &body)).await
        }
    });
    Router::new().fallback_service(service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_storm_every_webhook_and_event_2_to_5_times_one_lead_per_call() {
    let seed = seed();
    let c = Chain::start(&[], &[("CALLFLOW_SQLITE_SYNC", "normal")]).await;
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let stats = Arc::new(Storm::default());
    // Every routed function behind the storm (hosting a name again replaces it).
    let h = &c.host;
    let apps: [(&'static str, Router, usize); 5] = [
        ("on-audio-uploaded", on_audio_uploaded::app(h.audio.clone()), callflow_host::DELIVERY_CONCURRENCY),
        ("on-transcript", on_transcript::app(h.transcript.clone()), callflow_host::DELIVERY_CONCURRENCY),
        ("on-analysis", on_analysis::app(h.delivery.clone()), callflow_host::DELIVERY_CONCURRENCY),
        ("on-crm-retry", on_crm_retry::app(h.delivery.clone()), callflow_host::DELIVERY_CONCURRENCY),
        ("cleanup-scheduled", cleanup_scheduled::app(h.cleanup.clone()), 1),
    ];
    assert_eq!(apps.each_ref().map(|a| a.0), ROUTED);
    for (name, app, concurrency) in apps {
        h.router.host(name, storm(name, app, rng.clone(), stats.clone()), concurrency);
    }

    // 40 calls, each webhook 2–5 times: shuffled, each copy after 0–300 ms, and a quarter of the repeats held
    // back until every call has ended.
    const CALLS: usize = 40;
    let ids: Vec<String> = (0..CALLS).map(|n| chain::call_id(0x5701, n)).collect();
    let bodies: Vec<Bytes> =
        ids.iter().enumerate().map(|(n, id)| Bytes::from(chain::post_call(id, n).to_string())).collect();
    let (mut now, mut late) = (Vec::new(), Vec::new());
    {
        let mut rng = rng.lock().unwrap();
        for call in 0..CALLS {
            let copies = rng.random_range(2..=5);
            for copy in 0..copies {
                let delay = rng.random_range(0..=300u64);
                if copy > 0 && rng.random_bool(0.25) { late.push((call, delay)) } else { now.push((call, delay)) }
            }
        }
        now.shuffle(&mut *rng);
        late.shuffle(&mut *rng);
    }
    let sent = now.len() + late.len();
    let send = |plan: Vec<(usize, u64)>| {
        let (c, bodies) = (&c, &bodies);
        futures::future::join_all(plan.into_iter().map(move |(call, delay)| async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            (call, c.post_call(&bodies[call]).await)
        }))
    };
    // Two web forms, each sent three times with its sender's `webhook-id` (a sender retrying).
    let form = std::fs::read(repo().join("fixtures/forms/estimate-request.json")).unwrap();
    let forms = futures::future::join_all((0..6).map(|i| {
        let (c, form) = (&c, &form);
        async move { (i % 2, c.post_form(&format!("msg_storm_form_{}", i % 2), form).await) }
    }));
    let (answers, form_answers) = tokio::join!(send(now), forms);

    let mut fresh = vec![0; CALLS];
    for (call, (status, answer)) in &answers {
        assert_eq!(*status, 200, "a copy of {}'s webhook: {answer}", ids[*call]);
        assert_eq!(answer["call_id"], ids[*call].as_str());
        fresh[*call] += usize::from(answer["duplicate"] == false);
    }
    for (call, n) in fresh.iter().enumerate() {
        assert_eq!(*n, 1, "call {}: {n} of its copies were taken as new, expected exactly one", ids[call]);
    }
    let mut form_ids = vec![String::new(); 2];
    for (form, (status, answer)) in &form_answers {
        assert_eq!(*status, 200, "form {form}: {answer}");
        let id = answer["call_id"].as_str().unwrap().to_owned();
        assert!(form_ids[*form].is_empty() || form_ids[*form] == id, "form {form} got two call ids");
        form_ids[*form] = id;
    }
    assert_ne!(form_ids[0], form_ids[1]);

    c.wait_terminal("every call in its terminal state", &ids, Duration::from_secs(90)).await;
    until("the forms delivered", Duration::from_secs(60), || c.check_states(&form_ids, |_| CallState::Delivered)).await;
    // The held-back copies, now that every call has ended.
    for (call, (status, answer)) in send(late.clone()).await {
        assert_eq!(status, 200, "a late copy of {}'s webhook: {answer}", ids[call]);
        assert_eq!(answer["duplicate"], true, "a late copy of {} was taken as new: {answer}", ids[call]);
    }
    c.wait_quiet(Some(&stats), Duration::from_secs(60)).await;

    // Still every call where it ended, one lead per lead call and per form, nothing for robocalls.
    c.wait_terminal("every call still in its terminal state", &ids, Duration::from_secs(1)).await;
    let (leads, robocalls): (Vec<String>, Vec<String>) = ids.iter().cloned().partition(|id| is_lead(id));
    let all_leads: Vec<String> = leads.iter().chain(&form_ids).cloned().collect();
    let (pushes, conflicts) = c.assert_one_lead_each(&all_leads, &robocalls);
    assert_eq!((pushes as usize, conflicts), (all_leads.len(), 0), "one push per lead, none refused as a repeat");
    assert_eq!(c.vendors.crm_leads().len(), all_leads.len(), "no other lead at the CRM");
    // Each vendor asked once per call: every stage claims its work once per recording / transcript generation
    // (an exclusive claim: copies find it busy or done), and each call has one generation of each. (Gemini is
    // asked a second time only to correct an answer that does not validate; the fake's answers validate.)
    let speech = c.vendors.requests(Vendor::Speech).0;
    let gemini = c.vendors.requests(Vendor::Gemini).0;
    let callrail = c.vendors.requests(Vendor::CallRail).0;
    assert_eq!(speech, CALLS as u64, "Speech-to-Text asked {speech} times for {CALLS} recordings");
    assert_eq!(gemini, (CALLS + 2) as u64, "Gemini asked {gemini} times for {CALLS} calls and 2 forms");
    assert_eq!(callrail, 2 * CALLS as u64, "CallRail asked {callrail} times: recording.json and the audio per call");
    c.no_dead_letters().await;
    let other = stats.other.lock().unwrap().clone();
    assert!(other.is_empty(), "copies answered neither 2xx nor 503 (busy): {other:?}");
    let (originals, copies) = (stats.originals.load(Ordering::SeqCst), stats.copies.load(Ordering::SeqCst));
    assert!(copies >= originals, "every routed delivery had at least one copy");
    eprintln!(
        "SUMMARY duplicate storm (seed {seed}): {CALLS} calls ({} leads, {} robocalls) + 2 forms; {sent} webhooks \
         sent ({} late, after the calls ended) + 6 form posts; {originals} routed deliveries + {copies} copies \
         ({} acked, {} busy); {pushes} CRM pushes, {} leads, 0 repeats; Speech {speech}, Gemini {gemini}, CallRail \
         {callrail} requests; {:.1} s",
        leads.len(),
        robocalls.len(),
        late.len(),
        stats.acked.load(Ordering::SeqCst),
        stats.busy.load(Ordering::SeqCst),
        all_leads.len(),
        c.started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Vendor outages.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_outage_opens_the_breaker_and_every_lead_arrives_once_after() {
    // The breaker opens after 3 failures and probes every 2 s; a lead may fail many probes during the outage
    // without being given up (CALLFLOW_CRM_MAX_ATTEMPTS counts pushes that failed, not deferrals).
    let c = Chain::start(
        &[],
        &[
            ("CALLFLOW_SQLITE_SYNC", "normal"),
            ("CALLFLOW_CRM_BREAKER_FAILURES", "3"),
            ("CALLFLOW_CRM_BREAKER_SECS", "2"),
            ("CALLFLOW_CRM_MAX_ATTEMPTS", "30"),
        ],
    )
    .await;
    let breaker = || async { c.host.embedded.state.breaker(&c.tenant, "crm:webhook").await.unwrap() };

    // 1. The CRM answers 503 to everything.
    c.vendors.set(Vendor::Crm, Mode::Fail { status: 503, retry_after: None });
    let mut ids = c.send_calls(0xc401, 0, 12).await;
    until("the CRM breaker open", Duration::from_secs(60), || async {
        let b = breaker().await;
        b.open_until.is_some().then_some(()).ok_or(format!("breaker {b:?}"))
    })
    .await;
    let leads: Vec<String> = ids.iter().filter(|id| is_lead(id)).cloned().collect();
    // Every lead held back at least once by the open circuit.
    until("every lead deferred", Duration::from_secs(60), || async {
        let deferred = c.delivery_outcomes().await.get("deferred").copied().unwrap_or(0);
        (deferred >= leads.len() as i64).then_some(()).ok_or(format!("{deferred} deferrals"))
    })
    .await;

    // 2. Then rate-limited (429, Retry-After: 1) while more calls come in, until two probes have been refused.
    let refused_503 = c.vendors.requests(Vendor::Crm).1;
    c.vendors.set(Vendor::Crm, Mode::Fail { status: 429, retry_after: Some(1) });
    ids.extend(c.send_calls(0xc401, 12, 4).await);
    until("two probes answered 429", Duration::from_secs(60), || async {
        let refused = c.vendors.requests(Vendor::Crm).1 - refused_503;
        (refused >= 2).then_some(()).ok_or(format!("{refused} refused"))
    })
    .await;
    let (pushed, refused) = c.vendors.requests(Vendor::Crm);
    let during = c.delivery_outcomes().await;
    let deferred = during.get("deferred").copied().unwrap_or(0);
    let delivered_during: usize = c.crm_by_call().values().flatten().map(|l| l.created as usize).sum();
    assert_eq!(delivered_during, 0, "nothing can be created while the CRM refuses everything");
    assert_eq!(pushed, refused, "every push during the outage was refused");
    assert!(during.get("breaker opened").copied().unwrap_or(0) >= 1, "no breaker transition recorded: {during:?}");
    // The breaker's point: most delivery attempts never reached the CRM.
    assert!(
        deferred > pushed as i64,
        "{pushed} pushes reached the CRM during the outage and only {deferred} attempts were held back: {during:?}"
    );

    // 3. The CRM is back: every lead arrives, once.
    let back = Instant::now();
    c.vendors.set(Vendor::Crm, Mode::Up);
    c.wait_terminal("every lead delivered after the outage", &ids, Duration::from_secs(60)).await;
    let recovery = back.elapsed();
    c.wait_quiet(None, Duration::from_secs(30)).await;
    let leads: Vec<String> = ids.iter().filter(|id| is_lead(id)).cloned().collect();
    let robocalls: Vec<String> = ids.iter().filter(|id| !is_lead(id)).cloned().collect();
    let (pushes, conflicts) = c.assert_one_lead_each(&leads, &robocalls);
    assert_eq!(conflicts, 0, "no lead pushed again after it was created");
    let b = breaker().await;
    assert_eq!((b.open_until, b.consecutive_failures), (None, 0), "the breaker closed again: {b:?}");
    let after = c.delivery_outcomes().await;
    assert!(after.get("breaker closed").copied().unwrap_or(0) >= 1, "{after:?}");
    c.no_dead_letters().await;
    eprintln!(
        "SUMMARY CRM outage: {} calls ({} leads); during 503 then 429: {pushed} pushes reached the CRM (all refused), \
         {deferred} deliveries deferred by the open breaker ({} openings); after recovery every lead created once \
         within {:.1} s ({pushes} pushes in all, 0 repeats); {:.1} s",
        ids.len(),
        leads.len(),
        during.get("breaker opened").copied().unwrap_or(0),
        recovery.as_secs_f64(),
        c.started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_outage_is_retried_until_it_recovers_and_dead_lettered_past_the_budget() {
    // recording-finalized gets 8 deliveries (1–2 s apart); on-audio-uploaded's own budget follows the trigger's.
    const ATTEMPTS: u32 = 8;
    let c = Chain::start(&[("recording-finalized", ATTEMPTS)], &[("CALLFLOW_SQLITE_SYNC", "normal")]).await;

    // 1. Speech-to-Text answers 500 until every recording has been tried about twice, then recovers.
    c.vendors.set(Vendor::Speech, Mode::Fail { status: 500, retry_after: None });
    let first = c.send_calls(0x5e01, 0, 6).await;
    until("each recording tried about twice", Duration::from_secs(60), || async {
        let (asked, failed) = c.vendors.requests(Vendor::Speech);
        c.check_states(&first, |_| CallState::RecordingStored).await?;
        (failed >= 2 * first.len() as u64).then_some(()).ok_or(format!("{asked} asked, {failed} failed"))
    })
    .await;
    let failed_first = c.vendors.requests(Vendor::Speech).1;
    c.vendors.set(Vendor::Speech, Mode::Up);
    let back = Instant::now();
    c.wait_terminal("the calls transcribed after the outage", &first, Duration::from_secs(60)).await;
    let recovery = back.elapsed();
    let leads: Vec<String> = first.iter().filter(|id| is_lead(id)).cloned().collect();
    let robocalls: Vec<String> = first.iter().filter(|id| !is_lead(id)).cloned().collect();
    c.assert_one_lead_each(&leads, &robocalls);
    assert_eq!(c.vendors.requests(Vendor::Speech).0 - failed_first, first.len() as u64, "one success per call");

    // 2. An outage longer than the budget: each call is tried ATTEMPTS times, then dead-lettered by the stage
    //    (before the router would give up on the event), with a dead letter naming the failure.
    let before = c.vendors.requests(Vendor::Speech).0;
    c.vendors.set(Vendor::Speech, Mode::Fail { status: 500, retry_after: None });
    let second = c.send_calls(0x5e01, 6, 3).await;
    let t2 = Instant::now();
    until("the calls dead-lettered", Duration::from_secs(60), || c.check_states(&second, |_| CallState::DeadLettered))
        .await;
    let gave_up = t2.elapsed();
    c.wait_quiet(None, Duration::from_secs(30)).await;
    let asked = c.vendors.requests(Vendor::Speech).0 - before;
    assert_eq!(asked, u64::from(ATTEMPTS) * second.len() as u64, "each call asked exactly {ATTEMPTS} times");
    for id in &second {
        let reason = c.call(id).await.unwrap().state_reason.unwrap_or_default();
        assert!(
            reason.contains("transcription") && reason.contains(&format!("after {ATTEMPTS} attempts")),
            "{id}: {reason}"
        );
    }
    let kept = c.host.embedded.state.dead_letters(None, 100).await.unwrap();
    let mut lettered: Vec<&str> = kept.iter().map(|d| d.call_id.as_str()).collect();
    lettered.sort_unstable();
    let mut want: Vec<&str> = second.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(lettered, want, "one dead letter per call given up: {kept:?}");
    let routed = c.host.router.dead_letters().await.unwrap();
    assert!(routed.is_empty(), "the stage acknowledges its last attempt: the router keeps no event: {routed:?}");
    assert!(c.crm_by_call().keys().all(|k| !second.contains(k)), "a dead-lettered call reached the CRM");
    c.vendors.set(Vendor::Speech, Mode::Up);
    eprintln!(
        "SUMMARY Speech outage: {} calls transcribed after {failed_first} failed requests, each delivered once \
         within {:.1} s of recovery; {} calls through an outage longer than the budget dead-lettered after \
         {ATTEMPTS} attempts each ({asked} requests, {:.1} s); Hang not covered (no Speech client timeout \
         to configure); {:.1} s",
        first.len(),
        recovery.as_secs_f64(),
        second.len(),
        gave_up.as_secs_f64(),
        c.started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_outage_falls_back_to_the_rules_and_each_lead_arrives_once() {
    let c = Chain::start(
        &[],
        &[
            ("CALLFLOW_SQLITE_SYNC", "normal"),
            ("CALLFLOW_GEMINI_BREAKER_FAILURES", "3"),
            ("CALLFLOW_GEMINI_BREAKER_SECS", "2"),
            ("CALLFLOW_GEMINI_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let breaker = || *c.host.transcript.breaker.lock().unwrap();
    let half_open = || async {
        let state = breaker().state(chrono::Utc::now());
        (state == "half_open").then_some(()).ok_or(format!("breaker {state}"))
    };
    let mut all = Vec::new();
    let mut n = 0;
    let mut phase = async |mode: Mode, count: usize| -> Vec<String> {
        c.vendors.set(Vendor::Gemini, mode.clone());
        let ids = c.send_calls(0x6e01, n, count).await;
        n += count;
        c.wait_terminal(&format!("the calls analysed while Gemini is {mode:?}"), &ids, Duration::from_secs(60)).await;
        ids
    };
    let analyses = async |ids: &[String]| {
        let mut out = Vec::new();
        for id in ids {
            let a = c.host.embedded.state.analysis(&c.tenant, &CallId::parse(id).unwrap()).await.unwrap();
            out.push((id.clone(), a.expect("analysed")));
        }
        out
    };

    // 1. Gemini answers 503: the rules stand in, and after 3 failures the circuit opens.
    let down = phase(Mode::Fail { status: 503, retry_after: None }, 6).await;
    for (id, a) in analyses(&down).await {
        assert_eq!(a.analyzer, "rules/1", "{id}");
        assert!(a.fallback_reason.as_deref().is_some_and(|r| r.starts_with("gemini")), "{id}: {:?}", a.fallback_reason);
    }
    assert!(breaker().open_until.is_some(), "the Gemini circuit opened: {:?}", breaker());
    let asked_down = c.vendors.requests(Vendor::Gemini).0;
    all.extend(down);

    // 2. Garbage (200 with a body that is not generateContent's): after the cool-down the probe gets it, the
    //    rules stand in again and the circuit opens again.
    until("the circuit half-open", Duration::from_secs(10), half_open).await;
    let garbage = phase(Mode::Garbage, 3).await;
    assert!(c.vendors.requests(Vendor::Gemini).1 > asked_down, "the probe reached Gemini and got garbage");
    for (id, a) in analyses(&garbage).await {
        assert_eq!(a.analyzer, "rules/1", "{id}: {:?}", a.fallback_reason);
    }
    all.extend(garbage);

    // 3. No answer at all: the 1 s client timeout ends the probe, the rules stand in.
    until("the circuit half-open", Duration::from_secs(10), half_open).await;
    let before = c.vendors.requests(Vendor::Gemini).0;
    let hang = phase(Mode::Hang, 2).await;
    assert!(c.vendors.requests(Vendor::Gemini).0 > before, "the probe reached the hanging Gemini");
    for (id, a) in analyses(&hang).await {
        assert_eq!(a.analyzer, "rules/1", "{id}: {:?}", a.fallback_reason);
    }
    all.extend(hang);

    // 4. Gemini is back: the probe (one call alone) closes the circuit; the calls after it are Gemini's.
    until("the circuit half-open", Duration::from_secs(10), half_open).await;
    let probe = phase(Mode::Up, 1).await;
    assert_eq!(breaker().open_until, None, "the successful probe closed the circuit");
    let up = phase(Mode::Up, 4).await;
    for (id, a) in analyses(&probe).await.into_iter().chain(analyses(&up).await) {
        assert!(a.analyzer.starts_with("gemini/"), "{id}: {} ({:?})", a.analyzer, a.fallback_reason);
        assert_eq!(a.fallback_reason, None, "{id}");
    }
    assert_eq!(breaker().open_until, None, "the circuit stays closed once Gemini answers: {:?}", breaker());
    all.extend(probe);
    all.extend(up);

    c.wait_quiet(None, Duration::from_secs(30)).await;
    let leads: Vec<String> = all.iter().filter(|id| is_lead(id)).cloned().collect();
    let robocalls: Vec<String> = all.iter().filter(|id| !is_lead(id)).cloned().collect();
    let (pushes, conflicts) = c.assert_one_lead_each(&leads, &robocalls);
    assert_eq!((pushes as usize, conflicts), (leads.len(), 0));
    // The lead the CRM received is the analysis stored: the rules' score while Gemini was out.
    let crm = c.crm_by_call();
    for (id, a) in analyses(&leads).await {
        let sent = crm[&id][0].lead_score;
        assert_eq!(sent, Some(i64::from(a.findings.lead_score)), "{id}: the CRM got another score ({})", a.analyzer);
    }
    c.no_dead_letters().await;
    let (asked, failed) = c.vendors.requests(Vendor::Gemini);
    let by_gemini = analyses(&all).await.iter().filter(|(_, a)| a.analyzer.starts_with("gemini/")).count();
    eprintln!(
        "SUMMARY Gemini outage: {} calls through 503, garbage and no answer, then recovery: {} analysed by the rules \
         (fallback), {by_gemini} by Gemini; Gemini asked {asked} times ({failed} failed on purpose; the open circuit \
         spared the rest); {} leads, each created once; {:.1} s",
        all.len(),
        all.len() - by_gemini,
        leads.len(),
        c.started.elapsed().as_secs_f64()
    );
}
