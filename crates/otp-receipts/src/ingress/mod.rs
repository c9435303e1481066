//! The webhook ingress: providers POST delivery statuses here; each authentic one becomes a
//! [`Receipt`] on `otp.delivery-receipts`, keyed by its request's confirmation key.
//!
//! Order of checks, per call: signature over the raw bytes (missing → 401, wrong → 403),
//! then the body (malformed → 400), then Kafka (acks=all; not written in time → 503). A 200
//! is answered only once every receipt of the call is acknowledged, so a crash or a broker
//! outage makes the provider retry (Meta retries for days); a repeated receipt is harmless
//! because the tracker applies each status once.

pub mod budget;
pub mod parse;
pub mod replay;
pub mod vonage;

use crate::config::WebhookSecrets;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use otp_events::provider_errors::{self, ErrorClass};
use otp_events::{Channel, ChannelSignal, PhoneHasher, Provider, SignalKind, SignalSource};
use otp_kafka::writer::KafkaWriter;
use otp_kafka::KafkaArgs;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Ingress {
    /// Writes receipts and signals, signed as the ingress: the tracker and the workers act
    /// only on records a role of ours wrote.
    writer: KafkaWriter,
    secrets: WebhookSecrets,
    /// Scheme, host and path prefix the providers call, e.g. `https://otp.example.com`.
    public_url: String,
    kafka_timeout: Duration,
    /// WhatsApp's message ids embed the number: receipts carry their keyed hash.
    hasher: PhoneHasher,
    /// Bytes of large bodies held at once ([`budget`]).
    body_budget: usize,
    /// The calls accepted lately: a replay writes nothing again.
    replays: replay::ReplayCache,
}

impl Ingress {
    pub fn new(
        kafka: &KafkaArgs,
        secrets: WebhookSecrets,
        public_url: &str,
        kafka_timeout: Duration,
        hasher: PhoneHasher,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            writer: KafkaWriter::new(kafka, None, otp_events::Role::Ingress, kafka_timeout)?,
            secrets,
            public_url: public_url.trim_end_matches('/').to_string(),
            kafka_timeout,
            hasher,
            body_budget: budget::DEFAULT_BODY_BUDGET,
            replays: replay::ReplayCache::default(),
        })
    }

    /// Hold at most `bytes` of bodies larger than [`budget::SMALL_BODY`] at once.
    pub fn with_body_budget(mut self, bytes: usize) -> Self {
        self.body_budget = bytes;
        self
    }
}

/// Webhook calls handled at once; more wait for a slot (within the request timeout).
const MAX_CONCURRENT_REQUESTS: usize = 1024;

/// The ingress's public routes: the webhooks and `/healthz`. `/metrics` is not among them
/// (it tells who is calling and how often): it has its own listener, `--metrics-listen`. A
/// call (body read included) that takes longer than the Kafka wait plus 5 s is answered 408,
/// and the provider retries it: a stalled client cannot hold a slot. What the bodies may hold
/// in memory is bounded by [`budget`].
pub fn router(ingress: Arc<Ingress>) -> Router {
    // The recorder must exist before the first webhook is counted, wherever it is served.
    otp_kafka::observe::prometheus();
    let request_timeout = ingress.kafka_timeout + Duration::from_secs(5);
    Router::new()
        .route(
            "/webhooks/whatsapp",
            get(whatsapp_handshake)
                .post(whatsapp_statuses)
                .layer(DefaultBodyLimit::max(budget::WHATSAPP_BODY_LIMIT)),
        )
        .route(
            "/webhooks/sms/status",
            post(sms_status).layer(DefaultBodyLimit::max(budget::SMS_BODY_LIMIT)),
        )
        .route(
            "/webhooks/vonage/status",
            post(vonage_status).layer(DefaultBodyLimit::max(budget::SMS_BODY_LIMIT)),
        )
        .route("/healthz", get(|| async { "ok" }))
        // Inside the concurrency limit: a call reserves its body's bytes once it has a slot.
        .layer(axum::middleware::from_fn_with_state(
            budget::BodyBudget::new(ingress.body_budget),
            budget::reserve,
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            MAX_CONCURRENT_REQUESTS,
        ))
        // Outermost, so that a call waiting for a slot times out too.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(ingress)
}

