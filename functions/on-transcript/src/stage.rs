//! The stage: one transcript event → at most one analysis per transcript generation.
//!
//! After the shared front half (event, object checks, tenant, call, claim): read the transcript; redact it per the
//! tenant; pull the caller's contact details from the raw words (they go to fields only); analyse — Gemini with
//! the answer validated and, once, corrected, or the rules when the tenant says so, when Gemini fails, times out,
//! is blocked or its circuit is open; then commit the analysis, the move to `analysed`, the analytics row and
//! the `analysis-complete` message together, and publish and stream before answering.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use callflow::domain::analysis::{
    self, ANALYSIS_SCHEMA_VERSION, Analysis, CallerDetails, Findings, Usage, validate_answer,
};
use callflow::domain::analytics::{self, StageCost, StageEvent};
use callflow::domain::breaker::Admit;
use callflow::domain::redact::redact;
use callflow::domain::rules::{self, CallFacts, RULES_ANALYZER};
use callflow::domain::stage_object::{Expected, StageObject};
use callflow::domain::tenant::{AnalyzerChoice, Tenant};
use callflow::domain::transcript::{Quality, Segment, Transcript};
use callflow::domain::work::{Completion, PublishMessage, Transition};
use callflow::domain::{CallRecord, CallState};
use callflow::ports::{Finish, GenerateRequest, StageClaim};
use callflow::runtime::cloudevent::{EventError, Incoming, IncomingEvent};
use callflow::runtime::storage_stage::{self, Admitted, Deps, Early, StageSpec};
use serde_json::json;
use tracing::Instrument;

use crate::Service;

pub const STAGE: &str = "on-transcript";
pub const MAX_TRANSCRIPT_BYTES: u64 = 16 * 1024 * 1024;
pub const MESSAGE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Analysed { analyzer: String, fallback: Option<String> },
    DeadLettered { reason: String },
    Early(Early),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Analysed { .. } => "analysed",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::Early(e) => e.name(),
        }
    }
}

