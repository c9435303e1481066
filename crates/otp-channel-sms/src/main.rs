//! `otp-sms-worker`: consumes `otp.code-requests.sms` and delivers through Twilio's and
//! Vonage's Messages APIs, routed per destination country. Everything but the clients is
//! `otp-worker`'s.

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Delivers one-time codes by SMS (Twilio and Vonage Messages APIs)"
)]
struct Cli {
    #[command(flatten)]
    worker: otp_channel_sms::WorkerCli,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().worker.run().await
}
