//! The normalized transcript every engine's output becomes (written as `{tenant}/{call}.json` to the transcripts
//! bucket), and the rules that turn an engine's timed words into it. Pure: no I/O.

use serde::{Deserialize, Serialize};

use super::call::LeadDetails;
use super::tenant::{EngineChoice, TranscriptionSettings};

pub const TRANSCRIPT_SCHEMA_VERSION: u32 = 1;

/// A pause at least this long starts a new segment even when the speaker does not change.
pub const SEGMENT_PAUSE_SECS: f64 = 1.5;

/// Who spoke, as far as the engine could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Caller,
    Business,
    /// The engine does not separate speakers (the offline engine), or could not.
    Unknown,
}

/// How far the next stage can trust the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// A cloud speech model with diarization.
    Standard,
    /// Supplied by CallRail with the call.
    Provided,
    /// The offline engine: many words will be wrong; speakers are not separated.
    Low,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub speaker: Speaker,
    /// Seconds from the start of the recording.
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// Mean word confidence, 0–1, when the engine gives one.
    pub confidence: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub schema_version: u32,
    pub tenant_id: String,
    pub call_id: String,
    /// Which engine and model produced it, e.g. `google-speech-v2/chirp_3`, `callrail`, `pocketsphinx`.
    pub engine: String,
    pub quality: Quality,
    /// BCP-47, e.g. `en-US`.
    pub language: String,
    pub duration_secs: f64,
    pub segments: Vec<Segment>,
}

/// The engine name of a form's transcript.
pub const FORM_ENGINE: &str = "form";

impl Transcript {
    /// A web form's submission as a transcript: what the sender wrote, as the caller's words (engine `form`,
    /// quality `provided`), so the analysis and delivery that follow treat forms and calls alike.
    pub fn from_form(tenant_id: &str, call_id: &str, lead: &super::call::LeadDetails, language: &str) -> Self {
        let mut text = String::new();
        if let Some(form) = lead.form_name.as_deref().filter(|f| !f.trim().is_empty()) {
            text.push_str(&format!("(web form: {form}) "));
        }
        text.push_str(lead.message.as_deref().unwrap_or("").trim());
        Self {
            schema_version: 1,
            tenant_id: tenant_id.into(),
            call_id: call_id.into(),
            engine: FORM_ENGINE.into(),
            quality: Quality::Provided,
            language: language.into(),
            duration_secs: 0.0,
            segments: vec![Segment {
                speaker: Speaker::Caller,
                start: 0.0,
                end: 0.0,
                text: text.trim().to_owned(),
                confidence: None,
            }],
        }
    }

    /// The whole text, segments joined by newlines, each prefixed with its speaker.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            let who = match s.speaker {
                Speaker::Caller => "caller",
                Speaker::Business => "business",
                Speaker::Unknown => "speaker",
            };
            out.push_str(who);
            out.push_str(": ");
            out.push_str(&s.text);
            out.push('\n');
        }
        out
    }

    pub fn word_count(&self) -> usize {
        self.segments.iter().map(|s| s.text.split_whitespace().count()).sum()
    }
}

/// One recognized word with its timing, as engines report them.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start: f64,
    pub end: f64,
    pub confidence: Option<f32>,
    /// The engine's diarization label (`"1"`, `"2"`, …), if any.
    pub speaker_label: Option<String>,
}

/// Map diarization labels to caller and business. On a tracked inbound call the business answers, so the label
/// heard first is the business and the next one the caller; further labels (a transfer, a second person) are
/// `Unknown` rather than guessed.
pub fn speakers(words: &[Word]) -> impl Fn(Option<&str>) -> Speaker + '_ {
    let mut order: Vec<&str> = Vec::new();
    for w in words {
        if let Some(label) = w.speaker_label.as_deref().filter(|l| !l.is_empty())
            && !order.contains(&label)
        {
            order.push(label);
        }
    }
    move |label| match label.and_then(|l| order.iter().position(|o| *o == l)) {
        Some(0) => Speaker::Business,
        Some(1) => Speaker::Caller,
        _ => Speaker::Unknown,
    }
}

/// Timed words → segments: a new segment when the speaker changes or after a pause of `SEGMENT_PAUSE_SECS`.
/// Words without text (fillers an engine marks) are dropped; words are taken in time order.
pub fn segments_from_words(words: &[Word]) -> Vec<Segment> {
    let mut sorted: Vec<&Word> = words.iter().filter(|w| !w.text.trim().is_empty()).collect();
    sorted.sort_by(|a, b| a.start.total_cmp(&b.start));
    let speaker_of = speakers(words);
    let mut segments: Vec<Segment> = Vec::new();
    let mut confidences: Vec<Vec<f32>> = Vec::new();
    for w in sorted {
        let speaker = speaker_of(w.speaker_label.as_deref());
        let continues = segments.last().is_some_and(|s| s.speaker == speaker && w.start - s.end < SEGMENT_PAUSE_SECS);
        if !continues {
            segments.push(Segment { speaker, start: w.start, end: w.end, text: String::new(), confidence: None });
            confidences.push(Vec::new());
        }
        let (segment, conf) = (segments.last_mut().expect("pushed"), confidences.last_mut().expect("pushed"));
        if !segment.text.is_empty() {
            segment.text.push(' ');
        }
        segment.text.push_str(w.text.trim());
        segment.end = segment.end.max(w.end);
        conf.extend(w.confidence);
    }
    for (segment, conf) in segments.iter_mut().zip(confidences) {
        if !conf.is_empty() {
            segment.confidence = Some(conf.iter().sum::<f32>() / conf.len() as f32);
        }
    }
    segments
}

