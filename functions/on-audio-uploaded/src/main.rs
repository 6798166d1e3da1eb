//! on-audio-uploaded: a recording finalized in the recordings bucket becomes a transcript in the transcripts
//! bucket. Config from the environment (see README): embedded backends, or Google Cloud's (emulators included)
//! outside the embedded environment.

use std::process::ExitCode;

use callflow::runtime::{serve, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init("on-audio-uploaded");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "on-audio-uploaded stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = on_audio_uploaded::Settings::from_env()?;
    let service = on_audio_uploaded::Service::from_settings(&settings).await?;
    let port = settings.common.port;
    serve::serve(on_audio_uploaded::app(service), port, serve::shutdown_signal(), settings.common.drain).await
}
