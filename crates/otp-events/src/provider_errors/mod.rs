//! Provider error codes and what the delivery runtime does with each (DESIGN.md, "Error
//! classes"): one table per provider, as data. The channel clients classify a send's answer
//! with them and the receipts ingress a delivery error reported later, so they live here,
//! beside the other contracts, rather than in either.

mod twilio;
mod vonage;
mod whatsapp;

pub use twilio::TWILIO;
pub use vonage::{vonage_code, VONAGE};
pub use whatsapp::WHATSAPP;

use crate::ErrorCategory;

/// The class of a provider's answer, which decides what the runtime does next
/// (DESIGN.md, "Error classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Retry with backoff, within the deadline.
    Transient,
    /// Over a rate window on our side (the sender's throughput, the app's or the account's
    /// call rate): slow the worker's shared sender limit and try again within the deadline,
    /// without spending one of the request's tries.
    Throttled,
    /// Over the per-recipient pair rate: try again once the recipient's window has passed, if
    /// the deadline allows; else fall back.
    PairLimited,
    /// This recipient cannot get it on this channel: fall back now, no retry; says nothing
    /// about the channel's health.
    Recipient,
    /// The provider itself is broken (token, account, sender quality, or a payload or template
    /// the provider refuses): try the route's next provider, else fall back now; count it
    /// against the provider's health everywhere. A provider's answer never dead-letters a
    /// valid request.
    ChannelBroken,
    /// The provider may not send to the destination's country (geo permission, a country's
    /// sender registration, local regulation): try the route's next provider, else fall back
    /// now; count it against the provider's health for that country only, so that one
    /// country's trouble closes nothing elsewhere, and stop trying it per user there.
    RouteBroken,
}

impl ErrorClass {
    pub fn category(self) -> ErrorCategory {
        match self {
            ErrorClass::Transient => ErrorCategory::Transient,
            ErrorClass::Throttled | ErrorClass::PairLimited => ErrorCategory::RateLimited,
            ErrorClass::Recipient => ErrorCategory::Recipient,
            ErrorClass::ChannelBroken | ErrorClass::RouteBroken => ErrorCategory::ChannelBroken,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "throttled",
            ErrorClass::PairLimited => "pair_limited",
            ErrorClass::RouteBroken => "route_broken",
            other => other.category().as_str(),
        }
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
    /// The provider answered with a code the table does not know, or refused (4xx) without a
    /// code (classified by HTTP status; counted and logged for ops). A bare 5xx, 429, 401 or
    /// 403 is not: its HTTP status says what it is.
    pub unknown_code: bool,
    /// The provider certainly sent nothing: it answered with a refusal, or the connection
    /// never opened. False for a send without an answer (a timeout after the request left) or
    /// an answer that may follow a send (HTTP 500, 502, 504): such a send may have gone out.
    pub nothing_sent: bool,
}

/// Whether an HTTP error answer proves that nothing was sent: every refusal (4xx), and 503
/// (the service did not take the request); not 500, 502 or 504, which a provider or a gateway
/// in front of it can answer after the message was taken.
pub fn refused_without_sending(http_status: u16) -> bool {
    !matches!(http_status, 500 | 502 | 504)
}

/// A provider's error codes, their classes and what they mean, as data mirroring DESIGN.md.
///
/// Failure messages come from this table, never from the provider's answer: providers echo
/// the recipient's number in their messages ("The 'To' number +1555... is not valid").
pub struct ErrorTable {
    /// The provider the table is for (`Provider::as_str`, a metric label).
    pub provider: &'static str,
    pub entries: &'static [(i64, ErrorClass, &'static str)],
    /// Ranges of codes with one class, first and last included (Meta's 200-299).
    pub ranges: &'static [(i64, i64, ErrorClass, &'static str)],
}

