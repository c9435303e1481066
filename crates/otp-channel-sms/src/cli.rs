//! The SMS worker as a command: its flags and its `main`, shared by the `otp-sms-worker`
//! binary and `otp worker sms`, so both are the same program.

use crate::{default_limits, SmsArgs, SmsClient};
use otp_worker::cli::{run_binary, WorkerArgs};

/// Delivers one-time codes by SMS (Twilio and Vonage Messages APIs).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerCli {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub sms: SmsArgs,
}

impl WorkerCli {
    /// Log, build the client (credentials from `OTP_SMS_AUTH_TOKEN[_FILE]` for Twilio and
    /// `OTP_VONAGE_API_SECRET[_FILE]` for Vonage), run until SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let sms = self.sms;
        run_binary(&self.worker, default_limits(), |_| SmsClient::from_env(sms)).await
    }
}
