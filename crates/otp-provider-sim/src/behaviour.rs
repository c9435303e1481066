//! Deterministic recipients, chosen by the last four digits of the phone number, so tests and
//! the demo can stage what real users do.
//!
//! | last digits | WhatsApp | SMS |
//! |---|---|---|
//! | `0026` | 131026 not on WhatsApp | delivered |
//! | `0190` | 190 token expired (channel broken) | delivered |
//! | `0500` | HTTP 500 on the first two calls, then accepted | same |
//! | `0614` | delivered | 21614 not a mobile number (landline) |
//! | `1211` | delivered | 21211 invalid number |
//! | `0100` | 100 invalid parameter (our payload: the channel is broken) | 21602 body required (the same) |
//! | anything else | accepted | accepted |
//!
//! And what the status webhooks then say about an accepted message (see [`receipts`]):
//!
//! | last digits | WhatsApp webhooks | SMS status callbacks |
//! |---|---|---|
//! | `2026` | `sent`, then `failed` 131026 (not on WhatsApp) after the failure delay (2 s) | delivered |
//! | `0404` | `sent`, never delivered | `sent`, never delivered |
//! | `0777` | `sent`, `delivered` after the receipt delay (1 s), then `read` | delivered |
//! | `3005` | delivered | `undelivered` 30005 after the receipt delay |
//! | anything else | `sent`, then `delivered` after the receipt delay | same |

/// What the simulator answers for a phone number on its `n`th call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    Accept,
    /// Answer with this HTTP status and provider code.
    Error {
        http: u16,
        code: i64,
    },
}

pub fn whatsapp(phone_digits: &str, call: u32) -> Staged {
    match last4(phone_digits) {
        "0026" => Staged::Error {
            http: 400,
            code: 131026,
        },
        "0190" => Staged::Error {
            http: 401,
            code: 190,
        },
        "0100" => Staged::Error {
            http: 400,
            code: 100,
        },
        "0500" if call <= 2 => Staged::Error {
            http: 500,
            code: 131000,
        },
        _ => Staged::Accept,
    }
}

pub fn sms(phone_digits: &str, call: u32) -> Staged {
    match last4(phone_digits) {
        "0614" => Staged::Error {
            http: 400,
            code: 21614,
        },
        "1211" => Staged::Error {
            http: 400,
            code: 21211,
        },
        "0100" => Staged::Error {
            http: 400,
            code: 21602,
        },
        "0500" if call <= 2 => Staged::Error {
            http: 500,
            code: 30001,
        },
        _ => Staged::Accept,
    }
}

fn last4(digits: &str) -> &str {
    &digits[digits.len().saturating_sub(4)..]
}

/// What the status webhooks say about an accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptPlan {
    Delivered,
    DeliveredThenRead,
    SentOnly,
    /// `failed` with this code, after the failure delay.
    FailedAfter(i64),
}

pub fn receipts(api: &str, phone_digits: &str) -> ReceiptPlan {
    match (api, last4(phone_digits)) {
        ("whatsapp", "2026") => ReceiptPlan::FailedAfter(131026),
        (_, "0404") => ReceiptPlan::SentOnly,
        ("whatsapp", "0777") => ReceiptPlan::DeliveredThenRead,
        ("sms", "3005") => ReceiptPlan::FailedAfter(30005),
        _ => ReceiptPlan::Delivered,
    }
}
