//! `otp-producer serve`: the HTTP ingress for login systems.

use clap::Parser;
use otp_producer::cli::ProducerCommand;

#[derive(Parser)]
#[command(
    version,
    about = "HTTP ingress that publishes one-time code requests to Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: ProducerCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().command.run().await
}
