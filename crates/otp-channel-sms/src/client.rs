//! `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, basic auth.

use crate::config::{SmsArgs, BUILT_IN_TEMPLATES};
use crate::errors::ERRORS;
use chrono::{DateTime, Utc};
use otp_events::{Channel, CodeRequest};
use otp_worker::channel::transport_failure;
use otp_worker::{ChannelClient, SendOutcome};
use serde_json::Value;
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
        let response = match self
            .http
            .post(&self.url)
            .basic_auth(&self.args.account_sid, Some(&self.auth_token))
            .form(&self.form(request, now))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return SendOutcome::Failed(transport_failure(&e)),
        };
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            if let Some(sid) = body["sid"].as_str() {
                return SendOutcome::Accepted {
                    provider_message_id: sid.to_string(),
                };
            }
        }
        SendOutcome::Failed(ERRORS.classify(status, body["code"].as_i64()))
    }
}
