//! Channel signals: what the providers say about a channel's health outside a send's answer,
//! on `otp.channel-signals`.
//!
//! A provider can accept every send and still fail them all later (a locked account, a
//! sender flagged for spam, an unregistered toll-free number): those failures reach us only as
//! webhooks, at the receipts ingress, far from the workers whose circuit must open. The
//! ingress writes one [`ChannelSignal`] per such webhook (a failed receipt whose code means the
//! channel is broken, or one of Meta's system-level `value.errors`), and every worker of the
//! channel reads the topic from its end: channel-broken signals feed its circuit, throttling
//! signals its sender limiter.

use crate::provider_errors::ErrorClass;
use crate::{Channel, Provider};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const CHANNEL_SIGNAL_SCHEMA: &str = "otp.channel_signal.v1";

/// What a signal tells the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// The provider cannot deliver anywhere: counts against its health everywhere.
    ChannelBroken,
    /// The provider cannot deliver to one country (the signal's `country`): counts against
    /// its health there only.
    RouteBroken,
    /// Over a rate window on our side: slow the sender limit.
    Throttled,
    /// The provider delivers to the signal's `country` much later than its peers (the
    /// tracker's comparison of delivery times): move weight away from it there.
    Slow,
}

impl SignalKind {
    /// The signal a provider error class gives, if any.
    pub fn of(class: ErrorClass) -> Option<Self> {
        match class {
            ErrorClass::ChannelBroken => Some(SignalKind::ChannelBroken),
            ErrorClass::RouteBroken => Some(SignalKind::RouteBroken),
            ErrorClass::Throttled => Some(SignalKind::Throttled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::ChannelBroken => "channel_broken",
            SignalKind::RouteBroken => "route_broken",
            SignalKind::Throttled => "throttled",
            SignalKind::Slow => "slow",
        }
    }
}

/// Where the provider said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalSource {
    /// A failed delivery receipt.
    Receipt,
    /// Meta's `value.errors`: a system, app or account error not tied to one message.
    SystemError,
}

impl SignalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalSource::Receipt => "receipt",
            SignalSource::SystemError => "system_error",
        }
    }
}

/// One provider statement about a channel's health, keyed by channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSignal {
    pub schema: String,
    pub channel: Channel,
    pub kind: SignalKind,
    pub source: SignalSource,
    /// The provider's code, e.g. "131031".
    pub code: String,
    pub received_at: DateTime<Utc>,
    /// The provider that said it; the channel's first provider when absent (signals written
    /// before providers were named, when a channel had one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// The destination country (ISO 3166-1 alpha-2) a `route_broken` signal is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl ChannelSignal {
    pub fn new(
        channel: Channel,
        kind: SignalKind,
        source: SignalSource,
        code: impl Into<String>,
        received_at: DateTime<Utc>,
    ) -> Self {
        Self {
            schema: CHANNEL_SIGNAL_SCHEMA.to_string(),
            channel,
            kind,
            source,
            code: code.into(),
            received_at,
            provider: None,
            country: None,
        }
    }

    /// The same signal, naming the provider that said it and the destination's country.
    pub fn about(mut self, provider: Provider, country: Option<String>) -> Self {
        self.provider = Some(provider);
        self.country = country;
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ChannelSignal always serialises")
    }
}
