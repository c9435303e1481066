//! Kafka connection settings shared by every binary of the project.
//!
//! Production clusters need TLS and SASL, which the project does not model one by one: any
//! librdkafka property can be passed through, by flag (`--kafka-opt security.protocol=SSL`) or
//! by environment (`OTP_KAFKA__SECURITY_PROTOCOL=SSL`), and is applied after our defaults.

use rdkafka::ClientConfig;
use std::time::Duration;

/// Prefix of environment variables passed through to librdkafka. After the prefix, `_`
/// becomes `.` and `__` becomes `_`, and the name is lower-cased:
/// `OTP_KAFKA__SASL_MECHANISMS` → `sasl.mechanisms`.
pub const ENV_PASSTHROUGH_PREFIX: &str = "OTP_KAFKA__";

/// Where the brokers are and how to reach them; with the `service` feature, also the flags and
/// environment every binary reads them from.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "service", derive(clap::Args))]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[cfg_attr(
        feature = "service",
        arg(long, env = "OTP_KAFKA_BROKERS", default_value = "127.0.0.1:9092")
    )]
    pub brokers: String,

    /// Extra librdkafka property, `NAME=VALUE`; repeat for more. Also from env `OTP_KAFKA__<NAME>`.
    #[cfg_attr(feature = "service", arg(long = "kafka-opt", value_parser = parse_kafka_opt))]
    pub kafka_opts: Vec<(String, String)>,

    /// Prefix put before every topic name (e.g. `staging.`).
    #[cfg_attr(
        feature = "service",
        arg(long, env = "OTP_TOPIC_PREFIX", default_value = "")
    )]
    pub topic_prefix: String,

    /// The keys that seal codes and phone numbers on the topics (`otp_events::Keyring`, from
    /// `OTP_SEAL_KEYS`; see `otp_kafka::process::keyring`). Every client that writes or reads code
    /// requests takes them from here, so that nothing is written in plaintext by mistake.
    #[cfg_attr(feature = "service", arg(skip))]
    pub sealing: Option<otp_events::Keyring>,

    /// The workers' key that proves a fallback was written by a worker or the tracker
    /// (`otp_events::FallbackKey`, from `OTP_FALLBACK_KEY`). Producers do not hold it.
    #[cfg_attr(feature = "service", arg(skip))]
    pub fallback_key: Option<otp_events::FallbackKey>,

    /// The keys that authenticate internal records by the role that wrote them
    /// (`otp_events::RecordKeys`, from `OTP_RECORD_KEYS`; see `otp_kafka::process::record_keys`).
    /// The writer signs what it writes, and readers of internal topics refuse what does not
    /// verify. Producers do not hold them.
    #[cfg_attr(feature = "service", arg(skip))]
    pub record_keys: Option<otp_events::RecordKeys>,

    /// The delivery-status contract written: `v1` (the default, while consumers validate
    /// against it) or `v2` (v1 plus `provider`). The provider is in the `otp-provider`
    /// header in both.
    #[cfg_attr(
        feature = "service",
        arg(long, env = "OTP_STATUS_SCHEMA", default_value = "v1")
    )]
    pub status_schema: otp_events::StatusVersion,
}

impl KafkaArgs {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            kafka_opts: Vec::new(),
            topic_prefix: String::new(),
            sealing: None,
            fallback_key: None,
            record_keys: None,
            status_schema: otp_events::StatusVersion::V1,
        }
    }

    pub fn topics(&self) -> otp_events::Topics {
        otp_events::Topics::with_prefix(self.topic_prefix.clone())
    }

    /// The librdkafka settings of a client in `role`: the brokers, the role's defaults, then
    /// the environment's passthrough settings, then the flags' (flags win). Every Kafka client
    /// of the project is configured here, so an operator's `--kafka-opt` reaches them all and
    /// has the last word.
    pub fn to_rdkafka(&self, role: KafkaRole<'_>) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        role.apply(&mut config, &self.topic_prefix);
        self.apply_overrides(&mut config);
        config
    }

    /// Apply the operator's passthrough settings on top of a role's defaults.
    fn apply_overrides(&self, config: &mut ClientConfig) {
        for (name, value) in env_passthrough(std::env::vars()) {
            config.set(name, value);
        }
        for (name, value) in &self.kafka_opts {
            config.set(name, value);
        }
        trust_the_system_cas(config);
    }
}

/// What a Kafka client is for. Each role's defaults are stated here, once.
#[derive(Debug, Clone, Copy)]
pub enum KafkaRole<'a> {
    /// An idempotent producer (`acks=all`): each message is stored once and acknowledged by
    /// every in-sync replica, or reported failed within `message_timeout` (librdkafka's
    /// `message.timeout.ms`, so that nothing is delivered after its sender was told it failed).
    Producer { message_timeout: Duration },
    /// A member of consumer group `group` that stores and commits its offsets itself (only
    /// what is finished), reads a new group from the start, and lets a crashed member's
    /// partitions move after 10 s rather than Kafka's 45 s (a code lives minutes and its user
    /// is waiting). Prefetch is bounded at 1,000 messages a partition (`queued.min.messages`;
    /// librdkafka's 100,000 took a whole backlog of small requests in, with the fetch buffers
    /// and a 200-byte op per message) and at 8 MiB of payload in all
    /// (`queued.max.messages.kbytes`), so memory does not grow with the backlog; a partition
    /// whose queue is full asks again after 10 ms (`fetch.queue.backoff.ms`; librdkafka's 1 s
    /// would leave a fast worker idle).
    ///
    /// With `instance_id` the member is *static* (`group.instance.id`, KIP-345): a process
    /// restarted under the same id (a StatefulSet pod's name) takes its partitions back with
    /// no rebalance, if it is back within the session timeout; two live processes must never
    /// share one.
    Member {
        group: &'a str,
        instance_id: Option<&'a str>,
        /// `partition.assignment.strategy`: `cooperative-sticky` or `range,roundrobin`.
        assignment: &'a str,
    },
    /// A reader that assigns its partitions itself and commits nothing (the fleet's shared
    /// feedback, `otp report`). librdkafka wants a group for `assign()`; the reader's
    /// `name` (after the topic prefix) is one that is never joined.
    Reader { name: &'a str },
    /// Topic administration and metadata.
    Admin,
}

