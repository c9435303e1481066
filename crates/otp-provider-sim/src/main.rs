//! `otp-provider-sim`: both provider APIs on one port, for demos, tests and load runs.

use clap::Parser;
use otp_provider_sim::SimConfig;

#[derive(Parser)]
#[command(
    version,
    about = "Simulates the WhatsApp Cloud API and Twilio's Messages API on loopback"
)]
struct Cli {
    #[command(flatten)]
    config: SimConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let config = Cli::parse().config;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "provider simulator listening");
    let app = otp_provider_sim::router(config);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
