//! Twilio: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, basic auth.

use crate::config::TwilioArgs;
use crate::text::Texts;
use chrono::{DateTime, Utc};
use otp_events::CodeRequest;
use otp_worker::channel::outcome_of;
use otp_worker::SendOutcome;

pub struct TwilioClient {
    http: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: String,
    texts: Texts,
    args: TwilioArgs,
}

impl TwilioClient {
    pub fn new(args: TwilioArgs, texts: Texts, auth_token: String) -> anyhow::Result<Self> {
        let Some(account_sid) = args.account_sid.clone() else {
            anyhow::bail!("--account-sid is required for Twilio");
        };
        if args.from.is_none() == args.messaging_service_sid.is_none() {
            anyhow::bail!("give exactly one of --from and --messaging-service-sid");
        }
        let http = reqwest::Client::builder()
            .timeout(args.request_timeout)
            .pool_max_idle_per_host(1024)
            .build()?;
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            args.api_base_url.trim_end_matches('/'),
            account_sid
        );
        Ok(Self {
            http,
            url,
            account_sid,
            auth_token,
            texts,
            args,
        })
    }

    /// The form fields for `request` (public for the benchmarks).
    pub fn form(&self, request: &CodeRequest, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let validity = (request.expires_at - now).num_seconds().clamp(1, 36_000);
        let mut form = vec![
            ("To", request.phone.clone()),
            ("Body", self.texts.of(request, now)),
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

    /// One send.
    pub async fn send(&self, request: &CodeRequest, now: DateTime<Utc>) -> SendOutcome {
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&self.form(request, now))
            .send()
            .await;
        outcome_of(
            response,
            &otp_events::provider_errors::TWILIO,
            |body| body["sid"].as_str(),
            |body| body["code"].as_i64(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_events::{Channel, Submission};
    use std::collections::HashMap;

    fn args() -> TwilioArgs {
        TwilioArgs {
            api_base_url: "http://127.0.0.1:1".into(),
            account_sid: Some("AC1".into()),
            from: None,
            messaging_service_sid: Some("MG1".into()),
            status_callback_url: Some("https://receipts.example/webhooks/sms/status".into()),
            request_timeout: std::time::Duration::from_secs(1),
        }
    }

    fn texts() -> Texts {
        Texts::new(&[("es_MX".into(), "Código {code}".into())], "en").unwrap()
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
        let c = TwilioClient::new(args(), texts(), "tok".into()).unwrap();
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
        let c = TwilioClient::new(args(), texts(), "tok".into()).unwrap();
        let now = Utc::now();
        assert_eq!(c.texts.of(&request(Some("es_MX")), now), "Código 123456");
        assert!(c
            .texts
            .of(&request(Some("pt-BR")), now)
            .starts_with("123456 é o seu código"));
        assert!(c
            .texts
            .of(&request(Some("ja")), now)
            .starts_with("123456 is your"));
    }

    #[test]
    fn exactly_one_sender_is_required() {
        let mut a = args();
        a.from = Some("+15557654321".into());
        assert!(TwilioClient::new(a, texts(), "tok".into()).is_err());
        let mut a = args();
        a.messaging_service_sid = None;
        assert!(TwilioClient::new(a, texts(), "tok".into()).is_err());
    }
}
