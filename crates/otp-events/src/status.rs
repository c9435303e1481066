//! The delivery status: one event per step of a request's life, for analysts.
//!
//! Keyed by request_id on `otp.delivery-status`. It carries a keyed hash of the phone and the
//! country, never the number and never the code.

use crate::{country_of, Channel, CodeRequest, PhoneHasher, Provider};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Value of the `schema` field of every delivery status of v1.
pub const DELIVERY_STATUS_SCHEMA: &str = "otp.delivery_status.v1";
/// Value of the `schema` field of v2: v1 and the `provider` field.
pub const DELIVERY_STATUS_SCHEMA_V2: &str = "otp.delivery_status.v2";
/// Kafka header that names a status's provider, in both versions: a v1 consumer that
/// validates payloads against the published v1 schema can still read it.
pub const HEADER_PROVIDER: &str = "otp-provider";

/// Which delivery-status contract is written (schemas/README.md, "Versions"). v1 stays the
/// default while consumers move: a consumer validating v1 payloads refuses v2's `provider`
/// field, and every v1 consumer reads the provider from the `otp-provider` header meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatusVersion {
    #[default]
    V1,
    V2,
}

impl std::str::FromStr for StatusVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(StatusVersion::V1),
            "v2" => Ok(StatusVersion::V2),
            _ => Err(r#"must be "v1" or "v2""#.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    /// The provider took the request and a receipt will confirm it (delivery confirmation
    /// on); not final: the confirmation tracker ends the request's life.
    Accepted,
    /// The provider accepted the message for delivery (final from a worker), or its `sent`
    /// receipt (from the tracker, not final).
    Sent,
    /// The provider's receipt: on the device. Final when it confirmed an `accepted` send.
    Delivered,
    /// WhatsApp's receipt: opened. Final when it was the first confirmation.
    Read,
    /// No channel could deliver it; final.
    Failed,
    /// Handed on to the next channel in the user's list.
    Fallback,
    /// Its `expires_at` passed before it could be delivered (never sent, or sent and never
    /// confirmed while no channel was left); final.
    Expired,
    /// The event was invalid and went to the dead-letter topic; final.
    Rejected,
    /// A second request with a request_id already handled; not sent again.
    Duplicate,
}

impl StatusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Accepted => "accepted",
            StatusKind::Sent => "sent",
            StatusKind::Delivered => "delivered",
            StatusKind::Read => "read",
            StatusKind::Failed => "failed",
            StatusKind::Fallback => "fallback",
            StatusKind::Expired => "expired",
            StatusKind::Rejected => "rejected",
            StatusKind::Duplicate => "duplicate",
        }
    }

    /// Whether this status ends the request's life when a worker reports it: each request
    /// gets exactly one final status. The confirmation tracker sets `final` itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StatusKind::Sent | StatusKind::Failed | StatusKind::Expired | StatusKind::Rejected
        )
    }
}

/// What class of error stopped or diverted a request; decides retry, fallback or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    Transient,
    Recipient,
    ChannelBroken,
    InvalidRequest,
    RateLimited,
    Blocked,
    Expired,
    Internal,
}

impl ErrorCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::Transient => "transient",
            ErrorCategory::Recipient => "recipient",
            ErrorCategory::ChannelBroken => "channel_broken",
            ErrorCategory::InvalidRequest => "invalid_request",
            ErrorCategory::RateLimited => "rate_limited",
            ErrorCategory::Blocked => "blocked",
            ErrorCategory::Expired => "expired",
            ErrorCategory::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusError {
    pub category: ErrorCategory,
    /// The provider's code (e.g. "131026", "21211", "http_503") or our rule's name.
    pub code: String,
    /// A human explanation. Never holds a phone number or a code.
    pub message: String,
}

/// A fresh `event_id` (UUIDv7: unique, and ordered by time).
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryStatus {
    pub schema: String,
    /// Unique per event (UUIDv7), so consumers can drop replays.
    pub event_id: String,
    pub request_id: String,
    pub status: StatusKind,
    pub channel: Channel,
    /// The provider this step happened on (v2 only: see [`StatusVersion`]); none when a rule
    /// ended the request before any provider was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// 1 for the first channel tried, 2 after one fallback; sends retried on one channel keep
    /// the number and count their tries in `tries`.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    pub provider_message_id: Option<String>,
    pub error: Option<StatusError>,
    /// ISO 3166-1 alpha-2 country of the phone's calling code, when known.
    pub country: Option<String>,
    /// Keyed hash of the phone number; `None` only when the event was unreadable.
    pub phone_hash: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// Milliseconds from the request's `created_at` to `occurred_at`.
    pub latency_ms: Option<u64>,
    /// Set on `fallback`: the channel the request was handed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The channels the user enabled, in their order (the request's `channels`). Not in the
    /// payload of either version: it travels in the [`HEADER_CHANNELS`] header, so that no
    /// consumer validating v1 or v2 meets a field its schema does not list.
    #[serde(skip)]
    pub enabled_channels: Vec<Channel>,
}

/// Kafka header of a status record: the channels the user enabled, comma-separated in their
/// order (`whatsapp,sms`), for the opt-in share.
pub const HEADER_CHANNELS: &str = "otp-channels";