/// What on-audio-uploaded does with a call's recording.
#[derive(Debug, Clone, PartialEq)]
pub enum TranscriptionPlan {
    /// Not worth transcribing: the call moves to `skipped` with this reason.
    Skip {
        reason: &'static str,
    },
    /// CallRail already transcribed it: use that, no engine, no cost.
    UseCallRail {
        text: String,
    },
    Transcribe {
        engine: EngineChoice,
        language: String,
    },
}

/// The cost rules, in order: unanswered calls without a voicemail, voicemails shorter than the tenant's
/// threshold and calls shorter than its minimum are skipped; a transcript CallRail supplied is used as is;
/// otherwise the tenant's engine (or the deployment's default). A duration CallRail did not report skips nothing.
pub fn plan(lead: &LeadDetails, settings: &TranscriptionSettings, default_engine: EngineChoice) -> TranscriptionPlan {
    let voicemail = lead.voicemail == Some(true);
    if lead.answered == Some(false) && !voicemail {
        return TranscriptionPlan::Skip { reason: "unanswered" };
    }
    if let Some(secs) = lead.duration_secs {
        if voicemail && secs < settings.min_voicemail_secs {
            return TranscriptionPlan::Skip { reason: "short_voicemail" };
        }
        if !voicemail && secs < settings.min_call_secs {
            return TranscriptionPlan::Skip { reason: "short_call" };
        }
    }
    if let Some(text) = lead.transcription.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        return TranscriptionPlan::UseCallRail { text: text.to_owned() };
    }
    TranscriptionPlan::Transcribe {
        engine: settings.engine.unwrap_or(default_engine),
        language: settings.language.clone(),
    }
}