impl KafkaRole<'_> {
    fn apply(&self, config: &mut ClientConfig, topic_prefix: &str) {
        match *self {
            KafkaRole::Producer { message_timeout } => {
                config
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", "2")
                    .set(
                        "message.timeout.ms",
                        message_timeout.as_millis().to_string(),
                    );
            }
            KafkaRole::Member {
                group,
                instance_id,
                assignment,
            } => {
                if let Some(id) = instance_id {
                    config.set("group.instance.id", id);
                }
                config
                    .set("group.id", group)
                    .set("partition.assignment.strategy", assignment)
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("session.timeout.ms", "10000")
                    .set("heartbeat.interval.ms", "3000")
                    .set("queued.min.messages", "1000")
                    .set("queued.max.messages.kbytes", "8192")
                    .set("fetch.queue.backoff.ms", "10");
            }
            KafkaRole::Reader { name } => {
                config
                    .set("client.id", name)
                    .set("group.id", format!("{topic_prefix}{name}"))
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "false")
                    .set("auto.offset.reset", "latest")
                    .set("fetch.wait.max.ms", "100");
            }
            KafkaRole::Admin => {}
        }
    }
}

/// Over TLS, with no CA given, verify the broker against the system's CA certificates.
/// OpenSSL is built into this binary with its own configuration directory, where no CA is
/// installed: without this, a managed Kafka's public certificate would not verify.
/// librdkafka's `probe` looks in the standard places (`/etc/ssl/certs/ca-certificates.crt`,
/// ...). An operator's `ssl.ca.location` or `ssl.ca.pem` wins.
fn trust_the_system_cas(config: &mut ClientConfig) {
    let tls = config
        .get("security.protocol")
        .is_some_and(|p| p.to_ascii_uppercase().ends_with("SSL"));
    let ca_given = config.get("ssl.ca.location").is_some() || config.get("ssl.ca.pem").is_some();
    if tls && !ca_given {
        config.set("ssl.ca.location", "probe");
    }
}

#[cfg(any(feature = "service", test))]
fn parse_kafka_opt(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err("must be NAME=VALUE, e.g. security.protocol=SSL".to_string()),
    }
}

fn env_passthrough(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.filter_map(|(k, v)| {
        let name = k.strip_prefix(ENV_PASSTHROUGH_PREFIX)?;
        let name = name
            .to_ascii_lowercase()
            .replace("__", "\u{0}")
            .replace('_', ".")
            .replace('\u{0}', "_");
        (!name.is_empty()).then_some((name, v))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_map_to_librdkafka_properties() {
        let vars = vec![
            (
                "OTP_KAFKA__SECURITY_PROTOCOL".to_string(),
                "SSL".to_string(),
            ),
            ("OTP_KAFKA__SSL__KEY".to_string(), "x".to_string()),
            ("OTP_KAFKA_BROKERS".to_string(), "ignored".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        assert_eq!(
            env_passthrough(vars.into_iter()),
            vec![
                ("security.protocol".to_string(), "SSL".to_string()),
                ("ssl_key".to_string(), "x".to_string()),
            ]
        );
    }

    #[test]
    fn over_tls_the_system_cas_are_trusted_unless_a_ca_is_given() {
        let with = |opts: &[(&str, &str)]| {
            let mut args = KafkaArgs::new("b:9093");
            args.kafka_opts = opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let config = args.to_rdkafka(KafkaRole::Admin);
            config.get("ssl.ca.location").map(str::to_string)
        };
        assert_eq!(with(&[("security.protocol", "SSL")]), Some("probe".into()));
        assert_eq!(
            with(&[("security.protocol", "sasl_ssl")]),
            Some("probe".into())
        );
        assert_eq!(
            with(&[("security.protocol", "SSL"), ("ssl.ca.location", "/ca.pem")]),
            Some("/ca.pem".into())
        );
        assert_eq!(with(&[("security.protocol", "PLAINTEXT")]), None);
        assert_eq!(with(&[]), None);
        // This build's librdkafka takes it: a TLS client is made (nothing connects yet).
        let mut args = KafkaArgs::new("127.0.0.1:1");
        args.kafka_opts = vec![("security.protocol".into(), "SSL".into())];
        let config = args.to_rdkafka(KafkaRole::Admin);
        let client: Result<rdkafka::consumer::BaseConsumer, _> = config.create();
        assert!(client.is_ok(), "{:?}", client.err());
    }

    #[test]
    fn kafka_opt_needs_name_and_value() {
        assert_eq!(
            parse_kafka_opt("a.b=c=d").unwrap(),
            ("a.b".to_string(), "c=d".to_string())
        );
        assert!(parse_kafka_opt("novalue").is_err());
        assert!(parse_kafka_opt("=x").is_err());
    }
}
