//! `otp-whatsapp-worker`: consumes `otp.code-requests.whatsapp` and delivers through the
//! WhatsApp Cloud API. Everything but the client is `otp-worker`'s.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Delivers one-time codes over WhatsApp (Cloud API authentication templates)"
)]
struct Cli {
    #[command(flatten)]
    worker: otp_channel_whatsapp::WorkerCli,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().worker.run().await
}
