//! What ops look at: Prometheus `/metrics`, `/healthz` and `/readyz`.
//!
//! Metric names follow Prometheus conventions (`otp_` prefix, `_total` counters, `_seconds`
//! histograms). Labels are only channel, status, error class and rule: never a phone number,
//! a code or a request_id.

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;

/// The process-wide Prometheus recorder (installed once, shared by in-process workers).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listen` until the process ends. `ready`
/// tells whether the worker can reach Kafka.
pub async fn serve(
    listen: SocketAddr,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let handle = prometheus();
    let app = Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready() {
                    (axum::http::StatusCode::OK, "ready")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app).await?;
    Ok(())
}
