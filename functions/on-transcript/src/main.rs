//! on-transcript: a transcript finalized in the transcripts bucket becomes the call's analysis and a message on
//! `analysis-complete`. Config from the environment (see README): embedded backends, or Google Cloud's
//! (emulators included) outside the embedded environment.

use std::process::ExitCode;

use callflow::runtime::{serve, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init("on-transcript");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "on-transcript stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = on_transcript::Settings::from_env()?;
    let service = on_transcript::Service::from_settings(&settings).await?;
    let port = settings.common.port;
    serve::serve(on_transcript::app(service), port, serve::shutdown_signal(), settings.common.drain).await
}
