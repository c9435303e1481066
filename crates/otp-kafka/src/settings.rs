//! Kafka connection settings shared by every binary of the project.
//!
//! Production clusters need TLS and SASL, which the project does not model one by one: any
//! librdkafka property can be passed through, by flag (`--kafka-opt security.protocol=SSL`) or
//! by environment (`OTP_KAFKA__SECURITY_PROTOCOL=SSL`), and is applied after our defaults.

use rdkafka::ClientConfig;

/// Prefix of environment variables passed through to librdkafka. After the prefix, `_`
/// becomes `.` and `__` becomes `_`, and the name is lower-cased:
/// `OTP_KAFKA__SASL_MECHANISMS` → `sasl.mechanisms`.
pub const ENV_PASSTHROUGH_PREFIX: &str = "OTP_KAFKA__";

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "OTP_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Extra librdkafka property, `NAME=VALUE`; repeat for more. Also from env `OTP_KAFKA__<NAME>`.
    #[arg(long = "kafka-opt", value_parser = parse_kafka_opt)]
    pub kafka_opts: Vec<(String, String)>,

    /// Prefix put before every topic name (e.g. `staging.`).
    #[arg(long, env = "OTP_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// The keys that seal codes and phone numbers on the topics (`otp_events::Keyring`, from
    /// `OTP_SEAL_KEYS`; see [`crate::process::keyring`]). Every client that writes or reads code
    /// requests takes them from here, so that nothing is written in plaintext by mistake.
    #[arg(skip)]
    pub sealing: Option<otp_events::Keyring>,

    /// The workers' key that proves a fallback was written by a worker or the tracker
    /// (`otp_events::FallbackKey`, from `OTP_FALLBACK_KEY`). Producers do not hold it.
    #[arg(skip)]
    pub fallback_key: Option<otp_events::FallbackKey>,

    /// The keys that authenticate internal records by the role that wrote them
    /// (`otp_events::RecordKeys`, from `OTP_RECORD_KEYS`; see [`crate::process::record_keys`]).
    /// The writer signs what it writes, and readers of internal topics refuse what does not
    /// verify. Producers do not hold them.
    #[arg(skip)]
    pub record_keys: Option<otp_events::RecordKeys>,

    /// The delivery-status contract written: `v1` (the default, while consumers validate
    /// against it) or `v2` (v1 plus `provider`). The provider is in the `otp-provider`
    /// header in both.
    #[arg(long, env = "OTP_STATUS_SCHEMA", default_value = "v1")]
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

    /// A client config with the brokers, then the environment's passthrough settings, then
    /// the flags' (flags win). Callers add their role's defaults *before* calling
    /// [`KafkaArgs::apply_overrides`] so that operators can override them.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// Apply the operator's passthrough settings on top of a role's defaults.
    pub fn apply_overrides(&self, config: &mut ClientConfig) {
        for (name, value) in env_passthrough(std::env::vars()) {
            config.set(name, value);
        }
        for (name, value) in &self.kafka_opts {
            config.set(name, value);
        }
        trust_the_system_cas(config);
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
            let mut config = args.client_config();
            args.apply_overrides(&mut config);
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
        let mut config = args.client_config();
        args.apply_overrides(&mut config);
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
