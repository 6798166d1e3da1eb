//! The state store's contract, written against `dyn StateStore` so every adapter (SQLite now, Spanner on its
//! emulator next) runs the same checks: idempotent intake, one winner under concurrency, conditional
//! transitions that refuse to move a call backwards, and leases that make completion safe.

use std::sync::Arc;
use std::time::Duration;

use callflow::adapters::spanner::SpannerStateStore;
use callflow::adapters::sqlite::{Durability, SqliteStateStore};
use callflow::domain::analysis::{
    ANALYSIS_SCHEMA_VERSION, Analysis, Budget, CallerDetails, Findings, Intent, ProjectType, Sentiment, Urgency, Usage,
};
use callflow::domain::breaker::{Admit, Breaker, BreakerPolicy};
use callflow::domain::crm::CrmDelivery;
use callflow::domain::intake::{EventKind, IntakeEvent, IntakeOutcome};
use callflow::domain::work::{Completion, NewWork, Transition, WorkKind};
use callflow::domain::{CallId, CallSource, CallState, LeadDetails, TenantId};
use callflow::ports::{CallErasure, CallScan, Claim, ErasureRecord, ErasureRequest, RefusedEvent, StateStore};
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

    // Found by id, and by call, without listing everything.
    assert_eq!(store.dead_letter(&stage.id).await.unwrap().as_ref(), Some(stage));
    assert_eq!(store.dead_letter(&event.id).await.unwrap().as_ref(), Some(event));
    for nobody in ["999999999", "not-a-number", ""] {
        assert_eq!(store.dead_letter(nobody).await.unwrap(), None, "{nobody:?}");
    }
    assert_eq!(store.call_dead_letters(&tenant, &call).await.unwrap(), vec![stage.clone()]);
    let other = TenantId::parse("bayside").unwrap();
    assert!(store.call_dead_letters(&other, &call).await.unwrap().is_empty(), "another tenant's call is not this one");
    let nope = CallId::parse("CALnope").unwrap();
    assert_eq!(store.call_dead_letters(&tenant, &nope).await.unwrap(), vec![event.clone()]);
}

