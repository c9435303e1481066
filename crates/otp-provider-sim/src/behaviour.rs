//! Deterministic recipients, chosen by the last four digits of the phone number, so tests and
//! the demo can stage what real users do.
//!
//! What the send itself is answered (HTTP statuses as each provider documents them for the
//! code, see [`crate::errors`]):
//!
//! | last digits | WhatsApp | SMS |
//! |---|---|---|
//! | `0026` | 400 / 131026 not on WhatsApp | accepted |
//! | `0190` | 401 / 190 token expired (channel broken) | accepted |
//! | `0500` | 500 / 131000 on the first two calls, then accepted | 500 / 20500 (Twilio's internal server error) on the first two calls, then accepted |
//! | `0614` | accepted | 400 / 21614 not a mobile number (landline) |
//! | `1211` | accepted | 400 / 21211 invalid number |
//! | `0100` | 400 / 100 invalid parameter (our payload: the channel is broken) | 400 / 21602 body required (the same) |
//! | anything else | accepted | accepted |
//!
//! And what the status webhooks then say about an accepted message (see [`receipts`]):
//!
//! | last digits | WhatsApp webhooks | SMS status callbacks |
//! |---|---|---|
//! | `2026` | `sent`, then `failed` 131026 (not on WhatsApp) after the failure delay (2 s) | `sent`, `delivered` |
//! | `1031` | `sent`, then `failed` 131031 (account locked: channel broken) after the failure delay | `sent`, `delivered` |
//! | `0404` | `sent`, never delivered | `sent`, never delivered |
//! | `0777` | `sent`, `delivered` after the receipt delay (1 s), then `read` | `sent`, `delivered` |
//! | `3005` | `sent`, `delivered` | `sent`, then `undelivered` 30005 (unknown handset) after the receipt delay |
//! | `3032` | `sent`, `delivered` | `sent`, then `undelivered` 30032 (toll-free number not verified: channel broken) after the receipt delay |
//! | anything else | `sent`, then `delivered` after the receipt delay | same |
//!
//! SMS callbacks start when the message leaves the sender's queue (see [`crate::queue`]).

use crate::errors::{twilio_http_status, whatsapp_http_status};

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

impl Staged {
    fn whatsapp(code: i64) -> Self {
        Self::Error {
            http: whatsapp_http_status(code),
            code,
        }
    }

    fn sms(code: i64) -> Self {
        Self::Error {
            http: twilio_http_status(code),
            code,
        }
    }
}

pub fn whatsapp(phone_digits: &str, call: u32) -> Staged {
    match last4(phone_digits) {
        "0026" => Staged::whatsapp(131026),
        "0190" => Staged::whatsapp(190),
        "0100" => Staged::whatsapp(100),
        "0500" if call <= 2 => Staged::whatsapp(131000),
        _ => Staged::Accept,
    }
}

pub fn sms(phone_digits: &str, call: u32) -> Staged {
    match last4(phone_digits) {
        "0614" => Staged::sms(21614),
        "1211" => Staged::sms(21211),
        "0100" => Staged::sms(21602),
        // Twilio, "Error 20500" (Internal Server Error): the API's own failure. 30001 is a
        // delivery error (queue overflow) that only ever arrives on a status callback.
        "0500" if call <= 2 => Staged::sms(20500),
        _ => Staged::Accept,
    }
}

/// Vonage's answers by the number's last four digits, mirroring [`sms`]: an invalid number
/// (1040, a recipient's refusal) for the landline and invalid numbers, and two internal
/// errors (1030) before success for the flaky one.
pub fn vonage(phone_digits: &str, call: u32) -> Option<i64> {
    match last4(phone_digits) {
        "0614" | "1211" => Some(1040),
        "0500" if call <= 2 => Some(1030),
        _ => None,
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
    /// `failed` (WhatsApp) or Twilio's status for the code (`undelivered` or `failed`, see
    /// [`crate::errors::twilio_delivery_status`]) with this code, after the failure delay
    /// (WhatsApp) or the receipt delay (SMS).
    FailedAfter(i64),
}

pub fn receipts(api: &str, phone_digits: &str) -> ReceiptPlan {
    match (api, last4(phone_digits)) {
        ("whatsapp", "2026") => ReceiptPlan::FailedAfter(131026),
        ("whatsapp", "1031") => ReceiptPlan::FailedAfter(131031),
        (_, "0404") => ReceiptPlan::SentOnly,
        ("whatsapp", "0777") => ReceiptPlan::DeliveredThenRead,
        ("sms", "3005") => ReceiptPlan::FailedAfter(30005),
        ("sms", "3032") => ReceiptPlan::FailedAfter(30032),
        _ => ReceiptPlan::Delivered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_errors_carry_the_documented_status() {
        assert_eq!(
            sms("15551230500", 1),
            Staged::Error {
                http: 500,
                code: 20500
            }
        );
        assert_eq!(sms("15551230500", 3), Staged::Accept);
        assert_eq!(
            whatsapp("15551230190", 1),
            Staged::Error {
                http: 401,
                code: 190
            }
        );
        assert_eq!(
            whatsapp("15551230500", 2),
            Staged::Error {
                http: 500,
                code: 131000
            }
        );
        assert_eq!(whatsapp("15551231031", 1), Staged::Accept);
        assert_eq!(sms("15551233032", 1), Staged::Accept);
        assert_eq!(
            receipts("whatsapp", "15551231031"),
            ReceiptPlan::FailedAfter(131031)
        );
        assert_eq!(
            receipts("sms", "15551233032"),
            ReceiptPlan::FailedAfter(30032)
        );
        assert_eq!(receipts("sms", "15551231031"), ReceiptPlan::Delivered);
    }
}
