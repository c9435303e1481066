//! Delivery receipts and pending confirmations: what closes the loop after a provider
//! accepted a send.
//!
//! A [`Receipt`] is one status a provider reported by webhook (WhatsApp `statuses[]`, Twilio's
//! status callback), as the receipts ingress writes it to `otp.delivery-receipts`, keyed by
//! request_id. A [`PendingConfirmation`] is what a worker writes to the compacted
//! `otp.pending-confirmations` topic, same key, when a send was accepted and its delivery is
//! still to be confirmed; the confirmation tracker keeps it up to date there (its state is
//! the tracker's memory, rebuilt from the topic) and deletes it with a tombstone when the
//! code has expired. Neither carries the phone number in any field besides the request
//! itself, which the pending record must keep to be able to fall back.

use crate::{Channel, CodeRequest, ErrorCategory, Provider};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const RECEIPT_SCHEMA: &str = "otp.delivery_receipt.v1";
pub const PENDING_CONFIRMATION_SCHEMA: &str = "otp.pending_confirmation.v1";
pub const MESSAGE_INDEX_SCHEMA: &str = "otp.message_index.v1";

/// Prefix of a message-index key on `otp.pending-confirmations`. A request_id starts with a
/// letter or digit, so no request's key can take the place of a message's.
pub const MESSAGE_KEY_PREFIX: &str = "~msg:";

/// The key, on `otp.pending-confirmations` and `otp.delivery-receipts`, under which the
/// message with this public (hashed) provider id is found: a receipt that carries no
/// request_id is written under it, and lands on the partition of its [`MessageIndex`].
pub fn message_key(public_message_id: &str) -> String {
    format!("{MESSAGE_KEY_PREFIX}{public_message_id}")
}

/// The key under which the confirmation path knows a request: `app/request_id`, or the bare
/// request_id for a request without an app. Request ids are unique per app only, so two
/// apps' requests of one id must not share a pending record, a tombstone or a receipt. The
/// same value goes to the providers as the correlation they echo back (WhatsApp's
/// `biz_opaque_callback_data`, Vonage's `client_ref`); neither an app nor an id can hold `/`.
pub fn confirmation_key(app: Option<&str>, request_id: &str) -> String {
    match app {
        Some(app) => format!("{app}/{request_id}"),
        None => request_id.to_string(),
    }
}

/// A correlation a provider echoed back, as `(app, request_id)`, when it is a valid
/// [`confirmation_key`]; `None` otherwise.
pub fn split_confirmation_key(key: &str) -> Option<(Option<&str>, &str)> {
    let (app, id) = match key.split_once('/') {
        Some((app, id)) => (Some(app), id),
        None => (None, key),
    };
    (crate::is_valid_request_id(id) && app.is_none_or(crate::validate::is_valid_app))
        .then_some((app, id))
}

/// What a provider says happened to a message it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// Twilio: queued at the provider (nothing for the user yet).
    Queued,
    /// Handed to the carrier / WhatsApp's servers.
    Sent,
    /// On the user's device.
    Delivered,
    /// WhatsApp: the user opened it.
    Read,
    /// Will not be delivered (WhatsApp `failed`, Twilio `failed` or `undelivered`).
    Failed,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Queued => "queued",
            ReceiptStatus::Sent => "sent",
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Read => "read",
            ReceiptStatus::Failed => "failed",
        }
    }
}

/// The error a provider attached to a `failed` receipt, classified by our error tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptError {
    /// The provider's code, e.g. "131026" or "30005".
    pub code: String,
    pub category: ErrorCategory,
    /// From our error table, never the provider's text (it may echo the number).
    pub message: String,
}

/// One provider status for one message, on `otp.delivery-receipts` keyed by its request's
/// [`confirmation_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub schema: String,
    /// From the correlation the provider echoed back. Absent when the status carried none
    /// (Meta documents `biz_opaque_callback_data` on sent, delivered and read statuses, not
    /// on failed ones): the receipt is then keyed by [`message_key`] and the tracker resolves
    /// it through the message's [`MessageIndex`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The request's app, from the same correlation (absent for a request without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub channel: Channel,
    /// The provider whose webhook reported it, from the ingress route it came in on. Absent in
    /// receipts written before providers were named: the channel's first provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    pub provider_message_id: String,
    pub status: ReceiptStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReceiptError>,
    /// When the provider says it happened, when it said (WhatsApp's `timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_timestamp: Option<DateTime<Utc>>,
    /// When the ingress received the webhook.
    pub received_at: DateTime<Utc>,
}

