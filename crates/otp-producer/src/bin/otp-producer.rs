//! `otp-producer serve`: the HTTP ingress for login systems.

use clap::{Parser, Subcommand};
use otp_events::PhoneHasher;
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
    Serve(IngressConfig),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve(config) = Cli::parse().command;
    let (hasher, dev_key) = PhoneHasher::from_env();
    if dev_key {
        tracing::warn!("OTP_PHONE_HASH_KEY is not set: using the public development key");
    }
    ingress::serve(config, hasher, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
