//! `otp-receipts`: the webhook ingress and the confirmation tracker.

use clap::Parser;
use otp_receipts::ReceiptsCommand;

#[derive(Parser)]
#[command(
    version,
    about = "Provider delivery receipts: webhook ingress and confirmation tracker"
)]
struct Cli {
    #[command(subcommand)]
    command: ReceiptsCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().command.run().await
}