impl Receipt {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Receipt always serialises")
    }

    /// Its Kafka key: its request's [`confirmation_key`], or the message's key while the
    /// request is unknown.
    pub fn key(&self) -> String {
        match &self.request_id {
            Some(id) => confirmation_key(self.app.as_deref(), id),
            None => message_key(&self.provider_message_id),
        }
    }
}

/// Which request a provider message belongs to, on `otp.pending-confirmations` keyed by
/// [`message_key`] of its public id: written by the worker beside every pending record, so a
/// receipt without correlation (Meta's failed statuses; Vonage's, when the confirmation key
/// does not fit `client_ref`) still finds its request, and a failed one falls back at once
/// rather than after the confirmation window. Tombstoned by the tracker when the code's life
/// is over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageIndex {
    pub schema: String,
    pub request_id: String,
    /// The request's app (absent for a request without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub channel: Channel,
    /// The code's expiry: the entry is kept as long as the request's pending record.
    pub expires_at: DateTime<Utc>,
}

impl MessageIndex {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a MessageIndex always serialises")
    }
}

/// Where a pending confirmation stands. Every state but `Awaiting` is settled: the tracker
/// only reports further receipts (with `final=false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmationState {
    /// A fallback is armed: a failed receipt, or none by `confirm_by`, fires it.
    Awaiting,
    /// The worker already reported the final status (no channel left to fall back to); the
    /// tracker reports receipts only.
    ReportOnly,
    /// A delivered or read receipt confirmed it in time; `delivered`/`read` was final.
    Confirmed,
    /// Handed on to the next channel (`receipt_failed` or `receipt_timeout`).
    FellBack,
    /// A failed receipt came and no channel (or no time) was left; `failed`/`expired` was final.
    Failed,
}

/// A send that was accepted and waits for its receipts, on `otp.pending-confirmations`
/// (compacted) keyed by its request's [`confirmation_key`]. Unknown fields are ignored, not refused: workers and
/// trackers are upgraded one after the other, and a record a tracker refused would lose
/// its fallback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingConfirmation {
    pub schema: String,
    /// The request as the accepting worker handled it (its fallback state included), so the
    /// tracker can hand it on without any other lookup.
    pub request: CodeRequest,
    pub channel: Channel,
    /// The provider the send went through; the channel's first provider when absent
    /// (records written before providers were named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<crate::Provider>,
    pub provider_message_id: String,
    pub accepted_at: DateTime<Utc>,
    /// No delivered receipt by then: fall back (or, with `timeout_is_final`, end `sent`).
    /// `None` in `ReportOnly`.
    pub confirm_by: Option<DateTime<Utc>>,
    /// A missing receipt is no evidence of failure on this provider (SMS: carriers' receipts
    /// are late or missing): when `confirm_by` passes without one, the send is final as
    /// `sent` instead of falling back. A failed receipt still falls back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timeout_is_final: bool,
    pub state: ConfirmationState,
    /// Receipt statuses already reported, so a replayed receipt is not reported twice.
    #[serde(default)]
    pub reported: Vec<ReceiptStatus>,
}

impl PendingConfirmation {
    /// Its Kafka key: its request's [`confirmation_key`].
    pub fn key(&self) -> String {
        confirmation_key(self.request.app.as_deref(), &self.request.request_id)
    }

    /// As written to the compacted topic: the request sealed by `rules` like on the request
    /// topics. Refused only when no key of `rules` serves the request's app, which a request
    /// validated against the same rules never meets.
    pub fn to_json(&self, rules: &crate::Rules) -> Result<Vec<u8>, crate::ValidationError> {
        let mut value = serde_json::to_value(self).expect("a PendingConfirmation serialises");
        value["request"] = rules.request_value(&self.request)?;
        Ok(serde_json::to_vec(&value).expect("a JSON value serialises"))
    }

    /// Read a record written by [`PendingConfirmation::to_json`], opening its request.
    pub fn from_json(bytes: &[u8], rules: &crate::Rules) -> Result<Self, String> {
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("{:?}", e.classify()))?;
        if let Some(serde_json::Value::Object(request)) = value.get_mut("request") {
            rules.open_object(request).map_err(|e| e.to_string())?;
        }
        // serde's message can quote a value (a phone, a code): keep its kind only.
        serde_json::from_value(value).map_err(|e| format!("{:?}", e.classify()))
    }
}
