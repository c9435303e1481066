//! `POST {base}/{version}/{phone_number_id}/messages` with an authentication template: the
//! code in the body parameter and in the copy-code URL button parameter.

use crate::config::WhatsappArgs;
use chrono::{DateTime, Utc};
use otp_events::{Channel, CodeRequest};
use otp_worker::channel::outcome_of;
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
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&self.body(request, now))
            .send()
            .await;
        outcome_of(
            response,
            &otp_events::provider_errors::WHATSAPP,
            |body| body["messages"][0]["id"].as_str(),
            |body| body["error"]["code"].as_i64(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_events::{Channel, Submission};

    fn client(per_message_ttl: bool) -> WhatsappClient {
        let args = WhatsappArgs {
            api_base_url: "http://127.0.0.1:1/".into(),
            api_version: "v21.0".into(),
            phone_number_id: "42".into(),
            template: "otp_login".into(),
            default_language: "en_US".into(),
            request_timeout: std::time::Duration::from_secs(1),
            per_message_ttl,
        };
        WhatsappClient::new(args, "t".into()).unwrap()
    }

    fn request(locale: Option<&str>) -> CodeRequest {
        let mut s = Submission::new(
            "+15551234567",
            "123456",
            vec![Channel::Whatsapp],
            chrono::Duration::seconds(120),
        );
        s.locale = locale.map(str::to_owned);
        s.request_id = Some("req-1".into());
        s.complete(Utc::now())
    }

    #[test]
    fn body_is_an_authentication_template_with_the_code_twice() {
        let c = client(false);
        assert_eq!(c.url, "http://127.0.0.1:1/v21.0/42/messages");
        let r = request(Some("pt-BR"));
        let body = c.body(&r, r.created_at);
        assert_eq!(body["to"], "15551234567");
        assert_eq!(body["type"], "template");
        assert_eq!(body["biz_opaque_callback_data"], "req-1");
        assert_eq!(body["template"]["language"]["code"], "pt_BR");
        let components = &body["template"]["components"];
        assert_eq!(components[0]["parameters"][0]["text"], "123456");
        assert_eq!(components[1]["sub_type"], "url");
        assert_eq!(components[1]["parameters"][0]["text"], "123456");
        assert!(body.get("ttl_seconds").is_none());
        let body = c.body(&request(None), Utc::now());
        assert_eq!(body["template"]["language"]["code"], "en_US");
    }

    #[test]
    fn per_message_ttl_is_the_codes_remaining_life_within_metas_range() {
        let c = client(true);
        let r = request(None);
        let now = r.expires_at - chrono::Duration::seconds(120);
        assert_eq!(c.body(&r, now)["ttl_seconds"], 120);
        let late = r.expires_at - chrono::Duration::seconds(5);
        assert_eq!(c.body(&r, late)["ttl_seconds"], 30, "Meta's minimum");
    }
}
