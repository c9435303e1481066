//! The WhatsApp worker as a command: its flags and its `main`, shared by the
//! `otp-whatsapp-worker` binary and `otp worker whatsapp`, so both are the same program.

use crate::{default_limits, WhatsappArgs, WhatsappClient};
use otp_worker::cli::{run_binary, WorkerArgs};

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
        run_binary(
            &self.worker,
            default_limits(),
            "OTP_WHATSAPP_TOKEN",
            |token| WhatsappClient::new(whatsapp, token),
        )
        .await
    }
}
