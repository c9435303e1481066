//! Provider webhook bodies → [`Receipt`]s. Pure functions: the handlers check signatures
//! first and call these only on authentic bytes.
//!
//! Both providers put the recipient's number in their callbacks (WhatsApp `recipient_id`,
//! Twilio `To`); it is never read into a receipt. Error texts come from our tables.

use chrono::{DateTime, Utc};
use otp_events::provider_errors::{self, ErrorClass, ErrorTable};
use otp_events::{
    is_valid_app, is_valid_request_id, split_confirmation_key, Channel, ErrorCategory, Provider,
    Receipt, ReceiptError, ReceiptStatus, RECEIPT_SCHEMA,
};
use serde_json::Value;

/// Why a webhook body was refused (answered 400): the field and the rule it broke.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("body is not JSON")]
    NotJson,
    #[error("body is not form-encoded")]
    NotForm,
    #[error("{field}: {rule}")]
    Field { field: String, rule: &'static str },
}

pub(crate) fn field(field: impl Into<String>, rule: &'static str) -> ParseError {
    ParseError::Field {
        field: field.into(),
        rule,
    }
}

/// What one webhook call held.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub receipts: Vec<Receipt>,
    /// Statuses we cannot tie to a request (no or unreadable callback data), or of a kind we
    /// do not track: acknowledged and counted, not emitted.
    pub skipped: usize,
    /// Statuses that break the documented shape. The call is still acknowledged: Meta would
    /// resend the same body for days, and its valid statuses must not be lost with it.
    pub invalid: Vec<ParseError>,
    /// Codes of Meta's system-level `value.errors` (system, app or account errors not tied to
    /// one message, e.g. 130429 or 131031).
    pub system_errors: Vec<i64>,
}

