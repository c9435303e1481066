//! What ops look at: Prometheus `/metrics`, `/healthz` and `/readyz`.
//!
//! Metric names follow Prometheus conventions (`otp_` prefix, `_total` counters, `_seconds`
//! histograms). Labels are only channel, status, error class and rule: never a phone number,
//! a code or a request_id.

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The process-wide Prometheus recorder (installed once, shared by in-process workers).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Up to half an hour: the longest code life (`max_ttl`), so that a final status
        // late in a code's life falls in a bucket of its own.
        let buckets = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            300.0, 600.0, 1800.0,
        ];
        PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("static buckets are valid")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// A loop's sign of life: the loop beats on every turn, and `/healthz` fails once a beat is
/// older than [`STALE`]. Cheap to clone and to beat (one atomic store).
#[derive(Clone)]
pub struct Heartbeat {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

/// How long a loop may go without a beat before the process is called dead: far above a
/// turn of any loop that beats (the poll loop turns every 100 ms at most, the group's every
/// commit interval), far below the minutes a stuck worker would cost its users.
pub const STALE: Duration = Duration::from_secs(60);

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last beat (since creation, before the first).
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    pub fn alive(&self) -> bool {
        self.age() < STALE
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listen` until the process ends. `ready`
/// tells whether the service can reach Kafka; `live` whether its loops still turn (`/healthz`
/// answers 503 when not, and the orchestrator restarts the process).
pub async fn serve(
    listen: SocketAddr,
    ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
    live: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let handle = prometheus();
    let app = Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route(
            "/healthz",
            get(move || async move {
                if live() {
                    (axum::http::StatusCode::OK, "ok")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stuck")
                }
            }),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_goes_stale_without_beats_and_a_beat_revives_it() {
        let fresh = Heartbeat::default();
        assert!(fresh.alive());
        // As if created two minutes ago and never beaten since (a host up for less than that
        // cannot say so; the rest of the test needs it).
        let Some(origin) = Instant::now().checked_sub(Duration::from_secs(120)) else {
            return;
        };
        let old = Heartbeat {
            origin,
            last_ms: Arc::new(AtomicU64::new(0)),
        };
        assert!(old.age() >= Duration::from_secs(120));
        assert!(!old.alive(), "no beat for longer than STALE");
        old.beat();
        assert!(old.alive() && old.age() < Duration::from_secs(1));
    }
}