async fn analyses_are_stored_with_the_transition(store: Arc<dyn StateStore>) {
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
        usage: Usage::default(),
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

/// Whole microseconds `days` ago: what both stores keep.
fn days_ago(days: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((Utc::now() - chrono::Duration::days(days)).timestamp_micros()).unwrap()
}

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

fn call_id(id: &str) -> CallId {
    CallId::parse(id).unwrap()
}

/// An intake event for a call with this lead, received at `at`.
fn event_with(tenant: &str, call: &str, lead: LeadDetails, at: DateTime<Utc>) -> IntakeEvent {
    IntakeEvent { lead, received_at: at, ..event(tenant, call, true) }
}

fn contact(phone: Option<&str>, email: Option<&str>) -> LeadDetails {
    LeadDetails {
        answered: Some(true),
        recording_url: Some("https://rec".into()),
        customer_name: Some("Kay Caller".into()),
        customer_phone: phone.map(str::to_owned),
        customer_email: email.map(str::to_owned),
        ..LeadDetails::default()
    }
}

fn analysis_with(caller: CallerDetails) -> Analysis {
    Analysis {
        schema_version: ANALYSIS_SCHEMA_VERSION,
        analyzer: "rules/1".into(),
        fallback_reason: None,
        findings: Findings {
            intent: Intent::NewLead,
            project_type: ProjectType::Kitchen,
            lead_score: 70,
            score_reasons: vec!["wants an estimate".into()],
            urgency: Urgency::Soon,
            budget: Budget::High,
            sentiment: Sentiment::Positive,
            spam_likelihood: 1,
            summary: "A kitchen project.".into(),
            caller,
        },
        usage: Usage::default(),
        redactions: 0,
    }
}

/// Store `analysis` for a call the way on-transcript does: a finished stage that moves it to `analysed`, optionally
/// recording where its recording is.
async fn store_analysis(store: &Arc<dyn StateStore>, t: &str, c: &str, analysis: Analysis, recording: Option<&str>) {
    let Claim::Claimed(claim) =
        store.claim_stage(&tenant(t), &call_id(c), "analyse:1", Duration::from_secs(60)).await.unwrap()
    else {
        panic!("claimable")
    };
    let done = Completion {
        transition: Some(Transition {
            to: CallState::Analysed,
            reason: None,
            recording_object: recording.map(str::to_owned),
        }),
        analysis: Some(analysis),
        ..Completion::default()
    };
    assert!(store.finish_stage(&claim, done).await.unwrap());
}

fn ids(calls: &[callflow::domain::CallRecord]) -> Vec<&str> {
    calls.iter().map(|c| c.call_id.as_str()).collect()
}

/// Every page of a scan, following `after` until a page comes back empty; checks each page's size and tenant.
async fn scan_all(store: &Arc<dyn StateStore>, t: &str, scan: CallScan) -> Vec<String> {
    let mut scan = CallScan { limit: 2, ..scan };
    let mut out = Vec::new();
    for _ in 0..50 {
        let page = store.scan_calls(&tenant(t), &scan).await.unwrap();
        assert!(page.len() <= 2, "{} calls in a page of 2", page.len());
        assert!(page.iter().all(|c| c.tenant_id.as_str() == t), "another tenant's call in {t}'s scan");
        let Some(last) = page.last() else { return out };
        scan.after = Some(last.call_id.clone());
        out.extend(page.iter().map(|c| c.call_id.to_string()));
    }
    panic!("the scan never ended: {out:?}")
}

/// Cleanup scans select by state, creation and last change, a page at a time in call-id order, within one tenant.
async fn cleanup_scans_are_paged_and_tenant_scoped(store: Arc<dyn StateStore>) {
    let old = days_ago(40);
    for c in ["CALs01", "CALs05", "CALs06", "CALs07", "CALs08", "CALs09", "CALs04"] {
        store.record_intake(event_with("acme", c, contact(None, None), old)).await.unwrap();
    }
    // Skipped (no recording), old.
    store.record_intake(IntakeEvent { received_at: old, ..event("acme", "CALs02", false) }).await.unwrap();
    // Received recently.
    store.record_intake(event_with("acme", "CALs03", contact(None, None), days_ago(2))).await.unwrap();
    // Old, but changed yesterday.
    let modified = IntakeEvent {
        dedupe_key: "call_modified:1".into(),
        ..event_with("acme", "CALs04", contact(None, None), days_ago(1))
    };
    store.record_intake(modified).await.unwrap();
    let changed = store.call(&tenant("acme"), &call_id("CALs04")).await.unwrap().unwrap();
    assert!(changed.created_at == old && changed.updated_at > days_ago(2), "{changed:?}");
    // Another tenant's old calls, with the same ids and others.
    for c in ["CALs01", "CALs00", "CALs99"] {
        store.record_intake(event_with("bayside", c, contact(None, None), old)).await.unwrap();
    }

    let month = days_ago(30);
    let stuck = CallScan { states: vec![CallState::Received], updated_before: Some(month), ..CallScan::default() };
    assert_eq!(scan_all(&store, "acme", stuck).await, ["CALs01", "CALs05", "CALs06", "CALs07", "CALs08", "CALs09"]);
    let retention = CallScan { created_before: Some(month), ..CallScan::default() };
    assert_eq!(
        scan_all(&store, "acme", retention.clone()).await,
        ["CALs01", "CALs02", "CALs04", "CALs05", "CALs06", "CALs07", "CALs08", "CALs09"]
    );
    let skipped = CallScan { states: vec![CallState::Skipped, CallState::Spam], ..CallScan::default() };
    assert_eq!(scan_all(&store, "acme", skipped).await, ["CALs02"]);
    let recent =
        CallScan { created_before: Some(days_ago(1)), updated_before: Some(days_ago(3)), ..CallScan::default() };
    assert_eq!(scan_all(&store, "acme", recent).await.len(), 7, "CALs03 is too new, CALs04 changed since");
    assert_eq!(scan_all(&store, "acme", CallScan::default()).await.len(), 9);
    assert_eq!(scan_all(&store, "bayside", retention.clone()).await, ["CALs00", "CALs01", "CALs99"]);
    assert!(scan_all(&store, "globex", retention.clone()).await.is_empty());

    // One page with a larger limit, resumed from a cursor in the middle.
    let page = store
        .scan_calls(&tenant("acme"), &CallScan { after: Some(call_id("CALs05")), limit: 3, ..retention.clone() })
        .await
        .unwrap();
    assert_eq!(ids(&page), ["CALs06", "CALs07", "CALs08"]);
    assert_eq!(page[0].created_at, old);
    let none = CallScan { limit: 0, ..retention };
    assert!(store.scan_calls(&tenant("acme"), &none).await.unwrap().is_empty(), "limit 0");
}

/// An erasure request names a phone or an email: the calls it finds are the tenant's whose lead had that phone
/// (in any format) or email (any case), or whose analysis heard that email.
async fn calls_are_found_by_contact(store: Arc<dyn StateStore>) {
    let at = days_ago(1);
    let lead = contact(Some("(503) 555-0148"), Some("Kay@Example.com"));
    store.record_intake(event_with("acme", "CALc1", lead, at)).await.unwrap();
    store.record_intake(event_with("acme", "CALc2", contact(Some("+1 503-555-0148"), None), at)).await.unwrap();
    store.record_intake(event_with("acme", "CALc3", contact(Some("971 555 0100"), None), at)).await.unwrap();
    store.record_intake(event_with("acme", "CALc5", contact(None, None), at)).await.unwrap();
    store
        .record_intake(event_with("bayside", "CALc4", contact(Some("503.555.0148"), Some("kay@example.com")), at))
        .await
        .unwrap();
    // The analysis heard an email: it makes a call without one findable, but does not replace the lead's.
    let heard = |email: &str| analysis_with(CallerDetails { email: Some(email.into()), ..Default::default() });
    store_analysis(&store, "acme", "CALc3", heard(" Spoken@Example.COM"), None).await;
    store_analysis(&store, "acme", "CALc1", heard("other@example.com"), None).await;

    let (acme, bayside) = (tenant("acme"), tenant("bayside"));
    let found = |t: &TenantId, phone: Option<&'static str>, email: Option<&'static str>| {
        let (store, t) = (store.clone(), t.clone());
        async move { ids(&store.calls_by_contact(&t, phone, email).await.unwrap()).join(",") }
    };
    assert_eq!(found(&acme, Some("+15035550148"), None).await, "CALc1,CALc2");
    assert_eq!(found(&acme, Some("503-555-0148"), None).await, "CALc1,CALc2");
    assert_eq!(found(&acme, None, Some("  KAY@example.com")).await, "CALc1");
    assert_eq!(found(&acme, None, Some("spoken@example.com")).await, "CALc3");
    assert_eq!(found(&acme, None, Some("other@example.com")).await, "", "the lead's email stays the key");
    assert_eq!(found(&acme, Some("+19715550100"), Some("kay@example.com")).await, "CALc1,CALc3");
    assert_eq!(found(&acme, Some("+15035550148"), Some("kay@example.com")).await, "CALc1,CALc2", "once each");
    assert_eq!(found(&bayside, Some("+15035550148"), None).await, "CALc4");
    assert_eq!(found(&bayside, None, Some("spoken@example.com")).await, "");
    assert_eq!(found(&tenant("globex"), Some("+15035550148"), Some("kay@example.com")).await, "");
    assert_eq!(found(&acme, Some("+15035550199"), None).await, "");
    assert_eq!(found(&acme, None, None).await, "", "nothing named finds nothing");
    assert_eq!(found(&acme, Some("unknown"), Some(" ")).await, "");

    // A later event with the whole lead again keeps the keys; a new email becomes the key.
    let later = IntakeEvent {
        dedupe_key: "call_modified:1".into(),
        ..event_with("acme", "CALc2", contact(None, Some("NEW@example.com")), days_ago(0))
    };
    store.record_intake(later).await.unwrap();
    assert_eq!(found(&acme, None, Some("new@example.com")).await, "CALc2");
    assert_eq!(found(&acme, Some("+15035550148"), None).await, "CALc1,CALc2");
}

/// An erasure blanks the call's personal data in one transaction and logs what it removed; the call is no longer
/// found by its contact details. Another tenant's call with the same id and phone is untouched.
async fn erasure_blanks_the_call_and_logs_it(store: Arc<dyn StateStore>) {
    let at = days_ago(3);
    let lead =
        LeadDetails { customer_zip: Some("97201".into()), ..contact(Some("(503) 555-0148"), Some("kay@example.com")) };
    store.record_intake(event_with("acme", "CALe1", lead.clone(), at)).await.unwrap();
    store.record_intake(event_with("acme", "CALe2", contact(None, None), at)).await.unwrap();
    store.record_intake(event_with("bayside", "CALe1", lead.clone(), at)).await.unwrap();
    let caller = CallerDetails {
        name: Some("Kay".into()),
        email: Some("spoken@example.com".into()),
        zip: Some("97201".into()),
        callback_time: Some("after 5pm".into()),
    };
    store_analysis(&store, "acme", "CALe1", analysis_with(caller.clone()), Some("recordings/acme/CALe1.mp3")).await;
    store_analysis(&store, "acme", "CALe2", analysis_with(caller.clone()), None).await;
    store_analysis(&store, "bayside", "CALe1", analysis_with(caller.clone()), Some("recordings/bayside/CALe1.mp3"))
        .await;
    let (acme, bayside, e1) = (tenant("acme"), tenant("bayside"), call_id("CALe1"));
    assert_eq!(ids(&store.calls_by_contact(&acme, None, Some("spoken@example.com")).await.unwrap()), ["CALe2"]);
    assert_eq!(
        store.call(&acme, &e1).await.unwrap().unwrap().recording_object.as_deref(),
        Some("recordings/acme/CALe1.mp3")
    );

    let blank = LeadDetails { answered: Some(true), duration_secs: Some(42), ..LeadDetails::default() };
    let record = |c: &str, request: &str, at: DateTime<Utc>| ErasureRecord {
        tenant_id: acme.clone(),
        call_id: call_id(c),
        request_id: request.into(),
        erased: vec!["recording".into(), "lead contact fields".into(), "analysis caller details".into()],
        at,
    };
    let all = |lead: &LeadDetails| CallErasure { lead: Some(lead.clone()), recording: true };
    let first = record("CALe1", "req-1", days_ago(1));
    assert!(store.erase_call(all(&blank), first.clone()).await.unwrap());

    let erased = store.call(&acme, &e1).await.unwrap().unwrap();
    assert_eq!(erased.lead, blank);
    assert_eq!(erased.recording_object, None);
    assert_eq!(erased.state, CallState::Analysed, "the state is kept");
    assert_eq!(erased.updated_at, first.at);
    let analysis = store.analysis(&acme, &e1).await.unwrap().unwrap();
    assert_eq!(analysis.findings.caller, CallerDetails::default());
    let mut kept = analysis_with(CallerDetails::default());
    kept.findings.summary = "The caller asked about a kitchen project.".into();
    assert_eq!(analysis, kept, "the summary is retold without the caller; the rest of the analysis is kept");
    for (phone, email) in [(Some("+15035550148"), None), (None, Some("kay@example.com"))] {
        assert!(store.calls_by_contact(&acme, phone, email).await.unwrap().is_empty(), "{phone:?} {email:?}");
    }
    assert_eq!(ids(&store.calls_by_contact(&acme, None, Some("spoken@example.com")).await.unwrap()), ["CALe2"]);
    // The log says what was asked and what the store found of the caller beside the lead.
    let mut first = first;
    first.note("analysis.caller");
    first.note("analysis.summary");
    assert_eq!(store.erasures(&acme, 10).await.unwrap(), std::slice::from_ref(&first));

    // Another tenant's call of the same id is untouched.
    let theirs = store.call(&bayside, &e1).await.unwrap().unwrap();
    assert_eq!((theirs.lead, theirs.recording_object.as_deref()), (lead, Some("recordings/bayside/CALe1.mp3")));
    assert_eq!(store.analysis(&bayside, &e1).await.unwrap().unwrap().findings.caller, caller);
    assert_eq!(ids(&store.calls_by_contact(&bayside, Some("+15035550148"), None).await.unwrap()), ["CALe1"]);
    assert!(store.erasures(&bayside, 10).await.unwrap().is_empty());

    // A later write of the erased call (a late webhook without contact details) does not bring keys back.
    let late =
        IntakeEvent { dedupe_key: "call_modified:9".into(), ..event_with("acme", "CALe1", blank.clone(), days_ago(0)) };
    store.record_intake(late).await.unwrap();
    assert!(store.calls_by_contact(&acme, Some("+15035550148"), Some("kay@example.com")).await.unwrap().is_empty());

    // No such call: nothing changes, nothing is logged.
    assert!(!store.erase_call(all(&blank), record("CALnone", "req-2", days_ago(0))).await.unwrap());
    let foreign = ErasureRecord { tenant_id: tenant("globex"), ..record("CALe2", "req-2", days_ago(0)) };
    assert!(!store.erase_call(all(&blank), foreign).await.unwrap());
    assert_eq!(store.erasures(&acme, 10).await.unwrap().len(), 1);

    // The log is newest first, and limited.
    let mut second = record("CALe2", "retention:2025-01-01", days_ago(0));
    assert!(store.erase_call(all(&blank), second.clone()).await.unwrap());
    second.note("analysis.caller");
    second.note("analysis.summary");
    assert_eq!(
        store.analysis(&acme, &call_id("CALe2")).await.unwrap().unwrap().findings.caller,
        CallerDetails::default()
    );
    assert!(store.calls_by_contact(&acme, None, Some("spoken@example.com")).await.unwrap().is_empty());
    assert_eq!(store.erasures(&acme, 10).await.unwrap(), [second.clone(), first]);
    assert_eq!(store.erasures(&acme, 1).await.unwrap(), [second]);
}

/// Erasing a call's lead also forgets the caller wherever the call's own texts quote them: its state reason (a
/// CRM's validation message), its dead letters, its queued work and its stages' last errors. Ids, numbers and
/// what the texts say otherwise stay; another call quoting the same name is not this erasure's business.
async fn erasure_forgets_the_caller_where_the_call_quotes_them(store: Arc<dyn StateStore>) {
    let lead = LeadDetails {
        customer_name: Some("Kay Lindqvist".into()),
        ..contact(Some("(503) 555-0148"), Some("kay@example.com"))
    };
    for c in ["CALq1", "CALq2"] {
        store.record_intake(event_with("acme", c, lead.clone(), days_ago(2))).await.unwrap();
    }
    let quoted =
        "webhook refused the lead: vendor answered 422: duplicate of Kay Lindqvist <KAY@example.com>, (503) 555-0148";
    let (acme, q1, q2) = (tenant("acme"), call_id("CALq1"), call_id("CALq2"));
    let Claim::Claimed(failed) = store.claim_stage(&acme, &q1, "deliver:1", Duration::from_secs(60)).await.unwrap()
    else {
        panic!("claimable")
    };
    store.release_stage(&failed, quoted).await.unwrap();
    for c in [&q1, &q2] {
        let Claim::Claimed(claim) = store.claim_stage(&acme, c, "deliver:2", Duration::from_secs(60)).await.unwrap()
        else {
            panic!("claimable")
        };
        let done = Completion {
            transition: Some(Transition {
                to: CallState::DeadLettered,
                reason: Some(quoted.into()),
                recording_object: None,
            }),
            dead_letter: Some(quoted.into()),
            follow_up: vec![
                NewWork {
                    kind: WorkKind::Publish,
                    payload: serde_json::json!({"n": 7, "not_before": 1_732_312_345_678_i64, "note": "for Kay Lindqvist"}),
                },
                // An analytics row is left as it is (free of personal data by construction; it must stay valid).
                NewWork { kind: WorkKind::Analytics, payload: serde_json::json!({"n": 8, "utm_campaign": "kay-2026"}) },
            ],
            ..Completion::default()
        };
        assert!(store.finish_stage(&claim, done).await.unwrap());
    }

    // The publish failed once, its last error quoting the caller.
    for item in store.claim_work(&[WorkKind::Publish], 100, Duration::from_secs(60)).await.unwrap() {
        store.retry_work(&item, Utc::now() - chrono::Duration::seconds(1), quoted).await.unwrap();
    }
    let blank = LeadDetails { answered: Some(true), ..LeadDetails::default() };
    let record = ErasureRecord {
        tenant_id: acme.clone(),
        call_id: q1.clone(),
        request_id: "era-q".into(),
        erased: vec!["lead.customer_name".into()],
        at: days_ago(0),
    };
    assert!(store.erase_call(CallErasure { lead: Some(blank), recording: false }, record).await.unwrap());

    let traces = ["Kay", "Lindqvist", "KAY@example.com", "555-0148"];
    let call = store.call(&acme, &q1).await.unwrap().unwrap();
    let reason = call.state_reason.unwrap();
    assert!(
        reason.starts_with("webhook refused the lead: vendor answered 422: duplicate of [erased] [erased]"),
        "{reason}"
    );
    let letters = store.call_dead_letters(&acme, &q1).await.unwrap();
    assert_eq!(letters.len(), 1);
    let items = store.claim_work(&[WorkKind::Publish], 100, Duration::from_secs(60)).await.unwrap();
    let mine: Vec<_> = items.iter().filter(|w| w.call_id == q1).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].payload["n"].as_i64(), mine[0].payload["not_before"].as_i64()),
        (Some(7), Some(1_732_312_345_678))
    );
    for text in [reason.clone(), letters[0].reason.clone(), letters[0].payload.to_string(), mine[0].payload.to_string()]
    {
        for trace in traces {
            assert!(!text.contains(trace), "{trace} in {text}");
        }
    }
    let rows = store.claim_work(&[WorkKind::Analytics], 100, Duration::from_secs(60)).await.unwrap();
    let row = rows.iter().find(|w| w.call_id == q1 && w.payload["n"] == 8).unwrap();
    assert_eq!(row.payload, serde_json::json!({"n": 8, "utm_campaign": "kay-2026"}));
    let logged = store.erasures(&acme, 10).await.unwrap();
    for what in ["lead.customer_name", "call.state_reason", "dead_letters", "outbox", "stage_runs"] {
        assert!(logged[0].erased.iter().any(|e| e == what), "{what} in {:?}", logged[0].erased);
    }
    // The other call still quotes the caller: it is erased when a request or retention reaches it.
    assert_eq!(store.call(&acme, &q2).await.unwrap().unwrap().state_reason.as_deref(), Some(quoted));
    assert_eq!(store.call_dead_letters(&acme, &q2).await.unwrap()[0].reason, quoted);
}

