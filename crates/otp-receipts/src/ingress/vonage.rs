//! Vonage's signed status webhooks (Vonage, "Signed webhooks"; PROVIDERS.md): an HS256 JWT in
//! `Authorization: Bearer`, signed with the account's signature secret, whose `payload_hash`
//! claim is the SHA-256 of the body (hex) and whose `iat` says when it was signed. A call
//! without one (Vonage's internal errors can send unsigned callbacks), with another
//! algorithm, a body that does not match its hash, or an `iat` outside [`MAX_AGE`] is refused.
//!
//! The body (`message_uuid`, `status`, `client_ref`, `timestamp`, `error`) becomes a receipt;
//! its `to` and `from` hold phone numbers and are never read.

use super::parse::{classify, field, ParseError, Parsed};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use otp_events::provider_errors::VONAGE;
use otp_events::{
    split_confirmation_key, Channel, Provider, Receipt, ReceiptStatus, RECEIPT_SCHEMA,
};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How old a token may be: Vonage signs each call when it makes it, retries included. Its docs
/// give no figure; five minutes covers clock skew and a slow network, and replays inside it
/// meet the ingress's replay cache.
pub const MAX_AGE: chrono::Duration = chrono::Duration::minutes(5);
/// How far ahead of our clock a token's `iat` may be.
pub const MAX_AHEAD: chrono::Duration = chrono::Duration::seconds(60);

/// Why a call was refused, as a bounded outcome label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token (401).
    Missing,
    /// Bad signature, algorithm, issuer or claims (403).
    BadSignature,
    /// The body is not the one signed (403).
    BodyMismatch,
    /// Signed too long ago, or in the future (403).
    Stale,
    /// Signed for another API key than ours (403).
    OtherAccount,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_signature",
            Refusal::BadSignature => "bad_signature",
            Refusal::BodyMismatch => "body_mismatch",
            Refusal::Stale => "stale_signature",
            Refusal::OtherAccount => "other_account",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iat: i64,
    payload_hash: String,
    #[serde(default)]
    api_key: Option<String>,
}

/// Check a call's `Authorization` header against `secret`, the body and the clock; with
/// `api_key`, the token must name it.
pub fn verify(
    authorization: Option<&str>,
    body: &[u8],
    secret: &str,
    api_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let token = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Missing)?;
    let mut validation = Validation::new(Algorithm::HS256);
    // Vonage's tokens carry `iat`, not `exp`: their age is checked below. `iss` must be
    // there (jsonwebtoken checks an issuer only when the token has one) and be Vonage's.
    validation.required_spec_claims = ["iss".to_string()].into_iter().collect();
    validation.validate_exp = false;
    validation.set_issuer(&["Vonage"]);
    let claims = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|_| Refusal::BadSignature)?
    .claims;
    let hash = hex::encode(Sha256::digest(body));
    if !claims.payload_hash.eq_ignore_ascii_case(&hash) {
        return Err(Refusal::BodyMismatch);
    }
    let signed = DateTime::from_timestamp(claims.iat, 0).ok_or(Refusal::Stale)?;
    if now - signed > MAX_AGE || signed - now > MAX_AHEAD {
        return Err(Refusal::Stale);
    }
    if let Some(ours) = api_key {
        if claims.api_key.as_deref() != Some(ours) {
            return Err(Refusal::OtherAccount);
        }
    }
    Ok(())
}