/// The channels of a [`HEADER_CHANNELS`] value; unknown names are left out.
pub fn channels_of_header(value: &str) -> Vec<Channel> {
    value
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

impl DeliveryStatus {
    /// A status about a readable request, on `channel`, as of now.
    pub fn about(
        request: &CodeRequest,
        status: StatusKind,
        channel: Channel,
        hasher: &PhoneHasher,
    ) -> Self {
        let phone_hash = hasher.hash_phone(&request.phone);
        Self::about_recipient(
            request,
            status,
            channel,
            phone_hash,
            country_of(&request.phone),
        )
    }

    /// [`DeliveryStatus::about`] for a caller that already derived the phone's hash and
    /// country (the worker does, once per message: parsing a number is not cheap).
    pub fn about_recipient(
        request: &CodeRequest,
        status: StatusKind,
        channel: Channel,
        phone_hash: String,
        country: Option<String>,
    ) -> Self {
        let now = Utc::now();
        let latency = (now - request.created_at).num_milliseconds().max(0) as u64;
        Self {
            schema: DELIVERY_STATUS_SCHEMA.to_string(),
            event_id: new_event_id(),
            request_id: request.request_id.clone(),
            status,
            channel,
            provider: None,
            attempt: request.attempt_number(),
            tries: None,
            provider_message_id: None,
            error: None,
            country,
            phone_hash: Some(phone_hash),
            occurred_at: now,
            latency_ms: Some(latency),
            next_channel: None,
            app: request.app.clone(),
            is_final: status.is_final(),
            enabled_channels: request.channels.clone(),
        }
    }

    /// A `rejected` status for an event that could not be decoded; only its request_id (when
    /// one could be read) is known.
    pub fn rejected(request_id: String, channel: Channel, error: StatusError) -> Self {
        Self {
            schema: DELIVERY_STATUS_SCHEMA.to_string(),
            event_id: new_event_id(),
            request_id,
            status: StatusKind::Rejected,
            channel,
            provider: None,
            attempt: 1,
            tries: None,
            provider_message_id: None,
            error: Some(error),
            country: None,
            phone_hash: None,
            occurred_at: Utc::now(),
            latency_ms: None,
            next_channel: None,
            app: None,
            is_final: true,
            enabled_channels: Vec::new(),
        }
    }

    /// The ending of a request whose `fallback` (this status) could not be handed on to its
    /// next channel (the contract refused the request, or the write was given up): `failed`,
    /// final, category `internal`, code `fallback_refused`, with `reason` (which names a field
    /// and a rule or a Kafka error, never a value). Its latency runs to now.
    pub fn fallback_refused(&self, reason: &str) -> Self {
        let now = Utc::now();
        let mut failed = self.clone();
        failed.event_id = new_event_id();
        failed.latency_ms = self
            .latency_ms
            .map(|ms| ms + (now - self.occurred_at).num_milliseconds().max(0) as u64);
        failed.occurred_at = now;
        failed.status = StatusKind::Failed;
        failed.is_final = true;
        failed.next_channel = None;
        failed.error = Some(StatusError {
            category: ErrorCategory::Internal,
            code: "fallback_refused".into(),
            message: reason.to_string(),
        });
        failed
    }

    pub fn with_error(mut self, error: StatusError) -> Self {
        self.error = Some(error);
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a DeliveryStatus always serialises")
    }

    /// The payload in `version`'s contract, and its schema name: v1 without the provider
    /// (its schema allows no other field), v2 with it.
    pub fn encode(&self, version: StatusVersion) -> (Vec<u8>, &'static str) {
        let mut status = self.clone();
        let schema = match version {
            StatusVersion::V1 => {
                status.provider = None;
                DELIVERY_STATUS_SCHEMA
            }
            StatusVersion::V2 => DELIVERY_STATUS_SCHEMA_V2,
        };
        status.schema = schema.to_string();
        (status.to_json(), schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Submission;

    #[test]
    fn a_fallback_that_cannot_be_handed_on_ends_the_request_failed() {
        let request = Submission::new(
            "+15551230001",
            "123456",
            vec![Channel::Whatsapp, Channel::Sms],
            chrono::Duration::minutes(5),
        )
        .complete(Utc::now());
        let hasher = PhoneHasher::new(b"k");
        let mut fallback =
            DeliveryStatus::about(&request, StatusKind::Fallback, Channel::Whatsapp, &hasher);
        fallback.next_channel = Some(Channel::Sms);
        fallback.occurred_at = Utc::now() - chrono::Duration::seconds(2);
        let before = fallback.latency_ms.unwrap();

        let failed = fallback.fallback_refused("phone: must be E.164");
        assert_eq!(failed.status, StatusKind::Failed);
        assert!(failed.is_final, "the request's one ending");
        assert_eq!(failed.next_channel, None);
        assert_ne!(failed.event_id, fallback.event_id, "an event of its own");
        assert_eq!(failed.request_id, fallback.request_id);
        let error = failed.error.as_ref().unwrap();
        assert_eq!(
            (error.category, error.code.as_str()),
            (ErrorCategory::Internal, "fallback_refused")
        );
        assert!(
            failed.latency_ms.unwrap() >= before + 2000,
            "latency runs to the ending"
        );
        let json = String::from_utf8(failed.to_json()).unwrap();
        assert!(!json.contains("5551230001") && !json.contains("123456"));
    }
}
