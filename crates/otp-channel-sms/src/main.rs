//! `otp-sms-worker`: consumes `otp.code-requests.sms` and delivers through the Twilio Messages
//! API. Everything but the client is `otp-worker`'s.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Delivers one-time codes by SMS (Twilio Messages API)"
)]
struct Cli {
    #[command(flatten)]
    worker: otp_channel_sms::WorkerCli,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().worker.run().await
}
