//! Vonage Messages API: `POST {base}/v1/messages`, JSON, basic auth (API key and secret).
//!
//! From Vonage's API reference: `message_type: "text"`, `channel: "sms"`, `to` in E.164
//! without the leading `+`, `from` a number or an alphanumeric sender id, `text` up to 1,000
//! characters, `client_ref` our correlation, `ttl` in seconds. An accepted message is answered
//! 202 with its `message_uuid`; a refusal is an RFC 7807 body whose `type` URL ends in the
//! error code (`…/api-errors/messages#1120`), classified by `otp_events::provider_errors::VONAGE`.
//!
//! `ttl` is the code's remaining life: Vonage tries an SMS for 72 hours by default, and a code
//! delivered after it expired is worse than none. Vonage recommends at least 30 minutes and
//! documents no minimum; were it to refuse a short one (1130, "invalid TTL"), that answer is
//! classified as our payload's fault: it counts against Vonage's health and moves the send to
//! the route's next provider at once.

use crate::config::VonageArgs;
use crate::senders::Senders;
use crate::text::Texts;
use chrono::{DateTime, Utc};
use otp_events::provider_errors::{vonage_code, VONAGE};
use otp_events::{confirmation_key, CodeRequest};
use otp_worker::channel::outcome_of;
use otp_worker::SendOutcome;
use serde_json::{json, Value};

/// The longest `client_ref` sent: the request's confirmation key (`app/request_id`, or the
/// bare id). Vonage's reference says 100 characters and its error 1450 says 40: the key goes
/// only when it fits the shorter. Without it, receipts are matched by
/// `message_uuid` (the message index), as WhatsApp's failed statuses are.
pub const CLIENT_REF_MAX: usize = 40;

pub struct VonageClient {
    http: reqwest::Client,
    url: String,
    api_key: String,
    api_secret: String,
    texts: Texts,
    from: Option<String>,
    senders: Senders,
}

impl VonageClient {
    pub fn new(args: VonageArgs, texts: Texts, api_secret: String) -> anyhow::Result<Self> {
        let Some(api_key) = args.vonage_api_key.clone() else {
            anyhow::bail!("--vonage-api-key is required for Vonage");
        };
        if args.vonage_from.is_none() && args.vonage_senders.is_empty() {
            anyhow::bail!("give --vonage-from or at least one --vonage-sender CC=SENDER");
        }
        let http = reqwest::Client::builder()
            .timeout(args.vonage_request_timeout)
            .pool_max_idle_per_host(1024)
            .build()?;
        let url = format!(
            "{}/v1/messages",
            args.vonage_api_base_url.trim_end_matches('/')
        );
        Ok(Self {
            http,
            url,
            api_key,
            api_secret,
            texts,
            from: args.vonage_from,
            senders: Senders::new(args.vonage_senders),
        })
    }

    /// The sender for `request`'s destination: its country's, else the default.
    fn sender(&self, request: &CodeRequest) -> Option<&str> {
        self.senders.for_request(request).or(self.from.as_deref())
    }

    /// The request body for `request`, or `None` when no sender serves its destination
    /// (public for the benchmarks and tests).
    pub fn body(&self, request: &CodeRequest, now: DateTime<Utc>) -> Option<Value> {
        let from = self.sender(request)?;
        let ttl = (request.expires_at - now).num_seconds().max(1);
        let mut body = json!({
            "message_type": "text",
            "channel": "sms",
            "to": request.phone.trim_start_matches('+'),
            "from": from,
            "text": self.texts.of(request, now),
            "ttl": ttl,
        });
        let reference = confirmation_key(request.app.as_deref(), &request.request_id);
        if reference.len() <= CLIENT_REF_MAX {
            body["client_ref"] = json!(reference);
        }
        Some(body)
    }

    /// One send.
    pub async fn send(&self, request: &CodeRequest, now: DateTime<Utc>) -> SendOutcome {
        let Some(body) = self.body(request, now) else {
            // Nothing was sent: no sender is configured for this country. Vonage would refuse
            // it for the same reason (1120), so it is classified as that.
            return SendOutcome::Failed(VONAGE.classify(422, Some(1120)));
        };
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.api_key, Some(&self.api_secret))
            .json(&body)
            .send()
            .await;
        outcome_of(
            response,
            &VONAGE,
            |body| body["message_uuid"].as_str(),
            error_code,
        )
        .await
    }
}

/// The Vonage code of an RFC 7807 error body: the number its `type` URL ends in; a low
/// balance (402, `#low-balance`) is the account's credit (1070).
fn error_code(body: &Value) -> Option<i64> {
    let kind = body["type"].as_str()?;
    if kind.ends_with("low-balance") {
        return Some(1070);
    }
    vonage_code(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_events::{Channel, Submission};

    fn client(senders: Vec<(String, String)>, from: Option<&str>) -> VonageClient {
        let args = VonageArgs {
            vonage_api_key: Some("key".into()),
            vonage_from: from.map(str::to_owned),
            vonage_senders: senders,
            ..VonageArgs::default()
        };
        VonageClient::new(args, Texts::new(&[], "en").unwrap(), "secret".into()).unwrap()
    }

    fn request(phone: &str) -> CodeRequest {
        let mut s = Submission::new(
            phone,
            "123456",
            vec![Channel::Sms],
            chrono::Duration::seconds(300),
        );
        s.request_id = Some("req-1".into());
        s.complete(Utc::now())
    }

    #[test]
    fn body_has_the_documented_fields() {
        let c = client(vec![], Some("Acme"));
        let r = request("+447700900123");
        let now = r.expires_at - chrono::Duration::seconds(300);
        let body = c.body(&r, now).unwrap();
        assert_eq!(body["message_type"], "text");
        assert_eq!(body["channel"], "sms");
        assert_eq!(body["to"], "447700900123", "E.164 without the +");
        assert_eq!(body["from"], "Acme");
        assert_eq!(body["ttl"], 300);
        assert_eq!(body["client_ref"], "req-1");
        assert!(body["text"].as_str().unwrap().starts_with("123456 is your"));
    }

    #[test]
    fn a_country_can_have_its_own_sender_and_one_without_any_is_not_sent() {
        let c = client(vec![("US".into(), "15557654321".into())], None);
        let now = Utc::now();
        assert_eq!(
            c.body(&request("+15551234567"), now).unwrap()["from"],
            "15557654321"
        );
        assert!(c.body(&request("+447700900123"), now).is_none());
    }

    #[test]
    fn long_ids_are_not_sent_as_client_ref() {
        let c = client(vec![], Some("Acme"));
        let mut r = request("+447700900123");
        r.app = Some("shop".into());
        assert_eq!(c.body(&r, Utc::now()).unwrap()["client_ref"], "shop/req-1");
        r.request_id = "x".repeat(CLIENT_REF_MAX + 1);
        assert!(c.body(&r, Utc::now()).unwrap().get("client_ref").is_none());
    }

    #[test]
    fn error_codes_come_from_the_problem_type() {
        let body = json!({"type": "https://developer.nexmo.com/api-errors/messages-olympus#1120", "title": "Illegal Sender Address"});
        assert_eq!(error_code(&body), Some(1120));
        let low = json!({"type": "https://developer.nexmo.com/api-errors/#low-balance"});
        assert_eq!(error_code(&low), Some(1070));
        assert_eq!(
            error_code(&json!({"type": "https://developer.nexmo.com/api-errors/#unathorized"})),
            None
        );
    }
}
