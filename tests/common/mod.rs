//! Shared by the end-to-end tests: a real tansu broker, the simulator on loopback, in-process
//! workers built like the binaries, and checks on the status topic.

#![allow(dead_code)]

pub mod dashboard;

use otp::stack::{sms_client, whatsapp_client, Worker};
use otp_events::{Channel, PhoneHasher, Submission};
use otp_producer::CodeRequestPublisher;
use otp_provider_sim::{SimConfig, SimHandle};
use otp_test_support::{collect_json_until, shared_broker, TestTopics};
use otp_worker::{LimitsConfig, WorkerConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

pub const HASH_KEY: &[u8] = b"e2e-key";

pub struct Stack {
    pub t: TestTopics,
    pub sim: SimHandle,
    pub publisher: CodeRequestPublisher,
}

/// Limits far above any test's load, so only tests about limits meet them.
pub fn open_limits() -> LimitsConfig {
    LimitsConfig {
        sender_per_second: 10_000,
        sender_burst: 1_000,
        recipient_period: None,
    }
}

/// A simulator whose sender limits are far above the tests' loads; the pair limit stays.
pub fn roomy_sim() -> SimConfig {
    SimConfig {
        whatsapp_rate: 10_000,
        whatsapp_burst: 10_000,
        sms_rate: 10_000,
        sms_burst: 10_000,
        ..SimConfig::default()
    }
}

/// Worker settings for tests: fast retries, a small safety margin, quick commits.
pub fn test_config() -> WorkerConfig {
    let mut c = WorkerConfig::default();
    c.retry.initial_delay = Duration::from_millis(20);
    c.retry.max_delay = Duration::from_millis(200);
    c.retry.safety_margin = Duration::from_secs(1);
    c.commit_interval = Duration::from_millis(200);
    c.revoke_grace = Duration::from_secs(5);
    c.shutdown_grace = Duration::from_secs(10);
    // Tests send many codes to one number range; the abuse tests switch these back on.
    c.abuse.per_phone = None;
    c.abuse.per_prefix = None;
    c
}

impl Stack {
    pub async fn start(partitions: i32, sim: SimConfig) -> Self {
        let t = TestTopics::create(shared_broker(), partitions).await;
        let sim = otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), sim)
            .await
            .unwrap();
        let publisher = t.publisher(PhoneHasher::new(HASH_KEY));
        Self { t, sim, publisher }
    }

    pub fn worker(&self, channel: Channel, config: WorkerConfig) -> Worker {
        let hasher = PhoneHasher::new(HASH_KEY);
        match channel {
            Channel::Whatsapp => Worker::start(
                &self.t.kafka,
                config,
                open_limits(),
                hasher,
                whatsapp_client(&self.sim),
            ),
            Channel::Sms => Worker::start(
                &self.t.kafka,
                config,
                open_limits(),
                hasher,
                sms_client(&self.sim),
            ),
        }
    }

    /// Both workers with test settings.
    pub fn workers(&self) -> Vec<Worker> {
        vec![
            self.worker(Channel::Whatsapp, test_config()),
            self.worker(Channel::Sms, test_config()),
        ]
    }

    pub async fn publish(&self, phone: &str, code: &str, channels: &[Channel]) -> String {
        let s = Submission::new(phone, code, channels.to_vec(), chrono::Duration::minutes(5));
        self.publisher.publish(s).await.unwrap()
    }

    /// Publish a request on `channel` and wait for its final status: from then on the
    /// channel's worker has joined its group and is consuming.
    pub async fn warm_up(&self, channel: Channel) {
        let phone = format!("+1555999{:04}", rand_suffix());
        let id = self.publish(&phone, "0000", &[channel]).await;
        let statuses = self
            .statuses_until_final(std::slice::from_ref(&id), Duration::from_secs(60))
            .await;
        exactly_one_final(&statuses, &id);
    }

    /// Statuses read back until `done` says they are enough (or `within` passes).
    pub async fn statuses_until(
        &self,
        within: Duration,
        done: impl Fn(&[Value]) -> bool + Send + 'static,
    ) -> Vec<Value> {
        collect_json_until(
            &self.t.kafka.brokers,
            &self.t.topics.delivery_status(),
            within,
            done,
        )
        .await
    }

    /// Statuses read back until each of `ids` has a final one (or `within` passes).
    pub async fn statuses_until_final(&self, ids: &[String], within: Duration) -> Vec<Value> {
        let ids = ids.to_vec();
        collect_json_until(
            &self.t.kafka.brokers,
            &self.t.topics.delivery_status(),
            within,
            move |got| {
                ids.iter().all(|id| {
                    got.iter()
                        .any(|s| s["request_id"] == id.as_str() && s["final"] == true)
                })
            },
        )
        .await
    }
}