/// `POST /`: a storage event for a transcript.
pub async fn handle(State(service): State<Service>, Incoming(event): Incoming) -> Response {
    let outcome = process(&service, event).await;
    if matches!(outcome, Outcome::Analysed { .. } | Outcome::DeadLettered { .. }) {
        // Cloud Run gives CPU during requests only: send the committed message and row now. Anything left (a
        // failed publish or insert) waits in the outbox for the next flush.
        let p = &service.ports;
        callflow::runtime::publish_outbox::flush(p.state.as_ref(), p.publisher.as_ref(), p.clock.as_ref(), 100).await;
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

/// Handle one delivery (tests and benchmarks call this without HTTP).
pub async fn process(service: &Service, event: Result<IncomingEvent, EventError>) -> Outcome {
    let started = Instant::now();
    let (p, settings) = (&service.ports, &service.settings);
    let spec = StageSpec {
        stage: STAGE,
        expected: Expected {
            bucket: &settings.transcripts_bucket,
            extensions: &["json"],
            media: "application/json",
            max_bytes: MAX_TRANSCRIPT_BYTES,
        },
        to: CallState::Analysed,
        claim_prefix: "analyse",
        lease: settings.lease,
    };
    let deps = Deps { tenants: p.tenants.as_ref(), state: p.state.as_ref(), clock: p.clock.as_ref() };
    let Admitted { tenant, call, object, claim } = match storage_stage::admit(&spec, &deps, event).await {
        Ok(a) => a,
        Err(early) => return Outcome::Early(early),
    };
    let span = tracing::info_span!(
        "analyse",
        tenant_id = %object.tenant_id,
        call_id = %object.call_id,
        generation = object.generation
    );
    let run = Run { service, claim, call, object, started };
    async move {
        let outcome = run.work(&tenant).await;
        match &outcome {
            Outcome::Analysed { analyzer, fallback } => tracing::info!(
                analyzer = %analyzer,
                fallback = fallback.as_deref().unwrap_or(""),
                stage_ms = millis_since(started),
                "call analysed"
            ),
            Outcome::DeadLettered { reason } => tracing::error!(reason = %reason, "call dead-lettered"),
            Outcome::Early(e) => tracing::info!(outcome = e.name(), "transcript not analysed"),
        }
        outcome
    }
    .instrument(span)
    .await
}

struct Run<'a> {
    service: &'a Service,
    claim: StageClaim,
    call: CallRecord,
    object: StageObject,
    started: Instant,
}

/// An analysis as produced, before it is stored.
struct Produced {
    analyzer: String,
    fallback: Option<String>,
    findings: Findings,
    usage: Usage,
}

impl Run<'_> {
    async fn work(&self, tenant: &Tenant) -> Outcome {
        let p = &self.service.ports;
        let name = format!("{}/{}.json", self.object.tenant_id, self.object.call_id);
        let (info, body) = match p.objects.get(&self.service.settings.transcripts_bucket, &name).await {
            Ok(Some((info, body))) if info.generation == self.object.generation => (info, body),
            Ok(Some(_)) | Ok(None) => return self.finish_quietly("the transcript was replaced or deleted").await,
            Err(e) => return self.fail(format!("reading the transcript: {e}"), e.retryable).await,
        };
        let transcript: Transcript = match serde_json::from_slice(&body) {
            Ok(t) => t,
            Err(e) => return self.fail(format!("the transcript is not a transcript: {e}"), false).await,
        };
        if transcript.tenant_id != self.object.tenant_id.as_str() || transcript.call_id != self.object.call_id.as_str()
        {
            return self.fail("the transcript names another call".into(), false).await;
        }
        let redacted = redact(&transcript.segments, &tenant.analysis.redaction);
        let contact = rules::extract_contact(&transcript.segments);
        let facts = CallFacts { voicemail: self.call.lead.voicemail == Some(true) };
        let choice = tenant.analysis.analyzer.unwrap_or(self.service.settings.default_analyzer);
        let mut produced = match choice {
            AnalyzerChoice::Rules => self.rules(&redacted.segments, facts, tenant, None),
            AnalyzerChoice::Gemini => self.gemini(tenant, &transcript, &redacted.segments, facts).await,
        };
        produced.findings.caller = merge(produced.findings.caller, contact);
        let transcription_cost: f64 = info.metadata.get("cost_usd").and_then(|c| c.parse().ok()).unwrap_or(0.0);
        let analysis = Analysis {
            schema_version: ANALYSIS_SCHEMA_VERSION,
            analyzer: produced.analyzer.clone(),
            fallback_reason: produced.fallback.clone(),
            findings: produced.findings,
            usage: produced.usage,
            redactions: redacted.total(),
        };
        self.commit(analysis, transcription_cost).await
    }

    fn rules(&self, segments: &[Segment], facts: CallFacts, tenant: &Tenant, fallback: Option<String>) -> Produced {
        Produced {
            analyzer: RULES_ANALYZER.into(),
            fallback,
            findings: rules::analyze(segments, facts, &tenant.analysis.weights),
            usage: Usage::default(),
        }
    }

    /// Gemini, validated and corrected once; the rules whenever it cannot give a valid answer.
    async fn gemini(&self, tenant: &Tenant, t: &Transcript, redacted: &[Segment], facts: CallFacts) -> Produced {
        let (settings, p) = (&self.service.settings, &self.service.ports);
        let now = p.clock.now();
        let admitted = self.service.breaker.lock().expect("breaker lock").admit(now, &settings.breaker);
        if admitted == Admit::Reject {
            return self.rules(redacted, facts, tenant, Some("gemini: circuit open".into()));
        }
        let model = tenant.analysis.model.clone().unwrap_or_else(|| settings.default_model.clone());
        let text: String = redacted.iter().map(|s| format!("{}: {}\n", speaker(s), s.text)).collect();
        let note = (t.quality == Quality::Low).then_some(
            "the transcript comes from an offline engine: expect misheard words; speakers are not separated",
        );
        let mut request = GenerateRequest {
            model: model.clone(),
            prompt: analysis::prompt(&tenant.name, &text, note),
            schema: analysis::response_schema(),
            history: vec![],
            max_output_tokens: settings.max_output_tokens,
        };
        let mut usage = Usage::default();
        let mut outcome: Result<Findings, String> = Err(String::new());
        for attempt in 1..=2 {
            usage.requests += 1;
            let generated = match p.llm.generate(&request).await {
                Ok(g) => g,
                Err(e) => {
                    outcome = Err(format!("gemini: {e}"));
                    break;
                }
            };
            usage.prompt_tokens += generated.prompt_tokens;
            usage.output_tokens += generated.output_tokens;
            if let Finish::Blocked(reason) = &generated.finish {
                outcome = Err(format!("gemini: blocked ({reason})"));
                break;
            }
            match validate_answer(&generated.text) {
                Ok(findings) => {
                    outcome = Ok(findings);
                    break;
                }
                Err(problems) => {
                    tracing::warn!(attempt, problems = %problems.join("; "), "gemini answer did not validate");
                    outcome = Err(format!("gemini: invalid answer twice ({})", problems.join("; ")));
                    request.history.push((generated.text, analysis::correction(&problems)));
                }
            }
        }
        usage.cost_usd = f64::from(usage.prompt_tokens) * settings.usd_per_million_input / 1e6
            + f64::from(usage.output_tokens) * settings.usd_per_million_output / 1e6;
        // Only service failures count against the circuit; an answer that does not validate is the model's.
        let service_failed = matches!(&outcome, Err(e) if !e.starts_with("gemini: invalid") && !e.contains("blocked"));
        let transition =
            self.service.breaker.lock().expect("breaker lock").record(!service_failed, now, &settings.breaker);
        if let Some(t) = transition {
            tracing::warn!(transition = t, "gemini circuit {t}");
        }
        match outcome {
            Ok(findings) => Produced { analyzer: format!("gemini/{model}"), fallback: None, findings, usage },
            Err(reason) => {
                tracing::warn!(reason = %reason, "falling back to the rules analyzer");
                let mut produced = self.rules(redacted, facts, tenant, Some(reason));
                produced.usage = usage;
                produced
            }
        }
    }

    async fn commit(&self, analysis: Analysis, transcription_cost: f64) -> Outcome {
        let settings = &self.service.settings;
        let now = self.service.ports.clock.now();
        let mut after = self.call.clone();
        after.state = CallState::Analysed;
        let usage = analysis.usage;
        let row = StageEvent {
            call: &after,
            stage: STAGE,
            outcome: "analysed",
            event_kind: Some("transcript_finalized"),
            at: now,
            stage_duration_ms: Some(millis_since(self.started)),
            attempts: Some(self.claim.attempts),
            bytes: Some(self.object.size),
            cost_usd: Some(usage.cost_usd),
            reason: analysis.fallback_reason.as_deref(),
            engine: Some(&analysis.analyzer),
            audio_secs: None,
        }
        .into_row(&self.object.generation.to_string())
        .set("prompt_tokens", json!(usage.prompt_tokens))
        .set("output_tokens", json!(usage.output_tokens))
        .set("call_cost_usd", json!(transcription_cost + usage.cost_usd));
        let generation = self.object.generation.to_string();
        let analysed = analytics::analysis_row(&after, &analysis, now, millis_since(self.started), &generation);
        let cost = StageCost {
            call: &after,
            stage: STAGE,
            engine: Some(&analysis.analyzer),
            audio_secs: None,
            prompt_tokens: Some(usage.prompt_tokens),
            output_tokens: Some(usage.output_tokens),
            api_calls: usage.requests,
            usd: usage.cost_usd,
            at: now,
        }
        .into_row(&generation);
        let message = PublishMessage {
            topic: settings.analysis_topic.clone(),
            data: json!({
                "schema_version": MESSAGE_SCHEMA_VERSION,
                "tenant_id": self.object.tenant_id,
                "call_id": self.object.call_id,
                "transcript_generation": self.object.generation.to_string(),
                "analyzer": analysis.analyzer,
            }),
            attributes: BTreeMap::from([
                ("tenant_id".to_owned(), self.object.tenant_id.to_string()),
                ("call_id".to_owned(), self.object.call_id.to_string()),
            ]),
        };
        let outcome =
            Outcome::Analysed { analyzer: analysis.analyzer.clone(), fallback: analysis.fallback_reason.clone() };
        let completion = Completion {
            transition: Some(Transition { to: CallState::Analysed, reason: None, recording_object: None }),
            follow_up: vec![row.work(), analysed.work(), cost.work(), message.work()],
            dead_letter: None,
            analysis: Some(analysis),
            delivery: None,
        };
        match self.service.ports.state.finish_stage(&self.claim, completion).await {
            Ok(true) => outcome,
            Ok(false) => Outcome::Early(Early::Busy { until: now }),
            Err(e) => self.release(format!("committing: {e}")).await,
        }
    }

    async fn finish_quietly(&self, why: &str) -> Outcome {
        match self.service.ports.state.finish_stage(&self.claim, Completion::default()).await {
            Ok(_) => Outcome::Early(Early::NotNeeded { why: why.into() }),
            Err(e) => self.release(format!("finishing: {e}")).await,
        }
    }

    async fn release(&self, error: String) -> Outcome {
        let _ = self.service.ports.state.release_stage(&self.claim, &error).await;
        Outcome::Early(Early::Retry { error })
    }

    /// A failure of the stage itself (the analyzers never fail it: the rules always answer).
    async fn fail(&self, error: String, retryable: bool) -> Outcome {
        if retryable && self.claim.attempts < self.service.settings.max_attempts {
            return self.release(error).await;
        }
        let reason = if retryable { format!("{error} (after {} attempts)", self.claim.attempts) } else { error };
        let now = self.service.ports.clock.now();
        let mut after = self.call.clone();
        after.state = CallState::DeadLettered;
        let row = StageEvent {
            call: &after,
            stage: STAGE,
            outcome: "dead_lettered",
            event_kind: Some("transcript_finalized"),
            at: now,
            stage_duration_ms: Some(millis_since(self.started)),
            attempts: Some(self.claim.attempts),
            bytes: Some(self.object.size),
            cost_usd: None,
            reason: Some(&reason),
            engine: None,
            audio_secs: None,
        }
        .into_row(&self.object.generation.to_string());
        let completion = Completion {
            transition: Some(Transition {
                to: CallState::DeadLettered,
                reason: Some(reason.clone()),
                recording_object: None,
            }),
            follow_up: vec![row.work()],
            dead_letter: Some(reason.clone()),
            analysis: None,
            delivery: None,
        };
        match self.service.ports.state.finish_stage(&self.claim, completion).await {
            Ok(_) => Outcome::DeadLettered { reason },
            Err(e) => self.release(format!("committing: {e}")).await,
        }
    }
}

fn speaker(s: &Segment) -> &'static str {
    match s.speaker {
        callflow::domain::transcript::Speaker::Business => "business",
        callflow::domain::transcript::Speaker::Caller => "caller",
        callflow::domain::transcript::Speaker::Unknown => "speaker",
    }
}

/// The analyzer's caller details completed by what was read from the raw words: the email only ever comes from
/// there (the analyzer saw it redacted).
fn merge(from_analyzer: CallerDetails, local: CallerDetails) -> CallerDetails {
    CallerDetails {
        name: from_analyzer.name.or(local.name),
        email: local.email,
        zip: local.zip.or(from_analyzer.zip),
        callback_time: from_analyzer.callback_time.or(local.callback_time),
    }
}
