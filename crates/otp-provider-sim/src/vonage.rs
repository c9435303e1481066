//! Vonage's Messages API (SMS), as its reference documents it: `POST /v1/messages`, JSON,
//! basic auth with the API key and secret; 202 and a `message_uuid` when accepted; RFC 7807
//! problem bodies whose `type` URL ends in the error code when refused; its throughput (30
//! requests per second by default, then 429 and 1000); and signed status webhooks (an HS256
//! JWT in `Authorization: Bearer`, with `payload_hash` the SHA-256 of the body), retried on
//! 429 and 5xx as Vonage does. The JWT is signed here by hand, independently of the
//! receiver's JWT library.

use crate::webhooks::{self, Fate, Target};
use crate::{InProgress, Received, Sim};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A problem body for `code`, with the HTTP status Vonage answers it with.
pub(crate) fn problem(code: i64, detail: &str) -> Response {
    let (status, title) = match code {
        1000 => (429, "Rate Limit Hit"),
        1020 => (422, "Invalid params"),
        1030 => (500, "Internal Error"),
        1040 => (422, "Invalid Message"),
        1050 => (422, "Number Barred"),
        1060 => (403, "Partner Account Barred"),
        1070 => (402, "Partner Quota Exceeded"),
        1080 => (401, "Account Not Enabled For REST"),
        1100 => (500, "Communication Failed"),
        1120 => (422, "Illegal Sender Address"),
        1130 => (422, "Invalid TTL"),
        _ => (500, "Internal Error"),
    };
    let body = json!({
        "type": format!("https://developer.vonage.com/api-errors/messages#{code}"),
        "title": title,
        "detail": detail,
        "instance": format!("sim-{}", rand::random::<u32>()),
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn unauthorized() -> Response {
    let body = json!({
        "type": "https://developer.nexmo.com/api-errors/#unathorized",
        "title": "Unauthorized",
        "detail": "You did not provide correct credentials.",
        "instance": "sim",
    });
    (
        StatusCode::UNAUTHORIZED,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// The shape the reference documents for an SMS text message, or the code and why not.
fn shape(body: &[u8]) -> Result<(String, String, Option<String>), (i64, String)> {
    let invalid = |why: &str| Err((1020, why.to_string()));
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return invalid("the body is not JSON");
    };
    if v["message_type"] != "text" || v["channel"] != "sms" {
        return invalid("message_type must be text and channel sms");
    }
    let to = v["to"].as_str().unwrap_or("");
    if !(7..=15).contains(&to.len()) || !to.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("to must be E.164 without a leading +, 7 to 15 digits");
    }
    let text = v["text"].as_str().unwrap_or("");
    if text.is_empty() || text.chars().count() > 1000 {
        return invalid("text must be 1 to 1000 characters");
    }
    if v["from"].as_str().is_none_or(str::is_empty) {
        return invalid("from is required");
    }
    let client_ref = match &v["client_ref"] {
        Value::Null => None,
        Value::String(r) if r.chars().count() <= 100 => Some(r.clone()),
        _ => return invalid("client_ref must be a string of at most 100 characters"),
    };
    match &v["ttl"] {
        Value::Null => {}
        ttl if ttl.as_u64().is_some_and(|t| t >= 1) => {}
        _ => return Err((1130, "Invalid TTL".into())),
    }
    Ok((to.to_string(), text.to_string(), client_ref))
}

pub(crate) async fn messages(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_progress = InProgress::new(&sim);
    let answer = answer(&sim, &headers, &body);
    crate::apis::answer_after_latency(&sim, answer).await
}

fn answer(sim: &Arc<Sim>, headers: &HeaderMap, body: &[u8]) -> Response {
    let arrived_ms = crate::apis::now_ms();
    if !crate::apis::basic_auth_ok(
        headers,
        &sim.config.vonage_api_key,
        &sim.config.vonage_api_secret,
    ) {
        return unauthorized();
    }
    let (to, text, client_ref) = match shape(body) {
        Ok(shape) => shape,
        Err((code, why)) => return problem(code, &why),
    };
    let mut received = Received {
        api: "vonage".into(),
        to: format!("+{to}"),
        code: text.split_whitespace().next().unwrap_or("").to_string(),
        request_id: client_ref.clone(),
        received_at_ms: arrived_ms,
        outcome: String::new(),
        provider_message_id: None,
        language: None,
    };
    let refused = if let Some(outage) = sim.outage("vonage", &to) {
        Some(outage)
    } else if let Some(code) = crate::behaviour::vonage(&to, sim.call_number("vonage", &to)) {
        Some(crate::Outage::Code(code))
    } else if sim.vonage_sender.check().is_err() {
        sim.violation("vonage_sender");
        Some(crate::Outage::Code(1000))
    } else {
        None
    };
    match refused {
        Some(crate::Outage::Code(code)) => {
            received.outcome = code.to_string();
            sim.record(received);
            problem(code, "staged")
        }
        Some(crate::Outage::Http(status)) => {
            received.outcome = format!("http_{status}");
            sim.record(received);
            StatusCode::from_u16(status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                .into_response()
        }
        None => {
            let uuid = format!(
                "{:08x}-0000-4000-8000-{:012x}",
                rand::random::<u32>(),
                sim.message_id()
            );
            received.outcome = "accepted".into();
            received.provider_message_id = Some(uuid.clone());
            sim.record(received);
            if sim.config.vonage_webhook_url.is_some() {
                let target = Target::Vonage { client_ref };
                webhooks::after_accept(sim, target, uuid.clone(), to, Fate::default());
            }
            (StatusCode::ACCEPTED, Json(json!({ "message_uuid": uuid }))).into_response()
        }
    }
}

/// A Vonage status webhook body (Vonage, "Message status" webhook): the number is in it, as
/// Vonage sends it.
pub(crate) fn status_body(
    uuid: &str,
    to: &str,
    status: &str,
    error: Option<i64>,
    client_ref: Option<&str>,
) -> String {
    let mut body = json!({
        "message_uuid": uuid,
        "to": to,
        "from": "Acme",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "status": status,
        "channel": "sms",
        "usage": { "currency": "EUR", "price": "0.0333" },
    });
    if let Some(r) = client_ref {
        body["client_ref"] = json!(r);
    }
    if let Some(code) = error {
        body["error"] = json!({
            "type": format!("https://developer.vonage.com/api-errors/messages#{code}"),
            "title": code.to_string(),
            "detail": "staged",
            "instance": "sim",
        });
    }
    body.to_string()
}

/// `Bearer <JWT>` over `body`, as Vonage signs webhooks: HS256 with the signature secret,
/// claims `iat`, `jti`, `iss` "Vonage", `payload_hash` (hex SHA-256 of the body), `api_key`.
/// Written out by hand (base64url, HMAC-SHA256), not with the receiver's JWT library.
pub fn bearer(secret: &str, api_key: &str, body: &[u8], iat: i64) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "iat": iat,
        "jti": format!("{:032x}", rand::random::<u128>()),
        "iss": "Vonage",
        "payload_hash": hex::encode(Sha256::digest(body)),
        "api_key": api_key,
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    });
    let claims = b64(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    let signature = b64(&mac.finalize().into_bytes());
    format!("Bearer {signing_input}.{signature}")
}
