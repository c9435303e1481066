//! The HTTP ingress: `POST /v1/code-requests` for login systems that would rather not link a
//! Kafka client.
//!
//! It answers 202 only after the broker acknowledged, so a 202 means the request is durable.
//! Every refusal is JSON, `{"error": {"field": .., "message": ..}}`, and never quotes the
//! submitted values (they may be a phone number or a code).

mod config;

pub use config::IngressConfig;

use crate::{CodeRequestPublisher, PublisherConfig};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use otp_events::{decode_submission, PhoneHasher, Rules};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;

struct AppState {
    publisher: CodeRequestPublisher,
}

/// The ingress's routes, around a publisher, with `config`'s body limit, request timeout
/// and bound on requests handled at once.
pub fn router(publisher: CodeRequestPublisher, config: &IngressConfig) -> Router {
    let state = Arc::new(AppState { publisher });
    Router::new()
        .route("/v1/code-requests", post(submit))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(ConcurrencyLimitLayer::new(config.max_concurrent_requests))
        // Outermost, so that a request waiting for a slot times out too.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        .with_state(state)
}

/// Build the publisher from `config` and serve until `shutdown` resolves.
pub async fn serve(
    config: IngressConfig,
    hasher: PhoneHasher,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let publisher = CodeRequestPublisher::new(
        &config.kafka,
        PublisherConfig {
            topics: config.kafka.topics(),
            rules: Rules {
                max_ttl: chrono::Duration::from_std(config.max_ttl)?,
                ..Rules::default()
            },
            ack_timeout: config.ack_timeout,
        },
        hasher,
    )?;
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "ingress listening");
    axum::serve(listener, router(publisher.clone(), &config))
        .with_graceful_shutdown(shutdown)
        .await?;
    publisher.flush(Duration::from_secs(5));
    Ok(())
}

fn error_body(status: StatusCode, field: Option<&str>, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "field": field, "message": message } })),
    )
        .into_response()
}

async fn submit(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request body is larger than the limit".to_string()
            } else {
                rejection.body_text()
            };
            return error_body(status, None, &message);
        }
    };
    let publisher = &state.publisher;
    let request = match decode_submission(&body, chrono::Utc::now(), &publisher.config().rules) {
        Ok(request) => request,
        Err(e) => {
            metrics_outcome("invalid");
            return error_body(StatusCode::BAD_REQUEST, Some(&e.field), &e.message);
        }
    };
    match publisher.publish_request(&request).await {
        Ok(()) => {
            metrics_outcome("accepted");
            (
                StatusCode::ACCEPTED,
                Json(json!({ "request_id": request.request_id })),
            )
                .into_response()
        }
        // `decode_submission` validated with the publisher's own rules, which do not depend on
        // the clock, so the publisher cannot refuse the request as invalid: what fails here is
        // the broker.
        Err(e) => {
            metrics_outcome("unavailable");
            tracing::warn!(request_id = %request.request_id, error = %e, "publish failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": {
                        "field": null,
                        "message": "the broker did not acknowledge the request; retry with the same request_id",
                    },
                    "request_id": request.request_id,
                })),
            )
                .into_response()
        }
    }
}

fn metrics_outcome(outcome: &'static str) {
    metrics::counter!("otp_ingress_requests_total", "outcome" => outcome).increment(1);
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state
        .publisher
        .broker_reachable(Duration::from_secs(2))
        .await
    {
        (StatusCode::OK, "ready").into_response()
    } else {
        error_body(StatusCode::SERVICE_UNAVAILABLE, None, "broker unreachable")
    }
}
