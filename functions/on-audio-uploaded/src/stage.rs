//! The stage: one storage event → at most one transcription per recording generation.
//!
//! Order of business: read the event (poison → dead letter, acknowledged); check the object against the naming
//! contract, then the tenant and the call (poison again when they do not fit); claim `transcribe:{generation}`
//! (a redelivery finds it done or busy); plan (cost skip, CallRail's transcript, or an engine); transcribe; write
//! the transcript object; commit the call's transition with its analytics row. A retryable failure gives the
//! claim back and answers 503 (redelivered with the trigger's backoff) until the trigger's attempts are used up,
//! when the call is dead-lettered instead of left waiting.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use callflow::domain::analytics::{StageCost, StageEvent};
use callflow::domain::stage_object::{AUDIO_EXTENSIONS, Expected, StageObject};
use callflow::domain::tenant::{EngineChoice, Tenant};
use callflow::domain::transcript::{self, Quality, TRANSCRIPT_SCHEMA_VERSION, Transcript, TranscriptionPlan};
use callflow::domain::work::{Completion, NewWork, Transition};
use callflow::domain::{CallRecord, CallState};
use callflow::ports::{AudioRef, NewObject, ObjectInfo, StageClaim};
use callflow::runtime::cloudevent::{EventError, Incoming, IncomingEvent};
use callflow::runtime::storage_stage::{self, Admitted, Deps, Early, StageSpec};
use serde_json::json;
use tracing::Instrument;

use crate::Service;

pub const STAGE: &str = "on-audio-uploaded";
/// A transcript is JSON text: hours of speech fit well under this.
pub const MAX_TRANSCRIPT_BYTES: u64 = 16 * 1024 * 1024;
/// Marks the transcript object with the recording generation it was made from.
pub const RECORDING_GENERATION: &str = "recording_generation";
/// The transcript object's metadata key for the transcription's estimated cost.
pub const COST_USD: &str = "cost_usd";

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The transcript is written and the call is `transcribed`. `reused`: an earlier attempt had written it
    /// (and paid for it) but crashed before committing.
    Transcribed { object: String, engine: String, reused: bool },
    /// A cost skip: the call is `skipped` with this reason.
    Skipped { reason: String },
    /// The call could not be transcribed for good; it is `dead_lettered`.
    DeadLettered { reason: String },
    /// Ended before any work: a duplicate, not needed, refused, busy, or to retry.
    Early(Early),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Transcribed { .. } => "transcribed",
            Self::Skipped { .. } => "skipped",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Early(e) => e.name(),
        }
    }
}

/// `POST /`: a storage event, in any of the three CloudEvent shapes.
pub async fn handle(State(service): State<Service>, Incoming(event): Incoming) -> Response {
    let outcome = process(&service, event).await;
    if !matches!(outcome, Outcome::Early(_)) {
        // On Cloud Run this function has CPU only while it answers: deliver the row now. Rows left behind
        // (a failed insert) wait in the outbox for the next flush, here or in another function.
        let p = &service.ports;
        callflow::runtime::analytics_outbox::flush(p.state.as_ref(), p.analytics.as_ref(), p.clock.as_ref()).await;
    }
    match outcome {
        Outcome::Early(early) => storage_stage::respond(&early),
        done => storage_stage::acknowledge(done.name()),
    }
}

fn millis_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Handle one delivery. Public for tests and the benchmark, which call it without HTTP.
pub async fn process(service: &Service, event: Result<IncomingEvent, EventError>) -> Outcome {
    let started = Instant::now();
    let (p, settings) = (&service.ports, &service.settings);
    let spec = StageSpec {
        stage: STAGE,
        expected: Expected {
            bucket: &settings.recordings_bucket,
            extensions: AUDIO_EXTENSIONS,
            media: "audio",
            max_bytes: settings.max_recording_bytes,
        },
        to: CallState::Transcribed,
        claim_prefix: "transcribe",
        lease: settings.lease,
    };
    let deps = Deps { tenants: p.tenants.as_ref(), state: p.state.as_ref(), clock: p.clock.as_ref() };
    let Admitted { tenant, call, object, claim } = match storage_stage::admit(&spec, &deps, event).await {
        Ok(a) => a,
        Err(early) => return Outcome::Early(early),
    };
    let span = tracing::info_span!(
        "transcribe",
        tenant_id = %object.tenant_id,
        call_id = %object.call_id,
        generation = object.generation
    );
    let run = Run { service, claim, call, object, started };
    async move {
        let outcome = run.work(&tenant).await;
        match &outcome {
            Outcome::Early(Early::Retry { error }) => {
                tracing::warn!(error = %error, "transcription failed; the event will be redelivered")
            }
            Outcome::DeadLettered { reason } => tracing::error!(reason = %reason, "call dead-lettered"),
            o => tracing::info!(outcome = o.name(), stage_ms = millis_since(started), "recording handled"),
        }
        outcome
    }
    .instrument(span)
    .await
}

