//! cleanup-scheduled (see the crate's lib.rs). Config from the environment (see README): embedded backends, or
//! Google Cloud's (emulators included) outside the embedded environment.

use std::process::ExitCode;

use callflow::runtime::{serve, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init("cleanup-scheduled");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cleanup-scheduled stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = cleanup_scheduled::Settings::from_env()?;
    let service = cleanup_scheduled::Service::connect(&settings).await?;
    let port = settings.common.port;
    serve::serve(cleanup_scheduled::app(service), port, serve::shutdown_signal(), settings.common.drain).await
}