/// The outcome of one webhook call, counted by provider and outcome.
fn answer(provider: Provider, outcome: &'static str, status: StatusCode) -> Response {
    let provider = provider.as_str();
    metrics::counter!("otp_webhooks_total", "provider" => provider, "outcome" => outcome)
        .increment(1);
    if status != StatusCode::OK {
        tracing::info!(
            provider,
            outcome,
            status = status.as_u16(),
            "webhook refused"
        );
    }
    (status, outcome).into_response()
}

/// Meta's subscription handshake: echo `hub.challenge` when the verify token matches.
async fn whatsapp_handshake(
    State(ingress): State<Arc<Ingress>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(expected) = &ingress.secrets.whatsapp_verify_token else {
        return answer(
            Provider::WhatsappCloud,
            "not_configured",
            StatusCode::NOT_FOUND,
        );
    };
    let token_ok = query
        .get("hub.verify_token")
        .is_some_and(|t| otp_events::signature::secrets_equal(t.as_bytes(), expected.as_bytes()));
    match (
        query.get("hub.mode").map(String::as_str),
        token_ok,
        query.get("hub.challenge"),
    ) {
        (Some("subscribe"), true, Some(challenge)) => {
            metrics::counter!("otp_webhooks_total", "provider" => Provider::WhatsappCloud.as_str(), "outcome" => "subscribed")
                .increment(1);
            (StatusCode::OK, challenge.clone()).into_response()
        }
        _ => answer(
            Provider::WhatsappCloud,
            "handshake_refused",
            StatusCode::FORBIDDEN,
        ),
    }
}

async fn whatsapp_statuses(
    State(ingress): State<Arc<Ingress>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = &ingress.secrets.whatsapp_app_secret else {
        return answer(
            Provider::WhatsappCloud,
            "not_configured",
            StatusCode::NOT_FOUND,
        );
    };
    let Some(signature) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return answer(
            Provider::WhatsappCloud,
            "missing_signature",
            StatusCode::UNAUTHORIZED,
        );
    };
    if !otp_events::signature::meta_signature_valid(secret.as_bytes(), &body, signature) {
        return answer(
            Provider::WhatsappCloud,
            "bad_signature",
            StatusCode::FORBIDDEN,
        );
    }
    let call = replay::digest("/webhooks/whatsapp", &body);
    if ingress.replays.seen(&call, Instant::now()) {
        return answer(Provider::WhatsappCloud, "replayed", StatusCode::OK);
    }
    match parse::whatsapp(&body, Utc::now()) {
        Ok(parsed) => publish_receipts(&ingress, Provider::WhatsappCloud, parsed, call).await,
        Err(e) => malformed(Provider::WhatsappCloud, e),
    }
}

async fn sms_status(
    State(ingress): State<Arc<Ingress>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = &ingress.secrets.sms_auth_token else {
        return answer(Provider::Twilio, "not_configured", StatusCode::NOT_FOUND);
    };
    let Some(signature) = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return answer(
            Provider::Twilio,
            "missing_signature",
            StatusCode::UNAUTHORIZED,
        );
    };
    // An unreadable form cannot be signed over; a forgery is the likelier story, so the
    // signature is what refuses it.
    let form = otp_events::signature::form_pairs(&body).unwrap_or_default();
    let path = uri
        .path_and_query()
        .map_or("/webhooks/sms/status", |p| p.as_str());
    let url = format!("{}{}", ingress.public_url, path);
    if !otp_events::signature::twilio_signature_valid(token.as_bytes(), &url, &form, signature) {
        return answer(Provider::Twilio, "bad_signature", StatusCode::FORBIDDEN);
    }
    let call = replay::digest(path, &body);
    if ingress.replays.seen(&call, Instant::now()) {
        return answer(Provider::Twilio, "replayed", StatusCode::OK);
    }
    let query: HashMap<String, String> = uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let request_id = query.get("request_id").map(String::as_str);
    let app = query.get("app").map(String::as_str);
    match parse::twilio(&form, request_id, app, Utc::now()) {
        Ok(parsed) => publish_receipts(&ingress, Provider::Twilio, parsed, call).await,
        Err(e) => malformed(Provider::Twilio, e),
    }
}

