//! Worker settings. Loaded from an optional TOML file (every key optional, unknown keys
//! refused); the binaries' flags and `OTP_*` environment variables override the common ones.

use crate::circuit::CircuitConfig;
use crate::conversion::ConversionConfig;
use crate::limits::{AbuseConfig, LimitsConfig, LimitsPatch};
use crate::retry::RetryConfig;
use crate::routes::RoutesConfig;
use otp_events::Provider;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumer group; all workers of one channel share it. Default:
    /// `<topic prefix>otp-<channel>-workers`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Static group membership (`group.instance.id`, Kafka's KIP-345): a stable name per
    /// worker process, such as a StatefulSet pod's name. A worker restarted under the same name
    /// takes its partitions back at once, without a rebalance or a wait for the session
    /// timeout. Never give one name to two live processes. Dynamic membership when absent.
    #[serde(default)]
    pub group_instance_id: Option<String>,
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
    /// Longest code life accepted (`expires_at - created_at`); also how far from the worker's
    /// clock `expires_at` may be.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How far ahead of the worker's clock a request's `created_at` may be; later ones are
    /// dead-lettered and `rejected` (server time: a request dated in the future would live past
    /// its code life in the duplicate memory and the tracker).
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Take requests whose phone and code are in plaintext (a producer that does not seal
    /// yet), during a migration only. Default false: they are dead-lettered and `rejected`.
    #[serde(default)]
    pub allow_plaintext_requests: bool,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Rate limits for every provider of the channel: each field given replaces that field of
    /// each provider's defaults, the others stay (see `provider_limits`).
    #[serde(default)]
    pub limits: Option<LimitsPatch>,
    /// Rate limits of one provider (`[provider_limits.vonage]`), applied field by field over
    /// its defaults and `limits`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provider_limits: BTreeMap<Provider, LimitsPatch>,
    /// Which providers each destination country's sends go through; every configured
    /// provider, weight 1 each, when absent.
    #[serde(default)]
    pub routes: RoutesConfig,
    /// Abuse limits (per phone, per number range, per country, premium numbers).
    #[serde(default)]
    pub abuse: AbuseConfig,
    /// When a broken provider (everywhere, or for one country) stops being tried.
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// Receipt-driven confirmation; off when absent. Turn it on only once the provider's
    /// status webhooks reach `otp-receipts` and the confirmation tracker runs: otherwise
    /// every accepted send would fall back when its window ends.
    #[serde(default)]
    pub confirmation: Option<ConfirmationConfig>,
    /// The conversion defence against SMS pumping: number ranges whose codes are not entered
    /// are refused (see `crate::conversion`).
    #[serde(default)]
    pub conversion: ConversionConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; not served when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// When a send is accepted, wait for the provider's receipt before calling it delivered; a
/// failed receipt, or none within the window, hands the request to the next channel.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationConfig {
    /// How long after acceptance a `delivered` receipt may take before the request falls back.
    #[serde(default = "default_confirm_window", with = "humantime_serde")]
    pub window: Duration,
    /// What the next channel needs: the window always ends this long before `expires_at`,
    /// and when less is left at acceptance no fallback is armed (the send is final).
    #[serde(default = "default_fallback_time", with = "humantime_serde")]
    pub fallback_time: Duration,
    /// Whether a send whose receipt does not come within the window falls back to the user's
    /// next channel. Absent: yes for WhatsApp (Meta reports every message's status), no for
    /// SMS providers (carriers' delivery receipts are late or missing in many countries, so
    /// a missing one is no evidence of failure; an SMS-first user would get the code a second
    /// time on WhatsApp). When no, the worker still reports `accepted` and a failed receipt
    /// still falls back; a window that ends without a receipt makes the send final as `sent`
    /// (from the tracker) instead of falling back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_without_receipt: Option<bool>,
}

impl ConfirmationConfig {
    /// Whether a missing receipt of a send through `provider` falls back (see
    /// `fallback_without_receipt`).
    pub fn falls_back_without_receipt(&self, provider: Option<Provider>) -> bool {
        self.fallback_without_receipt.unwrap_or_else(|| {
            provider.is_none_or(|p| p.channel() == otp_events::Channel::Whatsapp)
        })
    }
}

impl Default for ConfirmationConfig {
    fn default() -> Self {
        Self {
            window: default_confirm_window(),
            fallback_time: default_fallback_time(),
            fallback_without_receipt: None,
        }
    }
}

