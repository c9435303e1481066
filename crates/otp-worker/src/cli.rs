//! What both worker binaries share: flags, config loading, and the start-up of `main`.

use crate::config::WorkerConfig;
use anyhow::Context;
use otp_kafka::process::{
    init_logging, keyring, phone_hasher, shutdown_signal, CheckConfig, DevMode,
};
use otp_kafka::KafkaArgs;
use std::net::SocketAddr;

/// A provider credential from its environment variable, or the file its `_FILE` variable
/// names; never from a flag.
pub use otp_kafka::process::secret;
use std::path::PathBuf;

/// Flags common to `otp-whatsapp-worker` and `otp-sms-worker`. Each overrides the TOML file.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// TOML file with the worker's settings (the fields of `WorkerConfig`; every one optional).
    #[arg(long, env = "OTP_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Messages handled at once (TOML `max_in_flight`).
    #[arg(long, env = "OTP_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Sends per second for the whole fleet, for every provider of the channel (TOML
    /// `limits.sender_per_second`; `provider_limits` still applies over it).
    #[arg(long, env = "OTP_SENDER_RATE")]
    pub sender_rate: Option<u32>,
    /// Consumer group id.
    #[arg(long, env = "OTP_GROUP_ID")]
    pub group_id: Option<String>,
    /// Static group membership: this process's stable name in the group (e.g. the pod name).
    #[arg(long, env = "OTP_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// Confirm deliveries by receipt, falling back when none comes within this window
    /// (e.g. `15s`). Needs `otp-receipts` and its tracker; see crates/otp-receipts/README.md.
    #[arg(long, env = "OTP_CONFIRM_WINDOW", value_parser = humantime::parse_duration)]
    pub confirm_window: Option<std::time::Duration>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "OTP_LOG_JSON")]
    pub log_json: bool,
    /// Print the effective settings (defaults, then the file, then these flags) as TOML, and
    /// exit without connecting to anything.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub check: CheckConfig,
    #[command(flatten)]
    pub dev: DevMode,
}

impl WorkerArgs {
    /// The file's settings (or the defaults), with the flags applied on top.
    pub fn load(&self) -> anyhow::Result<WorkerConfig> {
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
        if let Some(id) = &self.group_instance_id {
            config.group_instance_id = Some(id.clone());
        }
        if let Some(window) = self.confirm_window {
            let mut confirmation = config.confirmation.clone().unwrap_or_default();
            confirmation.window = window;
            config.confirmation = Some(confirmation);
        }
        if let Some(rate) = self.sender_rate {
            config
                .limits
                .get_or_insert_with(Default::default)
                .sender_per_second = Some(rate);
        }
        Ok(config)
    }
}

/// The body of a worker binary's `main`: log, build the channel client from the settings
/// (it reads its providers' credentials, see [`otp_kafka::process::secret`]), and run until
/// SIGTERM or SIGINT. `default_limits` holds each provider's documented limits.
pub async fn run_binary<C: crate::ChannelClient>(
    args: &WorkerArgs,
    default_limits: Vec<(otp_events::Provider, crate::LimitsConfig)>,
    client: impl FnOnce(&WorkerConfig) -> anyhow::Result<C>,
) -> anyhow::Result<()> {
    let mut config = args.load()?;
    if args.check.done("worker") {
        return Ok(());
    }
    if args.print_config {
        // Every provider's limits in force, as a file that reads back the same.
        for (provider, defaults) in &default_limits {
            let limits = config.limits_of(*provider, defaults);
            config
                .provider_limits
                .insert(*provider, crate::limits::LimitsPatch::all_of(&limits));
        }
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    init_logging(args.log_json);
    let client = client(&config)?;
    if config.metrics_listen.is_some() {
        otp_kafka::observe::prometheus();
    }
    let hasher = phone_hasher(args.dev)?;
    let mut kafka = args.kafka.clone();
    kafka.sealing = Some(keyring(args.dev)?);
    kafka.fallback_key = Some(otp_kafka::process::fallback_key(args.dev)?);
    // Writes as a worker; reads the other workers' admissions and the signals of the tracker
    // and the ingress.
    kafka.record_keys = Some(otp_kafka::process::record_keys(
        args.dev,
        &[
            otp_events::Role::Worker,
            otp_events::Role::Tracker,
            otp_events::Role::Ingress,
        ],
    )?);
    let setup = crate::WorkerSetup {
        kafka,
        config,
        default_limits,
        hasher,
    };
    crate::run(setup, client, shutdown_signal()).await
}
