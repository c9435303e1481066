//! The WhatsApp worker as a command: its flags and its `main`, shared by the
//! `otp-whatsapp-worker` binary and `otp worker whatsapp`, so both are the same program.

use crate::{default_limits, WhatsappArgs, WhatsappClient};
use otp_worker::cli::{init_logging, run_binary, secret, WorkerArgs};

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
        init_logging(self.worker.log_json);
        let client = WhatsappClient::new(self.whatsapp, secret("OTP_WHATSAPP_TOKEN")?)?;
        run_binary(&self.worker, default_limits(), client).await
    }
}
