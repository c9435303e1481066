//! Settings of the confirmation tracker (`otp-receipts track`).

use otp_kafka::process::flag_default;
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
    #[arg(long, default_value = flag_default(otp_events::DEFAULT_MAX_CODE_LIFE), value_parser = humantime::parse_duration)]
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
    /// Messages read and not yet applied, at most: what waits in memory behind the one being
    /// applied.
    #[arg(long, env = "OTP_TRACKER_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// How often the offsets of applied messages are committed.
    #[arg(long, env = "OTP_TRACKER_COMMIT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
    /// How long a revoke may take to be answered (the writes under way settle, offsets are
    /// committed) before the tracker answers anyway and the next owner reads again.
    #[arg(long, env = "OTP_TRACKER_REVOKE_GRACE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub revoke_grace: Duration,
    /// How long the writes under way may take at shutdown (a write is retried until
    /// acknowledged, so this is what bounds them); what is left is read again by the next
    /// owner.
    #[arg(long, env = "OTP_TRACKER_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Serve /metrics and /healthz here.
    #[arg(long, env = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        otp_kafka::process::flag_defaults()
    }
}
