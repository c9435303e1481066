//! The `otp-producer` command (also `otp producer`): `serve` the HTTP ingress, or make an
//! app's API key.

use crate::ingress::{self, IngressConfig};
use clap::Subcommand;
use otp_kafka::process::{init_logging, phone_hasher, shutdown_signal};

#[derive(Debug, Subcommand)]
pub enum ProducerCommand {
    /// Serve POST /v1/code-requests, /healthz and /readyz.
    Serve(Box<IngressConfig>),
    /// Manage the apps' API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new API key for an app: prints the key (give it to the login system; it is not
    /// stored anywhere) and, on stderr, the `[[app]]` entry to add to the key file.
    New {
        /// The app's identifier (letters, digits, '.', '_', '-').
        #[arg(long)]
        app: String,
    },
}

impl ProducerCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            ProducerCommand::Serve(mut config) => {
                config.validate()?;
                if config.check.done("otp-producer serve") {
                    return Ok(());
                }
                init_logging(false);
                let hasher = phone_hasher(config.dev)?;
                config.kafka.sealing = Some(otp_kafka::process::keyring(config.dev)?);
                ingress::serve(*config, hasher, shutdown_signal()).await
            }
            ProducerCommand::Keys {
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
}