/// Vonage's message status webhook (the Vonage application's status URL), JSON, signed by a
/// bearer JWT. Refusals answer 401/403, which Vonage does not retry (it retries 429 and 5xx);
/// a refused call is a forgery, or an unsigned one from an internal error at Vonage, which
/// this ingress would refuse again.
async fn vonage_status(
    State(ingress): State<Arc<Ingress>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = &ingress.secrets.vonage_signature_secret else {
        return answer(Provider::Vonage, "not_configured", StatusCode::NOT_FOUND);
    };
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    let api_key = ingress.secrets.vonage_api_key.as_deref();
    if let Err(refusal) = vonage::verify(authorization, &body, secret, api_key, Utc::now()) {
        let status = match refusal {
            vonage::Refusal::Missing => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        return answer(Provider::Vonage, refusal.as_str(), status);
    }
    let call = replay::digest("/webhooks/vonage/status", &body);
    if ingress.replays.seen(&call, Instant::now()) {
        return answer(Provider::Vonage, "replayed", StatusCode::OK);
    }
    match vonage::parse(&body, Utc::now()) {
        Ok(parsed) => publish_receipts(&ingress, Provider::Vonage, parsed, call).await,
        Err(e) => malformed(Provider::Vonage, e),
    }
}

fn malformed(provider: Provider, e: parse::ParseError) -> Response {
    let provider = provider.as_str();
    metrics::counter!("otp_webhooks_total", "provider" => provider, "outcome" => "malformed")
        .increment(1);
    tracing::info!(provider, error = %e, "malformed webhook refused");
    (StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

async fn publish_receipts(
    ingress: &Ingress,
    provider: Provider,
    mut parsed: parse::Parsed,
    call: [u8; 32],
) -> Response {
    let name = provider.as_str();
    for r in &mut parsed.receipts {
        r.provider_message_id = ingress
            .hasher
            .public_message_id(r.channel, &r.provider_message_id);
    }
    if parsed.skipped > 0 {
        metrics::counter!("otp_receipts_skipped_total", "provider" => name)
            .increment(parsed.skipped as u64);
    }
    for e in &parsed.invalid {
        metrics::counter!("otp_receipt_statuses_invalid_total", "provider" => name).increment(1);
        tracing::warn!(provider = name, error = %e, "a status of the call breaks the documented shape; skipped");
    }
    let signals = system_signals(&parsed, Utc::now());
    let written = ingress
        .writer
        .receipts_within(&parsed.receipts, &signals, ingress.kafka_timeout)
        .await;
    if let Err(e) = written {
        tracing::warn!(provider = name, error = %e, "receipts not written to Kafka; the provider will retry");
        return answer(provider, "kafka_error", StatusCode::SERVICE_UNAVAILABLE);
    }
    ingress.replays.accepted(call, Instant::now());
    for r in &parsed.receipts {
        tracing::debug!(
            request_id = r.request_id.as_deref().unwrap_or("-"),
            channel = r.channel.as_str(),
            status = r.status.as_str(),
            "receipt"
        );
        metrics::counter!("otp_receipts_total", "channel" => r.channel.as_str(), "provider" => name, "status" => r.status.as_str())
            .increment(1);
    }
    for s in &signals {
        metrics::counter!("otp_channel_signals_total", "channel" => s.channel.as_str(), "kind" => s.kind.as_str(), "source" => s.source.as_str())
            .increment(1);
    }
    answer(provider, "accepted", StatusCode::OK)
}

/// What the call's system-level errors (Meta's `value.errors`) tell the workers about the
/// channel: a signal for each of a broken or throttled class. A system error is never dropped
/// silently: each is counted and logged with its code, and a code not in our table is named so
/// that ops can add it. Failed receipts make their signals at the tracker, once it has matched
/// them to one of our sends (`tracker::book`): the ingress cannot tell our sends from those of
/// another system on the same account.
fn system_signals(parsed: &parse::Parsed, now: chrono::DateTime<Utc>) -> Vec<ChannelSignal> {
    let mut out = Vec::new();
    for &code in &parsed.system_errors {
        let class = provider_errors::WHATSAPP.class_of(code);
        let label = class.map_or("unknown", ErrorClass::as_str);
        metrics::counter!("otp_provider_system_errors_total", "channel" => "whatsapp", "class" => label)
            .increment(1);
        tracing::warn!(
            channel = "whatsapp",
            code,
            class = label,
            "the provider reported a system-level error"
        );
        if let Some(kind) = class.and_then(SignalKind::of) {
            out.push(ChannelSignal::new(
                Channel::Whatsapp,
                kind,
                SignalSource::SystemError,
                code.to_string(),
                now,
            ));
        }
    }
    out
}
