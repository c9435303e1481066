//! The two provider endpoints: shape checks, credentials, rate limits, staged behaviours,
//! random errors and latency, answered in each provider's own format with the HTTP status it
//! documents for each code ([`crate::errors`]).
//!
//! Each call is decided and recorded when it arrives; the simulated latency only delays the
//! answer (see [`Received::outcome`]).

use crate::behaviour::{self, Staged};
use crate::errors::{
    twilio_delivery_status, twilio_http_status, twilio_title, whatsapp_http_status, whatsapp_title,
};
use crate::queue::Admission;
use crate::webhooks::Fate;
use crate::{webhooks, InProgress, Received, Sim};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn now_ms() -> i64 {
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

/// Counts the answer as abandoned unless it was handed back: the handler's future is dropped
/// when the client goes away during the latency.
struct Answering<'a> {
    sim: &'a Sim,
    answered: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.sim.abandoned();
        }
    }
}

/// Hand back an answer already decided, after the simulated latency.
pub(crate) async fn answer_after_latency(sim: &Sim, answer: Response) -> Response {
    let mut answering = Answering {
        sim,
        answered: false,
    };
    delay(sim).await;
    answering.answered = true;
    answer
}

fn random_error(mix: &[(i64, f64)]) -> Option<i64> {
    mix.iter()
        .find(|(_, p)| rand::random::<f64>() < *p)
        .map(|(c, _)| *c)
}

// ---------------------------------------------------------------- WhatsApp Cloud API

/// A Graph API error body (Meta, "Error codes": `{"error":{"message":"(#CODE) Title", "type",
/// "code", "error_data":{"messaging_product","details"}, "fbtrace_id"}}`) with the HTTP status
/// Meta documents for the code.
fn wa_error(code: i64, details: &str) -> Response {
    let body = json!({ "error": {
        "message": format!("(#{code}) {}", whatsapp_title(code)),
        "type": "OAuthException",
        "code": code,
        "error_data": { "messaging_product": "whatsapp", "details": details },
        "fbtrace_id": "AsimTrace"
    }});
    let status = whatsapp_http_status(code);
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
    let answer = whatsapp_answer(&sim, &version, &headers, &body);
    answer_after_latency(&sim, answer).await
}

