//! Worker settings. Loaded from an optional TOML file (every key optional, unknown keys
//! refused); the binaries' flags and `OTP_*` environment variables override the common ones.

use crate::limits::LimitsConfig;
use crate::retry::RetryConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumer group; all workers of one channel share it. Default: `otp-<channel>-workers`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Messages handled at once across all assigned partitions; at the bound, fetching pauses.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How often finished offsets are committed.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On revoke, how long in-flight work of the revoked partitions may run before it is
    /// abandoned (and redelivered to the new owner).
    #[serde(default = "default_revoke_grace", with = "humantime_serde")]
    pub revoke_grace: Duration,
    /// On SIGTERM/SIGINT, how long in-flight work may run before the worker exits.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Request_ids remembered for duplicate detection.
    #[serde(default = "default_dedup_capacity")]
    pub dedup_capacity: usize,
    /// Longest code life accepted (`expires_at - created_at`).
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Provider rate limits; the channel's defaults when absent.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; not served when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_max_in_flight() -> usize {
    256
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_revoke_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_dedup_capacity() -> usize {
    1_000_000
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(30 * 60)
}

impl Default for WorkerConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl WorkerConfig {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}
