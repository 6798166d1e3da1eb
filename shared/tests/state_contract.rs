//! The state store's contract, written against `dyn StateStore` so every adapter (SQLite now, Spanner on its
//! emulator next) runs the same checks: idempotent intake, one winner under concurrency, conditional
//! transitions that refuse to move a call backwards, and leases that make completion safe.

use std::sync::Arc;
use std::time::Duration;

use callflow::adapters::spanner::SpannerStateStore;
use callflow::adapters::sqlite::{Durability, SqliteStateStore};
use callflow::domain::breaker::{Admit, Breaker, BreakerPolicy};
use callflow::domain::crm::CrmDelivery;
use callflow::domain::intake::{EventKind, IntakeEvent, IntakeOutcome};
use callflow::domain::work::{Completion, NewWork, Transition, WorkKind};
use callflow::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{Claim, RefusedEvent, StateStore};
use chrono::{DateTime, Utc};

fn event(tenant: &str, call: &str, recording: bool) -> IntakeEvent {
    IntakeEvent {
        tenant_id: TenantId::parse(tenant).unwrap(),
        call_id: CallId::parse(call).unwrap(),
        source: CallSource::Callrail,
        kind: EventKind::PostCall,
        dedupe_key: "post_call".into(),
        payload_sha256: "00".into(),
        payload_bytes: 10,
        lead: LeadDetails {
            answered: Some(true),
            recording_url: recording.then(|| "https://rec".to_owned()),
            ..LeadDetails::default()
        },
        received_at: Utc::now(),
    }
}

async fn intake_is_idempotent_and_tenant_scoped(store: Arc<dyn StateStore>) {
    let first = store.record_intake(event("acme", "CAL1", true)).await.unwrap();
    assert_eq!((first.outcome, first.call.state), (IntakeOutcome::Created, CallState::Received));
    let again = store.record_intake(event("acme", "CAL1", true)).await.unwrap();
    assert_eq!(again.outcome, IntakeOutcome::Duplicate);
    // The same call id under another tenant is another call.
    let other = store.record_intake(event("bayside", "CAL1", false)).await.unwrap();
    assert_eq!((other.outcome, other.call.state), (IntakeOutcome::Created, CallState::Skipped));
    let acme = TenantId::parse("acme").unwrap();
    let call = store.call(&acme, &CallId::parse("CAL1").unwrap()).await.unwrap().unwrap();
    assert_eq!(call.state, CallState::Received);
    assert!(store.call(&acme, &CallId::parse("CAL2").unwrap()).await.unwrap().is_none());
}

async fn concurrent_intake_has_one_winner(store: Arc<dyn StateStore>) {
    let results = futures::future::join_all((0..50).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.record_intake(event("acme", "CALrace", true)).await.unwrap().outcome })
    }))
    .await;
    let created = results.iter().filter(|r| *r.as_ref().unwrap() == IntakeOutcome::Created).count();
    assert_eq!(created, 1);
    let claimed = store.claim_work(&[WorkKind::FetchRecording], 100, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1, "one fetch for fifty deliveries");
}

async fn claims_are_exclusive_and_leases_guard_completion(store: Arc<dyn StateStore>) {
    for i in 0..20 {
        store.record_intake(event("acme", &format!("CALlease{i}"), true)).await.unwrap();
    }
    let kinds = [WorkKind::FetchRecording];
    let (a, b) = tokio::join!(
        store.claim_work(&kinds, 15, Duration::from_secs(60)),
        store.claim_work(&kinds, 15, Duration::from_secs(60))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 20);
    assert!(a.iter().all(|x| b.iter().all(|y| x.id != y.id)), "an item was claimed twice");
    assert!(store.claim_work(&kinds, 10, Duration::from_secs(60)).await.unwrap().is_empty());

    // A lease that ran out: the item is claimed again, and the old holder can no longer complete it.
    store.record_intake(event("acme", "CALexpire", true)).await.unwrap();
    let old = store.claim_work(&kinds, 1, Duration::from_millis(1)).await.unwrap().pop().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = store.claim_work(&kinds, 1, Duration::from_secs(60)).await.unwrap().pop().unwrap();
    assert_eq!((old.id, new.attempts), (new.id, 2));
    assert!(!store.complete_work(&old, Completion::default()).await.unwrap(), "stale lease completed");
    assert!(store.complete_work(&new, Completion::default()).await.unwrap());
}

