//! The simulator's settings (flags of `otp-provider-sim`).

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9400")]
    pub listen: SocketAddr,
    /// Added to every answer.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Random extra latency, uniform between 0 and this.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency_jitter: Duration,
    /// WhatsApp sender throughput limit (messages/s); over it: error 130429.
    #[arg(long, default_value_t = 80)]
    pub whatsapp_rate: u32,
    #[arg(long, default_value_t = 80)]
    pub whatsapp_burst: u32,
    /// WhatsApp pair rate limit: one message per this period per recipient; over it: 131056.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub whatsapp_pair_period: Duration,
    /// SMS sender rate (messages/s) and burst. A message over it is still accepted (201,
    /// `queued`) and waits in the sender's queue; its status callbacks come as much later
    /// (Twilio, "Error 21611": Twilio queues messages at the sender's rate). Each such message
    /// counts as an `sms_sender` rate limit violation.
    #[arg(long, default_value_t = 100)]
    pub sms_rate: u32,
    #[arg(long, default_value_t = 100)]
    pub sms_burst: u32,
    /// Most messages that may wait in the SMS sender's queue; past it a send with `From` gets
    /// HTTP 400 / 21611, one with only a `MessagingServiceSid` is accepted and then `failed`
    /// with 30001 (Twilio, "Error 21611"). Default: 10 hours at `--sms-rate`, Twilio's limit.
    #[arg(long)]
    pub sms_queue_capacity: Option<u64>,
    /// Most SMS API requests in progress at once; past it: HTTP 429 / 20429 (Twilio, "Error
    /// 20429": too many concurrent requests).
    #[arg(long, default_value_t = 100)]
    pub sms_max_concurrent: u32,
    /// Random WhatsApp errors, `CODE=PROBABILITY` (e.g. `131000=0.05`); repeatable.
    #[arg(long = "whatsapp-error", value_parser = parse_mix)]
    pub whatsapp_errors: Vec<(i64, f64)>,
    /// Random SMS errors, `CODE=PROBABILITY` (e.g. `30005=0.05`); repeatable. A delivery error
    /// (30001-30010, 30032, 30034, 30036) is not an answer: the message is accepted and its
    /// status callback reports it; any other code answers the send.
    #[arg(long = "sms-error", value_parser = parse_mix)]
    pub sms_errors: Vec<(i64, f64)>,
    /// The languages the authentication template is approved in, as Meta spells them; a send
    /// in any other gets 132001 (Meta, "Message templates": a template is sent only in a
    /// language it is approved in).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "en_US,en_GB,de,fr,es,es_MX,pt_BR,it,nl"
    )]
    pub whatsapp_template_languages: Vec<String>,
    /// Bearer token the WhatsApp API accepts.
    #[arg(long, default_value = "sim-token")]
    pub whatsapp_token: String,
    /// Account SID and auth token the SMS API accepts.
    #[arg(long, default_value = "ACsim")]
    pub sms_account_sid: String,
    #[arg(long, default_value = "sim-auth-token")]
    pub sms_auth_token: String,
    /// Vonage API key and secret the Vonage Messages API accepts (basic auth).
    #[arg(long, default_value = crate::VONAGE_API_KEY)]
    pub vonage_api_key: String,
    #[arg(long, default_value = crate::VONAGE_API_SECRET)]
    pub vonage_api_secret: String,
    /// The signature secret that signs Vonage's webhooks (HS256 JWT).
    #[arg(long, default_value = crate::VONAGE_SIGNATURE_SECRET)]
    pub vonage_signature_secret: String,
    /// Where Vonage status webhooks go (the Vonage application's status URL); none when
    /// absent.
    #[arg(long)]
    pub vonage_webhook_url: Option<String>,
    /// Vonage Messages API requests per second before it answers 429 (1000, throttled).
    #[arg(long, default_value_t = 30)]
    pub vonage_rate: u32,
    /// Where WhatsApp status webhooks go (Meta's app-level callback URL); none when absent.
    /// SMS status callbacks go to each message's own `StatusCallback`.
    #[arg(long)]
    pub whatsapp_webhook_url: Option<String>,
    /// The app secret that signs WhatsApp webhooks (`X-Hub-Signature-256`).
    #[arg(long, default_value = "sim-app-secret")]
    pub whatsapp_app_secret: String,
    /// After acceptance, when `delivered` is reported (and `read` as long again after it).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub receipt_delay: Duration,
    /// After acceptance, when a staged `failed` receipt is reported.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub receipt_failure_delay: Duration,
    /// WhatsApp `failed` status webhooks leave out `biz_opaque_callback_data` (Meta, "Status
    /// messages webhook reference" documents it on sent, delivered and read only); the flag
    /// `--whatsapp-failed-callback-data` puts it in.
    #[arg(
        long = "whatsapp-failed-callback-data",
        action = clap::ArgAction::SetFalse
    )]
    pub whatsapp_failed_without_callback_data: bool,
    /// Probability that a webhook is never sent (lost).
    #[arg(long, default_value_t = 0.0)]
    pub receipt_loss: f64,
    /// Probability that a webhook is sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub receipt_duplication: f64,
    /// Probability that a message's statuses are reported together, in reverse order, in
    /// one call at the time of the last (WhatsApp batches statuses; SMS gets them one by one,
    /// reversed).
    #[arg(long, default_value_t = 0.0)]
    pub receipt_reorder: f64,
}

impl SimConfig {
    /// The SMS sender queue's capacity: the flag, or 10 hours at the sender's rate (Twilio,
    /// "Error 21611": "Messages can only be queued for 10 hours").
    pub fn effective_sms_queue_capacity(&self) -> u64 {
        self.sms_queue_capacity
            .unwrap_or(36_000 * u64::from(self.sms_rate.max(1)))
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: SimConfig,
        }
        Wrapper::parse_from(["sim"]).config
    }
}

fn parse_mix(s: &str) -> Result<(i64, f64), String> {
    let (code, p) = s.split_once('=').ok_or("must be CODE=PROBABILITY")?;
    let code = code.parse().map_err(|_| "CODE must be an integer")?;
    let p: f64 = p.parse().map_err(|_| "PROBABILITY must be a number")?;
    if !(0.0..=1.0).contains(&p) {
        return Err("PROBABILITY must be between 0 and 1".into());
    }
    Ok((code, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: SimConfig,
    }

    #[test]
    fn new_flags_and_their_defaults() {
        let d = SimConfig::default();
        assert!(d.whatsapp_failed_without_callback_data);
        assert_eq!(d.sms_max_concurrent, 100);
        assert_eq!(d.sms_queue_capacity, None);
        // 10 hours at the default 100/s.
        assert_eq!(d.effective_sms_queue_capacity(), 3_600_000);

        let c = Cli::parse_from([
            "sim",
            "--whatsapp-failed-callback-data",
            "--sms-queue-capacity",
            "5",
            "--sms-max-concurrent",
            "7",
            "--sms-error",
            "30005=0.1",
        ])
        .config;
        assert!(!c.whatsapp_failed_without_callback_data);
        assert_eq!(c.effective_sms_queue_capacity(), 5);
        assert_eq!(c.sms_max_concurrent, 7);
        assert_eq!(c.sms_errors, vec![(30005, 0.1)]);
    }
}
