//! Status webhooks, as the providers send them after accepting a message: WhatsApp's to the
//! app's callback URL, Twilio's to the message's `StatusCallback`, Vonage's to the
//! application's status URL, each signed like the real one, on the schedule [`behaviour::receipts`] stages by phone number (SMS callbacks start
//! when the message leaves the sender's queue). Also WhatsApp's system-level `value.errors`
//! webhooks. Delay, loss, duplication and reordering are configurable; a call that fails is
//! retried the way each provider does it (see [`deliver`]).

use crate::behaviour::{self, ReceiptPlan};
use crate::errors::{twilio_delivery_status, whatsapp_title};
use crate::Sim;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// One status to report, this long after acceptance.
#[derive(Debug, Clone)]
struct Planned {
    after: Duration,
    status: &'static str,
    error: Option<i64>,
}

/// What happens to an accepted message beyond its phone number's staged plan.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fate {
    /// When its first status is due: how long it waited in the sender's queue (SMS).
    pub start: Duration,
    /// A delivery error drawn for it (random mix, queue overflow, validity expired): it
    /// replaces the staged plan.
    pub failure: Option<i64>,
}

fn plan(sim: &Sim, api: &str, digits: &str, fate: Fate) -> Vec<Planned> {
    let c = &sim.config;
    let provider = match api {
        "sms" => "twilio",
        "whatsapp" => "whatsapp_cloud",
        other => other,
    };
    // A slow route staged for this provider and destination, else the configured delay.
    let receipt_delay = sim
        .receipt_delay_for(provider, digits)
        .unwrap_or(c.receipt_delay);
    let at = |after, status, error| Planned {
        after,
        status,
        error,
    };
    let start = fate.start;
    let staged = behaviour::receipts(api, digits);
    let failure = fate.failure.or(match staged {
        ReceiptPlan::FailedAfter(code) => Some(code),
        _ => None,
    });
    if api == "vonage" {
        // Vonage, "Message status": `submitted` when handed to the carrier (SMS is charged
        // then), then `delivered`, or `rejected` with an error.
        let mut plan = vec![at(start, "submitted", None)];
        match (failure, staged) {
            (Some(code), _) => plan.push(at(start + receipt_delay, "rejected", Some(code))),
            (None, ReceiptPlan::SentOnly) => {}
            (None, _) => plan.push(at(start + receipt_delay, "delivered", None)),
        }
        return plan;
    }
    if let Some(code) = failure {
        if api == "sms" {
            return match twilio_delivery_status(code) {
                // Twilio, "Messages resource": `failed` is a message that could not be sent,
                // so there is no `sent` before it.
                Some("failed") => vec![at(start, "failed", Some(code))],
                // `undelivered` comes from the carrier's receipt for a message it was sent.
                _ => vec![
                    at(start, "sent", None),
                    at(start + receipt_delay, "undelivered", Some(code)),
                ],
            };
        }
        return vec![
            at(start, "sent", None),
            at(start + c.receipt_failure_delay, "failed", Some(code)),
        ];
    }
    let mut plan = vec![at(start, "sent", None)];
    match staged {
        // (A staged failure was handled above.)
        ReceiptPlan::Delivered | ReceiptPlan::FailedAfter(_) => {
            plan.push(at(start + receipt_delay, "delivered", None))
        }
        ReceiptPlan::DeliveredThenRead => {
            plan.push(at(start + receipt_delay, "delivered", None));
            plan.push(at(start + receipt_delay * 2, "read", None));
        }
        ReceiptPlan::SentOnly => {}
    }
    plan
}

/// Where a message's webhooks go and how they are signed.
pub(crate) enum Target {
    Whatsapp { request_id: Option<String> },
    Sms { callback: String },
    Vonage { client_ref: Option<String> },
}