async fn transitions_never_move_backwards(store: Arc<dyn StateStore>) {
    store.record_intake(event("acme", "CALfwd", true)).await.unwrap();
    let (acme, call) = (TenantId::parse("acme").unwrap(), CallId::parse("CALfwd").unwrap());
    let item = store.claim_work(&[WorkKind::FetchRecording], 1, Duration::from_secs(60)).await.unwrap().pop().unwrap();
    let to = |state| Completion {
        transition: Some(Transition { to: state, reason: None, recording_object: Some("recordings/x".into()) }),
        ..Completion::default()
    };
    // Moving forward works, and the completion can queue follow-up work in the same transaction.
    let forward = Completion {
        follow_up: vec![NewWork { kind: WorkKind::FetchRecording, payload: serde_json::json!({}) }],
        ..to(CallState::Transcribed)
    };
    assert!(store.complete_work(&item, forward).await.unwrap());
    assert_eq!(store.call(&acme, &call).await.unwrap().unwrap().state, CallState::Transcribed);
    // A late stage asking for an earlier state is refused; the work item is still consumed.
    let late = store.claim_work(&[WorkKind::FetchRecording], 1, Duration::from_secs(60)).await.unwrap().pop().unwrap();
    assert!(store.complete_work(&late, to(CallState::RecordingStored)).await.unwrap());
    assert_eq!(store.call(&acme, &call).await.unwrap().unwrap().state, CallState::Transcribed);
    // A late duplicate webhook does not move it either.
    store
        .record_intake(IntakeEvent { dedupe_key: "call_modified:1".into(), ..event("acme", "CALfwd", true) })
        .await
        .unwrap();
    let c = store.call(&acme, &call).await.unwrap().unwrap();
    assert_eq!((c.state, c.recording_object.as_deref()), (CallState::Transcribed, Some("recordings/x")));
    assert!(store.claim_work(&[WorkKind::FetchRecording], 1, Duration::from_secs(60)).await.unwrap().is_empty());
}

