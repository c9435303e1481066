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
    /// Graph API version.
    #[arg(long, env = "OTP_WHATSAPP_API_VERSION", default_value = "v21.0")]
    pub api_version: String,
    /// The business phone number's id (the sender).
    #[arg(long, env = "OTP_WHATSAPP_PHONE_NUMBER_ID")]
    pub phone_number_id: String,
    /// Name of the approved authentication template (copy-code button).
    #[arg(long, env = "OTP_WHATSAPP_TEMPLATE", default_value = "otp_login")]
    pub template: String,
    /// Template language when the request has no locale.
    #[arg(long, env = "OTP_WHATSAPP_DEFAULT_LANGUAGE", default_value = "en_US")]
    pub default_language: String,
    /// Give up on one HTTP call after this long (the runtime then retries).
    #[arg(long, env = "OTP_WHATSAPP_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Send a per-message `ttl_seconds` (the code's remaining life, 30 to 900 s). Only Meta's
    /// Direct Send accepts it; on the standard Cloud API the TTL is the template's
    /// `message_send_ttl_seconds`, which should be at most the codes' life.
    #[arg(long, env = "OTP_WHATSAPP_PER_MESSAGE_TTL")]
    pub per_message_ttl: bool,
}

/// Meta's defaults: 80 messages/s per business number, about 1 message per 6 s per user.
pub fn default_limits() -> LimitsConfig {
    LimitsConfig {
        sender_per_second: 80,
        sender_burst: 10,
        recipient_period: Some(Duration::from_secs(6)),
    }
}