/// Meta's `messages` webhook: `entry[].changes[].value.statuses[]`. Calls with no statuses
/// (incoming messages, other fields) are valid and hold no receipts.
pub fn whatsapp(body: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, ParseError> {
    let json: Value = serde_json::from_slice(body).map_err(|_| ParseError::NotJson)?;
    if json["object"] != "whatsapp_business_account" {
        return Err(field("object", "must be \"whatsapp_business_account\""));
    }
    let entries = json["entry"]
        .as_array()
        .ok_or_else(|| field("entry", "must be an array"))?;
    let mut parsed = Parsed::default();
    for (e, entry) in entries.iter().enumerate() {
        let changes = entry["changes"]
            .as_array()
            .ok_or_else(|| field(format!("entry[{e}].changes"), "must be an array"))?;
        for (c, change) in changes.iter().enumerate() {
            // Meta, "Webhooks" (messages field): `value.errors` carries errors that are not
            // about one message; each has a numeric `code`.
            if let Some(errors) = change["value"].get("errors") {
                let errors = errors.as_array().ok_or_else(|| {
                    field(
                        format!("entry[{e}].changes[{c}].value.errors"),
                        "must be an array",
                    )
                })?;
                for (i, error) in errors.iter().enumerate() {
                    match error["code"].as_i64() {
                        Some(code) => parsed.system_errors.push(code),
                        None => parsed.invalid.push(field(
                            format!("entry[{e}].changes[{c}].value.errors[{i}].code"),
                            "is required (an integer)",
                        )),
                    }
                }
            }
            let Some(statuses) = change["value"].get("statuses") else {
                continue;
            };
            let statuses = statuses.as_array().ok_or_else(|| {
                field(
                    format!("entry[{e}].changes[{c}].value.statuses"),
                    "must be an array",
                )
            })?;
            for (s, status) in statuses.iter().enumerate() {
                let at = format!("entry[{e}].changes[{c}].value.statuses[{s}]");
                match whatsapp_status(status, &at, received_at) {
                    Ok(Some(receipt)) => parsed.receipts.push(receipt),
                    Ok(None) => parsed.skipped += 1,
                    Err(e) => parsed.invalid.push(e),
                }
            }
        }
    }
    Ok(parsed)
}

fn whatsapp_status(
    status: &Value,
    at: &str,
    received_at: DateTime<Utc>,
) -> Result<Option<Receipt>, ParseError> {
    let id = status["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| field(format!("{at}.id"), "is required (the wamid)"))?;
    let kind = status["status"]
        .as_str()
        .ok_or_else(|| field(format!("{at}.status"), "is required"))?;
    let kind = match kind {
        "sent" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        "failed" => ReceiptStatus::Failed,
        _ => return Ok(None), // "deleted", "warning", ...: not about delivery
    };
    let provider_timestamp = match status.get("timestamp") {
        None => None,
        Some(t) => Some(
            t.as_str()
                .and_then(|t| t.parse::<i64>().ok())
                .and_then(|t| DateTime::from_timestamp(t, 0))
                .ok_or_else(|| {
                    field(
                        format!("{at}.timestamp"),
                        "must be Unix seconds as a string",
                    )
                })?,
        ),
    };
    // Meta, "Webhooks: status messages": `biz_opaque_callback_data` is documented on sent,
    // delivered and read statuses, not on failed ones. A failed status without it is kept
    // and resolved by its message id (the tracker's message index); any other status without
    // it was not sent by us, or not with correlation.
    // The correlation is the request's confirmation key: `app/request_id`, or the bare id.
    let (app, request_id) = match status.get("biz_opaque_callback_data") {
        None if kind == ReceiptStatus::Failed => (None, None),
        callback => match callback
            .and_then(Value::as_str)
            .and_then(split_confirmation_key)
        {
            Some((app, id)) => (app.map(str::to_owned), Some(id.to_string())),
            None => return Ok(None),
        },
    };
    let error = if kind == ReceiptStatus::Failed {
        let code = status["errors"][0]["code"].as_i64();
        Some(classify(&provider_errors::WHATSAPP, code))
    } else {
        None
    };
    Ok(Some(Receipt {
        schema: RECEIPT_SCHEMA.to_string(),
        request_id,
        app,
        channel: Channel::Whatsapp,
        provider: Some(Provider::WhatsappCloud),
        provider_message_id: id.to_string(),
        status: kind,
        error,
        provider_timestamp,
        received_at,
    }))
}

/// Twilio's status callback: form fields `MessageSid`, `MessageStatus`, `ErrorCode`; the
/// request_id and the app come from the callback URL's query (`request_id`, `app`), which
/// the signature covers.
pub fn twilio(
    form: &[(String, String)],
    request_id: Option<&str>,
    app: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<Parsed, ParseError> {
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let sid = get("MessageSid")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| field("MessageSid", "is required"))?;
    let status = get("MessageStatus").ok_or_else(|| field("MessageStatus", "is required"))?;
    let kind = match status {
        "accepted" | "scheduled" | "queued" | "sending" => ReceiptStatus::Queued,
        "sent" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        "undelivered" | "failed" | "canceled" => ReceiptStatus::Failed,
        _ => {
            return Ok(Parsed {
                skipped: 1,
                ..Parsed::default()
            })
        }
    };
    let code = match get("ErrorCode").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| field("ErrorCode", "must be an integer"))?,
        ),
    };
    let valid_app = app.is_none_or(is_valid_app);
    let Some(request_id) = request_id.filter(|id| is_valid_request_id(id) && valid_app) else {
        return Ok(Parsed {
            skipped: 1,
            ..Parsed::default()
        });
    };
    let error = (kind == ReceiptStatus::Failed).then(|| classify(&provider_errors::TWILIO, code));
    Ok(Parsed {
        receipts: vec![Receipt {
            schema: RECEIPT_SCHEMA.to_string(),
            request_id: Some(request_id.to_string()),
            app: app.map(str::to_owned),
            channel: Channel::Sms,
            provider: Some(Provider::Twilio),
            provider_message_id: sid.to_string(),
            status: kind,
            error,
            provider_timestamp: None,
            received_at,
        }],
        ..Parsed::default()
    })
}

/// A failed receipt's error, by our table. A code the table does not know is a delivery
/// failure for this recipient: the message will not arrive.
pub(crate) fn classify(table: &ErrorTable, code: Option<i64>) -> ReceiptError {
    let known = code.and_then(|c| table.describe(c));
    let (class, message) = match known {
        Some((class, meaning)) => (class, meaning.to_string()),
        None => (
            ErrorClass::Recipient,
            "delivery failed (code not in our table)".to_string(),
        ),
    };
    ReceiptError {
        code: code.map_or_else(|| "unknown".to_string(), |c| c.to_string()),
        category: class.category(),
        message,
    }
}