async fn retries_wait_until_due(store: Arc<dyn StateStore>) {
    store.record_intake(event("acme", "CALretry", true)).await.unwrap();
    let kinds = [WorkKind::FetchRecording];
    let item = store.claim_work(&kinds, 1, Duration::from_secs(60)).await.unwrap().pop().unwrap();
    let later = Utc::now() + chrono::Duration::milliseconds(80);
    store.retry_work(&item, later, "429").await.unwrap();
    assert!(store.claim_work(&kinds, 1, Duration::from_secs(60)).await.unwrap().is_empty());
    let due = store.next_due(&kinds).await.unwrap().unwrap();
    assert!((due - later).num_milliseconds().abs() <= 1, "{due} vs {later}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.claim_work(&kinds, 1, Duration::from_secs(60)).await.unwrap().len(), 1);
}

/// Event-driven stages claim a unit of work per key: one holder at a time, released claims and lapsed leases pass
/// to the next asker, a stale holder cannot finish, and a finished key is done for every later delivery.
async fn stage_claims_are_once_per_key(store: Arc<dyn StateStore>) {
    let (tenant, call) = (TenantId::parse("acme").unwrap(), CallId::parse("CALstage").unwrap());
    store.record_intake(event("acme", "CALstage", true)).await.unwrap();
    let key = "transcribe:1700000000000001";
    let long = Duration::from_secs(60);
    let Claim::Claimed(first) = store.claim_stage(&tenant, &call, key, long).await.unwrap() else {
        panic!("the first asker claims")
    };
    assert_eq!(first.attempts, 1);
    assert!(matches!(store.claim_stage(&tenant, &call, key, long).await.unwrap(), Claim::Busy { .. }));

    // Released after a failure: the next delivery claims it at once.
    store.release_stage(&first, "speech: 503").await.unwrap();
    let Claim::Claimed(second) = store.claim_stage(&tenant, &call, key, long).await.unwrap() else {
        panic!("a released claim is claimable")
    };
    assert_eq!(second.attempts, 2);
    let done = Completion {
        transition: Some(Transition { to: CallState::RecordingStored, reason: None, recording_object: None }),
        ..Completion::default()
    };
    assert!(!store.finish_stage(&first, done.clone()).await.unwrap(), "a released holder cannot finish");
    assert!(store.finish_stage(&second, done.clone()).await.unwrap());
    assert_eq!(store.call(&tenant, &call).await.unwrap().unwrap().state, CallState::RecordingStored);
    assert_eq!(store.claim_stage(&tenant, &call, key, long).await.unwrap(), Claim::Done);
    assert!(!store.finish_stage(&second, done).await.unwrap(), "finishing twice changes nothing");

    // A lapsed lease passes the claim on; its old holder can no longer finish.
    let other = "transcribe:1700000000000002";
    let Claim::Claimed(lapsed) = store.claim_stage(&tenant, &call, other, Duration::from_millis(1)).await.unwrap()
    else {
        panic!("another key is claimable")
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let Claim::Claimed(next) = store.claim_stage(&tenant, &call, other, long).await.unwrap() else {
        panic!("a lapsed lease is claimable")
    };
    assert!(!store.finish_stage(&lapsed, Completion::default()).await.unwrap());
    assert!(store.finish_stage(&next, Completion::default()).await.unwrap());

    // Concurrent deliveries of one event: one claim.
    let results = futures::future::join_all((0..10).map(|_| {
        let (store, tenant, call) = (store.clone(), tenant.clone(), call.clone());
        tokio::spawn(async move { store.claim_stage(&tenant, &call, "transcribe:race", long).await.unwrap() })
    }))
    .await;
    let claimed = results.iter().filter(|r| matches!(r.as_ref().unwrap(), Claim::Claimed(_))).count();
    assert_eq!(claimed, 1);
}

async fn dead_letters_keep_refused_events_once(store: Arc<dyn StateStore>) {
    let refused = |key: &str, tenant: &str| RefusedEvent {
        stage: "on-audio-uploaded".into(),
        tenant_id: tenant.into(),
        call_id: "CALnope".into(),
        event_key: key.into(),
        event: serde_json::json!({"type": "google.cloud.storage.object.v1.finalized", "data": {"name": "x"}}),
        reason: "no such call".into(),
    };
    assert!(store.dead_letter_event(refused("recordings/acme/CALnope.mp3#1", "acme")).await.unwrap());
    assert!(!store.dead_letter_event(refused("recordings/acme/CALnope.mp3#1", "acme")).await.unwrap(), "kept once");
    // Untrusted ids: empty, or longer than any key column allows.
    assert!(store.dead_letter_event(refused("k2", "")).await.unwrap());
    assert!(store.dead_letter_event(refused("k3", &"t".repeat(300))).await.unwrap());
    // A stage that gives up on a call dead-letters it with its key.
    let (tenant, call) = (TenantId::parse("acme").unwrap(), CallId::parse("CALgiveup").unwrap());
    store.record_intake(event("acme", "CALgiveup", true)).await.unwrap();
    let Claim::Claimed(claim) =
        store.claim_stage(&tenant, &call, "transcribe:7", Duration::from_secs(60)).await.unwrap()
    else {
        panic!("claimable")
    };
    let give_up = Completion {
        transition: Some(Transition {
            to: CallState::DeadLettered,
            reason: Some("speech failed".into()),
            recording_object: None,
        }),
        dead_letter: Some("speech failed 5 times".into()),
        ..Completion::default()
    };
    assert!(store.finish_stage(&claim, give_up).await.unwrap());

    let all = store.dead_letters(None, 100).await.unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    let acme = store.dead_letters(Some("acme"), 100).await.unwrap();
    assert_eq!(acme.len(), 2);
    let event = acme.iter().find(|d| d.kind == "event:on-audio-uploaded").unwrap();
    assert_eq!(event.call_id, "CALnope");
    assert_eq!(event.reason, "no such call");
    assert_eq!(event.payload["event_key"], "recordings/acme/CALnope.mp3#1");
    assert_eq!(event.payload["event"]["data"]["name"], "x");
    let stage = acme.iter().find(|d| d.kind == "transcribe").unwrap();
    assert_eq!((stage.call_id.as_str(), stage.attempts), ("CALgiveup", 1));
    assert_eq!(stage.reason, "speech failed 5 times");
    assert_eq!(store.dead_letters(None, 1).await.unwrap().len(), 1, "the limit holds");
}

async fn analyses_are_stored_with_the_transition(store: Arc<dyn StateStore>) {
    use callflow::domain::analysis::{
        ANALYSIS_SCHEMA_VERSION, Analysis, Budget, CallerDetails, Findings, Intent, ProjectType, Sentiment, Urgency,
        Usage,
    };
    let (tenant, call) = (TenantId::parse("acme").unwrap(), CallId::parse("CALanalysed").unwrap());
    store.record_intake(event("acme", "CALanalysed", true)).await.unwrap();
    assert_eq!(store.analysis(&tenant, &call).await.unwrap(), None);
    let analysis = Analysis {
        schema_version: ANALYSIS_SCHEMA_VERSION,
        analyzer: "rules/1".into(),
        fallback_reason: Some("gemini: 503".into()),
        findings: Findings {
            intent: Intent::NewLead,
            project_type: ProjectType::Kitchen,
            lead_score: 81,
            score_reasons: vec!["wants an estimate".into()],
            urgency: Urgency::Soon,
            budget: Budget::High,
            sentiment: Sentiment::Positive,
            spam_likelihood: 2,
            summary: "Maria asked about a kitchen project.".into(),
            caller: CallerDetails { name: Some("Maria".into()), zip: Some("75024".into()), ..Default::default() },
        },
        usage: Usage { prompt_tokens: 0, output_tokens: 0, cost_usd: 0.0 },
        redactions: 2,
    };
    let Claim::Claimed(claim) = store.claim_stage(&tenant, &call, "analyse:9", Duration::from_secs(60)).await.unwrap()
    else {
        panic!("claimable")
    };
    let done = Completion {
        transition: Some(Transition { to: CallState::Analysed, reason: None, recording_object: None }),
        analysis: Some(analysis.clone()),
        ..Completion::default()
    };
    assert!(store.finish_stage(&claim, done).await.unwrap());
    assert_eq!(store.call(&tenant, &call).await.unwrap().unwrap().state, CallState::Analysed);
    assert_eq!(store.analysis(&tenant, &call).await.unwrap(), Some(analysis));
    assert_eq!(store.analysis(&TenantId::parse("globex").unwrap(), &call).await.unwrap(), None, "tenant-scoped");
}

fn crm_delivery(record_id: &str) -> CrmDelivery {
    CrmDelivery {
        provider: "hubspot".into(),
        record_id: record_id.into(),
        created: true,
        attempts: 2,
        review: true,
        // Whole microseconds: what both stores keep.
        delivered_at: DateTime::from_timestamp_micros(1_700_000_123_456_789).unwrap(),
    }
}

/// A delivery is stored by the completion that moves the call to `delivered`, in its transaction; a completion
/// that lost its lease stores nothing.
async fn deliveries_are_stored_with_the_transition(store: Arc<dyn StateStore>) {
    let (tenant, call) = (TenantId::parse("acme").unwrap(), CallId::parse("CALdelivered").unwrap());
    store.record_intake(event("acme", "CALdelivered", true)).await.unwrap();
    assert_eq!(store.delivery(&tenant, &call).await.unwrap(), None);
    let delivered = |record_id: &str| Completion {
        transition: Some(Transition { to: CallState::Delivered, reason: None, recording_object: None }),
        delivery: Some(crm_delivery(record_id)),
        ..Completion::default()
    };

    // A holder whose lease lapsed (another took the claim) stores nothing and moves nothing.
    let key = "deliver:crm";
    let Claim::Claimed(stale) = store.claim_stage(&tenant, &call, key, Duration::from_millis(1)).await.unwrap() else {
        panic!("claimable")
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let Claim::Claimed(fresh) = store.claim_stage(&tenant, &call, key, Duration::from_secs(60)).await.unwrap() else {
        panic!("a lapsed lease is claimable")
    };
    assert!(!store.finish_stage(&stale, delivered("stale-record")).await.unwrap(), "a stale lease finished");
    assert_eq!(store.delivery(&tenant, &call).await.unwrap(), None, "a stale lease stored a delivery");
    assert_eq!(store.call(&tenant, &call).await.unwrap().unwrap().state, CallState::Received);

    assert!(store.finish_stage(&fresh, delivered("0061234")).await.unwrap());
    assert_eq!(store.call(&tenant, &call).await.unwrap().unwrap().state, CallState::Delivered);
    assert_eq!(store.delivery(&tenant, &call).await.unwrap(), Some(crm_delivery("0061234")));
    assert_eq!(store.delivery(&TenantId::parse("globex").unwrap(), &call).await.unwrap(), None, "tenant-scoped");

    // Outbox work completes the same way: a stale lease stores nothing.
    let kinds = [WorkKind::FetchRecording];
    for queued in store.claim_work(&kinds, 10, Duration::from_secs(60)).await.unwrap() {
        assert!(store.complete_work(&queued, Completion::default()).await.unwrap());
    }
    let other = CallId::parse("CALdelivered2").unwrap();
    store.record_intake(event("acme", "CALdelivered2", true)).await.unwrap();
    let old = store.claim_work(&kinds, 1, Duration::from_millis(1)).await.unwrap().pop().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = store.claim_work(&kinds, 1, Duration::from_secs(60)).await.unwrap().pop().unwrap();
    assert_eq!(old.call_id, other);
    assert!(!store.complete_work(&old, delivered("stale-work")).await.unwrap());
    assert_eq!(store.delivery(&tenant, &other).await.unwrap(), None, "a stale lease stored a delivery");
    assert!(store.complete_work(&new, delivered("0065678")).await.unwrap());
    assert_eq!(store.delivery(&tenant, &other).await.unwrap(), Some(crm_delivery("0065678")));
    assert_eq!(store.call(&tenant, &other).await.unwrap().unwrap().state, CallState::Delivered);
}

/// A breaker lives in the store, per tenant and key, so every instance shares one circuit: `again` is a second
/// handle on the same file or database (another instance).
async fn breakers_are_shared_and_survive_instances(store: Arc<dyn StateStore>, again: Arc<dyn StateStore>) {
    let (acme, key) = (TenantId::parse("acme").unwrap(), "crm:hubspot");
    let policy = BreakerPolicy { threshold: 3, cool_down_secs: 60 };
    let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let at = move |secs: i64| t0 + chrono::Duration::seconds(secs);
    assert_eq!(store.breaker(&acme, key).await.unwrap(), Breaker::default());
    assert_eq!(store.breaker_admit(&acme, key, t0, &policy).await.unwrap(), Admit::Pass);

    // Threshold failures open it, whichever instance saw them.
    assert_eq!(store.breaker_record(&acme, key, false, t0, &policy).await.unwrap(), None);
    assert_eq!(again.breaker_record(&acme, key, false, t0, &policy).await.unwrap(), None);
    assert_eq!(store.breaker_record(&acme, key, false, t0, &policy).await.unwrap(), Some("opened"));
    let open = Breaker { consecutive_failures: 3, open_until: Some(at(60)), probe_until: None };
    assert_eq!(store.breaker(&acme, key).await.unwrap(), open);

    // Survives across instances: a fresh handle sees it open and rejects during the cool-down.
    assert_eq!(again.breaker(&acme, key).await.unwrap(), open);
    assert_eq!(again.breaker_admit(&acme, key, at(30), &policy).await.unwrap(), Admit::Reject);
    assert_eq!(store.breaker_admit(&acme, key, at(59), &policy).await.unwrap(), Admit::Reject);
    // Tenant- and key-scoped.
    let globex = TenantId::parse("globex").unwrap();
    assert_eq!(store.breaker_admit(&globex, key, at(30), &policy).await.unwrap(), Admit::Pass);
    assert_eq!(store.breaker_admit(&acme, "crm:salesforce", at(30), &policy).await.unwrap(), Admit::Pass);

    // After the cool-down, concurrent admits on both instances: exactly one probe.
    let admits = futures::future::join_all((0..8).map(|i| {
        let (s, acme) = (if i % 2 == 0 { store.clone() } else { again.clone() }, acme.clone());
        tokio::spawn(async move { s.breaker_admit(&acme, key, at(61), &policy).await.unwrap() })
    }))
    .await;
    let admits: Vec<Admit> = admits.into_iter().map(Result::unwrap).collect();
    assert_eq!(admits.iter().filter(|a| **a == Admit::Probe).count(), 1, "{admits:?}");
    assert!(admits.iter().all(|a| matches!(a, Admit::Probe | Admit::Reject)), "{admits:?}");
    assert_eq!(store.breaker(&acme, key).await.unwrap().probe_until, Some(at(121)));

    // A failed probe reopens it for another cool-down.
    assert_eq!(again.breaker_record(&acme, key, false, at(62), &policy).await.unwrap(), Some("opened"));
    assert_eq!(
        store.breaker(&acme, key).await.unwrap(),
        Breaker { consecutive_failures: 4, open_until: Some(at(122)), probe_until: None }
    );
    assert_eq!(store.breaker_admit(&acme, key, at(100), &policy).await.unwrap(), Admit::Reject);
    assert_eq!(store.breaker_admit(&acme, key, at(123), &policy).await.unwrap(), Admit::Probe);
    assert_eq!(again.breaker_admit(&acme, key, at(124), &policy).await.unwrap(), Admit::Reject, "a probe is out");

    // A successful probe closes it, for every instance.
    assert_eq!(store.breaker_record(&acme, key, true, at(125), &policy).await.unwrap(), Some("closed"));
    assert_eq!(again.breaker(&acme, key).await.unwrap(), Breaker::default());
    assert_eq!(again.breaker_admit(&acme, key, at(126), &policy).await.unwrap(), Admit::Pass);
    assert_eq!(again.breaker_record(&acme, key, true, at(126), &policy).await.unwrap(), None);
}

/// A dead letter is replayed once: it is marked, its dead-lettered call revived and the follow-up work queued in
/// one transaction; a second replay (or an unknown id) changes nothing.
async fn dead_letters_are_replayed_once(store: Arc<dyn StateStore>) {
    let (tenant, call) = (TenantId::parse("acme").unwrap(), CallId::parse("CALreplay").unwrap());
    store.record_intake(event("acme", "CALreplay", true)).await.unwrap();
    let Claim::Claimed(claim) =
        store.claim_stage(&tenant, &call, "deliver:crm", Duration::from_secs(60)).await.unwrap()
    else {
        panic!("claimable")
    };
    let give_up = Completion {
        transition: Some(Transition {
            to: CallState::DeadLettered,
            reason: Some("crm refused".into()),
            recording_object: None,
        }),
        dead_letter: Some("hubspot: 400 invalid property".into()),
        ..Completion::default()
    };
    assert!(store.finish_stage(&claim, give_up).await.unwrap());
    let refused = RefusedEvent {
        stage: "on-transcript".into(),
        tenant_id: "acme".into(),
        call_id: "CALgone".into(),
        event_key: "transcripts/acme/CALgone.json#1".into(),
        event: serde_json::json!({"type": "finalized"}),
        reason: "no such call".into(),
    };
    assert!(store.dead_letter_event(refused).await.unwrap());

    let letters = store.dead_letters(Some("acme"), 10).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|d| !d.id.is_empty() && d.replayed_at.is_none()), "{letters:?}");
    assert_ne!(letters[0].id, letters[1].id, "ids are distinct");
    let letter = letters.iter().find(|d| d.call_id == "CALreplay").unwrap().clone();
    let gone = letters.iter().find(|d| d.call_id == "CALgone").unwrap().clone();

    assert!(!store.replay_dead_letter("999999", Some(CallState::Analysed), vec![]).await.unwrap(), "unknown id");
    assert!(!store.replay_dead_letter("not-an-id", Some(CallState::Analysed), vec![]).await.unwrap());
    assert!(!store.replay_dead_letter("", None, vec![]).await.unwrap());

    let follow_up = vec![NewWork { kind: WorkKind::Publish, payload: serde_json::json!({"replay": letter.id}) }];
    let before = Utc::now() - chrono::Duration::seconds(1);
    assert!(store.replay_dead_letter(&letter.id, Some(CallState::Analysed), follow_up.clone()).await.unwrap());
    let revived = store.call(&tenant, &call).await.unwrap().unwrap();
    assert_eq!((revived.state, revived.state_reason), (CallState::Analysed, None));
    let work = store.claim_work(&[WorkKind::Publish], 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(work.len(), 1, "{work:?}");
    assert_eq!((&work[0].tenant_id, &work[0].call_id), (&tenant, &call));
    assert_eq!(work[0].payload, serde_json::json!({"replay": letter.id}));
    assert!(store.complete_work(&work[0], Completion::default()).await.unwrap());

    // Once only: a second replay is refused and queues nothing.
    assert!(!store.replay_dead_letter(&letter.id, Some(CallState::Analysed), follow_up).await.unwrap());
    assert!(store.claim_work(&[WorkKind::Publish], 10, Duration::from_secs(60)).await.unwrap().is_empty());

    // A replay revives only a dead-lettered call: the refused event's call does not exist.
    assert!(store.replay_dead_letter(&gone.id, Some(CallState::Analysed), vec![]).await.unwrap());
    assert!(store.call(&tenant, &CallId::parse("CALgone").unwrap()).await.unwrap().is_none());

    // The listing shows both as replayed, with the same ids; nothing else changed.
    let after = store.dead_letters(Some("acme"), 10).await.unwrap();
    assert_eq!(after.len(), 2);
    for d in &after {
        let was = letters.iter().find(|l| l.id == d.id).expect("ids are stable");
        assert_eq!((&d.kind, &d.reason, d.created_at), (&was.kind, &was.reason, was.created_at));
        let replayed = d.replayed_at.expect("replayed");
        assert!(replayed >= before && replayed <= Utc::now(), "{replayed}");
    }
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStateStore::open(&dir.path().join("state.sqlite"), Durability::Full).unwrap();
    (dir, Arc::new(store))
}

#[tokio::test]
async fn sqlite_intake_is_idempotent_and_tenant_scoped() {
    let (_d, s) = sqlite().await;
    intake_is_idempotent_and_tenant_scoped(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_intake_has_one_winner() {
    let (_d, s) = sqlite().await;
    concurrent_intake_has_one_winner(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claims_are_exclusive_and_leases_guard_completion() {
    let (_d, s) = sqlite().await;
    claims_are_exclusive_and_leases_guard_completion(s).await;
}

#[tokio::test]
async fn sqlite_transitions_never_move_backwards() {
    let (_d, s) = sqlite().await;
    transitions_never_move_backwards(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stage_claims_are_once_per_key() {
    let (_d, s) = sqlite().await;
    stage_claims_are_once_per_key(s).await;
}

#[tokio::test]
async fn sqlite_dead_letters_keep_refused_events_once() {
    let (_d, s) = sqlite().await;
    dead_letters_keep_refused_events_once(s).await;
}

#[tokio::test]
async fn sqlite_analyses_are_stored_with_the_transition() {
    let (_d, s) = sqlite().await;
    analyses_are_stored_with_the_transition(s).await;
}

#[tokio::test]
async fn sqlite_deliveries_are_stored_with_the_transition() {
    let (_d, s) = sqlite().await;
    deliveries_are_stored_with_the_transition(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_breakers_are_shared_and_survive_instances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let store = Arc::new(SqliteStateStore::open(&path, Durability::Full).unwrap());
    let again = Arc::new(SqliteStateStore::open(&path, Durability::Full).unwrap());
    breakers_are_shared_and_survive_instances(store, again).await;
    // A store opened after both are gone still has the circuit (closed again by the last success).
    let later = SqliteStateStore::open(&path, Durability::Full).unwrap();
    assert_eq!(later.breaker(&TenantId::parse("acme").unwrap(), "crm:hubspot").await.unwrap(), Breaker::default());
}

#[tokio::test]
async fn sqlite_dead_letters_are_replayed_once() {
    let (_d, s) = sqlite().await;
    dead_letters_are_replayed_once(s).await;
}

/// A state file from before dead letters had `replayed_at` gets the column on open and keeps its dead letters.
#[tokio::test]
async fn sqlite_an_older_state_file_gains_replayed_at() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    {
        let conn = callflow::adapters::sqlite::open_connection(&path, Durability::Full).unwrap();
        conn.execute_batch(
            "CREATE TABLE dead_letters (
                id INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id TEXT NOT NULL, call_id TEXT NOT NULL,
                kind TEXT NOT NULL, payload TEXT NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL,
                created_at TEXT NOT NULL);
             INSERT INTO dead_letters (tenant_id, call_id, kind, payload, attempts, reason, created_at)
             VALUES ('acme', 'CALold', 'transcribe', '{}', 3, 'old', '2024-01-01T00:00:00.000000Z');",
        )
        .unwrap();
    }
    let store = SqliteStateStore::open(&path, Durability::Full).unwrap();
    let old = store.dead_letters(None, 10).await.unwrap();
    assert_eq!((old.len(), old[0].id.as_str(), old[0].replayed_at), (1, "1", None));
    assert!(store.replay_dead_letter("1", None, vec![]).await.unwrap());
    assert!(store.dead_letters(None, 10).await.unwrap()[0].replayed_at.is_some());
    drop(store);
    // Opening it again (the column now there) is a no-op.
    let again = SqliteStateStore::open(&path, Durability::Full).unwrap();
    assert!(!again.replay_dead_letter("1", None, vec![]).await.unwrap());
}

#[tokio::test]
async fn sqlite_retries_wait_until_due() {
    let (_d, s) = sqlite().await;
    retries_wait_until_due(s).await;
}

/// A fresh Spanner database with the repo's schema, on the emulator `scripts/emulators start` runs. Without an
/// emulator these tests say so and pass, unless CALLFLOW_EMULATORS=required (scripts/test sets it), where a
/// missing emulator fails them.
async fn spanner() -> Option<Arc<dyn StateStore>> {
    let database = spanner_database().await?;
    Some(Arc::new(SpannerStateStore::connect(&database).await.unwrap()))
}

async fn spanner_database() -> Option<String> {
    let host = std::env::var("SPANNER_EMULATOR_HOST").ok().filter(|h| !h.is_empty());
    let required = std::env::var("CALLFLOW_EMULATORS").as_deref() == Ok("required");
    if host.is_none() {
        assert!(
            !required,
            "CALLFLOW_EMULATORS=required but SPANNER_EMULATOR_HOST is not set: run scripts/emulators start"
        );
        eprintln!("skipped: no Spanner emulator (eval \"$(scripts/emulators env)\" after scripts/emulators start)");
        return None;
    }
    let instance = std::env::var("CALLFLOW_SPANNER_INSTANCE")
        .unwrap_or_else(|_| "projects/callflow-emulators/instances/callflow".to_owned());
    let database = format!("{instance}/databases/c{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    callflow::adapters::spanner::migrate(&database).await.expect("create the database with the schema");
    // Migrating again is a no-op.
    callflow::adapters::spanner::migrate(&database).await.expect("migrate an up-to-date database");
    Some(database)
}

#[tokio::test]
async fn spanner_intake_is_idempotent_and_tenant_scoped() {
    if let Some(s) = spanner().await {
        intake_is_idempotent_and_tenant_scoped(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spanner_concurrent_intake_has_one_winner() {
    if let Some(s) = spanner().await {
        concurrent_intake_has_one_winner(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spanner_claims_are_exclusive_and_leases_guard_completion() {
    if let Some(s) = spanner().await {
        claims_are_exclusive_and_leases_guard_completion(s).await;
    }
}

#[tokio::test]
async fn spanner_transitions_never_move_backwards() {
    if let Some(s) = spanner().await {
        transitions_never_move_backwards(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spanner_stage_claims_are_once_per_key() {
    if let Some(s) = spanner().await {
        stage_claims_are_once_per_key(s).await;
    }
}

#[tokio::test]
async fn spanner_dead_letters_keep_refused_events_once() {
    if let Some(s) = spanner().await {
        dead_letters_keep_refused_events_once(s).await;
    }
}

#[tokio::test]
async fn spanner_analyses_are_stored_with_the_transition() {
    if let Some(s) = spanner().await {
        analyses_are_stored_with_the_transition(s).await;
    }
}

#[tokio::test]
async fn spanner_deliveries_are_stored_with_the_transition() {
    if let Some(s) = spanner().await {
        deliveries_are_stored_with_the_transition(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spanner_breakers_are_shared_and_survive_instances() {
    if let Some(database) = spanner_database().await {
        let store = Arc::new(SpannerStateStore::connect(&database).await.unwrap());
        let again = Arc::new(SpannerStateStore::connect(&database).await.unwrap());
        breakers_are_shared_and_survive_instances(store, again).await;
    }
}

#[tokio::test]
async fn spanner_dead_letters_are_replayed_once() {
    if let Some(s) = spanner().await {
        dead_letters_are_replayed_once(s).await;
    }
}

#[tokio::test]
async fn spanner_retries_wait_until_due() {
    if let Some(s) = spanner().await {
        retries_wait_until_due(s).await;
    }
}

/// Group commit: a write that fails rolls back alone; the writes batched with it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_in_a_group_commit_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let conn = callflow::adapters::sqlite::open_connection(&dir.path().join("w.sqlite"), Durability::Full).unwrap();
    conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)").unwrap();
    let writer = callflow::adapters::sqlite::Writer::start(conn, "test");
    let results = futures::future::join_all((0..200).map(|i| {
        let w = writer.clone();
        async move {
            w.write(move |c| {
                c.execute("INSERT INTO t (k) VALUES (?1)", [i])?;
                // Every tenth write fails after having written: its insert must not survive.
                if i % 10 == 0 { c.execute("INSERT INTO t (k) VALUES (?1)", [i]).map(drop) } else { Ok(()) }
            })
            .await
        }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 20);
    let n: i64 =
        writer.write(|c| c.query_row("SELECT COUNT(*) FROM t WHERE k % 10 != 0", [], |r| r.get(0))).await.unwrap();
    let failed: i64 =
        writer.write(|c| c.query_row("SELECT COUNT(*) FROM t WHERE k % 10 = 0", [], |r| r.get(0))).await.unwrap();
    assert_eq!((n, failed), (180, 0));
}
