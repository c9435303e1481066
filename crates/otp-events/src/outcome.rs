//! Verification outcomes: what a login system says became of a code we delivered, on
//! `otp.verification-outcomes` keyed by the request's confirmation key (`app/request_id`).
//!
//! Conversion (the share of codes users actually entered) is what every OTP product is judged
//! by, and only the login system knows it: it checks the code the user types. So it reports,
//! per request_id, how the login ended, with the ends Twilio Verify's verification statuses
//! name (`approved`, `canceled`, `max_attempts_reached`, `expired`):
//!
//! | outcome | Twilio Verify | meaning |
//! |---|---|---|
//! | `verified` | `approved` | the user entered the right code |
//! | `abandoned` | `canceled` | the user left (closed the page, asked for another way in) |
//! | `too_many_attempts` | `max_attempts_reached` | wrong code entered too many times |
//! | `expired` | `expired` | the code's life ended before the right one was entered |
//!
//! The contract is `schemas/verification-outcome.v1.json`. It holds no phone number and no
//! code: unknown fields are refused. The same [`decode_outcome`] validates what the library,
//! the HTTP ingress and the CLI accept, naming the field and the rule.

use crate::{confirmation_key, is_valid_app, is_valid_request_id, ValidationError};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const VERIFICATION_OUTCOME_SCHEMA: &str = "otp.verification_outcome.v1";

/// How long after it happened an outcome may still be reported.
pub const OUTCOME_MAX_AGE: Duration = Duration::hours(24);
/// How far ahead of the reader's clock `occurred_at` may be.
pub const OUTCOME_MAX_SKEW: Duration = Duration::seconds(30);
/// The most code entries an outcome may count.
pub const MAX_ATTEMPTS: u32 = 100;

