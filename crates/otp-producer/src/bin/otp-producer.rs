//! `otp-producer serve`: the HTTP ingress for login systems.

use clap::{Parser, Subcommand};
use otp_kafka::process::{init_logging, phone_hasher, shutdown_signal};
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
    Serve(Box<IngressConfig>),
    /// Manage the apps' API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new API key for an app: prints the key (give it to the login system; it is not
    /// stored anywhere) and, on stderr, the `[[app]]` entry to add to the key file.
    New {
        /// The app's identifier (letters, digits, '.', '_', '-').
        #[arg(long)]
        app: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging(false);
    match Cli::parse().command {
        Command::Serve(mut config) => {
            let hasher = phone_hasher(config.dev)?;
            config.kafka.sealing = Some(otp_kafka::process::keyring(config.dev)?);
            ingress::serve(*config, hasher, shutdown_signal()).await
        }
        Command::Keys {
            command: KeysCommand::New { app },
        } => {
            anyhow::ensure!(
                otp_events::is_valid_app(&app),
                "--app must be 1 to 64 letters, digits, '.', '_' or '-'"
            );
            let (key, entry) = ingress::auth::new_key(&app);
            println!("{key}");
            eprint!("{entry}");
            Ok(())
        }
    }
}
