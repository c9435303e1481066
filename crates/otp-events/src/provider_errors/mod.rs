//! Provider error codes and what the delivery runtime does with each (DESIGN.md, "Error
//! classes"): one table per provider, as data. The channel clients classify a send's answer
//! with them and the receipts ingress a delivery error reported later, so they live here,
//! beside the other contracts, rather than in either.

mod sms;
mod whatsapp;

pub use sms::SMS;
pub use whatsapp::WHATSAPP;

use crate::ErrorCategory;

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