/// Retention's window: `created_from` is an inclusive lower bound, combined with `created_before` (exclusive), the
/// cursor and the page size.
async fn scans_have_an_inclusive_created_from(store: Arc<dyn StateStore>) {
    let base = days_ago(50);
    let day = |n: i64| base + chrono::Duration::days(n);
    let from = day(10);
    let calls = [
        ("CALw1", base),
        ("CALw2", from),
        ("CALw3", from),
        ("CALw4", day(20)),
        ("CALw5", day(30)),
        ("CALw6", days_ago(1)),
        // A microsecond before the bound.
        ("CALw7", from - chrono::Duration::microseconds(1)),
    ];
    for (c, at) in calls {
        store.record_intake(event_with("acme", c, contact(None, None), at)).await.unwrap();
    }
    store.record_intake(event_with("bayside", "CALw3", contact(None, None), from)).await.unwrap();
    assert_eq!(store.call(&tenant("acme"), &call_id("CALw2")).await.unwrap().unwrap().created_at, from);

    let window = CallScan { created_from: Some(from), created_before: Some(day(30)), ..CallScan::default() };
    assert_eq!(scan_all(&store, "acme", window.clone()).await, ["CALw2", "CALw3", "CALw4"]);
    let since = CallScan { created_from: Some(from), ..CallScan::default() };
    assert_eq!(scan_all(&store, "acme", since).await, ["CALw2", "CALw3", "CALw4", "CALw5", "CALw6"]);
    let later = CallScan { created_from: Some(day(30)), created_before: Some(days_ago(0)), ..CallScan::default() };
    assert_eq!(scan_all(&store, "acme", later).await, ["CALw5", "CALw6"]);
    let empty = CallScan { created_from: Some(day(20)), created_before: Some(day(20)), ..CallScan::default() };
    assert!(scan_all(&store, "acme", empty).await.is_empty(), "an empty window");
    assert_eq!(scan_all(&store, "bayside", window.clone()).await, ["CALw3"]);

    // One page, resumed from a cursor inside the window.
    let page = store
        .scan_calls(&tenant("acme"), &CallScan { after: Some(call_id("CALw2")), limit: 1, ..window.clone() })
        .await
        .unwrap();
    assert_eq!(ids(&page), ["CALw3"]);
    let page = store.scan_calls(&tenant("acme"), &CallScan { limit: 2, ..window }).await.unwrap();
    assert_eq!(ids(&page), ["CALw2", "CALw3"]);
}