/// Schedule the webhooks of a message just accepted.
pub(crate) fn after_accept(
    sim: &Arc<Sim>,
    target: Target,
    message_id: String,
    to_digits: String,
    fate: Fate,
) {
    let api = match &target {
        Target::Whatsapp { .. } if sim.config.whatsapp_webhook_url.is_none() => return,
        Target::Whatsapp { .. } => "whatsapp",
        Target::Sms { .. } => "sms",
        Target::Vonage { .. } => "vonage",
    };
    let mut planned = plan(sim, api, &to_digits, fate);
    let sim = sim.clone();
    let pending = Pending::new(&sim);
    tokio::spawn(async move {
        let _pending = pending;
        let reorder = rand::random::<f64>() < sim.config.receipt_reorder;
        if reorder {
            // All at the time of the last, newest first.
            let last = planned.iter().map(|p| p.after).max().unwrap_or_default();
            planned.reverse();
            tokio::time::sleep(last).await;
            match &target {
                Target::Whatsapp { .. } => {
                    send_whatsapp(&sim, &target, &message_id, &to_digits, &planned).await
                }
                Target::Sms { .. } | Target::Vonage { .. } => {
                    for p in &planned {
                        send_one(&sim, &target, &message_id, &to_digits, p).await;
                    }
                }
            }
            return;
        }
        let started = tokio::time::Instant::now();
        for p in planned {
            tokio::time::sleep_until(started + p.after).await;
            match &target {
                Target::Whatsapp { .. } => {
                    send_whatsapp(&sim, &target, &message_id, &to_digits, &[p]).await
                }
                Target::Sms { .. } | Target::Vonage { .. } => {
                    send_one(&sim, &target, &message_id, &to_digits, &p).await
                }
            }
        }
    });
}

/// Counts a message's webhooks as pending for as long as it lives (their task ends, or is
/// dropped with the simulator).
struct Pending(Arc<Sim>);

impl Pending {
    fn new(sim: &Arc<Sim>) -> Self {
        sim.webhooks_pending.send_modify(|n| *n += 1);
        Self(sim.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0
            .webhooks_pending
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One entry of a Meta webhook `errors` array, as Meta, "Status messages webhook reference"
/// and "Errors messages webhooks reference" show it.
fn meta_error(code: i64) -> Value {
    let title = whatsapp_title(code);
    json!({
        "code": code,
        "title": title,
        "message": title,
        "error_data": { "details": title },
        "href": "/docs/whatsapp/cloud-api/support/error-codes/"
    })
}

/// A Meta `messages` webhook body around one `value` member (`statuses` or `errors`).
fn meta_envelope(member: &str, items: Value) -> String {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15557654321", "phone_number_id": "1055500000" }
    });
    value[member] = items;
    json!({
        "object": "whatsapp_business_account",
        "entry": [ { "id": "WABA-SIM", "changes": [ { "value": value, "field": "messages" } ] } ]
    })
    .to_string()
}

async fn send_whatsapp(sim: &Sim, target: &Target, id: &str, to: &str, statuses: &[Planned]) {
    let Target::Whatsapp { request_id } = target else {
        return;
    };
    let now = unix_secs();
    let statuses: Vec<_> = statuses
        .iter()
        .map(|p| {
            let mut s = json!({"id": id, "status": p.status, "timestamp": now.to_string(), "recipient_id": to});
            // Meta, "Status messages webhook reference": `biz_opaque_callback_data` is
            // documented on sent, delivered and read statuses, not on failed ones.
            let without = p.status == "failed" && sim.config.whatsapp_failed_without_callback_data;
            if let (Some(rid), false) = (request_id, without) {
                s["biz_opaque_callback_data"] = json!(rid);
            }
            if let Some(code) = p.error {
                s["errors"] = json!([meta_error(code)]);
            }
            s
        })
        .collect();
    post_whatsapp(sim, meta_envelope("statuses", Value::Array(statuses))).await;
}

/// Send one system-level `value.errors` webhook (Meta, "Errors messages webhooks reference":
/// "a system-level problem", "an app- or account-level problem" prevents a request from being
/// processed). False when no WhatsApp webhook URL is configured.
pub(crate) fn system_error(sim: &Arc<Sim>, code: i64) -> bool {
    if sim.config.whatsapp_webhook_url.is_none() {
        return false;
    }
    let sim = sim.clone();
    let pending = Pending::new(&sim);
    tokio::spawn(async move {
        let _pending = pending;
        post_whatsapp(&sim, meta_envelope("errors", json!([meta_error(code)]))).await;
    });
    true
}

/// POST a Meta webhook body to the app's callback URL, signed with the app secret (Meta,
/// "Webhooks": `X-Hub-Signature-256: sha256=` HMAC-SHA256 of the raw body).
async fn post_whatsapp(sim: &Sim, body: String) {
    let Some(url) = &sim.config.whatsapp_webhook_url else {
        return;
    };
    let signature = otp_events::signature::meta_signature(
        sim.config.whatsapp_app_secret.as_bytes(),
        body.as_bytes(),
    );
    let request = || {
        sim.webhook_client
            .post(url)
            .timeout(META_TIMEOUT)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &signature)
            .body(body.clone())
    };
    deliver(sim, Retry::Meta, request).await;
}

