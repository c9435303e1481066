//! Test harness: a real Kafka-protocol broker (tansu) over TCP, and helpers to read topics.
//!
//! Integration tests never talk to a fake of Kafka. [`shared_broker`] starts one tansu process
//! per test binary on a free loopback port with a temporary SQLite store; each test then takes
//! its own topic prefix ([`TestTopics`]) so tests share the broker without seeing each other's
//! messages. Brokers die with the test process (`PR_SET_PDEATHSIG`), even on a panic or abort.

mod broker;
pub mod invariants;
mod read;
mod tls;

pub use broker::{shared_broker, spawn_kept, Storage, TansuBroker};
pub use invariants::{check as check_invariants, Verdict};
pub use read::{
    collect_json_until, committed_past, locate_requests, message_count, partition_count,
    payload_json, read_messages, read_messages_blocking,
};
pub use tls::TlsKafka;

use otp_kafka::KafkaArgs;
use std::sync::atomic::{AtomicU32, Ordering};

/// A test's private set of pipeline topics on a broker.
pub struct TestTopics {
    pub kafka: KafkaArgs,
    pub topics: otp_events::Topics,
}

/// The sealing keys every test process uses (`OTP_SEAL_KEYS` for the binaries it starts).
pub const TEST_SEAL_KEYS: &str =
    "test=74657374207365616c696e67206b657920666f72206f74702d706970656c696e";

/// The workers' fallback-proof key in tests (`OTP_FALLBACK_KEY` for the binaries they start).
pub const TEST_FALLBACK_KEY: &str = "test-fallback-key";

/// The record keys of every role in tests (`OTP_RECORD_KEYS` for the binaries they start).
pub const TEST_RECORD_KEYS: &str =
    "worker:tw=7465737420776f726b6572207265636f7264206b657920666f72206f74702d70,\
tracker:tt=74657374207472616365722072656f636f7264206b657920666f72206f74702d,\
ingress:ti=7465737420696e6772657373207265636f7264206b657920666f72206f74702d";

/// [`TEST_RECORD_KEYS`] as keys.
pub fn test_record_keys() -> otp_events::RecordKeys {
    otp_events::RecordKeys::parse(TEST_RECORD_KEYS).expect("the test record keys are valid")
}

/// Settings for `bootstrap` with the test keys, as a production service holds them: codes and
/// numbers sealed, fallbacks proven, internal records signed.
pub fn test_kafka(bootstrap: impl Into<String>) -> KafkaArgs {
    let mut kafka = KafkaArgs::new(bootstrap);
    kafka.sealing = Some(test_keyring());
    kafka.fallback_key = Some(otp_events::FallbackKey::new(TEST_FALLBACK_KEY.as_bytes()));
    kafka.record_keys = Some(test_record_keys());
    kafka
}

/// [`TEST_SEAL_KEYS`] as a keyring.
pub fn test_keyring() -> otp_events::Keyring {
    otp_events::Keyring::parse(TEST_SEAL_KEYS).expect("the test keyring is valid")
}

/// What every client of an in-memory tansu writes with: one record per batch. tansu 0.6's
/// in-memory store answers a fetch with the batches whose *first* offset is at or past the one
/// asked for, so a consumer that resumes from an offset inside a batch (a group member taking
/// over a partition whose last owner committed mid-batch, as ours do: they commit what they
/// finished) never sees the rest of that batch. Kafka, and tansu on SQLite, return the whole
/// batch. With one record per batch no offset is inside one. `tests/faults.rs` keeps a check
/// that the defect is still there (`tansu_memory_skips_the_rest_of_a_batch`).
pub const ONE_RECORD_PER_BATCH: [&str; 2] = ["batch.num.messages", "1"];

impl TestTopics {
    /// Create the pipeline's topics under a prefix no other test in this process uses.
    pub async fn create(broker: &TansuBroker, partitions: i32) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "t{}-{}.",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut kafka = test_kafka(broker.bootstrap());
        kafka.topic_prefix = prefix;
        if broker.storage() == Storage::Memory {
            kafka
                .kafka_opts
                .push(ONE_RECORD_PER_BATCH.map(String::from).into());
        }
        let topics = kafka.topics();
        otp_kafka::admin::create_topics(&kafka, &topics.all(), partitions, 1)
            .await
            .expect("create test topics on tansu");
        Self { kafka, topics }
    }

    /// Write raw bytes to `topic`, as a producer outside our libraries would (no validation,
    /// no sealing, no headers); returns where they landed.
    pub async fn publish_raw(&self, topic: &str, key: &str, payload: &[u8]) -> (i32, i64) {
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .create()
            .expect("a raw producer");
        let delivered = producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key(key)
                    .payload(payload),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("raw publish to {topic}: {e}"));
        (delivered.partition, delivered.offset)
    }

    /// Write a record with these headers to `topic`, as a client outside our services would.
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> (i32, i64) {
        let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .create()
            .expect("a raw producer");
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (name, value) in headers {
            h = h.insert(rdkafka::message::Header {
                key: name,
                value: Some(*value),
            });
        }
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(h);
        let delivered = producer
            .send(record, std::time::Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("publish to {topic}: {e}"));
        (delivered.partition, delivered.offset)
    }

    /// Write `request` to its current channel's topic sealed with these topics' keys, as a
    /// producer writing straight to Kafka would: no validation, no fallback proof.
    pub async fn publish_request_raw(&self, request: &otp_events::CodeRequest) -> (i32, i64) {
        let rules = otp_events::Rules {
            sealing: self.kafka.sealing.clone(),
            ..otp_events::Rules::default()
        };
        let channel = request.current_channel().expect("an untried channel");
        let topic = self.topics.requests(channel);
        self.publish_raw(
            &topic,
            "raw",
            &rules.encode_request(request).expect("sealable"),
        )
        .await
    }

    /// A publisher writing to these topics, with the default settings.
    pub fn publisher(&self, hasher: otp_events::PhoneHasher) -> otp_kafka::CodeRequestPublisher {
        let config = otp_kafka::PublisherConfig {
            topics: self.topics.clone(),
            ..otp_kafka::PublisherConfig::default()
        };
        otp_kafka::CodeRequestPublisher::new(
            &self.kafka,
            config,
            self.kafka.credentials(hasher).unwrap(),
        )
        .expect("a publisher for the test topics")
    }
}
