//! The Vertex AI Gemini adapter against a local fake that answers with the API's real shapes: a JSON answer (with
//! the integer enums the client asks for, and with string enums as documented), an invalid answer, a prompt
//! blocked for safety, an answer stopped for safety, a truncated answer, 429 with and without Retry-After, 500,
//! 503, a proxy's HTML 502, and a timeout. What the adapter sends is checked too: the model path, the system
//! instruction, the response JSON schema, the correction turn.

use std::time::Duration;

use callflow::adapters::gemini::{Gemini, GeminiConfig};
use callflow::domain::analysis::{Prompt, response_schema, validate_answer};
use callflow::ports::{Finish, GenerateRequest, LanguageModel, VendorError};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PATH: &str =
    "/v1/projects/callflow-test/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent";

const ANSWER: &str = r#"{"intent": "new_lead", "project_type": "kitchen", "lead_score": 84, "score_reasons": ["wants an estimate"], "urgency": "soon", "budget": "high", "sentiment": "positive", "spam_likelihood": 2, "summary": "Maria wants a kitchen remodel. Call back tomorrow.", "caller": {"name": "Maria", "callback_time": "tomorrow morning"}}"#;

fn gemini(server: &MockServer, timeout: Duration) -> Gemini {
    let mut config = GeminiConfig::regional("callflow-test", "us-central1");
    config.endpoint = server.uri();
    config.timeout = timeout;
    Gemini::new(config)
}

fn request() -> GenerateRequest {
    GenerateRequest {
        model: "gemini-2.5-flash".into(),
        prompt: Prompt {
            system: "You qualify calls.".into(),
            user: "Transcript:\ncaller: I need a kitchen quote".into(),
        },
        schema: response_schema(),
        history: vec![],
        max_output_tokens: 1024,
    }
}

/// An answer as Vertex sends it to this client (`$alt=json;enum-encoding=int`: enums as numbers).
fn answer(text: &str, finish: Value) -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": finish,
            "safetyRatings": [{"category": 1, "probability": 1, "probabilityScore": 0.04, "severity": 1, "severityScore": 0.03}],
            "avgLogprobs": -0.07
        }],
        "usageMetadata": {"promptTokenCount": 412, "candidatesTokenCount": 41, "totalTokenCount": 453, "trafficType": 1,
                          "promptTokensDetails": [{"modality": 1, "tokenCount": 412}]},
        "modelVersion": "gemini-2.5-flash",
        "createTime": "2026-11-22T10:21:44.829341Z",
        "responseId": "KNHLaJ22MsWBn9kPs9-p4Qo"
    })
}

async fn serve(server: &MockServer, template: ResponseTemplate) {
    Mock::given(method("POST")).and(path(PATH)).respond_with(template).mount(server).await;
}

#[tokio::test]
async fn a_valid_answer_with_its_token_counts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .and(query_param("$alt", "json;enum-encoding=int"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer(ANSWER, json!(1))))
        .expect(1)
        .mount(&server)
        .await;
    let got = gemini(&server, Duration::from_secs(5)).generate(&request()).await.unwrap();
    assert_eq!((got.finish.clone(), got.prompt_tokens, got.output_tokens), (Finish::Stop, 412, 41));
    let findings = validate_answer(&got.text).unwrap();
    assert_eq!(findings.lead_score, 84);

    // What was sent: the model, the instructions, the schema as JSON Schema, JSON output, no thinking.
    let sent: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert!(sent["model"].as_str().unwrap().ends_with("/publishers/google/models/gemini-2.5-flash"));
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "You qualify calls.");
    assert_eq!(sent["contents"][0]["role"], "user");
    let config = &sent["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseJsonSchema"]["properties"]["lead_score"]["minimum"], 0);
    assert_eq!(config["responseJsonSchema"]["properties"]["project_type"]["enum"][0], "kitchen");
    assert_eq!(config["maxOutputTokens"], 1024);
    assert_eq!(config["thinkingConfig"]["thinkingBudget"], 0);
}

#[tokio::test]
async fn string_enums_as_documented_read_the_same() {
    let server = MockServer::start().await;
    serve(&server, ResponseTemplate::new(200).set_body_json(answer(ANSWER, json!("STOP")))).await;
    let got = gemini(&server, Duration::from_secs(5)).generate(&request()).await.unwrap();
    assert_eq!(got.finish, Finish::Stop);
}