fn default_confirm_window() -> Duration {
    Duration::from_secs(15)
}
fn default_fallback_time() -> Duration {
    Duration::from_secs(10)
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
    otp_events::DEFAULT_MAX_CODE_LIFE
}
fn default_max_clock_skew() -> Duration {
    Duration::from_secs(30)
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

    /// The limits in force for `provider`: its `defaults`, then `limits`, then its own
    /// `provider_limits`, field by field.
    pub fn limits_of(&self, provider: Provider, defaults: &LimitsConfig) -> LimitsConfig {
        let all = self.limits.clone().unwrap_or_default().over(defaults);
        match self.provider_limits.get(&provider) {
            Some(own) => own.over(&all),
            None => all,
        }
    }

    /// The settings as a TOML file that [`WorkerConfig::from_toml`] reads back.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_refuses_unknown_keys() {
        let config = WorkerConfig::from_toml(
            r#"
            max_in_flight = 64
            revoke_grace = "3s"
            metrics_listen = "127.0.0.1:9101"
            [retry]
            safety_margin = "2s"
            [limits]
            sender_per_second = 40
            recipient_period = "6s"
            "#,
        )
        .unwrap();
        assert_eq!(config.max_in_flight, 64);
        assert_eq!(config.revoke_grace, Duration::from_secs(3));
        assert_eq!(config.retry.safety_margin, Duration::from_secs(2));
        assert_eq!(config.retry.max_tries, 5, "unset keys keep their defaults");
        let limits = config.limits.unwrap();
        assert_eq!(limits.sender_per_second, Some(40));
        assert_eq!(
            limits.sender_burst, None,
            "not given: the provider's default"
        );
        assert_eq!(limits.recipient_period, Some(Duration::from_secs(6)));

        let err = WorkerConfig::from_toml("max_in_flite = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_in_flite"), "{err}");
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        let config = WorkerConfig::from_toml(
            r#"
            max_in_flight = 64
            metrics_listen = "127.0.0.1:9101"
            [limits]
            sender_per_second = 40
            recipient_period = "6s"
            [confirmation]
            "#,
        )
        .unwrap();
        let text = config.to_toml().unwrap();
        let again = WorkerConfig::from_toml(&text).unwrap();
        assert_eq!(format!("{again:?}"), format!("{config:?}"), "{text}");
        assert!(text.contains("max_in_flight = 64"), "{text}");
        assert!(text.contains("revoke_grace = \"10s\""), "{text}");
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("# otp-worker.toml")
            .expect("README has the example");
        let text = &readme[start..readme[start..].find("```").unwrap() + start];
        let config = WorkerConfig::from_toml(text).unwrap();
        assert_eq!(config.abuse.per_phone.unwrap().count, 5);
        assert_eq!(config.circuit.cool_down, Duration::from_secs(30));
    }

    /// A TOML that sets only `sender_per_second` keeps WhatsApp's pair period and burst.
    #[test]
    fn limits_merge_field_by_field_over_each_providers_defaults() {
        let whatsapp = LimitsConfig {
            sender_per_second: 80,
            sender_burst: 10,
            recipient_period: Some(Duration::from_secs(6)),
        };
        let config = WorkerConfig::from_toml("[limits]\nsender_per_second = 50").unwrap();
        let merged = config.limits_of(Provider::WhatsappCloud, &whatsapp);
        assert_eq!(merged.sender_per_second, 50);
        assert_eq!(merged.sender_burst, 10);
        assert_eq!(merged.recipient_period, Some(Duration::from_secs(6)));

        let twilio = LimitsConfig {
            sender_per_second: 1,
            sender_burst: 1,
            recipient_period: None,
        };
        let config = WorkerConfig::from_toml(
            "[limits]\nsender_burst = 4\n[provider_limits.vonage]\nsender_per_second = 30",
        )
        .unwrap();
        let vonage = config.limits_of(Provider::Vonage, &twilio);
        assert_eq!((vonage.sender_per_second, vonage.sender_burst), (30, 4));
        let twilio = config.limits_of(Provider::Twilio, &twilio);
        assert_eq!((twilio.sender_per_second, twilio.sender_burst), (1, 4));
        let err = WorkerConfig::from_toml("[provider_limits.sms]\nsender_per_second = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("twilio"), "names the providers: {err}");
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = WorkerConfig::default();
        assert_eq!(c.max_in_flight, 256);
        assert_eq!(c.revoke_grace, Duration::from_secs(10));
        assert_eq!(c.retry.safety_margin, Duration::from_secs(5));
        assert!(c.limits.is_none() && c.metrics_listen.is_none());
        assert!(
            c.confirmation.is_none(),
            "off until webhooks are registered"
        );
        let on = WorkerConfig::from_toml("[confirmation]").unwrap();
        let confirmation = on.confirmation.unwrap();
        assert_eq!(confirmation.window, Duration::from_secs(15));
        assert_eq!(confirmation.fallback_time, Duration::from_secs(10));
    }
}