/// How a login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Verified,
    Abandoned,
    TooManyAttempts,
    Expired,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 4] = [
        OutcomeKind::Verified,
        OutcomeKind::Abandoned,
        OutcomeKind::TooManyAttempts,
        OutcomeKind::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Verified => "verified",
            OutcomeKind::Abandoned => "abandoned",
            OutcomeKind::TooManyAttempts => "too_many_attempts",
            OutcomeKind::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One login system's report about one of its requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationOutcome {
    pub schema: String,
    /// Unique per report (UUIDv7): a report sent twice is recognised.
    pub event_id: String,
    /// The request the code was delivered for.
    pub request_id: String,
    /// The request's app: the API key's at the HTTP ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub outcome: OutcomeKind,
    /// When the login ended (the login system's clock).
    pub occurred_at: DateTime<Utc>,
    /// How many codes the user entered, the right one included (1 to 100), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl VerificationOutcome {
    /// An outcome of `request_id` that happened now.
    pub fn new(request_id: impl Into<String>, outcome: OutcomeKind, now: DateTime<Utc>) -> Self {
        Self {
            schema: VERIFICATION_OUTCOME_SCHEMA.to_string(),
            event_id: crate::new_event_id(),
            request_id: request_id.into(),
            app: None,
            outcome,
            occurred_at: now,
            attempts: None,
        }
    }

    /// Its Kafka key: the request's confirmation key.
    pub fn key(&self) -> String {
        confirmation_key(self.app.as_deref(), &self.request_id)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an outcome always serialises")
    }

    /// The contract's rules, against the reader's clock `now`.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), ValidationError> {
        if self.schema != VERIFICATION_OUTCOME_SCHEMA {
            return Err(ValidationError::new(
                "schema",
                format!("must be \"{VERIFICATION_OUTCOME_SCHEMA}\""),
            ));
        }
        if uuid::Uuid::parse_str(&self.event_id).is_err() {
            return Err(ValidationError::new("event_id", "must be a UUID"));
        }
        if !is_valid_request_id(&self.request_id) {
            return Err(ValidationError::new(
                "request_id",
                "must be 1 to 64 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
            ));
        }
        if self.app.as_deref().is_some_and(|a| !is_valid_app(a)) {
            return Err(ValidationError::new(
                "app",
                "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            ));
        }
        if self.occurred_at > now + OUTCOME_MAX_SKEW {
            return Err(ValidationError::new(
                "occurred_at",
                format!(
                    "must not be more than {} seconds ahead of the reader's clock",
                    OUTCOME_MAX_SKEW.num_seconds()
                ),
            ));
        }
        if self.occurred_at < now - OUTCOME_MAX_AGE {
            return Err(ValidationError::new(
                "occurred_at",
                format!("must be at most {} hours ago", OUTCOME_MAX_AGE.num_hours()),
            ));
        }
        if self.attempts.is_some_and(|a| a == 0 || a > MAX_ATTEMPTS) {
            return Err(ValidationError::new(
                "attempts",
                format!("must be 1 to {MAX_ATTEMPTS}"),
            ));
        }
        Ok(())
    }
}

/// Fields a login system may send.
const FIELDS: [&str; 7] = [
    "schema",
    "event_id",
    "request_id",
    "app",
    "outcome",
    "occurred_at",
    "attempts",
];

/// Read a login system's outcome (HTTP body, CLI, or a record of the topic): `request_id`
/// and `outcome` required; `schema`, `event_id` and `occurred_at` filled in when left out (the
/// last as `now`). Every refusal names the field and the rule, and never quotes a value.
pub fn decode_outcome(
    bytes: &[u8],
    now: DateTime<Utc>,
) -> Result<VerificationOutcome, ValidationError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|_| ValidationError::new("$", "must be a JSON object"))?;
    let Value::Object(obj) = value else {
        return Err(ValidationError::new("$", "must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        // Named only when it looks like a field name: a key may be a number or a code.
        let named =
            unknown.len() <= 32 && unknown.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        return Err(ValidationError::new(
            if named {
                unknown.as_str()
            } else {
                "<unknown field>"
            },
            "is not a field of a verification outcome (it never carries a phone number or a code)",
        ));
    }
    let text = |obj: &Map<String, Value>, field: &str| -> Result<Option<String>, ValidationError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ValidationError::new(field, "must be a string")),
        }
    };
    let request_id = text(&obj, "request_id")?
        .ok_or_else(|| ValidationError::new("request_id", "is required"))?;
    let outcome =
        text(&obj, "outcome")?.ok_or_else(|| ValidationError::new("outcome", "is required"))?;
    let outcome = OutcomeKind::parse(&outcome).ok_or_else(|| {
        ValidationError::new(
            "outcome",
            "must be one of verified, abandoned, too_many_attempts, expired",
        )
    })?;
    let occurred_at = match text(&obj, "occurred_at")? {
        None => now,
        Some(t) => DateTime::parse_from_rfc3339(&t)
            .map_err(|_| ValidationError::new("occurred_at", "must be an RFC 3339 timestamp"))?
            .with_timezone(&Utc),
    };
    let attempts = match obj.get("attempts") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .ok_or_else(|| {
                    ValidationError::new("attempts", format!("must be 1 to {MAX_ATTEMPTS}"))
                })?,
        ),
    };
    let outcome = VerificationOutcome {
        schema: text(&obj, "schema")?.unwrap_or_else(|| VERIFICATION_OUTCOME_SCHEMA.to_string()),
        event_id: text(&obj, "event_id")?.unwrap_or_else(crate::new_event_id),
        request_id,
        app: text(&obj, "app")?,
        outcome,
        occurred_at,
        attempts,
    };
    outcome.validate(now)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_systems_report_is_read_with_defaults_and_keyed_by_app() {
        let now = Utc::now();
        let o = decode_outcome(
            br#"{"request_id":"req-1","app":"shop","outcome":"verified","attempts":2}"#,
            now,
        )
        .unwrap();
        assert_eq!(o.schema, VERIFICATION_OUTCOME_SCHEMA);
        assert_eq!(
            (o.outcome, o.occurred_at, o.attempts),
            (OutcomeKind::Verified, now, Some(2))
        );
        assert_eq!(o.key(), "shop/req-1");
        let again = decode_outcome(&o.to_json(), now).unwrap();
        assert_eq!(again, o, "round trip");
    }

    #[test]
    fn bad_reports_name_the_field_and_the_rule() {
        let now = Utc::now();
        let later = (now + Duration::minutes(5)).to_rfc3339();
        let old = (now - Duration::days(2)).to_rfc3339();
        for (body, field) in [
            (r#"[]"#.to_string(), "$"),
            (r#"{"outcome":"verified"}"#.to_string(), "request_id"),
            (r#"{"request_id":"r"}"#.to_string(), "outcome"),
            (
                r#"{"request_id":"r","outcome":"approved"}"#.to_string(),
                "outcome",
            ),
            (
                r#"{"request_id":"r two","outcome":"verified"}"#.to_string(),
                "request_id",
            ),
            (
                r#"{"request_id":"r","outcome":"verified","app":"a b"}"#.to_string(),
                "app",
            ),
            (
                r#"{"request_id":"r","outcome":"verified","attempts":0}"#.to_string(),
                "attempts",
            ),
            (
                r#"{"request_id":"r","outcome":"verified","attempts":-1}"#.to_string(),
                "attempts",
            ),
            (
                format!(r#"{{"request_id":"r","outcome":"verified","occurred_at":"{later}"}}"#),
                "occurred_at",
            ),
            (
                format!(r#"{{"request_id":"r","outcome":"verified","occurred_at":"{old}"}}"#),
                "occurred_at",
            ),
            (
                r#"{"request_id":"r","outcome":"verified","occurred_at":"yesterday"}"#.to_string(),
                "occurred_at",
            ),
            (
                r#"{"request_id":"r","outcome":"verified","code":"123456"}"#.to_string(),
                "code",
            ),
            (
                r#"{"request_id":"r","outcome":"verified","+15551234567":1}"#.to_string(),
                "<unknown field>",
            ),
            (
                r#"{"request_id":"r","outcome":"verified","schema":"otp.verification_outcome.v9"}"#
                    .to_string(),
                "schema",
            ),
        ] {
            let e = decode_outcome(body.as_bytes(), now).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
            assert!(
                !e.to_string().contains("123456") && !e.to_string().contains("555"),
                "{e}"
            );
        }
    }
}
