//! `otp-producer serve`: the HTTP ingress for login systems.

use clap::{Parser, Subcommand};
use otp_kafka::process::{init_logging, phone_hasher, shutdown_signal, DevMode};
use otp_producer::ingress::{self, IngressConfig};

#[derive(Parser)]
#[command(
    version,
    about = "HTTP ingress that publishes one-time code requests to Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POST /v1/code-requests, /healthz and /readyz.
    Serve {
        #[command(flatten)]
        config: IngressConfig,
        #[command(flatten)]
        dev: DevMode,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging(false);
    let Command::Serve { config, dev } = Cli::parse().command;
    ingress::serve(config, phone_hasher(dev)?, shutdown_signal()).await
}