/// One status of an SMS provider's message.
async fn send_one(sim: &Sim, target: &Target, id: &str, to: &str, p: &Planned) {
    match target {
        Target::Sms { .. } => send_sms(sim, target, id, to, p).await,
        Target::Vonage { client_ref } => send_vonage(sim, client_ref.as_deref(), id, to, p).await,
        Target::Whatsapp { .. } => {}
    }
}

/// POST a Vonage status to the application's status URL, signed with a fresh JWT per call
/// (retries included: a token's `iat` is when that call was made).
async fn send_vonage(sim: &Sim, client_ref: Option<&str>, uuid: &str, to: &str, p: &Planned) {
    let Some(url) = &sim.config.vonage_webhook_url else {
        return;
    };
    let body = crate::vonage::status_body(uuid, to, p.status, p.error, client_ref);
    let request = || {
        let bearer = crate::vonage::bearer(
            &sim.config.vonage_signature_secret,
            &sim.config.vonage_api_key,
            body.as_bytes(),
            chrono::Utc::now().timestamp(),
        );
        sim.webhook_client
            .post(url)
            .timeout(META_TIMEOUT)
            .header("content-type", "application/json")
            .header("authorization", bearer)
            .body(body.clone())
    };
    deliver(sim, Retry::Vonage, request).await;
}

async fn send_sms(sim: &Sim, target: &Target, sid: &str, to: &str, p: &Planned) {
    let Target::Sms { callback } = target else {
        return;
    };
    let mut form = vec![
        ("AccountSid".to_string(), sim.config.sms_account_sid.clone()),
        ("ApiVersion".to_string(), "2010-04-01".to_string()),
        ("From".to_string(), "+15557654321".to_string()),
        ("MessageSid".to_string(), sid.to_string()),
        ("MessageStatus".to_string(), p.status.to_string()),
        ("SmsSid".to_string(), sid.to_string()),
        ("SmsStatus".to_string(), p.status.to_string()),
        ("To".to_string(), format!("+{to}")),
    ];
    if let Some(code) = p.error {
        form.push(("ErrorCode".to_string(), code.to_string()));
    }
    let signature = otp_events::signature::twilio_signature(
        sim.config.sms_auth_token.as_bytes(),
        callback,
        &form,
    );
    let body = serde_urlencoded::to_string(&form).expect("pairs of strings encode");
    let request = || {
        sim.webhook_client
            .post(callback)
            .timeout(TWILIO_TIMEOUT)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &signature)
            .body(body.clone())
    };
    deliver(sim, Retry::Twilio, request).await;
}

/// Meta publishes no timeout for webhook calls; this one is the simulator's.
const META_TIMEOUT: Duration = Duration::from_secs(10);
/// Twilio, "Webhooks connection overrides": the total time (`tt`) defaults to 15000 ms.
const TWILIO_TIMEOUT: Duration = Duration::from_secs(15);
/// Twilio, "Webhooks connection overrides": the connect timeout (`ct`) defaults to 5000 ms.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a provider retries a webhook call that failed.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Meta, "Webhooks": a call not answered 200 is retried, with decreasing frequency, for up
    /// to 7 days. The simulator keeps it short: 6 tries, 0.2 s apart doubling.
    Meta,
    /// Twilio, "Webhooks connection overrides": by default a callback is retried once
    /// (`rc` = 1) and only when the connection failed (`rp` = `ct`); an answer, even an HTTP
    /// 5xx, is never retried.
    Twilio,
    /// Vonage (support article "Webhook retries"): a call answered 429 or 5xx, or not
    /// answered, is retried, 5 s apart doubling up to 15 minutes, for 24 hours; any other
    /// answer ends it. The simulator keeps it short, as for Meta.
    Vonage,
}