fn whatsapp_answer(sim: &Arc<Sim>, version: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let arrived_ms = now_ms();
    let expected = format!("Bearer {}", sim.config.whatsapp_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return wa_error(190, "Invalid OAuth access token.");
    }
    if !version.starts_with('v') {
        return wa_error(100, "Unknown API version.");
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return wa_error(100, "Invalid parameter: body is not JSON."),
    };
    let (to, code) = match wa_shape(&json) {
        Ok(v) => v,
        Err(why) => return wa_error(100, &format!("Invalid parameter: {why}")),
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
    let answer = if let Some(code) = outage {
        Err((code, "Outage"))
    } else if sim.wa_sender.check().is_err() {
        // Meta, "Error codes": 130429, Cloud API message throughput has been reached.
        sim.violation("whatsapp_sender");
        Err((130429, "Cloud API message throughput has been reached."))
    } else if !approved_language(sim, &json) {
        // Meta, "Error codes": 132001, the template does not exist in that language.
        Err((132001, "Template name does not exist in the translation"))
    } else {
        match behaviour::whatsapp(&to, sim.call_number("whatsapp", &to)) {
            Staged::Error { code, .. } => Err((code, "Staged error")),
            Staged::Accept => match random_error(&sim.config.whatsapp_errors) {
                Some(code) => Err((code, "Random error")),
                None if sim.wa_pair.check_key(&to).is_err() => {
                    // Meta, "Error codes": 131056, pair rate limit.
                    sim.violation("whatsapp_pair");
                    Err((
                        131056,
                        "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time.",
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
            webhooks::after_accept(sim, target, id.clone(), to.clone(), Fate::default());
            Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [ { "input": to, "wa_id": to } ],
                "messages": [ { "id": id } ]
            }))
            .into_response()
        }
        Err((code, details)) => {
            received.outcome = code.to_string();
            sim.record(received);
            wa_error(code, details)
        }
    }
}

// ---------------------------------------------------------------- Twilio Messages API

/// A Twilio REST error body (`{"code","message","more_info","status"}`) with the HTTP status
/// of the code.
fn twilio_error(code: i64, message: &str) -> Response {
    let status = twilio_http_status(code);
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

/// Whether `headers` carry HTTP basic auth for `user:password` (Twilio's SID and token,
/// Vonage's API key and secret).
pub(crate) fn basic_auth_ok(headers: &HeaderMap, sid: &str, token: &str) -> bool {
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"));
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        == Some(expected.as_str())
}

/// One of the SMS API's concurrent-request slots, held until the answer is handed back.
struct SmsSlot<'a>(&'a Sim);

impl<'a> SmsSlot<'a> {
    fn try_new(sim: &'a Sim) -> Option<Self> {
        let now = sim.sms_in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        if now > u64::from(sim.config.sms_max_concurrent) {
            sim.sms_in_progress.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(sim))
    }
}

impl Drop for SmsSlot<'_> {
    fn drop(&mut self) {
        self.0.sms_in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Twilio, "Messages resource": `ValidityPeriod` defaults to 36,000 s.
const DEFAULT_VALIDITY: Duration = Duration::from_secs(36_000);

pub(crate) async fn sms(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_progress = InProgress::new(&sim);
    // Twilio, "Error 20429": too many concurrent requests. Every request in progress holds a
    // slot until its answer goes back, latency included.
    let slot = SmsSlot::try_new(&sim);
    let answer = sms_answer(&sim, &sid, &headers, &body, slot.is_none());
    let answer = answer_after_latency(&sim, answer).await;
    drop(slot);
    answer
}

/// A send's form, as Twilio's Messages resource checks it, in its order: the account and its
/// credentials, then the fields (each refusal is Twilio's own error code and message).
struct SmsForm {
    to: String,
    text: String,
    /// A sender from a Messaging Service's pool rather than one `From` number.
    via_service: bool,
    validity: Duration,
    status_callback: Option<String>,
}

impl SmsForm {
    #[allow(clippy::result_large_err)]
    fn read(sim: &Sim, sid: &str, headers: &HeaderMap, body: &[u8]) -> Result<Self, Response> {
        if sid != sim.config.sms_account_sid
            || !basic_auth_ok(
                headers,
                &sim.config.sms_account_sid,
                &sim.config.sms_auth_token,
            )
        {
            return Err(twilio_error(20003, twilio_title(20003)));
        }
        let form: HashMap<String, String> = serde_urlencoded::from_bytes(body)
            .map_err(|_| twilio_error(21602, "Body is not form-encoded"))?;
        let Some(to) = form.get("To") else {
            return Err(twilio_error(21604, "A 'To' phone number is required."));
        };
        let digits = to.strip_prefix('+').unwrap_or("");
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(twilio_error(
                21211,
                "The 'To' number is not a valid phone number.",
            ));
        }
        let Some(text) = form.get("Body").filter(|b| !b.is_empty()) else {
            return Err(twilio_error(21602, "Message body is required."));
        };
        if !form.contains_key("From") && !form.contains_key("MessagingServiceSid") {
            return Err(twilio_error(
                21603,
                "A 'From' or 'MessagingServiceSid' parameter is required.",
            ));
        }
        let validity = match form.get("ValidityPeriod") {
            None => DEFAULT_VALIDITY,
            Some(v) => match v.parse::<u64>() {
                Ok(v) if (1..=36_000).contains(&v) => Duration::from_secs(v),
                // Twilio, "Error 90007": validity period must be 1 to 36,000 seconds.
                _ => {
                    return Err(twilio_error(
                        90007,
                        "Validity period can only be set to integers between 1 and 36,000 \
                         seconds.",
                    ))
                }
            },
        };
        Ok(Self {
            to: to.clone(),
            text: text.clone(),
            via_service: !form.contains_key("From"),
            validity,
            status_callback: form.get("StatusCallback").cloned(),
        })
    }
}

fn sms_answer(
    sim: &Arc<Sim>,
    sid: &str,
    headers: &HeaderMap,
    body: &[u8],
    too_many_concurrent: bool,
) -> Response {
    let arrived_ms = now_ms();
    let form = match SmsForm::read(sim, sid, headers, body) {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let SmsForm {
        to,
        text,
        via_service,
        validity,
        status_callback,
    } = &form;
    let (via_service, validity) = (*via_service, *validity);
    let digits = to.strip_prefix('+').unwrap_or("");
    let request_id = status_callback.as_ref().and_then(|url| {
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
    let answer = if let Some(outage) = sim.outage("twilio", digits) {
        match outage {
            crate::Outage::Code(code) => Err((code, "Staged outage")),
            crate::Outage::Http(status) => {
                received.outcome = format!("http_{status}");
                sim.record(received);
                return StatusCode::from_u16(status)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                    .into_response();
            }
        }
    } else if too_many_concurrent {
        sim.violation("sms_concurrent");
        Err((20429, "Too Many Requests"))
    } else {
        match behaviour::sms(digits, sim.call_number("sms", digits)) {
            Staged::Error { code, .. } => Err((code, "Staged error")),
            Staged::Accept => {
                let drawn = random_error(&sim.config.sms_errors);
                match drawn {
                    // Any code but a delivery error answers the send.
                    Some(code) if twilio_delivery_status(code).is_none() => {
                        Err((code, "Random error"))
                    }
                    // A delivery error is accepted and reported on its callbacks.
                    _ => queue(sim, drawn, validity, via_service),
                }
            }
        }
    };
    match answer {
        Ok(fate) => {
            let sid = format!("SM{:032x}", sim.message_id());
            received.outcome = "accepted".into();
            received.provider_message_id = Some(sid.clone());
            sim.record(received);
            if let Some(callback) = status_callback {
                let target = webhooks::Target::Sms {
                    callback: callback.clone(),
                };
                webhooks::after_accept(sim, target, sid.clone(), digits.to_string(), fate);
            }
            // Twilio, "Messages resource": a message sent with a Messaging Service starts
            // `accepted`, one from a `From` number `queued`.
            let status = if via_service { "accepted" } else { "queued" };
            let body =
                json!({ "sid": sid, "status": status, "to": to, "body": text, "error_code": null });
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err((code, message)) => {
            received.outcome = code.to_string();
            sim.record(received);
            twilio_error(code, message)
        }
    }
}

/// Put an accepted message in the sender's queue (Twilio, "Error 21611"): over the sender's
/// rate it waits (an `sms_sender` violation) and its callbacks come that much later; a wait
/// longer than its `ValidityPeriod` makes it `failed` 30036 when the period ends (Twilio,
/// "Error 30036"); a full queue refuses a `From` send with 21611, while a Messaging Service
/// accepts it and fails it with 30001 (Twilio, "Error 21611": "If you are using a Messaging
/// Service ... messages will instead fail after creation with error 30001").
fn queue(
    sim: &Sim,
    drawn: Option<i64>,
    validity: Duration,
    via_service: bool,
) -> Result<Fate, (i64, &'static str)> {
    match sim.sms_queue.admit() {
        Admission::Leaves(wait) => {
            if !wait.is_zero() {
                sim.violation("sms_sender");
            }
            if wait > validity {
                return Ok(Fate {
                    start: validity,
                    failure: Some(30036),
                });
            }
            Ok(Fate {
                start: wait,
                failure: drawn,
            })
        }
        Admission::Full => {
            sim.violation("sms_sender");
            if via_service {
                Ok(Fate {
                    start: Duration::ZERO,
                    failure: Some(30001),
                })
            } else {
                Err((21611, twilio_title(21611)))
            }
        }
    }
}