/// Queue work for a call the way a finished stage does (its follow-up), each item's payload `{"n": n}`.
async fn queue_work(store: &Arc<dyn StateStore>, t: &str, c: &str, work: &[(WorkKind, i64)]) {
    let key = format!("queue:{}", work.iter().map(|(_, n)| n.to_string()).collect::<Vec<_>>().join("-"));
    let Claim::Claimed(claim) =
        store.claim_stage(&tenant(t), &call_id(c), &key, Duration::from_secs(60)).await.unwrap()
    else {
        panic!("claimable")
    };
    let follow_up =
        work.iter().map(|(kind, n)| NewWork { kind: *kind, payload: serde_json::json!({"n": n}) }).collect();
    assert!(store.finish_stage(&claim, Completion { follow_up, ..Completion::default() }).await.unwrap());
}

/// The queued work of this kind, as (tenant, call, n) sorted; claimed and handed straight back (due again now).
async fn queued(store: &Arc<dyn StateStore>, kind: WorkKind) -> Vec<(String, String, i64)> {
    let items = store.claim_work(&[kind], 100, Duration::from_secs(60)).await.unwrap();
    let mut out = Vec::new();
    for item in &items {
        let n = item.payload["n"].as_i64().unwrap_or(-1);
        out.push((item.tenant_id.to_string(), item.call_id.to_string(), n));
        store.retry_work(item, Utc::now() - chrono::Duration::seconds(1), "handed back").await.unwrap();
    }
    out.sort();
    out
}