/// What the stage did, for the analytics row.
struct Done<'a> {
    to: Option<CallState>,
    outcome: &'a str,
    reason: Option<&'a str>,
    engine: Option<&'a str>,
    audio_secs: Option<f64>,
    cost_usd: Option<f64>,
}

/// One claimed recording.
struct Run<'a> {
    service: &'a Service,
    claim: StageClaim,
    call: CallRecord,
    object: StageObject,
    started: Instant,
}

impl Run<'_> {
    async fn work(&self, tenant: &Tenant) -> Outcome {
        let settings = &self.service.settings;
        match transcript::plan(&self.call.lead, &tenant.transcription, settings.default_engine) {
            TranscriptionPlan::Skip { reason } => {
                let done = Done {
                    to: Some(CallState::Skipped),
                    outcome: "skipped",
                    reason: Some(reason),
                    engine: None,
                    audio_secs: None,
                    cost_usd: None,
                };
                self.finish(&done, None).await.unwrap_or_else(|| Outcome::Skipped { reason: reason.into() })
            }
            TranscriptionPlan::UseCallRail { text } => {
                let duration = f64::from(self.call.lead.duration_secs.unwrap_or(0));
                let transcript = Transcript {
                    schema_version: TRANSCRIPT_SCHEMA_VERSION,
                    tenant_id: self.object.tenant_id.to_string(),
                    call_id: self.object.call_id.to_string(),
                    engine: "callrail".into(),
                    quality: Quality::Provided,
                    language: tenant.transcription.language.clone(),
                    duration_secs: duration,
                    segments: transcript::segments_from_callrail(&text, duration),
                };
                self.deliver(&transcript, Some(0.0)).await
            }
            TranscriptionPlan::Transcribe { engine, language } => self.transcribe(engine, language).await,
        }
    }

    async fn transcribe(&self, engine: EngineChoice, language: String) -> Outcome {
        let p = &self.service.ports;
        let (bucket, name) = (&self.service.settings.recordings_bucket, self.recording_name());
        // The engine reads the live object: it must still be this event's generation. The offline engine needs the
        // bytes, so for it one read gives both; Speech-to-Text reads the object itself, so the metadata is enough.
        let read = match engine {
            EngineChoice::Google => p.objects.head(bucket, &name).await.map(|o| o.map(|info| (info, None))),
            EngineChoice::Offline => {
                p.objects.get(bucket, &name).await.map(|o| o.map(|(info, body)| (info, Some(body))))
            }
        };
        let data = match read {
            Ok(Some((info, data))) if info.generation == self.object.generation => data,
            Ok(Some((info, _))) => {
                let why = format!("superseded by generation {}", info.generation);
                return self.finish_quietly(why).await;
            }
            Ok(None) => return self.finish_quietly("the recording was deleted".into()).await,
            Err(e) => return self.fail(format!("reading the recording: {e}"), e.retryable).await,
        };
        // An earlier attempt wrote (and paid for) this generation's transcript, then crashed before committing.
        match p.objects.get(&self.service.settings.transcripts_bucket, &self.transcript_name()).await {
            Ok(Some((info, body))) if self.made_from_this_recording(&info) => {
                if let Ok(t) = serde_json::from_slice::<Transcript>(&body) {
                    return self.commit(&t, &info, None, true).await;
                }
            }
            Ok(_) => {}
            Err(e) => return self.fail(format!("reading an earlier transcript: {e}"), e.retryable).await,
        }
        let lead = &self.call.lead;
        let audio = AudioRef {
            bucket: bucket.clone(),
            name,
            generation: self.object.generation,
            content_type: self.object.content_type.clone(),
            size: self.object.size,
            duration_secs: lead.recording_duration_secs.or(lead.duration_secs).map(f64::from),
            language,
        };
        let transcriber = match engine {
            EngineChoice::Google => &p.google,
            EngineChoice::Offline => &p.offline,
        };
        let engine_started = Instant::now();
        let recognized = match transcriber.transcribe(&audio, data).await {
            Ok(r) => r,
            Err(e) => return self.fail(format!("transcription: {e}"), e.is_retryable()).await,
        };
        tracing::info!(
            engine = %recognized.engine,
            audio_secs = recognized.duration_secs,
            words = recognized.words.len(),
            engine_ms = millis_since(engine_started),
            "recognized"
        );
        let cost = match engine {
            EngineChoice::Google => recognized.billed_secs / 60.0 * self.service.settings.speech_usd_per_minute,
            EngineChoice::Offline => 0.0,
        };
        let transcript = Transcript {
            schema_version: TRANSCRIPT_SCHEMA_VERSION,
            tenant_id: self.object.tenant_id.to_string(),
            call_id: self.object.call_id.to_string(),
            engine: recognized.engine,
            quality: recognized.quality,
            language: recognized.language,
            duration_secs: recognized.duration_secs,
            segments: transcript::segments_from_words(&recognized.words),
        };
        self.deliver(&transcript, Some(cost)).await
    }

    fn recording_name(&self) -> String {
        format!("{}/{}.{}", self.object.tenant_id, self.object.call_id, self.object.extension)
    }

    fn transcript_name(&self) -> String {
        format!("{}/{}.json", self.object.tenant_id, self.object.call_id)
    }

    fn made_from_this_recording(&self, info: &ObjectInfo) -> bool {
        info.metadata.get(RECORDING_GENERATION).and_then(|g| g.parse::<i64>().ok()) == Some(self.object.generation)
    }

    /// Write the transcript object, then commit.
    async fn deliver(&self, transcript: &Transcript, cost_usd: Option<f64>) -> Outcome {
        let body = match serde_json::to_vec(transcript) {
            Ok(b) => Bytes::from(b),
            Err(e) => return self.fail(format!("serializing the transcript: {e}"), false).await,
        };
        let metadata = BTreeMap::from([
            ("tenant_id".to_owned(), transcript.tenant_id.clone()),
            ("call_id".to_owned(), transcript.call_id.clone()),
            ("engine".to_owned(), transcript.engine.clone()),
            ("quality".to_owned(), json!(transcript.quality).as_str().unwrap_or_default().to_owned()),
            ("language".to_owned(), transcript.language.clone()),
            ("schema_version".to_owned(), transcript.schema_version.to_string()),
            (RECORDING_GENERATION.to_owned(), self.object.generation.to_string()),
        ]);
        // What this transcript cost, so the next stage can report the call's cost so far.
        let mut metadata = metadata;
        if let Some(cost) = cost_usd {
            metadata.insert(COST_USD.to_owned(), format!("{cost:.6}"));
        }
        let name = self.transcript_name();
        let new = NewObject {
            bucket: &self.service.settings.transcripts_bucket,
            name: &name,
            content_type: "application/json",
            metadata,
            max_bytes: MAX_TRANSCRIPT_BYTES,
        };
        let stream = Box::pin(futures::stream::once(async move { Ok(body) }));
        match self.service.ports.objects.put(new, stream).await {
            Ok(info) => self.commit(transcript, &info, cost_usd, false).await,
            Err(e) => self.fail(format!("writing the transcript: {e}"), e.retryable).await,
        }
    }

    async fn commit(&self, t: &Transcript, info: &ObjectInfo, cost_usd: Option<f64>, reused: bool) -> Outcome {
        let done = Done {
            to: Some(CallState::Transcribed),
            outcome: "transcribed",
            reason: None,
            engine: Some(&t.engine),
            audio_secs: Some(t.duration_secs),
            cost_usd,
        };
        let object = format!("{}/{}", info.bucket, info.name);
        let recording = format!("{}/{}", self.service.settings.recordings_bucket, self.recording_name());
        let outcome = Outcome::Transcribed { object, engine: t.engine.clone(), reused };
        self.finish(&done, Some(recording)).await.unwrap_or(outcome)
    }

    /// Mark the claim done with no effect on the call (the event is no longer relevant).
    async fn finish_quietly(&self, why: String) -> Outcome {
        let completion = Completion::default();
        match self.service.ports.state.finish_stage(&self.claim, completion).await {
            Ok(_) => Outcome::Early(Early::NotNeeded { why }),
            Err(e) => self.release(format!("finishing: {e}")).await,
        }
    }

    /// A failure: retry while the trigger's attempts last, else dead-letter the call.
    async fn fail(&self, error: String, retryable: bool) -> Outcome {
        if retryable && self.claim.attempts < self.service.settings.max_attempts {
            return self.release(error).await;
        }
        let reason = if retryable { format!("{error} (after {} attempts)", self.claim.attempts) } else { error };
        let done = Done {
            to: Some(CallState::DeadLettered),
            outcome: "dead_lettered",
            reason: Some(&reason),
            engine: None,
            audio_secs: None,
            cost_usd: None,
        };
        self.finish(&done, None).await.unwrap_or_else(|| Outcome::DeadLettered { reason: reason.clone() })
    }

    async fn release(&self, error: String) -> Outcome {
        // If the release itself fails, the lease runs out and the next delivery takes the claim then.
        let _ = self.service.ports.state.release_stage(&self.claim, &error).await;
        Outcome::Early(Early::Retry { error })
    }

    /// What a transcription cost, for the `costs` table: Speech-to-Text bills per request by audio length; the
    /// offline engine and CallRail's own transcript cost nothing.
    fn cost_row(&self, done: &Done<'_>, call: &CallRecord, at: chrono::DateTime<chrono::Utc>) -> Option<NewWork> {
        if done.outcome != "transcribed" {
            return None;
        }
        let billed = done.engine.is_some_and(|e| e.starts_with("google-speech"));
        let cost = StageCost {
            call,
            stage: STAGE,
            engine: done.engine,
            audio_secs: done.audio_secs,
            prompt_tokens: None,
            output_tokens: None,
            api_calls: u32::from(billed),
            usd: done.cost_usd.unwrap_or(0.0),
            at,
        };
        Some(cost.into_row(&self.object.generation.to_string()).work())
    }

    /// Commit the claim with the call's transition and its analytics row. `None`: committed (the caller's
    /// outcome stands); `Some`: what happened instead.
    async fn finish(&self, done: &Done<'_>, recording_object: Option<String>) -> Option<Outcome> {
        let now = self.service.ports.clock.now();
        let mut after = self.call.clone();
        if let Some(to) = done.to {
            after.state = to;
        }
        let row = StageEvent {
            call: &after,
            stage: STAGE,
            outcome: done.outcome,
            event_kind: Some("recording_finalized"),
            at: now,
            stage_duration_ms: Some(millis_since(self.started)),
            attempts: Some(self.claim.attempts),
            bytes: Some(self.object.size),
            cost_usd: done.cost_usd,
            reason: done.reason,
            engine: done.engine,
            audio_secs: done.audio_secs,
        }
        .into_row(&self.object.generation.to_string());
        let completion = Completion {
            transition: done.to.map(|to| Transition {
                to,
                reason: done.reason.map(str::to_owned),
                // The object can arrive before on-webhook's own transition commits; set it here too.
                recording_object: recording_object.clone(),
            }),
            follow_up: std::iter::once(row.work()).chain(self.cost_row(done, &after, now)).collect(),
            dead_letter: (done.to == Some(CallState::DeadLettered)).then(|| done.reason.unwrap_or("").to_owned()),
            analysis: None,
            delivery: None,
        };
        match self.service.ports.state.finish_stage(&self.claim, completion).await {
            Ok(true) => None,
            // Our lease ran out and another delivery holds the claim now: it finishes the work.
            Ok(false) => Some(Outcome::Early(Early::Busy { until: now })),
            Err(e) => Some(self.release(format!("committing: {e}")).await),
        }
    }
}
