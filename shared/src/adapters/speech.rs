//! Google Speech-to-Text v2 (official `google-cloud-speech-v2`, REST transport): a Chirp model, two-speaker
//! diarization, automatic punctuation, word timings and confidences. Recordings up to a minute go through
//! `Recognize`; longer ones through `BatchRecognize`, which reads the `gs://` object itself and is a long-running
//! operation the client polls, with the result returned inline. Errors map once: 429, 5xx, deadline and transport
//! are retryable, the rest permanent.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_auth::credentials::Credentials;
use google_cloud_lro::Poller;
use google_cloud_speech_v2::client::Speech;
use google_cloud_speech_v2::model::{
    AutoDetectDecodingConfig, BatchRecognizeFileMetadata, InlineOutputConfig, RecognitionConfig, RecognitionFeatures,
    RecognitionOutputConfig, SpeakerDiarizationConfig, SpeechRecognitionResult,
};

use crate::domain::transcript::{Quality, Word};
use crate::ports::{AudioRef, Recognized, Transcriber, VendorError};

/// `Recognize` takes up to one minute of audio.
pub const SHORT_AUDIO_SECS: f64 = 60.0;

pub struct SpeechToText {
    client: Speech,
    recognizer: String,
    model: String,
}

fn seconds(d: Option<&google_cloud_wkt::Duration>) -> f64 {
    d.map_or(0.0, |d| d.seconds() as f64 + f64::from(d.nanos()) / 1e9)
}

fn words(results: &[SpeechRecognitionResult]) -> (Vec<Word>, String, f64) {
    let mut out = Vec::new();
    let (mut language, mut end) = (String::new(), 0.0f64);
    for result in results {
        end = end.max(seconds(result.result_end_offset.as_ref()));
        if language.is_empty() {
            language = result.language_code.clone();
        }
        // The first alternative is the most likely; the others are not wanted here.
        let Some(best) = result.alternatives.first() else { continue };
        for w in &best.words {
            out.push(Word {
                text: w.word.clone(),
                start: seconds(w.start_offset.as_ref()),
                end: seconds(w.end_offset.as_ref()),
                confidence: (w.confidence > 0.0).then_some(w.confidence),
                speaker_label: Some(w.speaker_label.clone()).filter(|l| !l.is_empty()),
            });
        }
    }
    (out, language, end)
}

impl SpeechToText {
    /// The regional endpoint for `location` (e.g. `us`) with Application Default Credentials.
    pub async fn connect(project: &str, location: &str, model: &str) -> anyhow::Result<Self> {
        let endpoint = format!("https://{location}-speech.googleapis.com");
        Self::with(&endpoint, None, project, location, model, Duration::from_secs(5)).await
    }

    /// Another endpoint (tests: a local fake) and credentials; `poll` is the first wait between polls of a
    /// long-running recognition.
    pub async fn with(
        endpoint: &str,
        credentials: Option<Credentials>,
        project: &str,
        location: &str,
        model: &str,
        poll: Duration,
    ) -> anyhow::Result<Self> {
        let backoff = google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder::new()
            .with_initial_delay(poll)
            .with_maximum_delay(Duration::from_secs(60))
            .with_scaling(2.0)
            .build()?;
        let mut builder = Speech::builder().with_endpoint(endpoint).with_polling_backoff_policy(backoff);
        if let Some(credentials) = credentials {
            builder = builder.with_credentials(credentials);
        }
        Ok(Self {
            client: builder.build().await?,
            recognizer: format!("projects/{project}/locations/{location}/recognizers/_"),
            model: model.to_owned(),
        })
    }

    fn config(&self, language: &str) -> RecognitionConfig {
        RecognitionConfig::new()
            .set_auto_decoding_config(AutoDetectDecodingConfig::new())
            .set_model(self.model.clone())
            .set_language_codes([language.to_owned()])
            .set_features(
                RecognitionFeatures::new()
                    .set_enable_word_time_offsets(true)
                    .set_enable_word_confidence(true)
                    .set_enable_automatic_punctuation(true)
                    .set_diarization_config(
                        SpeakerDiarizationConfig::new().set_min_speaker_count(2).set_max_speaker_count(2),
                    ),
            )
    }

