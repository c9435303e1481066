//! Status webhooks, as the providers send them after accepting a message: WhatsApp's to the
//! app's callback URL, Twilio's to the message's `StatusCallback`, each signed like the real
//! one, on the schedule [`behaviour::receipts`] stages by phone number. Delay, loss,
//! duplication and reordering are configurable; a call that is not answered 200 is retried
//! a few times with backoff, as the providers do.

use crate::behaviour::{self, ReceiptPlan};
use crate::Sim;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// One status to report, this long after acceptance.
#[derive(Debug, Clone)]
struct Planned {
    after: Duration,
    status: &'static str,
    error: Option<i64>,
}

fn plan(sim: &Sim, api: &str, digits: &str) -> Vec<Planned> {
    let c = &sim.config;
    let (sent, delivered) = ("sent", "delivered");
    let at = |after, status, error| Planned {
        after,
        status,
        error,
    };
    let mut plan = vec![at(Duration::ZERO, sent, None)];
    match behaviour::receipts(api, digits) {
        ReceiptPlan::Delivered => plan.push(at(c.receipt_delay, delivered, None)),
        ReceiptPlan::DeliveredThenRead => {
            plan.push(at(c.receipt_delay, delivered, None));
            plan.push(at(c.receipt_delay * 2, "read", None));
        }
        ReceiptPlan::SentOnly => {}
        ReceiptPlan::FailedAfter(code) => {
            let failed = if api == "sms" {
                "undelivered"
            } else {
                "failed"
            };
            let delay = if api == "sms" {
                c.receipt_delay
            } else {
                c.receipt_failure_delay
            };
            plan.push(at(delay, failed, Some(code)));
        }
    }
    plan
}

/// Where a message's webhooks go and how they are signed.
pub(crate) enum Target {
    Whatsapp { request_id: Option<String> },
    Sms { callback: String },
}

/// Schedule the webhooks of a message just accepted.
pub(crate) fn after_accept(sim: &Arc<Sim>, target: Target, message_id: String, to_digits: String) {
    let api = match &target {
        Target::Whatsapp { .. } if sim.config.whatsapp_webhook_url.is_none() => return,
        Target::Whatsapp { .. } => "whatsapp",
        Target::Sms { .. } => "sms",
    };
    let mut planned = plan(sim, api, &to_digits);
    let sim = sim.clone();
    tokio::spawn(async move {
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
                Target::Sms { .. } => {
                    for p in &planned {
                        send_sms(&sim, &target, &message_id, &to_digits, p).await;
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
                Target::Sms { .. } => send_sms(&sim, &target, &message_id, &to_digits, &p).await,
            }
        }
    });
}

async fn send_whatsapp(sim: &Sim, target: &Target, id: &str, to: &str, statuses: &[Planned]) {
    let Target::Whatsapp { request_id } = target else {
        return;
    };
    let Some(url) = &sim.config.whatsapp_webhook_url else {
        return;
    };
    let now = chrono_secs();
    let statuses: Vec<_> = statuses
        .iter()
        .map(|p| {
            let mut s = json!({"id": id, "status": p.status, "timestamp": now.to_string(), "recipient_id": to});
            if let Some(rid) = request_id {
                s["biz_opaque_callback_data"] = json!(rid);
            }
            if let Some(code) = p.error {
                s["errors"] = json!([{"code": code, "title": "Message undeliverable.",
                    "error_data": {"details": "Message Undeliverable."}}]);
            }
            s
        })
        .collect();
    let body = json!({"object":"whatsapp_business_account","entry":[{"id":"WABA-SIM","changes":[{"field":"messages",
        "value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15557654321","phone_number_id":"1055500000"},
        "statuses": statuses}}]}]})
    .to_string();
    let signature = otp_events::signature::meta_signature(
        sim.config.whatsapp_app_secret.as_bytes(),
        body.as_bytes(),
    );
    let request = || {
        sim.webhook_client
            .post(url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &signature)
            .body(body.clone())
    };
    deliver(sim, request).await;
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
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &signature)
            .body(body.clone())
    };
    deliver(sim, request).await;
}

/// Send one webhook (maybe lost, maybe twice), retrying what is not answered 200.
async fn deliver(sim: &Sim, request: impl Fn() -> reqwest::RequestBuilder) {
    if rand::random::<f64>() < sim.config.receipt_loss {
        sim.webhook_outcome("lost");
        return;
    }
    let copies = if rand::random::<f64>() < sim.config.receipt_duplication {
        2
    } else {
        1
    };
    for _ in 0..copies {
        let mut delay = Duration::from_millis(200);
        let mut delivered = false;
        for _ in 0..6 {
            match request().send().await {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                _ => {
                    sim.webhook_outcome("retried");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        sim.webhook_outcome(if delivered { "delivered" } else { "given_up" });
    }
}

fn chrono_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
