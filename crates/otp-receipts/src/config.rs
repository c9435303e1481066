//! Settings of the webhook ingress (`otp-receipts serve`). Secrets are not flags: they come
//! from the environment or from files named by `<NAME>_FILE`, like the workers' tokens.

use otp_kafka::KafkaArgs;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Address to listen on; put TLS termination in front of it.
    #[arg(long, env = "OTP_RECEIPTS_LISTEN", default_value = "127.0.0.1:9500")]
    pub listen: SocketAddr,
    /// The public base URL the providers call, e.g. `https://otp.example.com` (with any path
    /// prefix a proxy strips). Twilio signs the full URL it called, so this must be exactly
    /// what the workers put in `StatusCallback` before `/webhooks/sms/status`.
    #[arg(long, env = "OTP_RECEIPTS_PUBLIC_URL")]
    pub public_url: String,
    /// How long a receipt may take to be acknowledged by Kafka before the provider is
    /// answered 503 (and retries).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "OTP_LOG_JSON")]
    pub log_json: bool,
}

/// The three webhook secrets. An absent one turns its endpoint off (404): a deployment may
/// take receipts from one provider only.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    /// Meta app secret: the key of `X-Hub-Signature-256` (`OTP_WHATSAPP_APP_SECRET`).
    pub whatsapp_app_secret: Option<String>,
    /// The token typed into Meta's webhook settings (`OTP_WHATSAPP_VERIFY_TOKEN`).
    pub whatsapp_verify_token: Option<String>,
    /// Twilio auth token: the key of `X-Twilio-Signature` (`OTP_SMS_AUTH_TOKEN`).
    pub sms_auth_token: Option<String>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| if s.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("WebhookSecrets")
            .field("whatsapp_app_secret", &set(&self.whatsapp_app_secret))
            .field("whatsapp_verify_token", &set(&self.whatsapp_verify_token))
            .field("sms_auth_token", &set(&self.sms_auth_token))
            .finish()
    }
}

impl WebhookSecrets {
    /// From `OTP_WHATSAPP_APP_SECRET`, `OTP_WHATSAPP_VERIFY_TOKEN`, `OTP_SMS_AUTH_TOKEN` (or
    /// their `_FILE` variants).
    pub fn from_env() -> Self {
        let get = |name: &str| otp_kafka::process::secret(name).ok();
        Self {
            whatsapp_app_secret: get("OTP_WHATSAPP_APP_SECRET"),
            whatsapp_verify_token: get("OTP_WHATSAPP_VERIFY_TOKEN"),
            sms_auth_token: get("OTP_SMS_AUTH_TOKEN"),
        }
    }
}