/// What `CallErasure` names is what goes: the recording alone keeps the lead, the analysis's caller details and the
/// contact keys (and the notifications); the lead takes those and the call's pending notifications, not another
/// call's nor the call's other work. Neither: only the record is logged.
async fn erasure_removes_what_it_names(store: Arc<dyn StateStore>) {
    let at = days_ago(3);
    let lead = contact(Some("(503) 555-0148"), Some("kay@example.com"));
    for (t, c) in [("acme", "CALr1"), ("acme", "CALr2"), ("acme", "CALr3"), ("bayside", "CALr1")] {
        store.record_intake(event_with(t, c, lead.clone(), at)).await.unwrap();
    }
    let caller = CallerDetails { name: Some("Kay".into()), zip: Some("97201".into()), ..Default::default() };
    store_analysis(&store, "acme", "CALr1", analysis_with(caller.clone()), Some("recordings/acme/CALr1.mp3")).await;
    store_analysis(&store, "acme", "CALr2", analysis_with(caller.clone()), Some("recordings/acme/CALr2.mp3")).await;
    queue_work(&store, "acme", "CALr1", &[(WorkKind::Notify, 1), (WorkKind::Notify, 2), (WorkKind::Publish, 3)]).await;
    queue_work(&store, "acme", "CALr2", &[(WorkKind::Notify, 4)]).await;
    queue_work(&store, "bayside", "CALr1", &[(WorkKind::Notify, 5)]).await;
    queue_work(&store, "acme", "CALr3", &[(WorkKind::Notify, 6)]).await;
    let notify = |ns: &[(&str, &str, i64)]| -> Vec<(String, String, i64)> {
        ns.iter().map(|(t, c, n)| (t.to_string(), c.to_string(), *n)).collect()
    };
    let (acme, r1, r2) = (tenant("acme"), call_id("CALr1"), call_id("CALr2"));
    let record = |c: &str, request: &str, at: DateTime<Utc>| ErasureRecord {
        tenant_id: acme.clone(),
        call_id: call_id(c),
        request_id: request.into(),
        erased: vec!["recording".into()],
        at,
    };

    // The recording only.
    let recording = CallErasure { lead: None, recording: true };
    let first = record("CALr1", "retention:2025-01-01", days_ago(2));
    assert!(store.erase_call(recording, first.clone()).await.unwrap());
    let call = store.call(&acme, &r1).await.unwrap().unwrap();
    assert_eq!((call.recording_object, &call.lead, call.updated_at), (None, &lead, first.at));
    assert_eq!(store.analysis(&acme, &r1).await.unwrap().unwrap().findings.caller, caller);
    assert_eq!(
        ids(&store.calls_by_contact(&acme, Some("+15035550148"), None).await.unwrap()),
        ["CALr1", "CALr2", "CALr3"]
    );
    assert_eq!(
        ids(&store.calls_by_contact(&acme, None, Some("kay@example.com")).await.unwrap()),
        ["CALr1", "CALr2", "CALr3"]
    );
    assert_eq!(
        queued(&store, WorkKind::Notify).await,
        notify(&[
            ("acme", "CALr1", 1),
            ("acme", "CALr1", 2),
            ("acme", "CALr2", 4),
            ("acme", "CALr3", 6),
            ("bayside", "CALr1", 5)
        ])
    );

    // Nothing named: the call is as it was; the record is logged.
    let before = store.call(&acme, &r1).await.unwrap().unwrap();
    let nothing = record("CALr1", "req-nothing", days_ago(1));
    assert!(store.erase_call(CallErasure::default(), nothing.clone()).await.unwrap());
    assert_eq!(store.call(&acme, &r1).await.unwrap().unwrap(), before);
    assert_eq!(store.erasures(&acme, 10).await.unwrap(), [nothing.clone(), first.clone()]);

    // The lead: its contact keys, the analysis's caller details and the call's notifications go.
    let blank = LeadDetails { answered: Some(true), ..LeadDetails::default() };
    let by_lead = record("CALr1", "req-1", days_ago(0));
    assert!(store.erase_call(CallErasure { lead: Some(blank.clone()), recording: false }, by_lead).await.unwrap());
    let call = store.call(&acme, &r1).await.unwrap().unwrap();
    assert_eq!((call.recording_object, call.lead), (None, blank.clone()));
    assert_eq!(store.analysis(&acme, &r1).await.unwrap().unwrap().findings.caller, CallerDetails::default());
    assert_eq!(ids(&store.calls_by_contact(&acme, Some("+15035550148"), None).await.unwrap()), ["CALr2", "CALr3"]);
    assert_eq!(
        queued(&store, WorkKind::Notify).await,
        notify(&[("acme", "CALr2", 4), ("acme", "CALr3", 6), ("bayside", "CALr1", 5)])
    );
    assert_eq!(queued(&store, WorkKind::Publish).await, notify(&[("acme", "CALr1", 3)]), "other work stays");
    let fetches = store.claim_work(&[WorkKind::FetchRecording], 100, Duration::from_secs(60)).await.unwrap();
    assert!(fetches.iter().any(|w| (&w.tenant_id, &w.call_id) == (&acme, &r1)), "{fetches:?}");

    // The lead alone keeps the recording.
    let r2_lead = record("CALr2", "req-1", days_ago(0));
    assert!(store.erase_call(CallErasure { lead: Some(blank.clone()), recording: false }, r2_lead).await.unwrap());
    let call = store.call(&acme, &r2).await.unwrap().unwrap();
    assert_eq!((call.recording_object.as_deref(), call.lead), (Some("recordings/acme/CALr2.mp3"), blank));
    assert_eq!(queued(&store, WorkKind::Notify).await, notify(&[("acme", "CALr3", 6), ("bayside", "CALr1", 5)]));
    assert_eq!(ids(&store.calls_by_contact(&acme, Some("+15035550148"), None).await.unwrap()), ["CALr3"]);
    assert_eq!(ids(&store.calls_by_contact(&tenant("bayside"), Some("+15035550148"), None).await.unwrap()), ["CALr1"]);
    assert_eq!(store.erasures(&acme, 10).await.unwrap().len(), 4);
}