impl Retry {
    fn api(self) -> &'static str {
        match self {
            Self::Meta => "whatsapp",
            Self::Twilio => "sms",
            Self::Vonage => "vonage",
        }
    }
}

const META_TRIES: u32 = 6;
const TWILIO_TRIES: u32 = 1 + 1;

/// Send one webhook (maybe lost, maybe twice), retrying as the provider does.
async fn deliver(sim: &Sim, retry: Retry, request: impl Fn() -> reqwest::RequestBuilder) {
    let api = retry.api();
    if rand::random::<f64>() < sim.config.receipt_loss {
        sim.webhook_outcome(api, "lost");
        return;
    }
    let copies = if rand::random::<f64>() < sim.config.receipt_duplication {
        2
    } else {
        1
    };
    for _ in 0..copies {
        let delivered = match retry {
            Retry::Meta => deliver_meta(sim, &request).await,
            Retry::Vonage => deliver_vonage(sim, &request).await,
            Retry::Twilio => deliver_twilio(sim, &request).await,
        };
        sim.webhook_outcome(api, if delivered { "delivered" } else { "given_up" });
    }
}

async fn deliver_meta(sim: &Sim, request: &impl Fn() -> reqwest::RequestBuilder) -> bool {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=META_TRIES {
        sim.webhook_outcome("whatsapp", "attempts");
        // Meta counts only a 200 as received; any other answer or none is retried.
        if matches!(timed(sim, request()).await, Ok(r) if r.status() == reqwest::StatusCode::OK) {
            return true;
        }
        if attempt < META_TRIES {
            sim.webhook_outcome("whatsapp", "retried");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    false
}

async fn deliver_vonage(sim: &Sim, request: &impl Fn() -> reqwest::RequestBuilder) -> bool {
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=META_TRIES {
        sim.webhook_outcome("vonage", "attempts");
        match timed(sim, request()).await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if !(r.status().as_u16() == 429 || r.status().is_server_error()) => return false,
            _ => {}
        }
        if attempt < META_TRIES {
            sim.webhook_outcome("vonage", "retried");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    false
}

async fn deliver_twilio(sim: &Sim, request: &impl Fn() -> reqwest::RequestBuilder) -> bool {
    for attempt in 1..=TWILIO_TRIES {
        sim.webhook_outcome("sms", "attempts");
        match timed(sim, request()).await {
            Ok(r) => return r.status().is_success(),
            Err(e) if e.is_connect() && attempt < TWILIO_TRIES => {
                sim.webhook_outcome("sms", "retried");
            }
            Err(_) => return false,
        }
    }
    false
}

/// Send one webhook call, recording how long an answer took (calls with no answer are not
/// timed: they are counted as retried or given up).
async fn timed(sim: &Sim, request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let started = std::time::Instant::now();
    let answer = request.send().await;
    if answer.is_ok() {
        sim.webhook_answered(started.elapsed());
    }
    answer
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_error_webhook_has_metas_shape() {
        let body: Value =
            serde_json::from_str(&meta_envelope("errors", json!([meta_error(130429)]))).unwrap();
        assert_eq!(body["object"], "whatsapp_business_account");
        let change = &body["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        let value = &change["value"];
        assert_eq!(value["messaging_product"], "whatsapp");
        assert!(value["metadata"]["phone_number_id"].is_string());
        assert!(value.get("statuses").is_none());
        let e = &value["errors"][0];
        assert_eq!(e["code"], 130429);
        assert_eq!(e["title"], "Rate limit hit");
        assert!(e["message"].is_string());
        assert!(e["error_data"]["details"].is_string());
    }
}
