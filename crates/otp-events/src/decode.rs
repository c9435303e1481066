//! Bytes to a validated [`CodeRequest`], with errors that name the field and the rule.
//!
//! serde's own messages quote the offending value ("invalid type: integer `123456`"), and the
//! value may be a code or a phone number, so decoding inspects the JSON value itself and writes
//! its own messages. Type checks happen here; the rules live in [`crate::Rules`].

use crate::{
    request::CODE_REQUEST_SCHEMA, Channel, CodeRequest, Rules, Submission, ValidationError,
};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Every field of `otp.code_request.v1`.
pub const CODE_REQUEST_FIELDS: &[&str] = &[
    "schema",
    "request_id",
    "phone",
    "code",
    "channels",
    "locale",
    "created_at",
    "expires_at",
    "app",
    "user_ref",
    "attempt",
    "tried_channels",
    "sealed",
];

/// Fields a submitter may not set: workers own the fallback state, and the ingress seals.
const WORKER_FIELDS: &[&str] = &["attempt", "tried_channels", "sealed"];

/// Decode and validate a code request event as it travels on a request topic.
pub fn decode_code_request(bytes: &[u8], rules: &Rules) -> Result<CodeRequest, ValidationError> {
    let mut obj = parse_object(bytes)?;
    check_field_names(&obj, CODE_REQUEST_FIELDS)?;
    rules.open_object(&mut obj)?;
    let submission = submission_from(&obj)?;
    let request = CodeRequest {
        schema: required(&obj, "schema", as_string)?,
        request_id: required(&obj, "request_id", as_string)?,
        created_at: required(&obj, "created_at", as_time)?,
        attempt: optional(&obj, "attempt", as_attempt)?,
        tried_channels: optional(&obj, "tried_channels", as_channels)?.unwrap_or_default(),
        ..submission.complete(Utc::now())
    };
    request.validate(rules)?;
    Ok(request)
}

/// Decode a login system's submission (HTTP body): like a code request, but `request_id`,
/// `created_at` and `schema` may be left out and are filled in; workers' fields are refused.
pub fn decode_submission(
    bytes: &[u8],
    now: DateTime<Utc>,
    rules: &Rules,
) -> Result<CodeRequest, ValidationError> {
    let obj = parse_object(bytes)?;
    let allowed: Vec<&str> = CODE_REQUEST_FIELDS
        .iter()
        .copied()
        .filter(|f| !WORKER_FIELDS.contains(f))
        .collect();
    check_field_names(&obj, &allowed)?;
    if let Some(schema) = optional(&obj, "schema", as_string)? {
        if schema != CODE_REQUEST_SCHEMA {
            return Err(ValidationError::new(
                "schema",
                format!("must be \"{CODE_REQUEST_SCHEMA}\" (unknown schema or version)"),
            ));
        }
    }
    let request = submission_from(&obj)?.complete(now);
    request.validate(rules)?;
    Ok(request)
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ValidationError> {
    // serde_json's syntax errors carry a position, never the input, so they are safe to show.
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(ValidationError::new("$", "must be a JSON object")),
        Err(e) => Err(ValidationError::new(
            "$",
            format!("is not valid JSON ({e})"),
        )),
    }
}

fn check_field_names(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), ValidationError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        // The unknown name is chosen by the sender and may be anything, a phone number or a
        // code included: name it only when it cannot be one, and never at length.
        Some(k) => {
            let shown = if k.chars().filter(char::is_ascii_digit).count() >= 4 {
                "<unknown field>".to_string()
            } else {
                k.chars().take(64).collect()
            };
            Err(ValidationError::new(
                shown,
                "is not a field of otp.code_request.v1 (unknown fields are refused)",
            ))
        }
        None => Ok(()),
    }
}

fn submission_from(obj: &Map<String, Value>) -> Result<Submission, ValidationError> {
    Ok(Submission {
        request_id: optional(obj, "request_id", as_string)?,
        phone: required(obj, "phone", as_string)?,
        code: required(obj, "code", as_string)?,
        channels: required(obj, "channels", as_channels)?,
        locale: optional(obj, "locale", as_string)?,
        created_at: optional(obj, "created_at", as_time)?,
        expires_at: required(obj, "expires_at", as_time)?,
        app: optional(obj, "app", as_string)?,
        user_ref: optional(obj, "user_ref", as_string)?,
    })
}

type Extract<T> = fn(&Value) -> Result<T, &'static str>;

fn required<T>(obj: &Map<String, Value>, field: &str, f: Extract<T>) -> Result<T, ValidationError> {
    match obj.get(field) {
        None => Err(ValidationError::new(field, "is required")),
        Some(v) => f(v).map_err(|m| ValidationError::new(field, m)),
    }
}

fn optional<T>(
    obj: &Map<String, Value>,
    field: &str,
    f: Extract<T>,
) -> Result<Option<T>, ValidationError> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => f(v).map(Some).map_err(|m| ValidationError::new(field, m)),
    }
}

fn as_string(v: &Value) -> Result<String, &'static str> {
    v.as_str().map(str::to_owned).ok_or("must be a string")
}

fn as_time(v: &Value) -> Result<DateTime<Utc>, &'static str> {
    let s = v.as_str().ok_or("must be an RFC 3339 timestamp string")?;
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be an RFC 3339 timestamp, like 2026-01-31T12:00:00Z")
}

fn as_channels(v: &Value) -> Result<Vec<Channel>, &'static str> {
    let items = v.as_array().ok_or("must be an array of channel names")?;
    items
        .iter()
        .map(|i| {
            i.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or(r#"may only hold "whatsapp" and "sms""#)
        })
        .collect()
}

fn as_attempt(v: &Value) -> Result<u32, &'static str> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .ok_or("must be an integer of at least 1")
}