/// A Vonage message status → a receipt. `submitted` is Vonage's "sent"; `rejected` and
/// `undeliverable` are failures, their code in `error.title` (or at the end of `error.type`).
/// The request_id comes from `client_ref`; without one the receipt is keyed by its message
/// and the tracker resolves it through the message index.
pub fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ParseError::NotJson)?;
    let uuid = value["message_uuid"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .ok_or_else(|| field("message_uuid", "is required, at most 64 characters"))?;
    let status = value["status"]
        .as_str()
        .ok_or_else(|| field("status", "is required"))?;
    if value["channel"].as_str().is_some_and(|c| c != "sms") {
        return Ok(Parsed {
            skipped: 1,
            ..Parsed::default()
        });
    }
    let kind = match status {
        "submitted" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "rejected" | "undeliverable" => ReceiptStatus::Failed,
        _ => {
            return Ok(Parsed {
                skipped: 1,
                ..Parsed::default()
            })
        }
    };
    let code = match &value["error"] {
        Value::Null => None,
        error => error["title"]
            .as_str()
            .and_then(|t| t.parse::<i64>().ok())
            .or_else(|| error["title"].as_i64())
            .or_else(|| {
                error["type"]
                    .as_str()
                    .and_then(otp_events::provider_errors::vonage_code)
            }),
    };
    // Our reference is the request's confirmation key (`app/request_id`, or the bare id).
    // One we did not write (or none): matched by its message instead.
    let (app, request_id) = match value["client_ref"]
        .as_str()
        .and_then(split_confirmation_key)
    {
        Some((app, id)) => (app.map(str::to_owned), Some(id.to_string())),
        None => (None, None),
    };
    let provider_timestamp = value["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let error = (kind == ReceiptStatus::Failed).then(|| classify(&VONAGE, code));
    Ok(Parsed {
        receipts: vec![Receipt {
            schema: RECEIPT_SCHEMA.to_string(),
            request_id,
            app,
            channel: Channel::Sms,
            provider: Some(Provider::Vonage),
            provider_message_id: uuid.to_string(),
            status: kind,
            error,
            provider_timestamp,
            received_at,
        }],
        ..Parsed::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "signature-secret";

    fn token(body: &[u8], iat: i64, secret: &str, alg: Algorithm) -> String {
        signed(body, iat, secret, alg, Some("Vonage"))
    }

    fn signed(body: &[u8], iat: i64, secret: &str, alg: Algorithm, iss: Option<&str>) -> String {
        let mut claims = json!({
            "iat": iat,
            "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
            "iss": "Vonage",
            "payload_hash": hex::encode(Sha256::digest(body)),
            "api_key": "key",
            "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        });
        match iss {
            Some(iss) => claims["iss"] = json!(iss),
            None => drop(claims.as_object_mut().unwrap().remove("iss")),
        }
        let jwt = jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Bearer {jwt}")
    }

    #[test]
    fn a_fresh_token_over_this_body_passes_and_anything_else_is_refused() {
        let now = Utc::now();
        let body = br#"{"message_uuid":"u1","status":"delivered"}"#;
        let good = token(body, now.timestamp(), SECRET, Algorithm::HS256);
        assert_eq!(verify(Some(&good), body, SECRET, Some("key"), now), Ok(()));
        assert_eq!(verify(None, body, SECRET, None, now), Err(Refusal::Missing));
        let altered = br#"{"message_uuid":"u1","status":"rejected"}"#;
        assert_eq!(
            verify(Some(&good), altered, SECRET, None, now),
            Err(Refusal::BodyMismatch)
        );
        let other = token(body, now.timestamp(), "another-secret", Algorithm::HS256);
        assert_eq!(
            verify(Some(&other), body, SECRET, None, now),
            Err(Refusal::BadSignature)
        );
        let hs512 = token(body, now.timestamp(), SECRET, Algorithm::HS512);
        assert_eq!(
            verify(Some(&hs512), body, SECRET, None, now),
            Err(Refusal::BadSignature)
        );
        let old = token(
            body,
            (now - MAX_AGE).timestamp() - 1,
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(
            verify(Some(&old), body, SECRET, None, now),
            Err(Refusal::Stale)
        );
        let ahead = token(
            body,
            (now + MAX_AHEAD).timestamp() + 2,
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(
            verify(Some(&ahead), body, SECRET, None, now),
            Err(Refusal::Stale)
        );
        assert_eq!(
            verify(Some(&good), body, SECRET, Some("not-ours"), now),
            Err(Refusal::OtherAccount)
        );
    }

    #[test]
    fn statuses_become_receipts_without_the_number() {
        let now = Utc::now();
        let body = json!({
            "message_uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
            "to": "447700900000", "from": "Acme",
            "timestamp": "2026-12-06T10:00:00.000Z",
            "status": "rejected", "channel": "sms", "client_ref": "req-1",
            "error": {"type": "https://developer.vonage.com/api-errors/messages#1120", "title": "1120", "detail": "Illegal Sender Address"}
        });
        let parsed = parse(body.to_string().as_bytes(), now).unwrap();
        let r = &parsed.receipts[0];
        assert_eq!(r.request_id.as_deref(), Some("req-1"));
        assert_eq!(r.status, ReceiptStatus::Failed);
        let error = r.error.as_ref().unwrap();
        assert_eq!(error.code, "1120");
        assert!(
            !r.to_json().windows(12).any(|w| w == b"447700900000"),
            "the number is never read"
        );
        let submitted = json!({"message_uuid": "u2", "status": "submitted", "channel": "sms"});
        let parsed = parse(submitted.to_string().as_bytes(), now).unwrap();
        assert_eq!(parsed.receipts[0].status, ReceiptStatus::Sent);
        assert_eq!(parsed.receipts[0].request_id, None, "matched by message");
        assert_eq!(
            parse(b"{}", now).unwrap_err(),
            field("message_uuid", "is required, at most 64 characters")
        );
    }
}
