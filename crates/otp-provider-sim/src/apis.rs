//! The two provider endpoints: shape checks, credentials, rate limits, staged behaviours,
//! random errors and latency, answered in each provider's own format.

use crate::behaviour::{self, Staged};
use crate::{webhooks, InProgress, Received, Sim};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn delay(sim: &Sim) {
    let mut d = sim.config.latency;
    if !sim.config.latency_jitter.is_zero() {
        d += sim.config.latency_jitter.mul_f64(rand::random::<f64>());
    }
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn random_error(mix: &[(i64, f64)]) -> Option<i64> {
    mix.iter()
        .find(|(_, p)| rand::random::<f64>() < *p)
        .map(|(c, _)| *c)
}

// ---------------------------------------------------------------- WhatsApp Cloud API

fn wa_error(status: u16, code: i64, message: &str) -> Response {
    let body = json!({ "error": {
        "message": format!("(#{code}) {message}"),
        "type": "OAuthException",
        "code": code,
        "error_data": { "messaging_product": "whatsapp", "details": message },
        "fbtrace_id": "AsimTrace"
    }});
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        Json(body),
    )
        .into_response()
}

/// The documented authentication-template shape; returns (to, code) or what is wrong.
fn wa_shape(body: &Value) -> Result<(String, String), String> {
    if body["messaging_product"] != "whatsapp" {
        return Err("messaging_product must be \"whatsapp\"".into());
    }
    let to = body["to"].as_str().ok_or("to is required")?;
    if !(8..=15).contains(&to.len()) || !to.bytes().all(|b| b.is_ascii_digit()) {
        return Err("to must be the number's digits, without '+'".into());
    }
    if body["type"] != "template" {
        return Err("type must be \"template\"".into());
    }
    let template = &body["template"];
    if template["name"].as_str().is_none_or(str::is_empty) {
        return Err("template.name is required".into());
    }
    if template["language"]["code"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err("template.language.code is required".into());
    }
    let components = template["components"]
        .as_array()
        .ok_or("template.components is required")?;
    let find = |kind: &str| components.iter().find(|c| c["type"] == kind);
    let code = find("body")
        .and_then(|c| c["parameters"][0]["text"].as_str())
        .ok_or("a body component with the code as its text parameter is required")?;
    let button = find("button").ok_or("a copy-code url button component is required")?;
    if button["sub_type"] != "url" || button["index"] != "0" {
        return Err("the button component must have sub_type \"url\" and index \"0\"".into());
    }
    if button["parameters"][0]["text"].as_str() != Some(code) {
        return Err("the button parameter must repeat the code".into());
    }
    if code.chars().count() > 15 {
        return Err("the code must be at most 15 characters".into());
    }
    // Meta, "Time-to-live" (authentication templates): the TTL is the template's
    // `message_send_ttl_seconds`; a per-message `ttl_seconds` belongs to Direct Send, which also
    // names a `category`, and is refused anywhere else with error 100.
    if body.get("ttl_seconds").is_some() && body.get("category").is_none() {
        return Err("TTL is only supported with Direct Send".into());
    }
    Ok((to.to_string(), code.to_string()))
}

/// Whether the template language asked for is one the template is approved in: exactly,
/// codes are case-sensitive.
fn approved_language(sim: &Sim, body: &Value) -> bool {
    let asked = body["template"]["language"]["code"]
        .as_str()
        .unwrap_or_default();
    sim.config
        .whatsapp_template_languages
        .iter()
        .any(|code| code == asked)
}

