//! Serving a function: `PORT`, `/healthz`, a span per request carrying its trace context, and a graceful stop
//! on SIGTERM (Cloud Run kills the instance 10 s later): stop accepting, finish in-flight requests, return.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tracing::Instrument;

use super::telemetry::trace_context;

async fn request_span(req: Request, next: Next) -> Response {
    let (trace_id, span_id) = trace_context(req.headers()).map_or((None, None), |(t, s)| (Some(t), s));
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        trace_id = trace_id.as_deref(),
        span_id = span_id.as_deref(),
    );
    next.run(req).instrument(span).await
}

/// Add what every function serves and does: `/healthz` and the per-request span.
pub fn with_runtime(router: Router) -> Router {
    router.route("/healthz", get(|| async { "ok" })).layer(middleware::from_fn(request_span))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutdown signal received: draining");
}

/// Serve `router` on `port` until `shutdown` resolves, then drain in-flight requests for at most `drain`.
pub async fn serve(
    router: Router,
    port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()> {
    serve_on(router, SocketAddr::from(([0, 0, 0, 0], port)), shutdown, drain).await
}

/// `serve` on a chosen address (e.g. loopback only, for local tools that must not be reachable from outside).
pub async fn serve_on(
    router: Router,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(port = listener.local_addr()?.port(), "listening");
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, with_runtime(router).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopped_tx.send(());
        });
    let server = tokio::spawn(async move { server.await });
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => return res?.map_err(Into::into),
        _ = stopped_rx => {}
    }
    match tokio::time::timeout(drain, &mut server).await {
        Ok(res) => res?.map_err(Into::into),
        Err(_) => {
            tracing::warn!(drain_secs = drain.as_secs(), "in-flight requests did not finish in time");
            Ok(())
        }
    }
}
