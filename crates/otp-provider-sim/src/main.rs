//! `otp-provider-sim`: both provider APIs on one port, for demos, tests and load runs.

use clap::Parser;
use otp_provider_sim::SimCli;

#[derive(Parser)]
#[command(
    version,
    about = "Simulates the WhatsApp Cloud API and Twilio's Messages API on loopback"
)]
struct Cli {
    #[command(flatten)]
    sim: SimCli,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Cli::parse().sim.run().await
}
