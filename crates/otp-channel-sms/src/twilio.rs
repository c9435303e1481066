//! Twilio: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, basic auth.

use crate::config::TwilioArgs;
use crate::senders::Senders;
use crate::text::Texts;
use chrono::{DateTime, Utc};
use otp_events::provider_errors::TWILIO;
use otp_events::CodeRequest;
use otp_worker::channel::outcome_of;
use otp_worker::SendOutcome;

pub struct TwilioClient {
    http: reqwest::Client,
    url: String,
    account_sid: String,
    auth_token: String,
    texts: Texts,
    senders: Senders,
    args: TwilioArgs,
}

impl TwilioClient {
    pub fn new(args: TwilioArgs, texts: Texts, auth_token: String) -> anyhow::Result<Self> {
        let Some(account_sid) = args.account_sid.clone() else {
            anyhow::bail!("--account-sid is required for Twilio");
        };
        if args.from.is_some() && args.messaging_service_sid.is_some() {
            anyhow::bail!("give one of --from and --messaging-service-sid, not both");
        }
        if args.from.is_none()
            && args.messaging_service_sid.is_none()
            && args.twilio_senders.is_empty()
        {
            anyhow::bail!(
                "give --from, --messaging-service-sid or at least one --twilio-sender CC=SENDER"
            );
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
            senders: Senders::new(args.twilio_senders.clone()),
            args,
        })
    }

    /// The form fields for `request`, or `None` when no sender serves its destination
    /// (public for the benchmarks).
    pub fn form(
        &self,
        request: &CodeRequest,
        now: DateTime<Utc>,
    ) -> Option<Vec<(&'static str, String)>> {
        let country_or_default = self
            .senders
            .for_request(request)
            .or(self.args.from.as_deref());
        let sender = match (country_or_default, &self.args.messaging_service_sid) {
            (Some(from), _) => ("From", from.to_string()),
            (None, Some(sid)) => ("MessagingServiceSid", sid.clone()),
            (None, None) => return None,
        };
        let validity = (request.expires_at - now).num_seconds().clamp(1, 36_000);
        let mut form = vec![
            ("To", request.phone.clone()),
            ("Body", self.texts.of(request, now)),
            ("ValidityPeriod", validity.to_string()),
        ];
        form.push(sender);
        if let Some(callback) = &self.args.status_callback_url {
            let sep = if callback.contains('?') { '&' } else { '?' };
            let mut pairs = vec![("request_id", request.request_id.as_str())];
            if let Some(app) = &request.app {
                pairs.push(("app", app));
            }
            let query = serde_urlencoded::to_string(pairs).expect("string pairs encode");
            form.push(("StatusCallback", format!("{callback}{sep}{query}")));
        }
        Some(form)
    }

    /// One send.
    pub async fn send(&self, request: &CodeRequest, now: DateTime<Utc>) -> SendOutcome {
        let Some(form) = self.form(request, now) else {
            // Nothing was sent: no sender is configured for this country. Twilio would refuse
            // it for its route (21408, permission for the region), so it is classified as that.
            return SendOutcome::Failed(TWILIO.classify(400, Some(21408)));
        };
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form)
            .send()
            .await;
        outcome_of(
            response,
            &TWILIO,
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
            twilio_senders: Vec::new(),
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
        let form: HashMap<&str, String> = c.form(&r, now).unwrap().into_iter().collect();
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
    fn the_callback_names_the_app_when_the_request_has_one() {
        let c = TwilioClient::new(args(), texts(), "tok".into()).unwrap();
        let mut r = request(None);
        r.app = Some("shop".into());
        let form: HashMap<&str, String> = c.form(&r, Utc::now()).unwrap().into_iter().collect();
        assert_eq!(
            form["StatusCallback"],
            "https://receipts.example/webhooks/sms/status?request_id=req-1&app=shop"
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
    fn a_default_sender_or_a_country_sender_is_required() {
        let mut a = args();
        a.from = Some("+15557654321".into());
        let e = TwilioClient::new(a, texts(), "tok".into()).err().unwrap();
        assert!(e.to_string().contains("not both"), "{e}");
        let mut a = args();
        a.messaging_service_sid = None;
        let e = TwilioClient::new(a, texts(), "tok".into()).err().unwrap();
        assert!(e.to_string().contains("--twilio-sender"), "{e}");
    }

    #[test]
    fn a_country_can_have_its_own_sender_and_one_without_any_is_not_sent() {
        let mut a = args();
        a.messaging_service_sid = None;
        a.twilio_senders = vec![("US".into(), "+15557654321".into())];
        let c = TwilioClient::new(a, texts(), "tok".into()).unwrap();
        let now = Utc::now();
        let form: HashMap<&str, String> =
            c.form(&request(None), now).unwrap().into_iter().collect();
        assert_eq!(form["From"], "+15557654321");
        let mut uk = request(None);
        uk.phone = "+447700900123".into();
        assert!(c.form(&uk, now).is_none());
        // With a messaging service as the default, the country's sender wins there only.
        let mut a = args();
        a.twilio_senders = vec![("GB".into(), "+447700900999".into())];
        let c = TwilioClient::new(a, texts(), "tok".into()).unwrap();
        let form: HashMap<&str, String> = c.form(&uk, now).unwrap().into_iter().collect();
        assert_eq!(
            (form["From"].as_str(), form.get("MessagingServiceSid")),
            ("+447700900999", None)
        );
        let form: HashMap<&str, String> =
            c.form(&request(None), now).unwrap().into_iter().collect();
        assert_eq!(form["MessagingServiceSid"], "MG1");
    }
}