fn erasure_request(t: &str, id: &str, phone: Option<&str>, email: Option<&str>, at: DateTime<Utc>) -> ErasureRequest {
    ErasureRequest {
        tenant_id: tenant(t),
        id: id.into(),
        phone: phone.map(str::to_owned),
        email: email.map(str::to_owned),
        requested_at: at,
        completed_at: None,
        calls_erased: None,
    }
}

/// Erasure requests are kept once per tenant and id, listed oldest first, and completed once, forgetting the phone
/// and email they named.
async fn erasure_requests_are_kept_until_carried_out(store: Arc<dyn StateStore>) {
    let (acme, bayside) = (tenant("acme"), tenant("bayside"));
    let one = erasure_request("acme", "era-1", Some("+15035550148"), None, days_ago(3));
    let same = days_ago(2);
    let two = erasure_request("acme", "era-2", None, Some("kay@example.com"), same);
    let zero = erasure_request("acme", "era-0", Some("+15035550100"), Some("a@example.com"), same);
    let theirs = erasure_request("bayside", "era-1", Some("+19715550100"), None, days_ago(5));
    assert!(store.erasure_requests(&acme, false, 10).await.unwrap().is_empty());
    for r in [&one, &two, &zero, &theirs] {
        assert!(store.request_erasure(r).await.unwrap(), "{r:?}");
    }
    let again = ErasureRequest { phone: Some("+15035550199".into()), ..one.clone() };
    assert!(!store.request_erasure(&again).await.unwrap(), "an id is kept once");

    // Oldest first; the same time in id order.
    let pending = [one.clone(), zero.clone(), two.clone()];
    assert_eq!(store.erasure_requests(&acme, true, 10).await.unwrap(), pending);
    assert_eq!(store.erasure_requests(&acme, false, 10).await.unwrap(), pending);
    assert_eq!(store.erasure_requests(&acme, true, 1).await.unwrap(), std::slice::from_ref(&one));
    assert_eq!(store.erasure_requests(&bayside, true, 10).await.unwrap(), std::slice::from_ref(&theirs));
    assert!(store.erasure_requests(&tenant("globex"), false, 10).await.unwrap().is_empty());

    let done_at = days_ago(1);
    assert!(store.complete_erasure_request(&acme, "era-1", done_at, 3).await.unwrap());
    let done = ErasureRequest { phone: None, email: None, completed_at: Some(done_at), calls_erased: Some(3), ..one };
    assert_eq!(store.erasure_requests(&acme, true, 10).await.unwrap(), [zero.clone(), two.clone()]);
    assert_eq!(store.erasure_requests(&acme, false, 10).await.unwrap(), [done.clone(), zero.clone(), two.clone()]);
    assert!(!store.complete_erasure_request(&acme, "era-1", days_ago(0), 5).await.unwrap(), "completed once");
    assert_eq!(store.erasure_requests(&acme, false, 1).await.unwrap(), std::slice::from_ref(&done), "unchanged");
    assert!(!store.request_erasure(&zero).await.unwrap());
    let completed_again = erasure_request("acme", "era-1", Some("+15035550148"), None, days_ago(0));
    assert!(!store.request_erasure(&completed_again).await.unwrap(), "a completed request keeps its id");
    assert!(!store.complete_erasure_request(&acme, "era-9", done_at, 0).await.unwrap(), "no such request");
    assert!(!store.complete_erasure_request(&tenant("globex"), "era-0", done_at, 0).await.unwrap());
    assert!(!store.complete_erasure_request(&bayside, "era-0", done_at, 0).await.unwrap());

    // The other tenant's request of the same id is untouched.
    assert_eq!(store.erasure_requests(&bayside, true, 10).await.unwrap(), std::slice::from_ref(&theirs));
    assert!(store.complete_erasure_request(&bayside, "era-1", done_at, 0).await.unwrap());
    assert!(store.erasure_requests(&bayside, true, 10).await.unwrap().is_empty());
    let theirs_done = ErasureRequest { phone: None, completed_at: Some(done_at), calls_erased: Some(0), ..theirs };
    assert_eq!(store.erasure_requests(&bayside, false, 10).await.unwrap(), [theirs_done]);
    assert_eq!(store.erasure_requests(&acme, true, 10).await.unwrap(), [zero, two], "acme's pending stay");
}

