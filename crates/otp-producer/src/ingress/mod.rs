//! The HTTP ingress for login systems that would rather not link a Kafka client:
//! `POST /v1/code-requests` asks for a code, `POST /v1/verification-outcomes` says what
//! became of it (verified, abandoned, too_many_attempts, expired).
//!
//! Every call needs an app's API key ([`auth`]): 401 without one, 403 for a disabled app,
//! 429 with `Retry-After` past the app's quotas; the request's `app` is the key's. It
//! answers 202 only after the broker acknowledged, so a 202 means the request is durable.
//! Every refusal is JSON, `{"error": {"field": .., "message": ..}}`, and never quotes the
//! submitted values (they may be a phone number or a code).

pub mod auth;
mod config;

pub use auth::{Apps, Refusal};
pub use config::IngressConfig;

use crate::{CodeRequestPublisher, PublisherConfig};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use otp_events::{decode_outcome, decode_submission, PhoneHasher, Rules};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::timeout::TimeoutLayer;

struct AppState {
    publisher: CodeRequestPublisher,
    auth: Auth,
}

/// Who may call.
pub enum Auth {
    /// Every call needs one of these apps' keys.
    Keys(Apps),
    /// No authentication: development mode (`--dev`) and tests only.
    Open,
}

/// The ingress's routes without authentication (development and tests): see [`router_with`].
pub fn router(publisher: CodeRequestPublisher, config: &IngressConfig) -> Router {
    router_with(publisher, config, Auth::Open)
}

/// The ingress's routes, around a publisher, with `config`'s body limit, request timeout
/// and bound on requests handled at once, admitting calls by `auth`.
pub fn router_with(publisher: CodeRequestPublisher, config: &IngressConfig, auth: Auth) -> Router {
    let state = Arc::new(AppState { publisher, auth });
    Router::new()
        .route("/v1/code-requests", post(submit))
        .route("/v1/verification-outcomes", post(report_outcome))
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
        config.kafka.credentials(hasher)?,
    )?;
    let auth = match &config.api_keys {
        Some(path) => {
            let apps = Apps::load(path)?;
            // Every app's requests must be sealable here: refused at start, naming the app,
            // rather than answered 4xx on each of its calls.
            for app in apps.names() {
                if publisher.config().rules.can_seal_for(Some(app)).is_err() {
                    anyhow::bail!(
                        "app {app:?} of {}: no key of OTP_SEAL_KEYS serves it (give the \
                         ingress a key `id@{app}=...` or one without an app)",
                        path.display()
                    );
                }
            }
            Auth::Keys(apps)
        }
        None if config.dev.dev => {
            tracing::warn!(
                "DEVELOPMENT MODE (--dev): no --api-keys, so anyone who reaches this ingress \
                 can send codes; never run like this in production"
            );
            Auth::Open
        }
        None => anyhow::bail!(
            "--api-keys (OTP_INGRESS_API_KEYS) is not set: the ingress refuses to start open, \
             since whoever reaches it could send codes to any number at our cost. Create keys \
             with `otp-producer keys new --app NAME`, or pass --dev for local development"
        ),
    };
    if let Some(listen) = config.metrics_listen {
        otp_kafka::observe::prometheus();
        for outcome in [
            "accepted",
            "invalid",
            "unauthenticated",
            "disabled",
            "over_quota",
            "unavailable",
        ] {
            metrics::counter!("otp_ingress_requests_total", "outcome" => outcome).increment(0);
            metrics::counter!("otp_ingress_outcomes_total", "outcome" => outcome).increment(0);
        }
        tokio::spawn(async move {
            if let Err(e) = otp_kafka::observe::serve(listen, || true, || true).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "ingress listening");
    axum::serve(listener, router_with(publisher.clone(), &config, auth))
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

/// The app the call is from, or the refusal's answer; `a_code`: the call asks for a code
/// (counted against the app's codes per day).
fn admit(auth: &Auth, headers: &HeaderMap, a_code: bool) -> Result<Option<String>, Box<Response>> {
    let Auth::Keys(apps) = auth else {
        return Ok(None);
    };
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now();
    let admitted = if a_code {
        apps.admit(header, now)
    } else {
        apps.admit_report(header, now)
    };
    // Counted with the call's own kind: code requests or outcome reports.
    let metrics_outcome = if a_code {
        metrics_outcome
    } else {
        outcome_metric
    };
    match admitted {
        Ok(app) => Ok(Some(app.to_string())),
        Err(Refusal::Unauthenticated) => {
            metrics_outcome("unauthenticated");
            let mut r = error_body(
                StatusCode::UNAUTHORIZED,
                Some("authorization"),
                "an app's API key is required: Authorization: Bearer KEY",
            );
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            Err(Box::new(r))
        }
        Err(Refusal::Disabled) => {
            metrics_outcome("disabled");
            Err(Box::new(error_body(
                StatusCode::FORBIDDEN,
                Some("authorization"),
                "this app is disabled",
            )))
        }
        Err(Refusal::OverQuota { rule, retry_after }) => {
            metrics_outcome("over_quota");
            let mut r = error_body(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                &format!("over this app's {rule} quota; retry after the Retry-After seconds"),
            );
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.max(1).to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
            Err(Box::new(r))
        }
    }
}

async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let app = match admit(&state.auth, &headers, true) {
        Ok(app) => app,
        Err(refused) => return *refused,
    };
    let body = match body_of(body) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let publisher = &state.publisher;
    let mut request = match decode_submission(&body, chrono::Utc::now(), &publisher.config().rules)
    {
        Ok(request) => request,
        Err(e) => {
            metrics_outcome("invalid");
            return error_body(StatusCode::BAD_REQUEST, Some(&e.field), &e.message);
        }
    };
    if let Err(refused) = stamp_app(&mut request.app, app) {
        metrics_outcome("invalid");
        return *refused;
    }
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

/// The app is the credential's, never the body's: a body naming another app is refused (400,
/// `app`); without keys (development) the body's stands.
fn stamp_app(named: &mut Option<String>, key_app: Option<String>) -> Result<(), Box<Response>> {
    let Some(app) = key_app else {
        return Ok(());
    };
    if named.as_ref().is_some_and(|n| *n != app) {
        return Err(Box::new(error_body(
            StatusCode::BAD_REQUEST,
            Some("app"),
            "must be left out or be the app of the API key",
        )));
    }
    *named = Some(app);
    Ok(())
}

/// The body, or the answer to a body that could not be read (too large, cut short).
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Box<Response>> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the limit".to_string()
        } else {
            rejection.body_text()
        };
        Box::new(error_body(status, None, &message))
    })
}

