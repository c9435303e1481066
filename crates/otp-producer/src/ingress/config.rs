//! Settings of the HTTP ingress (`otp-producer serve`).

use otp_kafka::KafkaArgs;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct IngressConfig {
    /// Address to listen on.
    #[arg(long, env = "OTP_INGRESS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, env = "OTP_INGRESS_BODY_LIMIT", default_value_t = 16 * 1024)]
    pub body_limit: usize,

    /// Longest time one request may take, reading its body included; a slower client gets
    /// 408. Keep it above `--ack-timeout`.
    #[arg(long, env = "OTP_INGRESS_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Requests handled at once; more wait (within their timeout), so a flood cannot take
    /// unbounded memory.
    #[arg(long, env = "OTP_INGRESS_MAX_CONCURRENT", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// How long to wait for the broker's acknowledgement before answering 503.
    #[arg(long, env = "OTP_INGRESS_ACK_TIMEOUT", default_value = otp_kafka::process::flag_default(otp_kafka::DEFAULT_ACK_TIMEOUT), value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,

    /// Longest allowed life of a code (`expires_at - created_at`).
    #[arg(long, env = "OTP_MAX_TTL", default_value = otp_kafka::process::flag_default(otp_events::DEFAULT_MAX_CODE_LIFE), value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// The apps' API keys and quotas: a TOML file of `[[app]]` entries holding each key's
    /// SHA-256 (see `otp-producer keys new`). Without it the ingress refuses to start, unless
    /// `--dev`.
    #[arg(long, env = "OTP_INGRESS_API_KEYS")]
    pub api_keys: Option<std::path::PathBuf>,

    /// Serve `/metrics` here (Prometheus), apart from the public listener; keep it internal.
    #[arg(long, env = "OTP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    #[command(flatten)]
    pub dev: otp_kafka::process::DevMode,

    #[command(flatten)]
    pub check: otp_kafka::process::CheckConfig,

    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl IngressConfig {
    /// The flags' defaults, listening on `listen`, for tests and embedding.
    pub fn new(listen: SocketAddr, kafka: KafkaArgs) -> Self {
        let mut config: Self = otp_kafka::process::flag_defaults();
        config.listen = listen;
        config.kafka = kafka;
        config
    }

    /// Settings that cannot work together, named.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.request_timeout > self.ack_timeout,
            "--request-timeout ({:?}) must be above --ack-timeout ({:?}): a request would time \
             out before the broker could acknowledge it",
            self.request_timeout,
            self.ack_timeout
        );
        anyhow::ensure!(self.body_limit > 0, "--body-limit must be above 0");
        anyhow::ensure!(
            self.max_concurrent_requests > 0,
            "--max-concurrent-requests must be above 0"
        );
        Ok(())
    }
}
