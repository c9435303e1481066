//! What both worker binaries share: flags, config loading, logging, signals.

use crate::config::WorkerConfig;
use anyhow::Context;
use otp_producer::kafka::KafkaArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags common to `otp-whatsapp-worker` and `otp-sms-worker`. Each overrides the TOML file.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// TOML file with the worker's settings (see README, "Worker configuration").
    #[arg(long, env = "OTP_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Messages handled at once (default 256).
    #[arg(long, env = "OTP_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Provider sends per second for this worker (default: the channel's).
    #[arg(long, env = "OTP_SENDER_RATE")]
    pub sender_rate: Option<u32>,
    /// Consumer group id.
    #[arg(long, env = "OTP_GROUP_ID")]
    pub group_id: Option<String>,
    /// Confirm deliveries by receipt, falling back when none comes within this window
    /// (e.g. `15s`). Needs `otp-receipts` and its tracker; see README, "Delivery receipts".
    #[arg(long, env = "OTP_CONFIRM_WINDOW", value_parser = humantime::parse_duration)]
    pub confirm_window: Option<std::time::Duration>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "OTP_LOG_JSON")]
    pub log_json: bool,
}

impl WorkerArgs {
    /// The file's settings (or the defaults), with the flags applied on top.
    pub fn load(
        &self,
        channel_limits: &crate::limits::LimitsConfig,
    ) -> anyhow::Result<WorkerConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read config file {}", path.display()))?;
                WorkerConfig::from_toml(&text)
                    .with_context(|| format!("config file {}", path.display()))?
            }
            None => WorkerConfig::default(),
        };
        if let Some(listen) = self.metrics_listen {
            config.metrics_listen = Some(listen);
        }
        if let Some(n) = self.max_in_flight {
            config.max_in_flight = n;
        }
        if let Some(group) = &self.group_id {
            config.group_id = Some(group.clone());
        }
        if let Some(window) = self.confirm_window {
            let mut confirmation = config.confirmation.clone().unwrap_or_default();
            confirmation.window = window;
            config.confirmation = Some(confirmation);
        }
        if let Some(rate) = self.sender_rate {
            let mut limits = config
                .limits
                .clone()
                .unwrap_or_else(|| channel_limits.clone());
            limits.sender_per_second = rate;
            config.limits = Some(limits);
        }
        Ok(config)
    }
}

/// Logs to stderr, level from `RUST_LOG` (default info).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown signal received");
}

/// Read a secret from env var `name`, or from the file named by `name_FILE`. Never from the
/// command line (visible in `ps`), never logged.
pub fn secret(name: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(name) {
        if !value.is_empty() {
            return Ok(value);
        }
    }
    let file_var = format!("{name}_FILE");
    if let Ok(path) = std::env::var(&file_var) {
        let value = std::fs::read_to_string(&path)
            .with_context(|| format!("read the secret file named by {file_var}"))?;
        return Ok(value.trim().to_string());
    }
    anyhow::bail!("set {name} or {file_var} (a file holding it)")
}

/// The body of a worker binary's `main` once its channel client is built.
pub async fn run_binary<C: crate::ChannelClient>(
    args: &WorkerArgs,
    default_limits: crate::LimitsConfig,
    client: C,
) -> anyhow::Result<()> {
    let config = args.load(&default_limits)?;
    let (hasher, dev_key) = otp_events::PhoneHasher::from_env();
    if dev_key {
        tracing::warn!("OTP_PHONE_HASH_KEY is not set: using the public development key");
    }
    if config.metrics_listen.is_some() {
        crate::observe::prometheus();
    }
    let setup = crate::WorkerSetup {
        kafka: args.kafka.clone(),
        config,
        default_limits,
        hasher,
    };
    crate::run(setup, client, shutdown_signal()).await
}
