//! Settings of the SMS channel. The auth token is not among them: it comes from
//! `OTP_SMS_AUTH_TOKEN` or the file named by `OTP_SMS_AUTH_TOKEN_FILE`, never from a flag.

use otp_worker::LimitsConfig;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct SmsArgs {
    /// Base URL of the Messages API; point it at `otp-provider-sim` for demos and tests.
    #[arg(
        long,
        env = "OTP_SMS_API_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub api_base_url: String,
    /// Account SID (AC...), also the basic-auth user.
    #[arg(long, env = "OTP_SMS_ACCOUNT_SID")]
    pub account_sid: String,
    /// Sender number (E.164). Give this or --messaging-service-sid.
    #[arg(long, env = "OTP_SMS_FROM")]
    pub from: Option<String>,
    /// Messaging service (MG...) that picks the sender. Give this or --from.
    #[arg(long, env = "OTP_SMS_MESSAGING_SERVICE_SID")]
    pub messaging_service_sid: Option<String>,
    /// Public URL of the receipts ingress's SMS status endpoint; the request_id is added as a
    /// query parameter. No callback is requested when absent.
    #[arg(long, env = "OTP_SMS_STATUS_CALLBACK_URL")]
    pub status_callback_url: Option<String>,
    /// Message text for a locale, `LOCALE=TEXT` with `{code}` and `{minutes}`; repeatable.
    /// Built in: en, es, pt, de, fr.
    #[arg(long = "body-template", value_parser = parse_template)]
    pub body_templates: Vec<(String, String)>,
    /// Locale used when the request's has no template.
    #[arg(long, env = "OTP_SMS_DEFAULT_LOCALE", default_value = "en")]
    pub default_locale: String,
    /// Give up on one HTTP call after this long (the runtime then retries).
    #[arg(long, env = "OTP_SMS_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

fn parse_template(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((locale, text)) if text.contains("{code}") => {
            Ok((locale.to_string(), text.to_string()))
        }
        _ => Err("must be LOCALE=TEXT, and TEXT must contain {code}".to_string()),
    }
}

/// A US long code's 1 message per second; raise it for toll-free (3) or short codes (100).
pub fn default_limits() -> LimitsConfig {
    LimitsConfig {
        sender_per_second: 1,
        sender_burst: 1,
        recipient_period: None,
    }
}

pub(crate) const BUILT_IN_TEMPLATES: &[(&str, &str)] = &[
    (
        "en",
        "{code} is your verification code. It expires in {minutes} minutes.",
    ),
    (
        "es",
        "{code} es tu código de verificación. Caduca en {minutes} minutos.",
    ),
    (
        "pt",
        "{code} é o seu código de verificação. Expira em {minutes} minutos.",
    ),
    (
        "de",
        "{code} ist dein Bestätigungscode. Er läuft in {minutes} Minuten ab.",
    ),
    (
        "fr",
        "{code} est votre code de vérification. Il expire dans {minutes} minutes.",
    ),
];