#[tokio::test]
async fn an_invalid_answer_is_returned_for_validation_and_the_correction_is_sent_as_a_turn() {
    let server = MockServer::start().await;
    serve(
        &server,
        ResponseTemplate::new(200).set_body_json(answer(r#"{"intent": "lead", "lead_score": 140}"#, json!(1))),
    )
    .await;
    let model = gemini(&server, Duration::from_secs(5));
    let got = model.generate(&request()).await.unwrap();
    let problems = validate_answer(&got.text).unwrap_err();
    assert!(problems.iter().any(|p| p.contains("intent \"lead\"")), "{problems:?}");

    let mut again = request();
    again.history.push((got.text.clone(), callflow::domain::analysis::correction(&problems)));
    model.generate(&again).await.unwrap();
    let sent: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[1].body).unwrap();
    let roles: Vec<&str> = sent["contents"].as_array().unwrap().iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user"]);
    assert!(sent["contents"][2]["parts"][0]["text"].as_str().unwrap().contains("lead_score 140"));
}

#[tokio::test]
async fn safety_blocks_and_truncation_are_finishes_not_errors() {
    let server = MockServer::start().await;
    let prompt_blocked = json!({
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "blockReasonMessage": "The prompt is blocked due to prohibited contents."},
        "usageMetadata": {"promptTokenCount": 412, "totalTokenCount": 412},
        "modelVersion": "gemini-2.5-flash"
    });
    let answer_blocked = json!({
        "candidates": [{"content": {"role": "model"}, "finishReason": 3,
                        "safetyRatings": [{"category": 2, "probability": 3, "blocked": true}]}],
        "usageMetadata": {"promptTokenCount": 405, "totalTokenCount": 405}
    });
    let truncated = answer(r#"{"intent": "new_lead", "proj"#, json!(2));
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(prompt_blocked))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer_blocked))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(truncated))
        .mount(&server)
        .await;
    let model = gemini(&server, Duration::from_secs(5));
    let first = model.generate(&request()).await.unwrap();
    assert_eq!((first.finish, first.prompt_tokens), (Finish::Blocked("prompt: PROHIBITED_CONTENT".into()), 412));
    assert_eq!(model.generate(&request()).await.unwrap().finish, Finish::Blocked("answer: SAFETY".into()));
    let cut = model.generate(&request()).await.unwrap();
    assert_eq!(cut.finish, Finish::MaxTokens);
    assert!(validate_answer(&cut.text).is_err());
}

fn google_error(code: u16, status: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(code).set_body_raw(
        json!({"error": {"code": code, "message": message, "status": status}}).to_string(),
        "application/json",
    )
}

#[tokio::test]
async fn http_errors_map_to_retryable_and_permanent() {
    type Expect = Box<dyn Fn(&VendorError) -> bool>;
    let cases: Vec<(ResponseTemplate, Expect, bool)> = vec![
        (
            google_error(429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later."),
            Box::new(|e| matches!(e, VendorError::RateLimited { retry_after: None })),
            true,
        ),
        (
            ResponseTemplate::new(429).insert_header("retry-after", "7"),
            Box::new(
                |e| matches!(e, VendorError::RateLimited { retry_after: Some(d) } if *d == Duration::from_secs(7)),
            ),
            true,
        ),
        (
            google_error(500, "INTERNAL", "Internal error encountered."),
            Box::new(|e| matches!(e, VendorError::Status { status: 500, .. })),
            true,
        ),
        (
            google_error(503, "UNAVAILABLE", "The service is currently unavailable."),
            Box::new(|e| matches!(e, VendorError::Status { status: 503, .. })),
            true,
        ),
        (
            ResponseTemplate::new(502).set_body_raw("<html><body>502 Bad Gateway</body></html>", "text/html"),
            Box::new(|e| matches!(e, VendorError::Status { status: 502, .. })),
            true,
        ),
        (
            google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
            Box::new(
                |e| matches!(e, VendorError::Status { status: 400, message } if message.contains("invalid argument")),
            ),
            false,
        ),
        (
            google_error(404, "NOT_FOUND", "Publisher Model was not found"),
            Box::new(|e| matches!(e, VendorError::NotFound)),
            false,
        ),
    ];
    for (template, expected, retryable) in cases {
        let server = MockServer::start().await;
        serve(&server, template).await;
        let err = gemini(&server, Duration::from_secs(5)).generate(&request()).await.unwrap_err();
        assert!(expected(&err), "unexpected {err:?}");
        assert_eq!(err.is_retryable(), retryable, "{err:?}");
        assert_eq!(server.received_requests().await.unwrap().len(), 1, "one attempt: the stage decides about retries");
    }
}

#[tokio::test]
async fn a_slow_answer_times_out_and_a_refused_connection_is_transport() {
    let server = MockServer::start().await;
    serve(
        &server,
        ResponseTemplate::new(200).set_body_json(answer(ANSWER, json!(1))).set_delay(Duration::from_secs(3)),
    )
    .await;
    let started = std::time::Instant::now();
    let err = gemini(&server, Duration::from_millis(300)).generate(&request()).await.unwrap_err();
    assert!(matches!(err, VendorError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = GeminiConfig::regional("callflow-test", "us-central1");
    config.endpoint = format!("http://{closed}");
    let err = Gemini::new(config).generate(&request()).await.unwrap_err();
    assert!(matches!(err, VendorError::Transport(_)), "{err:?}");
}
