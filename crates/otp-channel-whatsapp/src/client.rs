//! `POST {base}/{version}/{phone_number_id}/messages` with an authentication template: the
//! code in the body parameter and in the copy-code URL button parameter.

use crate::config::WhatsappArgs;
use crate::errors::ERRORS;
use chrono::{DateTime, Utc};
use otp_events::{Channel, CodeRequest};
use otp_worker::channel::transport_failure;
use otp_worker::{ChannelClient, SendOutcome};
use serde_json::{json, Value};

pub struct WhatsappClient {
    http: reqwest::Client,
    url: String,
    token: String,
    args: WhatsappArgs,
}

impl WhatsappClient {
    pub fn new(args: WhatsappArgs, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(args.request_timeout)
            .pool_max_idle_per_host(1024)
            .build()?;
        let url = format!(
            "{}/{}/{}/messages",
            args.api_base_url.trim_end_matches('/'),
            args.api_version,
            args.phone_number_id
        );
        Ok(Self {
            http,
            url,
            token,
            args,
        })
    }

    /// The request body for `request` (public for the benchmarks).
    pub fn body(&self, request: &CodeRequest, now: DateTime<Utc>) -> Value {
        let language = request
            .locale
            .as_deref()
            .map(|l| l.replace('-', "_"))
            .unwrap_or_else(|| self.args.default_language.clone());
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": request.phone.trim_start_matches('+'),
            "type": "template",
            "biz_opaque_callback_data": request.request_id,
            "template": {
                "name": self.args.template,
                "language": { "code": language },
                "components": [
                    { "type": "body", "parameters": [ { "type": "text", "text": request.code } ] },
                    { "type": "button", "sub_type": "url", "index": "0",
                      "parameters": [ { "type": "text", "text": request.code } ] }
                ]
            }
        });
        if self.args.per_message_ttl {
            let left = (request.expires_at - now).num_seconds().clamp(30, 900);
            body["ttl_seconds"] = json!(left);
        }
        body
    }
}

impl ChannelClient for WhatsappClient {
    fn channel(&self) -> Channel {
        Channel::Whatsapp
    }

    async fn send(&self, request: &CodeRequest, now: DateTime<Utc>) -> SendOutcome {
        let response = match self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&self.body(request, now))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return SendOutcome::Failed(transport_failure(&e)),
        };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status == 200 {
            if let Some(id) = body["messages"][0]["id"].as_str() {
                return SendOutcome::Accepted {
                    provider_message_id: id.to_string(),
                };
            }
        }
        SendOutcome::Failed(ERRORS.classify(status, body["error"]["code"].as_i64()))
    }
}