/// CallRail's own transcript of a call (`transcription` in the webhook or the API), as segments. CallRail sends
/// text, one turn per line when it labels speakers (`Agent: …`, `Caller: …`/`Customer: …`); unlabelled text is
/// one `Unknown` segment. It has no word timings: each turn gets a share of the call's duration in proportion to
/// its words, so segments keep their order and rough position (the quality says the text was provided).
pub fn segments_from_callrail(text: &str, duration_secs: f64) -> Vec<Segment> {
    let mut turns: Vec<(Speaker, String)> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let labelled = line.split_once(':').and_then(|(label, rest)| {
            let speaker = match label.trim().to_ascii_lowercase().as_str() {
                "agent" | "business" | "employee" | "rep" => Speaker::Business,
                "caller" | "customer" | "client" => Speaker::Caller,
                _ => return None,
            };
            Some((speaker, rest.trim()))
        });
        match labelled {
            Some((speaker, rest)) => turns.push((speaker, rest.to_owned())),
            // A continuation of the previous turn, or unlabelled text.
            None => match turns.last_mut() {
                Some((_, previous)) => {
                    previous.push(' ');
                    previous.push_str(line);
                }
                None => turns.push((Speaker::Unknown, line.to_owned())),
            },
        }
    }
    turns.retain(|(_, t)| !t.is_empty());
    let total_words: usize = turns.iter().map(|(_, t)| t.split_whitespace().count()).sum();
    let (duration, mut words_before) = (duration_secs.max(0.0), 0usize);
    let at = |words: usize| if total_words == 0 { 0.0 } else { duration * words as f64 / total_words as f64 };
    turns
        .into_iter()
        .map(|(speaker, text)| {
            let start = at(words_before);
            words_before += text.split_whitespace().count();
            Segment { speaker, start, end: at(words_before), text, confidence: None }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str, start: f64, end: f64, speaker: Option<&str>) -> Word {
        Word { text: text.into(), start, end, confidence: Some(0.8), speaker_label: speaker.map(str::to_owned) }
    }

    #[test]
    fn the_first_voice_is_the_business_the_second_the_caller() {
        let words = vec![
            w("Thanks", 0.2, 0.5, Some("2")),
            w("for", 0.5, 0.6, Some("2")),
            w("calling", 0.6, 1.0, Some("2")),
            w("Hi", 1.4, 1.6, Some("1")),
            w("kitchen", 1.7, 2.1, Some("1")),
            w("Sure", 2.5, 2.8, Some("2")),
            w("Also", 3.0, 3.2, Some("3")),
        ];
        let segments = segments_from_words(&words);
        let got: Vec<(Speaker, &str)> = segments.iter().map(|s| (s.speaker, s.text.as_str())).collect();
        assert_eq!(
            got,
            [
                (Speaker::Business, "Thanks for calling"),
                (Speaker::Caller, "Hi kitchen"),
                (Speaker::Business, "Sure"),
                (Speaker::Unknown, "Also")
            ]
        );
        assert_eq!((segments[1].start, segments[1].end), (1.4, 2.1));
        assert_eq!(segments[0].confidence, Some(0.8));
    }

    #[test]
    fn long_pauses_split_a_speaker_and_unlabelled_words_are_unknown() {
        let words = vec![w("one", 0.0, 0.4, None), w("two", 0.5, 0.9, None), w("three", 3.0, 3.4, None)];
        let segments = segments_from_words(&words);
        assert_eq!(segments.len(), 2);
        assert!(segments.iter().all(|s| s.speaker == Speaker::Unknown));
        assert_eq!(segments[0].text, "one two");
    }

    #[test]
    fn callrail_transcripts_keep_their_speakers_and_order() {
        let text = "Agent: Thanks for calling Acme.\nCaller: Hi, I need a new roof.\nIt leaks.\n\nAgent: Sure.";
        let segments = segments_from_callrail(text, 10.0);
        let got: Vec<(Speaker, &str)> = segments.iter().map(|s| (s.speaker, s.text.as_str())).collect();
        assert_eq!(
            got,
            [
                (Speaker::Business, "Thanks for calling Acme."),
                (Speaker::Caller, "Hi, I need a new roof. It leaks."),
                (Speaker::Business, "Sure.")
            ]
        );
        assert_eq!((segments[0].start, segments[2].end), (0.0, 10.0));
        assert!(segments.windows(2).all(|p| p[0].end <= p[1].start + 1e-9));
        let plain = segments_from_callrail("we need a bathroom remodel", 4.0);
        assert_eq!((plain.len(), plain[0].speaker), (1, Speaker::Unknown));
        assert!(segments_from_callrail("  \n ", 4.0).is_empty());
    }

    #[test]
    fn cost_rules_skip_what_is_not_worth_transcribing() {
        let settings = TranscriptionSettings::default(); // 15 s calls, 8 s voicemails
        let lead = |answered: Option<bool>, voicemail: Option<bool>, secs: Option<u32>| LeadDetails {
            answered,
            voicemail,
            duration_secs: secs,
            ..LeadDetails::default()
        };
        let decide = |l: &LeadDetails| plan(l, &settings, EngineChoice::Offline);
        assert_eq!(decide(&lead(Some(false), Some(false), Some(40))), TranscriptionPlan::Skip { reason: "unanswered" });
        assert_eq!(
            decide(&lead(Some(false), Some(true), Some(5))),
            TranscriptionPlan::Skip { reason: "short_voicemail" }
        );
        assert!(matches!(decide(&lead(Some(false), Some(true), Some(8))), TranscriptionPlan::Transcribe { .. }));
        assert_eq!(decide(&lead(Some(true), None, Some(14))), TranscriptionPlan::Skip { reason: "short_call" });
        let call = decide(&lead(Some(true), None, Some(15)));
        assert_eq!(call, TranscriptionPlan::Transcribe { engine: EngineChoice::Offline, language: "en-US".into() });
        // Unknown duration: transcribe rather than guess.
        assert!(matches!(decide(&lead(Some(true), None, None)), TranscriptionPlan::Transcribe { .. }));
        // CallRail's transcript wins over any engine; the tenant's engine over the deployment's default.
        let mut with_text = lead(Some(true), None, Some(60));
        with_text.transcription = Some(" Agent: hello ".into());
        assert_eq!(decide(&with_text), TranscriptionPlan::UseCallRail { text: "Agent: hello".into() });
        let google = TranscriptionSettings { engine: Some(EngineChoice::Google), ..TranscriptionSettings::default() };
        let chosen = plan(&lead(Some(true), None, Some(60)), &google, EngineChoice::Offline);
        assert!(matches!(chosen, TranscriptionPlan::Transcribe { engine: EngineChoice::Google, .. }));
    }

    #[test]
    fn the_json_shape_is_stable() {
        let t = Transcript {
            schema_version: TRANSCRIPT_SCHEMA_VERSION,
            tenant_id: "acme".into(),
            call_id: "CAL1".into(),
            engine: "pocketsphinx".into(),
            quality: Quality::Low,
            language: "en-US".into(),
            duration_secs: 3.4,
            segments: segments_from_words(&[w("hello", 0.0, 0.4, None)]),
        };
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["quality"], "low");
        assert_eq!(json["segments"][0]["speaker"], "unknown");
        assert_eq!(serde_json::from_value::<Transcript>(json).unwrap(), t);
        assert_eq!((t.text(), t.word_count()), ("speaker: hello\n".to_owned(), 1));
    }
}
