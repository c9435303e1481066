//! Settings of the confirmation tracker (`otp-receipts track`).

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct TrackerConfig {
    /// Consumer group of the trackers; run as many as the topics have partitions.
    #[arg(
        long,
        env = "OTP_TRACKER_GROUP_ID",
        default_value = "otp-confirmation-tracker"
    )]
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a stable name per tracker process (a
    /// StatefulSet pod's name); restarted under it, a tracker takes its partitions back at once.
    /// Never shared by two live processes.
    #[arg(long, env = "OTP_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// How often deadlines are checked.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub tick: Duration,
    /// How long a record is kept after its code expired, for late delivered/read receipts.
    #[arg(long, env = "OTP_TRACKER_KEEP_AFTER_EXPIRY", default_value = "2m", value_parser = humantime::parse_duration)]
    pub keep_after_expiry: Duration,
    /// How long a receipt waits for its pending record (a webhook can beat the worker's
    /// write); then it is counted in `otp_receipts_unmatched_total` and dropped.
    #[arg(long, env = "OTP_TRACKER_ORPHAN_TTL", default_value = "2m", value_parser = humantime::parse_duration)]
    pub orphan_ttl: Duration,
    /// After assignment, deadlines wait until both topics are read back; a read-back longer
    /// than this is logged (the deadlines keep waiting).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_within: Duration,
    /// Longest code life accepted when handing a request on (as the workers' `max_ttl`).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,
    /// How far back delivery times count when comparing providers per country (a provider
    /// slow to deliver against its peers loses weight in the workers' routes there).
    #[arg(long, env = "OTP_TRACKER_SLOW_WINDOW", default_value = "5m", value_parser = humantime::parse_duration)]
    pub slow_window: Duration,
    /// Deliveries each provider needs in a country's window before it is compared.
    #[arg(long, default_value_t = 20)]
    pub slow_min_samples: usize,
    /// How often providers are compared (and a slow one signalled).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub slow_check_every: Duration,
    /// Serve /metrics and /healthz here.
    #[arg(long, env = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: TrackerConfig,
        }
        Wrapper::parse_from(["tracker"]).config
    }
}
