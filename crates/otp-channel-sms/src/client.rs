//! `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, basic auth.

use crate::config::{SmsArgs, BUILT_IN_TEMPLATES};
use chrono::{DateTime, Utc};
use otp_events::{Channel, CodeRequest};
use otp_worker::channel::outcome_of;
use otp_worker::{ChannelClient, SendOutcome};
use std::collections::HashMap;

pub struct SmsClient {
    http: reqwest::Client,
    url: String,
    auth_token: String,
    templates: HashMap<String, String>,
    args: SmsArgs,
}

impl SmsClient {
    pub fn new(args: SmsArgs, auth_token: String) -> anyhow::Result<Self> {
        if args.from.is_none() == args.messaging_service_sid.is_none() {
            anyhow::bail!("give exactly one of --from and --messaging-service-sid");
        }
        let mut templates: HashMap<String, String> = BUILT_IN_TEMPLATES
            .iter()
            .map(|(l, t)| (l.to_string(), t.to_string()))
            .collect();
        templates.extend(args.body_templates.iter().cloned());
        if !templates.contains_key(&args.default_locale) {
            anyhow::bail!(
                "no body template for the default locale {}",
                args.default_locale
            );
        }
        let http = reqwest::Client::builder()
            .timeout(args.request_timeout)
            .pool_max_idle_per_host(1024)
            .build()?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            args.api_base_url.trim_end_matches('/'),
            args.account_sid
        );
        Ok(Self {
            http,
            url,
            auth_token,
            templates,
            args,
        })
    }

    /// The message text: the request's locale (exact, then its language), else the default.
    pub fn text(&self, request: &CodeRequest, now: DateTime<Utc>) -> String {
        let locale = request.locale.as_deref().unwrap_or("");
        let language = locale.split(['_', '-']).next().unwrap_or("");
        let template = [locale, language, self.args.default_locale.as_str()]
            .iter()
            .find_map(|l| self.templates.get(*l))
            .expect("the default locale's template exists");
        let minutes = ((request.expires_at - now).num_seconds().max(1) + 59) / 60;
        template
            .replace("{code}", &request.code)
            .replace("{minutes}", &minutes.to_string())
    }

    /// The form fields for `request` (public for the benchmarks).
    pub fn form(&self, request: &CodeRequest, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let validity = (request.expires_at - now).num_seconds().clamp(1, 36_000);
        let mut form = vec![
            ("To", request.phone.clone()),
            ("Body", self.text(request, now)),
            ("ValidityPeriod", validity.to_string()),
        ];
        match (&self.args.from, &self.args.messaging_service_sid) {
            (Some(from), _) => form.push(("From", from.clone())),
            (None, Some(sid)) => form.push(("MessagingServiceSid", sid.clone())),
            (None, None) => unreachable!("checked in new()"),
        }
        if let Some(callback) = &self.args.status_callback_url {
            let sep = if callback.contains('?') { '&' } else { '?' };
            let query = serde_urlencoded::to_string([("request_id", &request.request_id)])
                .expect("a string pair encodes");
            form.push(("StatusCallback", format!("{callback}{sep}{query}")));
        }
        form
    }
}

impl ChannelClient for SmsClient {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    async fn send(&self, request: &CodeRequest, now: DateTime<Utc>) -> SendOutcome {
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.args.account_sid, Some(&self.auth_token))
            .form(&self.form(request, now))
            .send()
            .await;
        outcome_of(
            response,
            &otp_events::provider_errors::SMS,
            |body| body["sid"].as_str(),
            |body| body["code"].as_i64(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_events::Submission;

    fn args() -> SmsArgs {
        SmsArgs {
            api_base_url: "http://127.0.0.1:1".into(),
            account_sid: "AC1".into(),
            from: None,
            messaging_service_sid: Some("MG1".into()),
            status_callback_url: Some("https://receipts.example/webhooks/sms/status".into()),
            body_templates: vec![("es_MX".into(), "Código {code}".into())],
            default_locale: "en".into(),
            request_timeout: std::time::Duration::from_secs(1),
        }
    }

    fn request(locale: Option<&str>) -> CodeRequest {
        let mut s = Submission::new(
            "+15551234567",
            "123456",
            vec![Channel::Sms],
            chrono::Duration::seconds(300),
        );
        s.locale = locale.map(str::to_owned);
        s.request_id = Some("req-1".into());
        s.complete(Utc::now())
    }

    #[test]
    fn form_has_the_documented_fields() {
        let c = SmsClient::new(args(), "tok".into()).unwrap();
        let r = request(None);
        let now = r.expires_at - chrono::Duration::seconds(300);
        let form: HashMap<&str, String> = c.form(&r, now).into_iter().collect();
        assert_eq!(form["To"], "+15551234567");
        assert_eq!(
            form["Body"],
            "123456 is your verification code. It expires in 5 minutes."
        );
        assert_eq!(form["ValidityPeriod"], "300");
        assert_eq!(form["MessagingServiceSid"], "MG1");
        assert!(!form.contains_key("From"));
        assert_eq!(
            form["StatusCallback"],
            "https://receipts.example/webhooks/sms/status?request_id=req-1"
        );
    }

    #[test]
    fn body_follows_the_locale_then_its_language_then_the_default() {
        let c = SmsClient::new(args(), "tok".into()).unwrap();
        let now = Utc::now();
        assert_eq!(c.text(&request(Some("es_MX")), now), "Código 123456");
        assert!(c
            .text(&request(Some("pt-BR")), now)
            .starts_with("123456 é o seu código"));
        assert!(c
            .text(&request(Some("ja")), now)
            .starts_with("123456 is your"));
    }

    #[test]
    fn exactly_one_sender_is_required() {
        let mut a = args();
        a.from = Some("+15557654321".into());
        assert!(SmsClient::new(a, "tok".into()).is_err());
        let mut a = args();
        a.messaging_service_sid = None;
        assert!(SmsClient::new(a, "tok".into()).is_err());
    }
}