/// Statuses grouped by request_id, in topic order.
pub fn by_request(statuses: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for s in statuses {
        out.entry(s["request_id"].as_str().unwrap().to_string())
            .or_default()
            .push(s.clone());
    }
    out
}

/// The statuses of `id`, as (status, channel) pairs.
pub fn story(statuses: &[Value], id: &str) -> Vec<(String, String)> {
    statuses
        .iter()
        .filter(|s| s["request_id"] == id)
        .map(|s| {
            (
                s["status"].as_str().unwrap().to_string(),
                s["channel"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn exactly_one_final(statuses: &[Value], id: &str) -> Value {
    let finals = distinct_events(statuses, |s| s["request_id"] == id && s["final"] == true);
    assert_eq!(
        finals.len(),
        1,
        "request {id}: {} final statuses in {statuses:#?}",
        finals.len()
    );
    finals[0].clone()
}

/// The one final status of `id`, asserted to be `status` on `channel`.
pub fn final_is(statuses: &[Value], id: &str, status: &str, channel: &str) -> Value {
    let fin = exactly_one_final(statuses, id);
    assert_eq!(
        (fin["status"].as_str(), fin["channel"].as_str()),
        (Some(status), Some(channel)),
        "request {id}: {fin}"
    );
    fin
}

/// The statuses matching `keep`, one per `event_id`. The status topic is at least once: a
/// write whose acknowledgement was lost is written again, with the same `event_id`, and
/// analysts drop such replays by it (the contract says so). A second *decision* has an
/// `event_id` of its own and is still counted.
pub fn distinct_events(statuses: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<&Value> {
    let mut seen = std::collections::HashSet::new();
    statuses
        .iter()
        .filter(|s| keep(s))
        .filter(|s| seen.insert(s["event_id"].as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Every status validates against the schema and holds no phone number or code.
pub fn assert_valid_and_private(statuses: &[Value], secrets: &[&str]) {
    let v1 = include_str!("../../schemas/delivery-status.v1.json");
    assert_valid_against_and_private(v1, statuses, secrets)
}

/// Every status validates against `schema` (a delivery-status schema's text) and holds no
/// phone number or code.
pub fn assert_valid_against_and_private(schema: &str, statuses: &[Value], secrets: &[&str]) {
    let schema: Value = serde_json::from_str(schema).unwrap();
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    for s in statuses {
        let errors: Vec<String> = validator.iter_errors(s).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "status {s} breaks the schema: {errors:?}"
        );
        let text = s.to_string();
        for secret in secrets {
            let digits = secret.trim_start_matches('+');
            assert!(!text.contains(digits), "status leaks a secret: {text}");
        }
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The sum of a metric's series whose labels include `label` (e.g. `topic="..."`), in the
/// Prometheus text of this process; `None` when it has none.
pub fn metric_total(text: &str, name: &str, label: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Wait until this process's metric `name`, over the series labelled `label`, reaches
/// `at_least`; panics with the metrics text after `within`. Metrics are polled, not pushed,
/// so this looks every 100 ms.
pub async fn metric_reaches(name: &str, label: &str, at_least: f64, within: Duration) -> f64 {
    let prometheus = otp_kafka::observe::prometheus();
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = prometheus.render();
        if let Some(v) = metric_total(&text, name, label).filter(|v| *v >= at_least) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}{{{label}}} did not reach {at_least} within {within:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
