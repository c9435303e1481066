//! The SMS channel's client: its configured providers, each sending one message.

use crate::config::SmsArgs;
use crate::text::Texts;
use crate::twilio::TwilioClient;
use crate::vonage::VonageClient;
use chrono::{DateTime, Utc};
use otp_events::{Channel, CodeRequest, Provider};
use otp_worker::{ChannelClient, SendOutcome};

/// Twilio, Vonage, or both; the runtime routes each send to one of them.
pub struct SmsClient {
    twilio: Option<TwilioClient>,
    vonage: Option<VonageClient>,
}

impl SmsClient {
    /// The providers `args` turns on, with credentials from their environment variables
    /// (`OTP_SMS_AUTH_TOKEN`, `OTP_VONAGE_API_SECRET`, or their `_FILE` forms).
    pub fn from_env(args: SmsArgs) -> anyhow::Result<Self> {
        let secret = otp_worker::cli::secret;
        let twilio = match args.twilio.account_sid {
            Some(_) => Some(secret("OTP_SMS_AUTH_TOKEN")?),
            None => None,
        };
        let vonage = match args.vonage.vonage_api_key {
            Some(_) => Some(secret("OTP_VONAGE_API_SECRET")?),
            None => None,
        };
        Self::new(args, twilio, vonage)
    }

    /// The providers `args` turns on, with these credentials.
    pub fn new(
        args: SmsArgs,
        twilio_token: Option<String>,
        vonage_secret: Option<String>,
    ) -> anyhow::Result<Self> {
        let texts = Texts::new(&args.body_templates, &args.default_locale)?;
        let twilio = match (args.twilio.account_sid.is_some(), twilio_token) {
            (true, Some(token)) => Some(TwilioClient::new(args.twilio, texts.clone(), token)?),
            (true, None) => anyhow::bail!("Twilio needs its auth token"),
            (false, _) => None,
        };
        let vonage = match (args.vonage.vonage_api_key.is_some(), vonage_secret) {
            (true, Some(secret)) => Some(VonageClient::new(args.vonage, texts, secret)?),
            (true, None) => anyhow::bail!("Vonage needs its API secret"),
            (false, _) => None,
        };
        if twilio.is_none() && vonage.is_none() {
            anyhow::bail!(
                "no SMS provider configured: give --account-sid (Twilio), --vonage-api-key \
                 (Vonage), or both"
            );
        }
        Ok(Self { twilio, vonage })
    }

    /// Twilio's client, when configured (the benchmarks build its form).
    pub fn twilio(&self) -> Option<&TwilioClient> {
        self.twilio.as_ref()
    }
}

impl ChannelClient for SmsClient {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn providers(&self) -> Vec<Provider> {
        let mut providers = Vec::new();
        if self.twilio.is_some() {
            providers.push(Provider::Twilio);
        }
        if self.vonage.is_some() {
            providers.push(Provider::Vonage);
        }
        providers
    }

    async fn send(
        &self,
        provider: Provider,
        request: &CodeRequest,
        now: DateTime<Utc>,
    ) -> SendOutcome {
        match (provider, &self.twilio, &self.vonage) {
            (Provider::Twilio, Some(twilio), _) => twilio.send(request, now).await,
            (Provider::Vonage, _, Some(vonage)) => vonage.send(request, now).await,
            // The routes are checked against `providers()` at start: unreachable in a worker.
            _ => unreachable!("{provider} is not configured on this SMS client"),
        }
    }
}
