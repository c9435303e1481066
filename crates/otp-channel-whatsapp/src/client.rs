//! `POST {base}/{version}/{phone_number_id}/messages` with an authentication template: the
//! code in the body parameter and in the copy-code URL button parameter (Meta, "Send
//! authentication templates" / "Copy code authentication templates").

use crate::config::WhatsappArgs;
use crate::language::Languages;
use chrono::{DateTime, Utc};
use otp_events::provider_errors::WHATSAPP;
use otp_events::{Channel, CodeRequest, Provider};
use otp_worker::channel::outcome_of;
use otp_worker::{ChannelClient, SendOutcome};
use serde_json::{json, Value};
use std::time::Instant;

/// Meta's answer for a template language the template is not approved in.
const LANGUAGE_NOT_APPROVED: &str = "132001";

pub struct WhatsappClient {
    http: reqwest::Client,
    url: String,
    token: String,
    template: String,
    languages: Languages,
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
        let languages = Languages::new(
            &args.template_languages,
            &args.default_language,
            args.language_hold,
        );
        Ok(Self {
            http,
            url,
            token,
            template: args.template,
            languages,
        })
    }

    /// The request body for `request` in template language `language` (public for the
    /// benchmarks). No `ttl_seconds`: for authentication templates the TTL is the template's
    /// `message_send_ttl_seconds`; a per-message TTL is Meta's Direct Send only and is refused
    /// elsewhere with error 100.
    pub fn body(&self, request: &CodeRequest, language: &str) -> Value {
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": request.phone.trim_start_matches('+'),
            "type": "template",
            // Echoed on the status webhooks: the request's key in the confirmation path.
            "biz_opaque_callback_data": otp_events::confirmation_key(request.app.as_deref(), &request.request_id),
            "template": {
                "name": self.template,
                "language": { "code": language },
                "components": [
                    { "type": "body", "parameters": [ { "type": "text", "text": request.code } ] },
                    { "type": "button", "sub_type": "url", "index": "0",
                      "parameters": [ { "type": "text", "text": request.code } ] }
                ]
            }
        })
    }

    /// The template language a request is sent in, first.
    pub fn language_for(&self, request: &CodeRequest) -> &str {
        self.languages
            .pick(request.locale.as_deref(), Instant::now())
    }

    async fn post(&self, request: &CodeRequest, language: &str) -> SendOutcome {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&self.body(request, language))
            .send()
            .await;
        outcome_of(
            response,
            &WHATSAPP,
            |body| body["messages"][0]["id"].as_str(),
            |body| body["error"]["code"].as_i64(),
        )
        .await
    }
}

impl ChannelClient for WhatsappClient {
    fn channel(&self) -> Channel {
        Channel::Whatsapp
    }

    fn providers(&self) -> Vec<Provider> {
        vec![Provider::WhatsappCloud]
    }

    /// One try, in the request's language; if Meta refuses that language (132001) and it is
    /// not the default, the same try goes again at once in the default language, and the
    /// language is held back for a while. Only a refusal in the default language reaches the
    /// runtime, as a broken channel.
    async fn send(
        &self,
        _provider: Provider,
        request: &CodeRequest,
        _now: DateTime<Utc>,
    ) -> SendOutcome {
        let language = self.language_for(request).to_string();
        let outcome = self.post(request, &language).await;
        let refused = matches!(&outcome, SendOutcome::Failed(f) if f.code == LANGUAGE_NOT_APPROVED);
        if refused && self.languages.refused(&language, Instant::now()) {
            // The label is an approved code from the operator's configuration: bounded.
            metrics::counter!("otp_whatsapp_language_refused_total", "language" => language.clone())
                .increment(1);
            tracing::warn!(
                language,
                default = self.languages.default_language(),
                "template language refused by Meta (132001); sending in the default language"
            );
            return self.post(request, self.languages.default_language()).await;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_events::{Channel, Submission};

    fn client(approved: &str) -> WhatsappClient {
        let mut args = WhatsappArgs::new("http://127.0.0.1:1/", "42");
        args.template_languages = approved.split(',').map(str::to_string).collect();
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
    fn body_is_an_authentication_template_with_the_code_twice_and_no_ttl() {
        let c = client("en_US,pt_BR");
        assert_eq!(c.url, "http://127.0.0.1:1/v24.0/42/messages");
        let r = request(Some("pt-BR"));
        let body = c.body(&r, c.language_for(&r));
        assert_eq!(body["to"], "15551234567");
        assert_eq!(body["type"], "template");
        assert_eq!(body["biz_opaque_callback_data"], "req-1");
        assert_eq!(body["template"]["language"]["code"], "pt_BR");
        let components = &body["template"]["components"];
        assert_eq!(components[0]["parameters"][0]["text"], "123456");
        assert_eq!(components[1]["sub_type"], "url");
        assert_eq!(components[1]["parameters"][0]["text"], "123456");
        assert!(body.get("ttl_seconds").is_none(), "Direct Send only");
        let mut r = r;
        r.app = Some("shop".into());
        let body = c.body(&r, c.language_for(&r));
        assert_eq!(
            body["biz_opaque_callback_data"], "shop/req-1",
            "the app's key"
        );
    }

    #[test]
    fn a_locale_the_template_lacks_is_sent_in_the_default_language() {
        let c = client("en_US,de");
        for (locale, code) in [
            (Some("de_DE"), "de"),
            (Some("ja_JP"), "en_US"),
            (None, "en_US"),
        ] {
            assert_eq!(c.language_for(&request(locale)), code, "{locale:?}");
        }
    }
}
