//! The WhatsApp worker as a command: its flags and its `main`, shared by the
//! `otp-whatsapp-worker` binary and `otp worker whatsapp`, so both are the same program.

use crate::{default_limits, WhatsappArgs, WhatsappClient};
use otp_worker::cli::{run_binary, WorkerArgs};
use std::time::Duration;

/// Delivers one-time codes over WhatsApp (Cloud API authentication templates).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerCli {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub whatsapp: WhatsappArgs,
}

impl WorkerCli {
    /// Log, build the client (token from `OTP_WHATSAPP_TOKEN[_FILE]`), run until SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let whatsapp = self.whatsapp;
        let defaults = vec![(otp_events::Provider::WhatsappCloud, default_limits())];
        run_binary(&self.worker, defaults, |config| {
            warn_if_codes_outlive_the_template(config.max_ttl, whatsapp.template_ttl);
            WhatsappClient::new(whatsapp, otp_worker::cli::secret("OTP_WHATSAPP_TOKEN")?)
        })
        .await
    }
}

/// WhatsApp tries to deliver a template message for the template's TTL
/// (`message_send_ttl_seconds`, fixed when the template is created), whatever the code's life.
/// Say once, at start, when the two disagree: a template TTL above the longest code life can
/// deliver a code after it expired; a code life above the template TTL lets WhatsApp give up
/// on a code that is still valid (receipt-driven fallback then covers it).
fn warn_if_codes_outlive_the_template(max_code_life: Duration, template_ttl: Option<Duration>) {
    match template_ttl {
        Some(ttl) if ttl > max_code_life => tracing::warn!(
            ?max_code_life,
            template_ttl = ?ttl,
            "the template's TTL is longer than the longest code life: WhatsApp may deliver a \
             code after it expired; set message_send_ttl_seconds at or below max_ttl"
        ),
        Some(ttl) if max_code_life > ttl => tracing::warn!(
            ?max_code_life,
            template_ttl = ?ttl,
            "codes may live longer than the template's TTL: WhatsApp gives up on a code that \
             is still valid; turn on delivery confirmation so such codes fall back to SMS"
        ),
        Some(_) => {}
        None => tracing::info!(
            "template TTL not declared (--template-ttl): keep the template's \
             message_send_ttl_seconds at or below the codes' life"
        ),
    }
}
