//! Vertex AI Gemini (official `google-cloud-aiplatform-v1`, REST transport): `generateContent` with a system
//! instruction, the call as the user turn, JSON output constrained by a response JSON schema, low temperature and
//! no thinking budget (thinking tokens would count against the output limit). One attempt per call — the stage
//! decides about retries and falls back to the rules — under a per-call timeout. Blocked prompts and answers
//! come back as `Finish::Blocked`, not errors: the stage falls back on them too.

use std::time::Duration;

use async_trait::async_trait;
use google_cloud_aiplatform_v1::client::PredictionService;
use google_cloud_aiplatform_v1::model::candidate::FinishReason;
use google_cloud_aiplatform_v1::model::generate_content_response::prompt_feedback::BlockedReason;
use google_cloud_aiplatform_v1::model::generation_config::ThinkingConfig;
use google_cloud_aiplatform_v1::model::{Content, GenerateContentResponse, GenerationConfig, Part};
use google_cloud_auth::credentials::Credentials;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::retry_policy::NeverRetry;

use super::google_vendor_error;
use crate::ports::{Finish, GenerateRequest, Generated, LanguageModel, VendorError};

/// Where Gemini is, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeminiConfig {
    /// `https://{location}-aiplatform.googleapis.com` by default; a plain `http://` endpoint (a local fake) gets
    /// anonymous credentials.
    pub endpoint: String,
    pub project: String,
    pub location: String,
    pub timeout: Duration,
}

impl GeminiConfig {
    pub fn regional(project: &str, location: &str) -> Self {
        let endpoint = if location == "global" {
            "https://aiplatform.googleapis.com".to_owned()
        } else {
            format!("https://{location}-aiplatform.googleapis.com")
        };
        Self { endpoint, project: project.to_owned(), location: location.to_owned(), timeout: Duration::from_secs(30) }
    }
}

pub struct Gemini {
    config: GeminiConfig,
    client: tokio::sync::OnceCell<PredictionService>,
}

impl Gemini {
    /// Connected at first use: a process whose tenants use the rules never needs Google credentials.
    pub fn new(config: GeminiConfig) -> Self {
        Self { config, client: tokio::sync::OnceCell::new() }
    }

    async fn client(&self) -> Result<&PredictionService, VendorError> {
        self.client
            .get_or_try_init(|| async {
                let c = &self.config;
                let mut builder = PredictionService::builder()
                    .with_endpoint(&c.endpoint)
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(c.timeout);
                if c.endpoint.starts_with("http://") {
                    let anonymous: Credentials = google_cloud_auth::credentials::anonymous::Builder::new().build();
                    builder = builder.with_credentials(anonymous);
                }
                builder.build().await
            })
            .await
            .map_err(|e| VendorError::Transport(format!("Vertex AI client: {e}")))
    }

    fn model_name(&self, model: &str) -> String {
        format!("projects/{}/locations/{}/publishers/google/models/{model}", self.config.project, self.config.location)
    }
}

fn text(s: &str) -> Part {
    Part::new().set_text(s)
}

/// The answer, or why there is none.
pub fn read(response: &GenerateContentResponse) -> Generated {
    let usage = response.usage_metadata.clone().unwrap_or_default();
    let tokens = |n: i32| u32::try_from(n).unwrap_or(0);
    let (prompt_tokens, output_tokens) = (tokens(usage.prompt_token_count), tokens(usage.candidates_token_count));
    let blocked = |reason: String| Generated {
        text: String::new(),
        finish: Finish::Blocked(reason),
        prompt_tokens,
        output_tokens,
    };
    if let Some(feedback) = &response.prompt_feedback
        && feedback.block_reason != BlockedReason::Unspecified
    {
        return blocked(format!("prompt: {}", feedback.block_reason.name().unwrap_or("UNKNOWN")));
    }
    let Some(candidate) = response.candidates.first() else {
        return Generated {
            text: String::new(),
            finish: Finish::Other("no candidates".into()),
            prompt_tokens,
            output_tokens,
        };
    };
    let reason = candidate.finish_reason.name().unwrap_or("UNKNOWN").to_owned();
    let finish = match candidate.finish_reason {
        FinishReason::Stop => Finish::Stop,
        FinishReason::MaxTokens => Finish::MaxTokens,
        FinishReason::Safety
        | FinishReason::ProhibitedContent
        | FinishReason::Blocklist
        | FinishReason::Spii
        | FinishReason::Recitation
        | FinishReason::ModelArmor => return blocked(format!("answer: {reason}")),
        _ => Finish::Other(reason),
    };
    let text: String = candidate
        .content
        .as_ref()
        .map(|c| c.parts.iter().filter(|p| !p.thought).filter_map(|p| p.text()).map(String::as_str).collect())
        .unwrap_or_default();
    Generated { text, finish, prompt_tokens, output_tokens }
}

#[async_trait]
impl LanguageModel for Gemini {
    async fn generate(&self, request: &GenerateRequest) -> Result<Generated, VendorError> {
        let mut contents = vec![Content::new().set_role("user").set_parts([text(&request.prompt.user)])];
        for (answer, correction) in &request.history {
            contents.push(Content::new().set_role("model").set_parts([text(answer)]));
            contents.push(Content::new().set_role("user").set_parts([text(correction)]));
        }
        let response = self
            .client()
            .await?
            .generate_content()
            .set_model(self.model_name(&request.model))
            .set_system_instruction(Content::new().set_parts([text(&request.prompt.system)]))
            .set_contents(contents)
            .set_generation_config(
                GenerationConfig::new()
                    .set_temperature(0.1_f32)
                    .set_max_output_tokens(i32::try_from(request.max_output_tokens).unwrap_or(i32::MAX))
                    .set_response_mime_type("application/json")
                    .set_response_json_schema(request.schema.clone())
                    .set_thinking_config(ThinkingConfig::new().set_thinking_budget(0)),
            )
            .with_attempt_timeout(self.config.timeout)
            .with_retry_policy(NeverRetry)
            .send()
            .await
            .map_err(|e| google_vendor_error(&e))?;
        Ok(read(&response))
    }
}
