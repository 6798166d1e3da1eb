//! on-webhook: CallRail and web-form intake. Config from the environment (see README): embedded backends, or
//! Google Cloud's (emulators included) outside the embedded environment.

use std::process::ExitCode;

use callflow::runtime::{serve, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init("on-webhook");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "on-webhook stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = on_webhook::Settings::from_env()?;
    let service = on_webhook::Service::from_settings(&settings).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(on_webhook::outbox::run(service.clone(), stop_rx));
    let shutdown = async move {
        serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    serve::serve(on_webhook::app(service), settings.port, shutdown, settings.drain).await?;
    // In-flight recording fetches get the rest of the drain window; unfinished ones are picked up on restart.
    let _ = tokio::time::timeout(settings.drain, worker).await;
    Ok(())
}