/// `POST /v1/verification-outcomes`: `{"request_id", "outcome", "occurred_at"?, "attempts"?}`,
/// the app being the API key's. 202 once the broker acknowledged; 400 naming the field.
async fn report_outcome(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let app = match admit(&state.auth, &headers, false) {
        Ok(app) => app,
        Err(refused) => return *refused,
    };
    let body = match body_of(body) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let mut outcome = match decode_outcome(&body, chrono::Utc::now()) {
        Ok(outcome) => outcome,
        Err(e) => {
            outcome_metric("invalid");
            return error_body(StatusCode::BAD_REQUEST, Some(&e.field), &e.message);
        }
    };
    // A login system reports on its own requests only.
    if let Err(refused) = stamp_app(&mut outcome.app, app) {
        outcome_metric("invalid");
        return *refused;
    }
    match state.publisher.publish_outcome(&outcome).await {
        Ok(()) => {
            outcome_metric("accepted");
            (
                StatusCode::ACCEPTED,
                Json(json!({ "request_id": outcome.request_id, "event_id": outcome.event_id })),
            )
                .into_response()
        }
        Err(e) => {
            outcome_metric("unavailable");
            tracing::warn!(event_id = %outcome.event_id, error = %e, "outcome not published");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": {
                        "field": null,
                        "message": "the broker did not acknowledge the outcome; retry with the same event_id",
                    },
                    "event_id": outcome.event_id,
                })),
            )
                .into_response()
        }
    }
}

fn outcome_metric(outcome: &'static str) {
    metrics::counter!("otp_ingress_outcomes_total", "outcome" => outcome).increment(1);
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