/// A job's cursor is kept per tenant and job, replaced by the next, and cleared with `None`.
async fn job_cursors_are_per_tenant_and_job(store: Arc<dyn StateStore>) {
    let (acme, bayside) = (tenant("acme"), tenant("bayside"));
    assert_eq!(store.job_cursor(&acme, "retention").await.unwrap(), None);
    store.set_job_cursor(&acme, "retention", Some("CAL5")).await.unwrap();
    store.set_job_cursor(&bayside, "retention", Some("CAL1")).await.unwrap();
    store.set_job_cursor(&acme, "stuck", Some("CAL7")).await.unwrap();
    assert_eq!(store.job_cursor(&acme, "retention").await.unwrap().as_deref(), Some("CAL5"));
    assert_eq!(store.job_cursor(&bayside, "retention").await.unwrap().as_deref(), Some("CAL1"));
    assert_eq!(store.job_cursor(&acme, "stuck").await.unwrap().as_deref(), Some("CAL7"));
    assert_eq!(store.job_cursor(&bayside, "stuck").await.unwrap(), None);
    store.set_job_cursor(&acme, "retention", Some("CAL9")).await.unwrap();
    assert_eq!(store.job_cursor(&acme, "retention").await.unwrap().as_deref(), Some("CAL9"));
    store.set_job_cursor(&acme, "retention", None).await.unwrap();
    assert_eq!(store.job_cursor(&acme, "retention").await.unwrap(), None);
    store.set_job_cursor(&acme, "retention", None).await.unwrap();
    assert_eq!(
        store.job_cursor(&bayside, "retention").await.unwrap().as_deref(),
        Some("CAL1"),
        "other tenants keep theirs"
    );
    assert_eq!(store.job_cursor(&acme, "stuck").await.unwrap().as_deref(), Some("CAL7"), "other jobs keep theirs");
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
async fn sqlite_cleanup_scans_are_paged_and_tenant_scoped() {
    let (_d, s) = sqlite().await;
    cleanup_scans_are_paged_and_tenant_scoped(s).await;
}

#[tokio::test]
async fn sqlite_calls_are_found_by_contact() {
    let (_d, s) = sqlite().await;
    calls_are_found_by_contact(s).await;
}

#[tokio::test]
async fn sqlite_erasure_blanks_the_call_and_logs_it() {
    let (_d, s) = sqlite().await;
    erasure_blanks_the_call_and_logs_it(s).await;
}

#[tokio::test]
async fn sqlite_erasure_forgets_the_caller_where_the_call_quotes_them() {
    let (_d, s) = sqlite().await;
    erasure_forgets_the_caller_where_the_call_quotes_them(s).await;
}

#[tokio::test]
async fn sqlite_scans_have_an_inclusive_created_from() {
    let (_d, s) = sqlite().await;
    scans_have_an_inclusive_created_from(s).await;
}

#[tokio::test]
async fn sqlite_erasure_removes_what_it_names() {
    let (_d, s) = sqlite().await;
    erasure_removes_what_it_names(s).await;
}

#[tokio::test]
async fn sqlite_erasure_requests_are_kept_until_carried_out() {
    let (_d, s) = sqlite().await;
    erasure_requests_are_kept_until_carried_out(s).await;
}

#[tokio::test]
async fn sqlite_job_cursors_are_per_tenant_and_job() {
    let (_d, s) = sqlite().await;
    job_cursors_are_per_tenant_and_job(s).await;
}

/// A state file from before calls had contact keys gains the columns on open, with the keys of its calls filled
/// from their leads (and an email only the analysis heard).
#[tokio::test]
async fn sqlite_an_older_state_file_gains_contact_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    {
        let conn = callflow::adapters::sqlite::open_connection(&path, Durability::Full).unwrap();
        conn.execute_batch(
            "CREATE TABLE calls (
                tenant_id TEXT NOT NULL, call_id TEXT NOT NULL, source TEXT NOT NULL, state TEXT NOT NULL,
                state_reason TEXT, lead_json TEXT NOT NULL, recording_object TEXT, created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL, PRIMARY KEY (tenant_id, call_id)) WITHOUT ROWID;
             CREATE TABLE analyses (
                tenant_id TEXT NOT NULL, call_id TEXT NOT NULL, analyzer TEXT NOT NULL, analysis_json TEXT NOT NULL,
                created_at TEXT NOT NULL, PRIMARY KEY (tenant_id, call_id)) WITHOUT ROWID;",
        )
        .unwrap();
        let insert = "INSERT INTO calls VALUES (?1, ?2, 'callrail', 'analysed', NULL, ?3, NULL,
                      '2024-01-01T00:00:00.000000Z', '2024-01-01T00:00:00.000000Z')";
        let lead = |l: LeadDetails| serde_json::to_string(&l).unwrap();
        conn.execute(insert, ["acme", "CALold1", &lead(contact(Some("(503) 555-0148"), Some("Kay@Example.com")))])
            .unwrap();
        conn.execute(insert, ["acme", "CALold2", &lead(contact(None, None))]).unwrap();
        conn.execute(insert, ["acme", "CALold3", &lead(LeadDetails::default())]).unwrap();
        conn.execute(insert, ["bayside", "CALold1", &lead(contact(Some("503 555 0148"), None))]).unwrap();
        let heard = analysis_with(CallerDetails { email: Some("Spoken@example.com".into()), ..Default::default() });
        conn.execute(
            "INSERT INTO analyses VALUES ('acme', 'CALold2', 'rules/1', ?1, '2024-01-01T00:00:00.000000Z')",
            [serde_json::to_string(&heard).unwrap()],
        )
        .unwrap();
    }
    let store: Arc<dyn StateStore> = Arc::new(SqliteStateStore::open(&path, Durability::Full).unwrap());
    let acme = tenant("acme");
    assert_eq!(ids(&store.calls_by_contact(&acme, Some("+15035550148"), None).await.unwrap()), ["CALold1"]);
    assert_eq!(ids(&store.calls_by_contact(&acme, None, Some("kay@example.com")).await.unwrap()), ["CALold1"]);
    assert_eq!(ids(&store.calls_by_contact(&acme, None, Some("spoken@example.com")).await.unwrap()), ["CALold2"]);
    assert_eq!(
        ids(&store.calls_by_contact(&tenant("bayside"), Some("+15035550148"), None).await.unwrap()),
        ["CALold1"]
    );
    let old = CallScan { created_before: Some(days_ago(30)), limit: 10, ..CallScan::default() };
    assert_eq!(ids(&store.scan_calls(&acme, &old).await.unwrap()), ["CALold1", "CALold2", "CALold3"]);
    // The erasure requests' table came with the upgrade.
    let request = erasure_request("acme", "era-1", Some("+15035550148"), None, days_ago(0));
    assert!(store.request_erasure(&request).await.unwrap());
    assert_eq!(store.erasure_requests(&acme, true, 10).await.unwrap(), [request]);
    drop(store);
    // Opening it again (the columns now there) is a no-op.
    let again = SqliteStateStore::open(&path, Durability::Full).unwrap();
    assert_eq!(
        ids(&again.calls_by_contact(&acme, Some("+15035550148"), Some("spoken@example.com")).await.unwrap()),
        ["CALold1", "CALold2"]
    );
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

