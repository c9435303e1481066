//! `otp-sms-worker`: consumes `otp.code-requests.sms` and delivers through the Twilio Messages
//! API. Everything but the client is `otp-worker`'s.

use clap::Parser;
use otp_channel_sms::{default_limits, SmsArgs, SmsClient};
use otp_worker::cli::{init_logging, run_binary, secret, WorkerArgs};

#[derive(Parser)]
#[command(
    version,
    about = "Delivers one-time codes by SMS (Twilio Messages API)"
)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    sms: SmsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.worker.log_json);
    let client = SmsClient::new(cli.sms, secret("OTP_SMS_AUTH_TOKEN")?)?;
    run_binary(&cli.worker, default_limits(), client).await
}
