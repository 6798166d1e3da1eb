//! on-crm-retry (see the crate's lib.rs). Config from the environment (see README): embedded backends, or Google
//! Cloud's (emulators included) outside the embedded environment.

use std::process::ExitCode;

use callflow::runtime::lead_delivery::Delivery;
use callflow::runtime::{serve, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init("on-crm-retry");
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "on-crm-retry stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = on_crm_retry::Settings::from_env()?;
    let service = Delivery::connect(&settings.common, settings.policy.clone()).await?;
    let port = settings.common.port;
    serve::serve(on_crm_retry::app(service), port, serve::shutdown_signal(), settings.common.drain).await
}
