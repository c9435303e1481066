//! What a channel is to the runtime: its providers, one send through one of them, one
//! classified answer.
//!
//! A channel crate (WhatsApp, SMS) implements [`ChannelClient`] with its providers' request
//! shapes and gives their error tables as data ([`ErrorTable`]); the runtime chooses the
//! provider (routes, health, limits) and decides retry, failover, fallback or stop from the
//! class alone, so both channels share every other line of code.

use chrono::{DateTime, Utc};
use otp_events::provider_errors::{ErrorClass, ErrorTable, SendFailure};
use otp_events::{Channel, CodeRequest, Provider};
use std::future::Future;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Accepted { provider_message_id: String },
    Failed(SendFailure),
}

/// A channel's provider API clients. `send` makes exactly one attempt through one provider;
/// the choice of provider, retries and failover are the runtime's.
pub trait ChannelClient: Send + Sync + 'static {
    fn channel(&self) -> Channel;

    /// The providers configured (at least one), in the order a default route lists them.
    fn providers(&self) -> Vec<Provider>;

    /// Send `request`'s code through `provider` (one of [`ChannelClient::providers`]). `now`
    /// is passed in so that time-derived fields (TTL, validity period) agree with the
    /// runtime's guards.
    fn send(
        &self,
        provider: Provider,
        request: &CodeRequest,
        now: DateTime<Utc>,
    ) -> impl Future<Output = SendOutcome> + Send;
}

/// The message id of a send the provider accepted without a readable id.
pub const UNKNOWN_MESSAGE_ID: &str = "unknown";

/// Turn a provider's HTTP answer into an outcome: accepted on any 2xx (with the message id
/// `accepted_id` finds, or [`UNKNOWN_MESSAGE_ID`]), else classified by `table` with the provider code
/// that `error_code` reads from the error body.
pub async fn outcome_of(
    response: Result<reqwest::Response, reqwest::Error>,
    table: &ErrorTable,
    accepted_id: impl Fn(&serde_json::Value) -> Option<&str>,
    error_code: impl Fn(&serde_json::Value) -> Option<i64>,
) -> SendOutcome {
    let response = match response {
        Ok(r) => r,
        Err(e) => return SendOutcome::Failed(transport_failure(&e)),
    };
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    outcome_of_answer(status, &body, table, accepted_id, error_code)
}

/// [`outcome_of`] for an answer already read: its HTTP status and JSON body.
pub fn outcome_of_answer(
    status: u16,
    body: &serde_json::Value,
    table: &ErrorTable,
    accepted_id: impl Fn(&serde_json::Value) -> Option<&str>,
    error_code: impl Fn(&serde_json::Value) -> Option<i64>,
) -> SendOutcome {
    if (200..300).contains(&status) {
        // A 2xx means the provider took the message: it will go out. Without a readable id
        // it is still sent (reporting it failed would send the code twice), with an id that
        // says so; receipts cannot be matched to it.
        let id = accepted_id(body).map(str::to_string).unwrap_or_else(|| {
            metrics::counter!("otp_accepted_without_id_total", "provider" => table.provider)
                .increment(1);
            tracing::warn!(
                provider = table.provider,
                http_status = status,
                "provider accepted a message without a readable message id"
            );
            UNKNOWN_MESSAGE_ID.to_string()
        });
        return SendOutcome::Accepted {
            provider_message_id: id,
        };
    }
    let failure = table.classify(status, error_code(body));
    if failure.unknown_code {
        // New codes are how ops learn what the provider changed: count and name them.
        metrics::counter!(
            "otp_unknown_provider_codes_total",
            "provider" => table.provider,
            "code" => failure.code.clone()
        )
        .increment(1);
        tracing::warn!(
            provider = table.provider,
            code = %failure.code,
            http_status = status,
            class = failure.class.as_str(),
            "provider answered with a code not in our table; classified by its HTTP status"
        );
    }
    SendOutcome::Failed(failure)
}

/// Classify a transport error (no answer from the provider): always transient; nothing was
/// sent only when the connection never opened.
pub fn transport_failure(err: &reqwest::Error) -> SendFailure {
    let code = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "transport"
    };
    SendFailure {
        class: ErrorClass::Transient,
        code: code.to_string(),
        // reqwest's Display includes the URL, which may carry ids but never the phone or code
        // (both travel in the body); keep only the kind to be safe.
        message: format!("no answer from the provider ({code})"),
        unknown_code: false,
        nothing_sent: err.is_connect(),
    }
}