impl ErrorTable {
    pub fn class_of(&self, code: i64) -> Option<ErrorClass> {
        self.describe(code).map(|(class, _)| class)
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
        let exact = self
            .entries
            .iter()
            .find(|(c, _, _)| *c == code)
            .map(|(_, class, meaning)| (*class, *meaning));
        exact.or_else(|| {
            self.ranges
                .iter()
                .find(|(first, last, _, _)| (*first..=*last).contains(&code))
                .map(|(_, _, class, meaning)| (*class, *meaning))
        })
    }

    /// The table as Markdown, one row per class (codes in table order, then ranges), for the
    /// channels' READMEs, which are tested to hold it.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| class | what the worker does | codes |\n|---|---|---|\n");
        for class in [
            ErrorClass::Transient,
            ErrorClass::Throttled,
            ErrorClass::PairLimited,
            ErrorClass::Recipient,
            ErrorClass::RouteBroken,
            ErrorClass::ChannelBroken,
        ] {
            let mut codes: Vec<String> = self
                .entries
                .iter()
                .filter(|(_, c, _)| *c == class)
                .map(|(code, _, _)| code.to_string())
                .collect();
            codes.extend(
                self.ranges
                    .iter()
                    .filter(|(_, _, c, _)| *c == class)
                    .map(|(first, last, _, _)| format!("{first}-{last}")),
            );
            if codes.is_empty() {
                continue;
            }
            let action = match class {
                ErrorClass::Transient => {
                    "next provider of the route when nothing was sent (an error answer, no connection), else retry with backoff within the deadline; then fall back"
                }
                ErrorClass::Throttled => {
                    "slow the provider's fleet-wide sender rate; next provider of the route, else try again within the deadline without spending a try"
                }
                ErrorClass::PairLimited => {
                    "wait for the recipient's window if the deadline allows, else fall back"
                }
                ErrorClass::Recipient => "fall back at once; the provider is healthy",
                ErrorClass::RouteBroken => {
                    "next provider of the route, else fall back; counts against the provider for that country only"
                }
                ErrorClass::ChannelBroken => {
                    "next provider of the route, else fall back; counts against the provider everywhere, logs an error"
                }
            };
            out.push_str(&format!(
                "| {} | {action} | {} |\n",
                class.as_str(),
                codes.join(", ")
            ));
        }
        out
    }

    /// Classify an HTTP error answer: by the provider's code when the table knows it, else by
    /// HTTP status: 401 and 403 mean our credentials or permissions (the channel is broken),
    /// 429 is throttling, 5xx is transient, and any other refusal falls back at once (the user
    /// is better served by the next channel than by a retry we cannot justify).
    pub fn classify(&self, http_status: u16, provider_code: Option<i64>) -> SendFailure {
        if let Some(code) = provider_code {
            if let Some((class, meaning)) = self.describe(code) {
                return SendFailure {
                    class,
                    code: code.to_string(),
                    message: meaning.to_string(),
                    unknown_code: false,
                    nothing_sent: refused_without_sending(http_status),
                };
            }
        }
        let class = match http_status {
            401 | 403 => ErrorClass::ChannelBroken,
            429 => ErrorClass::Throttled,
            500.. => ErrorClass::Transient,
            _ => ErrorClass::Recipient,
        };
        let code = match provider_code {
            Some(c) => c.to_string(),
            None => format!("http_{http_status}"),
        };
        // A bare 5xx, 429, 401 or 403 says what it is (an outage answers 503 on every call:
        // one warning per call would drown the logs); a code we do not know, or an
        // unexplained refusal, is news for ops.
        let unexplained =
            matches!(http_status, 400..=499) && !matches!(http_status, 401 | 403 | 429);
        SendFailure {
            class,
            code,
            message: match provider_code {
                Some(_) => {
                    format!("provider refused the send (HTTP {http_status}, code not in our table)")
                }
                None => format!("provider answered HTTP {http_status} without an error code"),
            },
            unknown_code: provider_code.is_some() || unexplained,
            nothing_sent: refused_without_sending(http_status),
        }
    }
}
