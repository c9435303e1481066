//! Settings of the SMS channel and its providers. Credentials are not among them: Twilio's
//! auth token comes from `OTP_SMS_AUTH_TOKEN` and Vonage's API secret from
//! `OTP_VONAGE_API_SECRET` (or the files their `_FILE` variables name), never from a flag.

use crate::senders::parse_country_sender;
use otp_events::Provider;
use otp_worker::LimitsConfig;
use std::time::Duration;

/// The SMS channel's flags: its providers (each enabled by its account flag) and the message
/// text they share.
#[derive(Debug, Clone, clap::Args)]
pub struct SmsArgs {
    #[command(flatten)]
    pub twilio: TwilioArgs,
    #[command(flatten)]
    pub vonage: VonageArgs,
    /// Message text for a locale, `LOCALE=TEXT` with `{code}` and `{minutes}`; repeatable.
    /// Built in: en, es, pt, de, fr.
    #[arg(long = "body-template", value_parser = parse_template)]
    pub body_templates: Vec<(String, String)>,
    /// Locale used when the request's has no template.
    #[arg(long, env = "OTP_SMS_DEFAULT_LOCALE", default_value = "en")]
    pub default_locale: String,
}

/// Twilio Programmable Messaging; on when `--account-sid` is given.
#[derive(Debug, Clone, clap::Args)]
pub struct TwilioArgs {
    /// Base URL of Twilio's Messages API; point it at `otp-provider-sim` for demos and tests.
    #[arg(
        long,
        env = "OTP_SMS_API_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub api_base_url: String,
    /// Twilio account SID (AC...), also the basic-auth user. Twilio is not used without it.
    #[arg(long, env = "OTP_SMS_ACCOUNT_SID")]
    pub account_sid: Option<String>,
    /// Twilio sender number (E.164). Give this or --messaging-service-sid (or only
    /// --twilio-sender, to send to those countries alone).
    #[arg(long, env = "OTP_SMS_FROM")]
    pub from: Option<String>,
    /// Twilio messaging service (MG...) that picks the sender per destination. Give this or
    /// --from.
    #[arg(long, env = "OTP_SMS_MESSAGING_SERVICE_SID")]
    pub messaging_service_sid: Option<String>,
    /// The Twilio sender (`From`) for one destination country, `CC=SENDER` (ISO 3166-1
    /// alpha-2); repeatable. It wins over --from and --messaging-service-sid there. A
    /// destination with no sender at all is refused without a call, as Twilio would refuse it
    /// (21408: that country's route), so the route's next provider takes it.
    #[arg(long = "twilio-sender", value_parser = parse_country_sender)]
    pub twilio_senders: Vec<(String, String)>,
    /// Public URL of the receipts ingress's Twilio status endpoint; the request_id is added as
    /// a query parameter. No callback is requested when absent.
    #[arg(long, env = "OTP_SMS_STATUS_CALLBACK_URL")]
    pub status_callback_url: Option<String>,
    /// Give up on one Twilio call after this long (the runtime then retries).
    #[arg(long, env = "OTP_SMS_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

/// Vonage Messages API (SMS); on when `--vonage-api-key` is given.
#[derive(Debug, Clone, clap::Args)]
pub struct VonageArgs {
    /// Base URL of Vonage's Messages API (`https://api.nexmo.com`, or a regional host such as
    /// `https://api-eu.vonage.com`); point it at `otp-provider-sim` for demos and tests.
    #[arg(
        long,
        env = "OTP_VONAGE_API_BASE_URL",
        default_value = "https://api.nexmo.com"
    )]
    pub vonage_api_base_url: String,
    /// Vonage API key, the basic-auth user. Vonage is not used without it.
    #[arg(long, env = "OTP_VONAGE_API_KEY")]
    pub vonage_api_key: Option<String>,
    /// Vonage sender: a number (E.164 digits) or an alphanumeric sender id, where the
    /// destination allows one.
    #[arg(long, env = "OTP_VONAGE_FROM")]
    pub vonage_from: Option<String>,
    /// The sender for one destination country, `CC=SENDER` (ISO 3166-1 alpha-2); repeatable.
    /// For countries that need a registered number or sender id of their own.
    #[arg(long = "vonage-sender", value_parser = parse_country_sender)]
    pub vonage_senders: Vec<(String, String)>,
    /// Give up on one Vonage call after this long (the runtime then retries).
    #[arg(long, env = "OTP_VONAGE_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub vonage_request_timeout: Duration,
}

impl Default for VonageArgs {
    fn default() -> Self {
        Self {
            vonage_api_base_url: "https://api.nexmo.com".into(),
            vonage_api_key: None,
            vonage_from: None,
            vonage_senders: Vec::new(),
            vonage_request_timeout: Duration::from_secs(10),
        }
    }
}

fn parse_template(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((locale, text)) if text.contains("{code}") => {
            Ok((locale.to_string(), text.to_string()))
        }
        _ => Err("must be LOCALE=TEXT, and TEXT must contain {code}".to_string()),
    }
}

/// Each SMS provider's documented limits. Twilio: a US long code's 1 message per second
/// (raise it for toll-free, 3, or short codes, 100). Vonage: the Messages API's 30 requests
/// per second per account (raise it to what your account has).
pub fn default_limits() -> Vec<(Provider, LimitsConfig)> {
    vec![
        (
            Provider::Twilio,
            LimitsConfig {
                sender_per_second: 1,
                sender_burst: 1,
                recipient_period: None,
            },
        ),
        (
            Provider::Vonage,
            LimitsConfig {
                sender_per_second: 30,
                sender_burst: 1,
                recipient_period: None,
            },
        ),
    ]
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
