//! The code request: what a login system asks us to deliver.

use crate::{Channel, Rules, ValidationError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Value of the `schema` field of every code request of this version.
pub const CODE_REQUEST_SCHEMA: &str = "otp.code_request.v1";

/// A complete code request, as it travels on the request topics.
///
/// Field by field it mirrors `schemas/code-request.v1.json`; a test checks that every example
/// of the schema round-trips through this type unchanged. `Debug` is written by hand so that a
/// stray `{:?}` never prints the phone number or the code.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub schema: String,
    /// Idempotency key: the same request_id is delivered at most once per channel.
    pub request_id: String,
    /// E.164 phone number, e.g. `+15551234567`.
    pub phone: String,
    /// The one-time code: 4 to 10 digits, as a string.
    pub code: String,
    /// Ordered preference: the first is tried first, the rest are the fallbacks.
    pub channels: Vec<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    pub created_at: DateTime<Utc>,
    /// No delivery after this instant, ever.
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_ref: Option<String>,
    /// Set by workers on fallback: 1 for the first channel, 2 for the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Set by workers on fallback: the channels already tried, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried_channels: Vec<Channel>,
}

impl std::fmt::Debug for CodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeRequest")
            .field("request_id", &self.request_id)
            .field("phone", &crate::mask_phone(&self.phone))
            .field("code", &"<redacted>")
            .field("channels", &self.channels)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("attempt", &self.attempt)
            .field("tried_channels", &self.tried_channels)
            .finish_non_exhaustive()
    }
}

impl CodeRequest {
    /// The one validation function: every entry point calls it (decoding calls it too).
    pub fn validate(&self, rules: &Rules) -> Result<(), ValidationError> {
        rules.check(self)
    }

    /// The channel this request is addressed to now: the first one not yet tried.
    pub fn current_channel(&self) -> Option<Channel> {
        self.channels
            .iter()
            .copied()
            .find(|c| !self.tried_channels.contains(c))
    }

    /// The channel after the current one, if the user enabled one.
    pub fn next_channel(&self) -> Option<Channel> {
        let current = self.current_channel()?;
        self.channels
            .iter()
            .copied()
            .find(|c| *c != current && !self.tried_channels.contains(c))
    }

    /// Attempt number of the current channel (1 for the first channel tried).
    pub fn attempt_number(&self) -> u32 {
        self.attempt.unwrap_or(1)
    }

    /// The same request, handed on to the next channel: same request_id, same deadline, with
    /// the current channel recorded as tried. `None` when no channel is left.
    pub fn for_next_channel(&self) -> Option<CodeRequest> {
        let current = self.current_channel()?;
        self.next_channel()?;
        let mut next = self.clone();
        next.tried_channels.push(current);
        next.attempt = Some(self.attempt_number() + 1);
        Some(next)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a CodeRequest always serialises")
    }
}

/// What a login system submits: a code request whose `request_id`, `created_at` and `schema`
/// may be left out. [`Submission::complete`] fills them in.
#[derive(Clone, PartialEq)]
pub struct Submission {
    pub request_id: Option<String>,
    pub phone: String,
    pub code: String,
    pub channels: Vec<Channel>,
    pub locale: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub app: Option<String>,
    pub user_ref: Option<String>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("request_id", &self.request_id)
            .field("phone", &crate::mask_phone(&self.phone))
            .field("channels", &self.channels)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Submission {
    /// A submission for `phone` and `code` that expires `ttl` from now.
    pub fn new(
        phone: impl Into<String>,
        code: impl Into<String>,
        channels: Vec<Channel>,
        ttl: chrono::Duration,
    ) -> Self {
        Self {
            request_id: None,
            phone: phone.into(),
            code: code.into(),
            channels,
            locale: None,
            created_at: None,
            expires_at: Utc::now() + ttl,
            app: None,
            user_ref: None,
        }
    }

    /// Fill in what the submitter may leave out: a UUIDv7 request_id (time-ordered, so ids sort
    /// by creation), `created_at` = `now`, and the schema name.
    pub fn complete(self, now: DateTime<Utc>) -> CodeRequest {
        CodeRequest {
            schema: CODE_REQUEST_SCHEMA.to_string(),
            request_id: self
                .request_id
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            phone: self.phone,
            code: self.code,
            channels: self.channels,
            locale: self.locale,
            created_at: self.created_at.unwrap_or(now),
            expires_at: self.expires_at,
            app: self.app,
            user_ref: self.user_ref,
            attempt: None,
            tried_channels: Vec::new(),
        }
    }
}