pub(crate) async fn whatsapp(
    State(sim): State<Arc<Sim>>,
    Path((version, _phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_progress = InProgress::new(&sim);
    let arrived_ms = now_ms();
    delay(&sim).await;
    let expected = format!("Bearer {}", sim.config.whatsapp_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return wa_error(401, 190, "Invalid OAuth access token.");
    }
    if !version.starts_with('v') {
        return wa_error(400, 100, "Unknown API version.");
    }
    let json: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return wa_error(400, 100, "Invalid parameter: body is not JSON."),
    };
    let (to, code) = match wa_shape(&json) {
        Ok(v) => v,
        Err(why) => return wa_error(400, 100, &format!("Invalid parameter: {why}")),
    };
    let mut received = Received {
        api: "whatsapp".into(),
        to: format!("+{to}"),
        code,
        request_id: json["biz_opaque_callback_data"].as_str().map(str::to_owned),
        received_at_ms: arrived_ms,
        outcome: String::new(),
        provider_message_id: None,
        language: json["template"]["language"]["code"]
            .as_str()
            .map(str::to_owned),
    };
    // Every request counts against the sender's throughput; only a message that would be
    // delivered counts against the pair limit (a refused one reached nobody).
    let outage = *sim.whatsapp_outage.lock().expect("outage lock");
    let answer = if let Some((http, code)) = outage {
        Err((http, code, "Outage"))
    } else if sim.wa_sender.check().is_err() {
        sim.violation("whatsapp_sender");
        Err((400, 130429, "Rate limit hit"))
    } else if !approved_language(&sim, &json) {
        // Meta, "Error codes": 132001, HTTP 404, the template does not exist in that language.
        Err((
            404,
            132001,
            "Template name does not exist in the translation",
        ))
    } else {
        match behaviour::whatsapp(&to, sim.call_number("whatsapp", &to)) {
            Staged::Error { http, code } => Err((http, code, "Staged error")),
            Staged::Accept => match random_error(&sim.config.whatsapp_errors) {
                Some(code) => Err((400, code, "Random error")),
                None if sim.wa_pair.check_key(&to).is_err() => {
                    sim.violation("whatsapp_pair");
                    Err((
                        400,
                        131056,
                        "(Business Account, Consumer Account) pair rate limit hit",
                    ))
                }
                None => Ok(()),
            },
        }
    };
    match answer {
        Ok(()) => {
            // Real wamids embed the recipient's number (in base64); the simulator's carry it
            // in plain digits, so a leak of the id is caught by any scan for the number.
            let id = format!("wamid.SIM{to}.{:08}", sim.message_id());
            received.outcome = "accepted".into();
            received.provider_message_id = Some(id.clone());
            let target = webhooks::Target::Whatsapp {
                request_id: received.request_id.clone(),
            };
            sim.record(received);
            webhooks::after_accept(&sim, target, id.clone(), to.clone());
            Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [ { "input": to, "wa_id": to } ],
                "messages": [ { "id": id } ]
            }))
            .into_response()
        }
        Err((http, code, message)) => {
            received.outcome = code.to_string();
            sim.record(received);
            wa_error(http, code, message)
        }
    }
}

// ---------------------------------------------------------------- Twilio Messages API

fn twilio_error(status: u16, code: i64, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        Json(body),
    )
        .into_response()
}

fn basic_auth_ok(headers: &HeaderMap, sid: &str, token: &str) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"));
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        == Some(expected.as_str())
}

pub(crate) async fn sms(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_progress = InProgress::new(&sim);
    let arrived_ms = now_ms();
    delay(&sim).await;
    if sid != sim.config.sms_account_sid
        || !basic_auth_ok(
            &headers,
            &sim.config.sms_account_sid,
            &sim.config.sms_auth_token,
        )
    {
        return twilio_error(401, 20003, "Authenticate");
    }
    let form: HashMap<String, String> = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => return twilio_error(400, 21602, "Body is not form-encoded"),
    };
    let Some(to) = form.get("To") else {
        return twilio_error(400, 21604, "A 'To' phone number is required.");
    };
    let digits = to.strip_prefix('+').unwrap_or("");
    if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return twilio_error(400, 21211, "The 'To' number is not a valid phone number.");
    }
    let Some(text) = form.get("Body").filter(|b| !b.is_empty()) else {
        return twilio_error(400, 21602, "Message body is required.");
    };
    if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
        return twilio_error(
            400,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required.",
        );
    }
    if let Some(v) = form.get("ValidityPeriod") {
        if !v.parse::<u32>().is_ok_and(|v| (1..=36_000).contains(&v)) {
            return twilio_error(400, 21623, "ValidityPeriod must be 1 to 36000 seconds.");
        }
    }
    let request_id = form.get("StatusCallback").and_then(|url| {
        let query = url.split_once('?')?.1;
        let pairs: HashMap<String, String> = serde_urlencoded::from_str(query).ok()?;
        pairs.get("request_id").cloned()
    });
    let mut received = Received {
        api: "sms".into(),
        to: to.clone(),
        code: text.split_whitespace().next().unwrap_or("").to_string(),
        request_id,
        received_at_ms: arrived_ms,
        outcome: String::new(),
        provider_message_id: None,
        language: None,
    };
    let answer = if sim.sms_sender.check().is_err() {
        sim.violation("sms_sender");
        Err((429, 20429, "Too Many Requests"))
    } else {
        match behaviour::sms(digits, sim.call_number("sms", digits)) {
            Staged::Error { http, code } => Err((http, code, "Staged error")),
            Staged::Accept => match random_error(&sim.config.sms_errors) {
                Some(code) => Err((400, code, "Random error")),
                None => Ok(()),
            },
        }
    };
    match answer {
        Ok(()) => {
            let sid = format!("SM{:032x}", sim.message_id());
            received.outcome = "accepted".into();
            received.provider_message_id = Some(sid.clone());
            sim.record(received);
            if let Some(callback) = form.get("StatusCallback") {
                let target = webhooks::Target::Sms {
                    callback: callback.clone(),
                };
                webhooks::after_accept(&sim, target, sid.clone(), digits.to_string());
            }
            let body = json!({ "sid": sid, "status": "queued", "to": to, "body": text, "error_code": null });
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err((http, code, message)) => {
            received.outcome = code.to_string();
            sim.record(received);
            twilio_error(http, code, message)
        }
    }
}