    fn recognized(&self, audio: &AudioRef, results: &[SpeechRecognitionResult], billed: f64) -> Recognized {
        let (words, language, end) = words(results);
        Recognized {
            engine: format!("google-speech-v2/{}", self.model),
            quality: Quality::Standard,
            language: if language.is_empty() { audio.language.clone() } else { language },
            duration_secs: audio.duration_secs.unwrap_or(end).max(end),
            words,
            billed_secs: billed,
        }
    }
}

#[async_trait]
impl Transcriber for SpeechToText {
    async fn transcribe(&self, audio: &AudioRef, _data: Option<Bytes>) -> Result<Recognized, VendorError> {
        let uri = audio.gcs_uri();
        if audio.duration_secs.is_some_and(|d| d <= SHORT_AUDIO_SECS) {
            let response = self
                .client
                .recognize()
                .set_recognizer(self.recognizer.clone())
                .set_config(self.config(&audio.language))
                .set_uri(uri)
                .send()
                .await
                .map_err(|e| super::google_vendor_error(&e))?;
            let billed = seconds(response.metadata.as_ref().and_then(|m| m.total_billed_duration.as_ref()));
            return Ok(self.recognized(audio, &response.results, billed));
        }
        let response = self
            .client
            .batch_recognize()
            .set_recognizer(self.recognizer.clone())
            .set_config(self.config(&audio.language))
            .set_files([BatchRecognizeFileMetadata::new().set_uri(uri.clone())])
            .set_recognition_output_config(
                RecognitionOutputConfig::new().set_inline_response_config(InlineOutputConfig::new()),
            )
            .poller()
            .until_done()
            .await
            .map_err(|e| super::google_vendor_error(&e))?;
        let file = response
            .results
            .get(&uri)
            .ok_or_else(|| VendorError::Malformed(format!("BatchRecognize answered without a result for {uri}")))?;
        if let Some(status) = &file.error
            && status.code != 0
        {
            // google.rpc.Code: 8 RESOURCE_EXHAUSTED, 13 INTERNAL, 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED are transient.
            let status_code = match status.code {
                8 => 429,
                4 | 13 | 14 => 503,
                5 => 404,
                _ => 400,
            };
            return Err(VendorError::Status { status: status_code, message: status.message.clone() });
        }
        let results =
            file.inline_result().and_then(|r| r.transcript.as_ref()).map(|t| t.results.as_slice()).unwrap_or_default();
        let billed = seconds(response.total_billed_duration.as_ref());
        Ok(self.recognized(audio, results, billed))
    }
}

/// Where Speech-to-Text is, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechConfig {
    /// `https://{location}-speech.googleapis.com` by default. A plain `http://` endpoint (a local fake) gets
    /// anonymous credentials: tokens never travel unencrypted.
    pub endpoint: String,
    pub project: String,
    pub location: String,
    pub model: String,
}

impl SpeechConfig {
    pub fn regional(project: &str, location: &str, model: &str) -> Self {
        Self {
            endpoint: format!("https://{location}-speech.googleapis.com"),
            project: project.to_owned(),
            location: location.to_owned(),
            model: model.to_owned(),
        }
    }
}

/// Speech-to-Text, connected at first use: a process that never transcribes with it (the embedded default, where
/// tenants use the offline engine) needs no Google credentials. A failed connection is retried at the next use.
pub struct LazySpeechToText {
    config: SpeechConfig,
    client: tokio::sync::OnceCell<SpeechToText>,
}

impl LazySpeechToText {
    pub fn new(config: SpeechConfig) -> Self {
        Self { config, client: tokio::sync::OnceCell::new() }
    }

    async fn client(&self) -> Result<&SpeechToText, VendorError> {
        self.client
            .get_or_try_init(|| async {
                let c = &self.config;
                let credentials = c
                    .endpoint
                    .starts_with("http://")
                    .then(|| google_cloud_auth::credentials::anonymous::Builder::new().build());
                SpeechToText::with(&c.endpoint, credentials, &c.project, &c.location, &c.model, Duration::from_secs(5))
                    .await
            })
            .await
            .map_err(|e| VendorError::Transport(format!("Speech-to-Text client: {e:#}")))
    }
}

#[async_trait]
impl Transcriber for LazySpeechToText {
    async fn transcribe(&self, audio: &AudioRef, data: Option<Bytes>) -> Result<Recognized, VendorError> {
        self.client().await?.transcribe(audio, data).await
    }
}
