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
    /// The SMS workers' `StatusCallback` URL, when this deployment sets it (the same variable
    /// the SMS worker reads). Checked at start: it must be `<public URL>/webhooks/sms/status`,
    /// or every Twilio signature would fail (Twilio signs the URL it called).
    #[arg(long, env = "OTP_SMS_STATUS_CALLBACK_URL")]
    pub sms_status_callback_url: Option<String>,
    /// How long a receipt may take to be acknowledged by Kafka before the provider is
    /// answered 503 (and retries).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,
    /// Serve `/metrics` and `/healthz` here, apart from the public webhook listener (keep it
    /// internal).
    #[arg(long, env = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// MiB of webhook bodies larger than 64 KiB held at once; a call that would pass it is
    /// answered 503 (`Retry-After`) before its body is read. Status webhooks are smaller and
    /// never wait for it.
    #[arg(long, env = "OTP_RECEIPTS_BODY_BUDGET_MIB", default_value_t = 32)]
    pub body_budget_mib: usize,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "OTP_LOG_JSON")]
    pub log_json: bool,
    #[command(flatten)]
    pub dev: otp_kafka::process::DevMode,
    #[command(flatten)]
    pub check: otp_kafka::process::CheckConfig,
}

/// The webhook secrets. An absent one turns its endpoint off (404): a deployment may
/// take receipts from one provider only.
#[derive(Clone, Default)]
pub struct WebhookSecrets {
    /// Meta app secret: the key of `X-Hub-Signature-256` (`OTP_WHATSAPP_APP_SECRET`).
    pub whatsapp_app_secret: Option<String>,
    /// The token typed into Meta's webhook settings (`OTP_WHATSAPP_VERIFY_TOKEN`).
    pub whatsapp_verify_token: Option<String>,
    /// Twilio auth token: the key of `X-Twilio-Signature` (`OTP_SMS_AUTH_TOKEN`).
    pub sms_auth_token: Option<String>,
    /// Vonage signature secret: the key of the signed webhooks' JWT
    /// (`OTP_VONAGE_SIGNATURE_SECRET`).
    pub vonage_signature_secret: Option<String>,
    /// Vonage API key: when set, a webhook's token must name it (`OTP_VONAGE_API_KEY`).
    pub vonage_api_key: Option<String>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| if s.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("WebhookSecrets")
            .field("whatsapp_app_secret", &set(&self.whatsapp_app_secret))
            .field("whatsapp_verify_token", &set(&self.whatsapp_verify_token))
            .field("sms_auth_token", &set(&self.sms_auth_token))
            .field(
                "vonage_signature_secret",
                &set(&self.vonage_signature_secret),
            )
            .field("vonage_api_key", &self.vonage_api_key)
            .finish()
    }
}

impl WebhookSecrets {
    /// From `OTP_WHATSAPP_APP_SECRET`, `OTP_WHATSAPP_VERIFY_TOKEN`, `OTP_SMS_AUTH_TOKEN`,
    /// `OTP_VONAGE_SIGNATURE_SECRET` (or their `_FILE` variants) and `OTP_VONAGE_API_KEY`.
    pub fn from_env() -> Self {
        let get = |name: &str| otp_kafka::process::secret(name).ok();
        Self {
            whatsapp_app_secret: get("OTP_WHATSAPP_APP_SECRET"),
            whatsapp_verify_token: get("OTP_WHATSAPP_VERIFY_TOKEN"),
            sms_auth_token: get("OTP_SMS_AUTH_TOKEN"),
            vonage_signature_secret: get("OTP_VONAGE_SIGNATURE_SECRET"),
            vonage_api_key: std::env::var("OTP_VONAGE_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
        }
    }
}

/// Where the SMS status endpoint is, under the ingress's public URL.
pub const SMS_STATUS_PATH: &str = "/webhooks/sms/status";

/// Refuse a pairing that cannot work: Twilio signs the exact URL it called (the workers'
/// `StatusCallback`), and the ingress checks signatures against its public URL plus the path
/// and query it was called on. Scheme and host compare case-insensitively and a default port
/// is the same as none (Twilio's helper libraries validate both spellings); the path must be
/// the same.
pub fn check_callback_pairing(public_url: &str, callback: &str) -> Result<(), String> {
    let expected = format!("{}{SMS_STATUS_PATH}", public_url.trim_end_matches('/'));
    let callback_base = callback.split(['?', '#']).next().unwrap_or(callback);
    let normal = |url: &str| -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut authority = authority.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => ":443",
            "http" => ":80",
            _ => return None,
        };
        if let Some(host) = authority.strip_suffix(default_port) {
            authority = host.to_string();
        }
        Some(format!(
            "{scheme}://{authority}{}",
            path.trim_end_matches('/')
        ))
    };
    match (normal(&expected), normal(callback_base)) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (None, _) => Err(format!(
            "OTP_RECEIPTS_PUBLIC_URL must be an http(s) URL, e.g. https://otp.example.com (got {public_url:?})"
        )),
        _ => Err(format!(
            "OTP_SMS_STATUS_CALLBACK_URL ({callback_base}) must be the receipts ingress's public URL plus {SMS_STATUS_PATH} ({expected}): Twilio signs the URL it calls, so every SMS status callback would be refused"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_url_must_pair_with_the_public_url() {
        let ok = [
            (
                "https://otp.example.com",
                "https://otp.example.com/webhooks/sms/status",
            ),
            (
                "https://otp.example.com/",
                "https://OTP.example.com:443/webhooks/sms/status?x=1",
            ),
            (
                "http://127.0.0.1:9500",
                "http://127.0.0.1:9500/webhooks/sms/status",
            ),
            ("https://x.io/otp", "https://x.io/otp/webhooks/sms/status"),
        ];
        for (public, callback) in ok {
            assert_eq!(
                check_callback_pairing(public, callback),
                Ok(()),
                "{public} {callback}"
            );
        }
        let wrong = [
            (
                "https://otp.example.com",
                "http://otp.example.com/webhooks/sms/status",
            ),
            (
                "https://otp.example.com",
                "https://otp.example.com:8443/webhooks/sms/status",
            ),
            (
                "https://otp.example.com",
                "https://other.example.com/webhooks/sms/status",
            ),
            ("https://x.io/otp", "https://x.io/webhooks/sms/status"),
        ];
        for (public, callback) in wrong {
            let e = check_callback_pairing(public, callback).unwrap_err();
            assert!(
                e.contains("OTP_SMS_STATUS_CALLBACK_URL") && e.contains(SMS_STATUS_PATH),
                "{e}"
            );
        }
        let e = check_callback_pairing(
            "otp.example.com",
            "https://otp.example.com/webhooks/sms/status",
        )
        .unwrap_err();
        assert!(e.contains("OTP_RECEIPTS_PUBLIC_URL"), "{e}");
    }
}
