//! Settings of the WhatsApp channel. The access token is not among them: it comes from
//! `OTP_WHATSAPP_TOKEN` or the file named by `OTP_WHATSAPP_TOKEN_FILE`, never from a flag.

use otp_worker::LimitsConfig;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct WhatsappArgs {
    /// Base URL of the Graph API; point it at `otp-provider-sim` for demos and tests.
    #[arg(
        long,
        env = "OTP_WHATSAPP_API_BASE_URL",
        default_value = "https://graph.facebook.com"
    )]
    pub api_base_url: String,
    /// Graph API version. Meta retires each version on a calendar (about two years after its
    /// successor came out; v21.0 is available until 2027-01-21, "Graph API changelog"): move
    /// to a newer one before the one in use is retired.
    #[arg(long, env = "OTP_WHATSAPP_API_VERSION", default_value = "v24.0")]
    pub api_version: String,
    /// The business phone number's id (the sender).
    #[arg(long, env = "OTP_WHATSAPP_PHONE_NUMBER_ID")]
    pub phone_number_id: String,
    /// Name of the approved authentication template (copy-code button).
    #[arg(long, env = "OTP_WHATSAPP_TEMPLATE", default_value = "otp_login")]
    pub template: String,
    /// The template's default language, as Meta spells it: used when a request's locale has
    /// no approved language. A refusal (132001) in it means the channel is broken.
    #[arg(long, env = "OTP_WHATSAPP_DEFAULT_LANGUAGE", default_value = "en_US")]
    pub default_language: String,
    /// The languages the template is approved in, comma-separated, exactly as Meta spells them
    /// (`en_US,de,fr,pt_BR`). A request's locale is mapped to one of them (exact, bare
    /// language, regional default) or else to the default language; no other is ever asked for.
    #[arg(
        long,
        env = "OTP_WHATSAPP_TEMPLATE_LANGUAGES",
        value_delimiter = ',',
        default_value = "en_US"
    )]
    pub template_languages: Vec<String>,
    /// How long a language Meta refused (132001) is not asked for again; its users get the
    /// default language meanwhile.
    #[arg(long, env = "OTP_WHATSAPP_LANGUAGE_HOLD", default_value = "1h", value_parser = humantime::parse_duration)]
    pub language_hold: Duration,
    /// The template's time-to-live (`message_send_ttl_seconds`, set when the template is
    /// created: 30 s to 15 min for authentication templates). Declared here so the worker can
    /// warn, at start, when codes may live longer: WhatsApp may then deliver a code after it
    /// expired. Per-message TTLs are Meta's Direct Send only, so none is sent.
    #[arg(long, env = "OTP_WHATSAPP_TEMPLATE_TTL", value_parser = humantime::parse_duration)]
    pub template_ttl: Option<Duration>,
    /// Give up on one HTTP call after this long (the runtime then retries).
    #[arg(long, env = "OTP_WHATSAPP_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl WhatsappArgs {
    /// The defaults, with the two settings that have none.
    pub fn new(api_base_url: &str, phone_number_id: &str) -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: WhatsappArgs,
        }
        let mut args = Wrapper::parse_from(["whatsapp", "--phone-number-id", phone_number_id]).args;
        args.api_base_url = api_base_url.to_string();
        args
    }
}

/// Meta's defaults: 80 messages/s per business number, about 1 message per 6 s per user.
pub fn default_limits() -> LimitsConfig {
    LimitsConfig {
        sender_per_second: 80,
        sender_burst: 10,
        recipient_period: Some(Duration::from_secs(6)),
    }
}
