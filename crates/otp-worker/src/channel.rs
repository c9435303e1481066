//! What a channel is to the runtime: one send, one classified answer.
//!
//! A channel crate (WhatsApp, SMS) implements [`ChannelClient`] with its provider's request
//! shape and gives its error table as data ([`ErrorTable`]); the runtime decides retry,
//! fallback or stop from the class alone, so both channels share every other line of code.

use chrono::{DateTime, Utc};
use otp_events::{Channel, CodeRequest, ErrorCategory};
use std::future::Future;

/// The class of a provider's answer, which decides what the runtime does next
/// (DESIGN.md, "Error classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Retry with backoff, within the deadline.
    Transient,
    /// This recipient cannot get it on this channel: fall back now, no retry.
    Recipient,
    /// The channel itself is broken (token, account): fall back now.
    ChannelBroken,
    /// Our request was wrong: reject and dead-letter.
    InvalidRequest,
}

impl ErrorClass {
    pub fn category(self) -> ErrorCategory {
        match self {
            ErrorClass::Transient => ErrorCategory::Transient,
            ErrorClass::Recipient => ErrorCategory::Recipient,
            ErrorClass::ChannelBroken => ErrorCategory::ChannelBroken,
            ErrorClass::InvalidRequest => ErrorCategory::InvalidRequest,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.category().as_str()
    }
}

/// A classified refusal. `message` must never hold the phone number or the code: clients
/// build it from the provider's error code and title, not from echoed request data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    pub class: ErrorClass,
    /// The provider's code ("131026", "21211"), or "http_503", "timeout", "connect".
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Accepted { provider_message_id: String },
    Failed(SendFailure),
}

/// One provider API client. `send` makes exactly one attempt; retries are the runtime's.
pub trait ChannelClient: Send + Sync + 'static {
    fn channel(&self) -> Channel;

    /// Send `request`'s code. `now` is passed in so that time-derived fields (TTL,
    /// validity period) agree with the runtime's guards.
    fn send(
        &self,
        request: &CodeRequest,
        now: DateTime<Utc>,
    ) -> impl Future<Output = SendOutcome> + Send;
}

/// A provider's error codes, their classes and what they mean, as data mirroring DESIGN.md.
///
/// Failure messages come from this table, never from the provider's answer: providers echo
/// the recipient's number in their messages ("The 'To' number +1555... is not valid").
pub struct ErrorTable {
    pub entries: &'static [(i64, ErrorClass, &'static str)],
}

impl ErrorTable {
    pub fn class_of(&self, code: i64) -> Option<ErrorClass> {
        self.entry(code).map(|(_, class, _)| *class)
    }

    /// How the table differs from a list of codes by class (for the channels' table tests):
    /// codes with another class, and table entries the list does not name.
    pub fn differences(&self, expected: &[(&[i64], ErrorClass)]) -> Vec<String> {
        let mut out = Vec::new();
        for (codes, class) in expected {
            for code in *codes {
                if self.class_of(*code) != Some(*class) {
                    out.push(format!(
                        "{code}: table says {:?}, expected {class:?}",
                        self.class_of(*code)
                    ));
                }
            }
        }
        for (code, _, _) in self.entries {
            if !expected.iter().any(|(codes, _)| codes.contains(code)) {
                out.push(format!("{code}: in the table but not in the expected list"));
            }
        }
        out
    }

    /// The class and meaning of a provider code, when the table knows it.
    pub fn describe(&self, code: i64) -> Option<(ErrorClass, &'static str)> {
        self.entry(code)
            .map(|(_, class, meaning)| (*class, *meaning))
    }

    fn entry(&self, code: i64) -> Option<&(i64, ErrorClass, &'static str)> {
        self.entries.iter().find(|(c, _, _)| *c == code)
    }

    /// Classify an HTTP error answer: by the provider's code when the table knows it, else by
    /// HTTP status: 429 and 5xx are transient; any other unknown refusal falls back at once
    /// (the user is better served by the next channel than by a retry we cannot justify).
    pub fn classify(&self, http_status: u16, provider_code: Option<i64>) -> SendFailure {
        if let Some((code, class, meaning)) = provider_code.and_then(|c| self.entry(c)) {
            return SendFailure {
                class: *class,
                code: code.to_string(),
                message: (*meaning).to_string(),
            };
        }
        let class = if http_status == 429 || http_status >= 500 {
            ErrorClass::Transient
        } else {
            ErrorClass::Recipient
        };
        let code = match provider_code {
            Some(c) => c.to_string(),
            None => format!("http_{http_status}"),
        };
        SendFailure {
            class,
            code,
            message: format!(
                "provider refused the send (HTTP {http_status}, code not in our table)"
            ),
        }
    }
}

/// Turn a provider's HTTP answer into an outcome: accepted when `accepted_id` finds the
/// provider's message id in a 2xx answer, else classified by `table` with the provider code
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
    if (200..300).contains(&status) {
        if let Some(id) = accepted_id(&body) {
            return SendOutcome::Accepted {
                provider_message_id: id.to_string(),
            };
        }
    }
    SendOutcome::Failed(table.classify(status, error_code(&body)))
}

/// Classify a transport error (no answer from the provider): always transient.
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
    }
}
