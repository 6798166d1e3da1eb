//! The Speech-to-Text v2 adapter against a local fake that answers with the API's real shapes: a diarized
//! `Recognize` result (words, offsets, speaker labels, billed duration), an empty result, 429 / 500 / 400, and a
//! `BatchRecognize` long-running operation polled until done, including a per-file error.

use std::time::Duration;

use callflow::adapters::speech::SpeechToText;
use callflow::domain::transcript::{Quality, Speaker, segments_from_words};
use callflow::ports::{AudioRef, Transcriber, VendorError};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const RECOGNIZE: &str = "/v2/projects/p/locations/us/recognizers/_:recognize";
const BATCH: &str = "/v2/projects/p/locations/us/recognizers/_:batchRecognize";
const OPERATION: &str = "/v2/projects/p/locations/us/operations/op-123";

fn audio(duration: f64) -> AudioRef {
    AudioRef {
        bucket: "recordings".into(),
        name: "acme/CAL1.mp3".into(),
        generation: 7,
        content_type: "audio/mpeg".into(),
        size: 48_000,
        duration_secs: Some(duration),
        language: "en-US".into(),
    }
}

fn word(w: &str, start: f64, end: f64, speaker: &str) -> Value {
    json!({"startOffset": format!("{start:.3}s"), "endOffset": format!("{end:.3}s"), "word": w,
           "confidence": 0.9, "speakerLabel": speaker})
}

/// A two-speaker result as Chirp returns it with diarization on.
fn results() -> Value {
    json!([{
        "alternatives": [{
            "transcript": "Thanks for calling Acme. Hi, I need a kitchen remodel quote.",
            "confidence": 0.91,
            "words": [
                word("Thanks", 0.3, 0.6, "1"), word("for", 0.6, 0.7, "1"), word("calling", 0.7, 1.0, "1"),
                word("Acme.", 1.0, 1.4, "1"), word("Hi,", 2.0, 2.2, "2"), word("I", 2.3, 2.4, "2"),
                word("need", 2.4, 2.6, "2"), word("a", 2.6, 2.7, "2"), word("kitchen", 2.7, 3.1, "2"),
                word("remodel", 3.1, 3.6, "2"), word("quote.", 3.6, 4.0, "2")
            ]
        }],
        "resultEndOffset": "4.200s",
        "languageCode": "en-us"
    }])
}

async fn engine(server: &MockServer) -> SpeechToText {
    let anonymous = google_cloud_auth::credentials::anonymous::Builder::new().build();
    SpeechToText::with(&server.uri(), Some(anonymous), "p", "us", "chirp_3", Duration::from_millis(10)).await.unwrap()
}

#[tokio::test]
async fn short_audio_is_recognized_with_speakers_and_timings() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RECOGNIZE))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "results": results(),
            "metadata": {"requestId": "r-1", "totalBilledDuration": "5s"}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let got = engine(&server).await.transcribe(&audio(4.5), None).await.unwrap();
    assert_eq!(
        (got.engine.as_str(), got.quality, got.billed_secs),
        ("google-speech-v2/chirp_3", Quality::Standard, 5.0)
    );
    assert_eq!((got.language.as_str(), got.duration_secs), ("en-us", 4.5));
    let segments = segments_from_words(&got.words);
    assert_eq!(segments.len(), 2);
    assert_eq!((segments[0].speaker, segments[0].text.as_str()), (Speaker::Business, "Thanks for calling Acme."));
    assert_eq!(segments[1].speaker, Speaker::Caller);
    assert!(segments[1].text.contains("kitchen remodel"));
    assert!((segments[1].start - 2.0).abs() < 1e-9 && (segments[1].end - 4.0).abs() < 1e-9);

    // What was asked: the object by URI, the model, the language, diarization and word timings.
    let request: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(request["uri"], "gs://recordings/acme/CAL1.mp3");
    assert_eq!(request["config"]["model"], "chirp_3");
    assert_eq!(request["config"]["languageCodes"][0], "en-US");
    assert_eq!(request["config"]["features"]["diarizationConfig"]["minSpeakerCount"], 2);
    assert_eq!(request["config"]["features"]["enableWordTimeOffsets"], true);
}

#[tokio::test]
async fn an_empty_result_is_no_words_not_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RECOGNIZE))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"metadata": {"totalBilledDuration": "3s"}})))
        .mount(&server)
        .await;
    let got = engine(&server).await.transcribe(&audio(3.0), None).await.unwrap();
    assert!(got.words.is_empty());
    assert_eq!((got.language.as_str(), got.billed_secs), ("en-US", 3.0));
}

#[tokio::test]
async fn errors_are_classified_retryable_or_permanent() {
    let cases = [
        (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", true),
        (500, "INTERNAL", "Internal error encountered.", true),
        (503, "UNAVAILABLE", "The service is currently unavailable.", true),
        (400, "INVALID_ARGUMENT", "Audio can be of a maximum of 60 seconds.", false),
        (403, "PERMISSION_DENIED", "Permission denied on resource project p.", false),
    ];
    for (status, name, message, retryable) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(RECOGNIZE))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({
                "error": {"code": status, "message": message, "status": name}
            })))
            .mount(&server)
            .await;
        let err = engine(&server).await.transcribe(&audio(10.0), None).await.unwrap_err();
        assert_eq!(err.is_retryable(), retryable, "{status}: {err:?}");
        if status == 429 {
            assert!(matches!(err, VendorError::RateLimited { .. }));
        }
    }
}

#[tokio::test]
async fn long_audio_goes_through_batch_recognize_and_its_operation() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BATCH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "name": "projects/p/locations/us/operations/op-123",
            "metadata": {"@type": "type.googleapis.com/google.cloud.speech.v2.OperationMetadata",
                         "createTime": "2026-11-21T10:00:00Z"}
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(OPERATION))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "name": "projects/p/locations/us/operations/op-123", "done": false
        })))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(OPERATION))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "name": "projects/p/locations/us/operations/op-123",
            "done": true,
            "response": {
                "@type": "type.googleapis.com/google.cloud.speech.v2.BatchRecognizeResponse",
                "results": {"gs://recordings/acme/CAL1.mp3": {
                    "uri": "gs://recordings/acme/CAL1.mp3",
                    "inlineResult": {"transcript": {"results": results()}}
                }},
                "totalBilledDuration": "95s"
            }
        })))
        .mount(&server)
        .await;
    let got = engine(&server).await.transcribe(&audio(94.0), None).await.unwrap();
    assert_eq!((got.words.len(), got.billed_secs, got.duration_secs), (11, 95.0, 94.0));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.iter().filter(|r| r.method.as_str() == "GET").count(), 3, "polled until done");
    let batch: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(batch["files"][0]["uri"], "gs://recordings/acme/CAL1.mp3");
    assert!(batch["recognitionOutputConfig"]["inlineResponseConfig"].is_object());
}

#[tokio::test]
async fn a_failed_file_in_a_batch_is_an_error_with_its_status() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(BATCH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "name": "projects/p/locations/us/operations/op-123", "done": true,
            "response": {
                "@type": "type.googleapis.com/google.cloud.speech.v2.BatchRecognizeResponse",
                "results": {"gs://recordings/acme/CAL1.mp3": {
                    "error": {"code": 3, "message": "Audio data does not appear to be in a supported encoding."}
                }}
            }
        })))
        .mount(&server)
        .await;
    let err = engine(&server).await.transcribe(&audio(300.0), None).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("supported encoding"), "{err}");
}