#[tokio::test]
async fn spanner_cleanup_scans_are_paged_and_tenant_scoped() {
    if let Some(s) = spanner().await {
        cleanup_scans_are_paged_and_tenant_scoped(s).await;
    }
}

#[tokio::test]
async fn spanner_calls_are_found_by_contact() {
    if let Some(s) = spanner().await {
        calls_are_found_by_contact(s).await;
    }
}

#[tokio::test]
async fn spanner_erasure_blanks_the_call_and_logs_it() {
    if let Some(s) = spanner().await {
        erasure_blanks_the_call_and_logs_it(s).await;
    }
}

#[tokio::test]
async fn spanner_erasure_forgets_the_caller_where_the_call_quotes_them() {
    if let Some(s) = spanner().await {
        erasure_forgets_the_caller_where_the_call_quotes_them(s).await;
    }
}

#[tokio::test]
async fn spanner_scans_have_an_inclusive_created_from() {
    if let Some(s) = spanner().await {
        scans_have_an_inclusive_created_from(s).await;
    }
}

#[tokio::test]
async fn spanner_erasure_removes_what_it_names() {
    if let Some(s) = spanner().await {
        erasure_removes_what_it_names(s).await;
    }
}

#[tokio::test]
async fn spanner_erasure_requests_are_kept_until_carried_out() {
    if let Some(s) = spanner().await {
        erasure_requests_are_kept_until_carried_out(s).await;
    }
}

#[tokio::test]
async fn spanner_job_cursors_are_per_tenant_and_job() {
    if let Some(s) = spanner().await {
        job_cursors_are_per_tenant_and_job(s).await;
    }
}

/// A database an older release left (migrations 1–4) with calls in it: migration 5 adds the contact keys and
/// backfills them from the leads (and an email only the analysis heard).
#[tokio::test]
async fn spanner_an_older_database_gains_contact_keys() {
    let Some(fresh) = spanner_database().await else { return };
    let instance = fresh.rsplit_once("/databases/").unwrap().0.to_owned();
    let database = format!("{instance}/databases/o{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    callflow::adapters::spanner::migrate_to(&database, 4).await.unwrap();
    {
        use gcloud_spanner::client::{Client, ClientConfig};
        use gcloud_spanner::mutation::insert;
        let host = std::env::var("SPANNER_EMULATOR_HOST").unwrap();
        let config =
            ClientConfig { environment: gcloud_gax::conn::Environment::Emulator(host), ..ClientConfig::default() };
        let client = Client::new(&database, config).await.unwrap();
        let columns = ["tenant_id", "call_id", "source", "state", "lead_json", "created_at", "updated_at"];
        let at = time::OffsetDateTime::from_unix_timestamp(1_704_067_200).unwrap();
        let row = |t: &str, c: &str, lead: LeadDetails| {
            let lead = serde_json::to_string(&lead).unwrap();
            insert("calls", &columns, &[&t, &c, &"callrail", &"analysed", &lead, &at, &at])
        };
        let heard = analysis_with(CallerDetails { email: Some("Spoken@example.com".into()), ..Default::default() });
        client
            .apply(vec![
                row("acme", "CALold1", contact(Some("(503) 555-0148"), Some("Kay@Example.com"))),
                row("acme", "CALold2", contact(None, None)),
                row("acme", "CALold3", LeadDetails::default()),
                row("bayside", "CALold1", contact(Some("503 555 0148"), None)),
                insert(
                    "analyses",
                    &["tenant_id", "call_id", "analyzer", "analysis_json", "created_at"],
                    &[&"acme", &"CALold2", &"rules/1", &serde_json::to_string(&heard).unwrap(), &at],
                ),
            ])
            .await
            .unwrap();
        client.close().await;
    }
    callflow::adapters::spanner::migrate(&database).await.unwrap();
    let store: Arc<dyn StateStore> = Arc::new(SpannerStateStore::connect(&database).await.unwrap());
    let acme = tenant("acme");
    assert_eq!(ids(&store.calls_by_contact(&acme, Some("+15035550148"), None).await.unwrap()), ["CALold1"]);
    assert_eq!(ids(&store.calls_by_contact(&acme, None, Some("kay@example.com")).await.unwrap()), ["CALold1"]);
    assert_eq!(ids(&store.calls_by_contact(&acme, None, Some("spoken@example.com")).await.unwrap()), ["CALold2"]);
    assert_eq!(
        ids(&store.calls_by_contact(&tenant("bayside"), Some("+15035550148"), None).await.unwrap()),
        ["CALold1"]
    );
    let old = CallScan { created_before: Some(days_ago(30)), limit: 10, ..CallScan::default() };
    assert_eq!(ids(&store.scan_calls(&acme, &old).await.unwrap()), ["CALold1", "CALold2", "CALold3"]);
    // The erasure requests' table came with the upgrade.
    let request = erasure_request("acme", "era-1", Some("+15035550148"), None, days_ago(0));
    assert!(store.request_erasure(&request).await.unwrap());
    assert_eq!(store.erasure_requests(&acme, true, 10).await.unwrap(), [request]);
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
