//! `otp-whatsapp-worker`: consumes `otp.code-requests.whatsapp` and delivers through the
//! WhatsApp Cloud API. Everything but the client is `otp-worker`'s.

use clap::Parser;
use otp_channel_whatsapp::{default_limits, WhatsappArgs, WhatsappClient};
use otp_worker::cli::{init_logging, run_binary, secret, WorkerArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Delivers one-time codes over WhatsApp (Cloud API authentication templates)"
)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    whatsapp: WhatsappArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.worker.log_json);
    let client = WhatsappClient::new(cli.whatsapp, secret("OTP_WHATSAPP_TOKEN")?)?;
    run_binary(&cli.worker, default_limits(), client).await
}