/// The category a failed receipt without a table entry gets.
pub const UNKNOWN_FAILURE: ErrorCategory = ErrorCategory::Recipient;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    fn meta(statuses: Value) -> Vec<u8> {
        json!({"object":"whatsapp_business_account","entry":[{"id":"WABA","changes":[{"field":"messages",
          "value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"1055500000"},
          "statuses": statuses}}]}]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn several_whatsapp_statuses_in_one_call_in_any_order() {
        let body = meta(json!([
            {"id":"wamid.A","status":"read","timestamp":"1750857390","recipient_id":"15551230001","biz_opaque_callback_data":"req-1"},
            {"id":"wamid.A","status":"delivered","timestamp":"1750857384","recipient_id":"15551230001","biz_opaque_callback_data":"req-1"},
            {"id":"wamid.B","status":"failed","timestamp":"1750857384","recipient_id":"15551230026","biz_opaque_callback_data":"req-2",
             "errors":[{"code":131026,"title":"Message undeliverable"}]},
            {"id":"wamid.C","status":"sent","timestamp":"1750857384","recipient_id":"15550000000"},
            {"id":"wamid.D","status":"deleted","biz_opaque_callback_data":"req-4"}
        ]));
        let parsed = whatsapp(&body, now()).unwrap();
        assert_eq!(parsed.skipped, 2, "no callback data; not a delivery status");
        let kinds: Vec<_> = parsed
            .receipts
            .iter()
            .map(|r| (r.request_id.as_deref().unwrap_or(""), r.status))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("req-1", ReceiptStatus::Read),
                ("req-1", ReceiptStatus::Delivered),
                ("req-2", ReceiptStatus::Failed)
            ]
        );
        let failed = &parsed.receipts[2];
        let error = failed.error.as_ref().unwrap();
        assert_eq!(
            (error.code.as_str(), error.category),
            ("131026", ErrorCategory::Recipient)
        );
        assert_eq!(
            parsed.receipts[0].provider_timestamp.unwrap().timestamp(),
            1750857390
        );
        let text = serde_json::to_string(&parsed.receipts).unwrap();
        assert!(
            !text.contains("15551230001") && !text.contains("15551230026"),
            "{text}"
        );
    }

    #[test]
    fn the_correlation_carries_the_app_when_the_request_has_one() {
        let body = meta(json!([
            {"id":"wamid.A","status":"delivered","timestamp":"1750857384","biz_opaque_callback_data":"shop/req-1"},
            {"id":"wamid.B","status":"delivered","timestamp":"1750857384","biz_opaque_callback_data":"req-2"},
            {"id":"wamid.C","status":"delivered","timestamp":"1750857384","biz_opaque_callback_data":"a/b/c"}
        ]));
        let parsed = whatsapp(&body, now()).unwrap();
        let keys: Vec<(Option<&str>, String)> = parsed
            .receipts
            .iter()
            .map(|r| (r.app.as_deref(), r.key()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (Some("shop"), "shop/req-1".to_string()),
                (None, "req-2".to_string())
            ]
        );
        assert_eq!(parsed.skipped, 1, "not a key we wrote");
    }

    #[test]
    fn a_failed_whatsapp_status_without_callback_data_is_kept_for_the_message_index() {
        // Meta documents biz_opaque_callback_data on sent, delivered and read only.
        let body = meta(json!([
            {"id":"wamid.F","status":"failed","timestamp":"1750857384","recipient_id":"15551230026",
             "errors":[{"code":131031,"title":"Business account locked"}]},
            {"id":"wamid.S","status":"sent","timestamp":"1750857384","recipient_id":"15551230026"},
            {"id":"wamid.G","status":"failed","biz_opaque_callback_data":"not a request id!"}
        ]));
        let parsed = whatsapp(&body, now()).unwrap();
        assert_eq!(
            parsed.skipped, 2,
            "sent without correlation; unreadable correlation"
        );
        let [failed] = parsed.receipts.as_slice() else {
            panic!("{parsed:?}")
        };
        assert_eq!(failed.request_id, None);
        assert_eq!(failed.key(), "~msg:wamid.F");
        let error = failed.error.as_ref().unwrap();
        assert_eq!(error.category, ErrorCategory::ChannelBroken);
    }

    #[test]
    fn system_level_errors_are_collected_and_a_bad_one_is_named() {
        let body = json!({"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"field":"messages",
            "value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"1"},
              "errors":[{"code":131031,"title":"Business Account locked","message":"locked",
                         "error_data":{"details":"locked"}},
                        {"title":"no code"}]}}]}]});
        let parsed = whatsapp(body.to_string().as_bytes(), now()).unwrap();
        assert_eq!(parsed.system_errors, vec![131031]);
        assert_eq!(
            parsed.invalid,
            vec![field(
                "entry[0].changes[0].value.errors[1].code",
                "is required (an integer)"
            )]
        );
        assert!(parsed.receipts.is_empty());
    }

    #[test]
    fn whatsapp_calls_without_statuses_hold_no_receipts() {
        let body = json!({"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"field":"messages",
            "value":{"messages":[{"from":"1555","text":{"body":"hi"}}]}}]}]});
        let parsed = whatsapp(body.to_string().as_bytes(), now()).unwrap();
        assert_eq!(parsed, Parsed::default());
    }

    #[test]
    fn malformed_whatsapp_bodies_name_the_field() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "body is not JSON"),
            (br#"{"object":"page","entry":[]}"#.to_vec(), "object:"),
            (
                br#"{"object":"whatsapp_business_account"}"#.to_vec(),
                "entry: must be an array",
            ),
            (
                br#"{"object":"whatsapp_business_account","entry":[{"changes":{}}]}"#.to_vec(),
                "entry[0].changes: must be an array",
            ),
            (meta(json!({"id":"x"})), "value.statuses: must be an array"),
        ];
        for (body, expected) in cases {
            let err = whatsapp(&body, now()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
    }

    #[test]
    fn a_malformed_status_is_named_and_the_others_of_its_call_are_kept() {
        let body = meta(json!([
            {"status":"sent"},
            {"id":"w"},
            {"id":"w","status":"sent","timestamp":12},
            {"id":"wamid.ok","status":"delivered","biz_opaque_callback_data":"req-ok"}
        ]));
        let parsed = whatsapp(&body, now()).unwrap();
        let errors: Vec<String> = parsed.invalid.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("statuses[0].id: is required"),
            "{errors:?}"
        );
        assert!(errors[1].contains("statuses[1].status: is required"));
        assert!(errors[2].contains("statuses[2].timestamp: must be Unix seconds"));
        assert_eq!(parsed.receipts.len(), 1, "the valid status is kept");
        assert_eq!(parsed.receipts[0].request_id.as_deref(), Some("req-ok"));
    }

    fn form(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn twilio_statuses_map_and_failures_are_classified() {
        let cases = [
            ("queued", ReceiptStatus::Queued),
            ("sent", ReceiptStatus::Sent),
            ("delivered", ReceiptStatus::Delivered),
            ("undelivered", ReceiptStatus::Failed),
            ("failed", ReceiptStatus::Failed),
        ];
        for (status, kind) in cases {
            let f = form(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", status),
                ("To", "+15551230001"),
            ]);
            let parsed = twilio(&f, Some("req-9"), None, now()).unwrap();
            assert_eq!(parsed.receipts[0].status, kind, "{status}");
            assert_eq!(parsed.receipts[0].channel, Channel::Sms);
        }
        let f = form(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30005"),
        ]);
        let receipt = &twilio(&f, Some("req-9"), None, now()).unwrap().receipts[0];
        let error = receipt.error.as_ref().unwrap();
        assert_eq!(
            (error.code.as_str(), error.category),
            ("30005", ErrorCategory::Recipient)
        );
        let f = form(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "failed"),
            ("ErrorCode", "30007"),
        ]);
        let error = twilio(&f, Some("r"), None, now()).unwrap().receipts[0]
            .error
            .clone()
            .unwrap();
        assert_eq!(
            (error.code.as_str(), error.category),
            ("30007", UNKNOWN_FAILURE)
        );
    }

    #[test]
    fn twilio_callbacks_we_cannot_use_are_skipped_or_refused() {
        let f = form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        assert_eq!(
            twilio(&f, None, None, now()).unwrap().skipped,
            1,
            "no request_id"
        );
        assert_eq!(
            twilio(&f, Some("r"), Some("not an app!"), now())
                .unwrap()
                .skipped,
            1,
            "an app we did not write"
        );
        let apps = twilio(&f, Some("r"), Some("acme"), now()).unwrap();
        assert_eq!(apps.receipts[0].key(), "acme/r");
        let f = form(&[("MessageSid", "SM1"), ("MessageStatus", "receiving")]);
        assert_eq!(twilio(&f, Some("r"), None, now()).unwrap().skipped, 1);
        let err = twilio(&form(&[("MessageStatus", "sent")]), Some("r"), None, now()).unwrap_err();
        assert_eq!(err.to_string(), "MessageSid: is required");
        let err = twilio(&form(&[("MessageSid", "SM1")]), Some("r"), None, now()).unwrap_err();
        assert_eq!(err.to_string(), "MessageStatus: is required");
        let f = form(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "failed"),
            ("ErrorCode", "x"),
        ]);
        assert_eq!(
            twilio(&f, Some("r"), None, now()).unwrap_err().to_string(),
            "ErrorCode: must be an integer"
        );
    }
}
