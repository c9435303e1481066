//! Production Kafka: every managed Kafka speaks TLS. Against a Kafka that speaks only TLS, with
//! its own certificate authority (tansu behind a TLS-terminating proxy that it advertises,
//! `otp_test_support::TlsKafka`): the `otp` binary creates the topics, the library publishes
//! a code request, and a worker delivers it, each given the settings an operator passes
//! (`--kafka-opt` / `KafkaArgs::kafka_opts`).

mod common;

use common::{open_limits, roomy_sim, test_config};
use otp::stack::{sms_client, Worker};
use otp_events::{Channel, PhoneHasher, Submission};
use otp_test_support::{payload_json, test_kafka, TestTopics, TlsKafka};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_publish_and_delivery_over_tls_only_kafka() {
    let tls = TlsKafka::start();
    let brokers = tls.bootstrap();

    // The broker speaks nothing but TLS: a plaintext client gets no metadata.
    let plain: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("log_level", "0")
        .create()
        .unwrap();
    assert!(
        plain.fetch_metadata(None, Duration::from_secs(3)).is_err(),
        "a plaintext client read metadata from the TLS-only listener"
    );

    // The binary, with the settings as an operator writes them.
    let prefix = format!("tls{}.", std::process::id());
    let mut topics_create = Command::new(env!("CARGO_BIN_EXE_otp"));
    topics_create.args([
        "topics",
        "create",
        "--brokers",
        &brokers,
        "--topic-prefix",
        &prefix,
        "--partitions",
        "1",
        "--replication-factor",
        "1",
    ]);
    for (name, value) in tls.client_opts() {
        topics_create.args(["--kafka-opt", &format!("{name}={value}")]);
    }
    let out = topics_create.output().unwrap();
    assert!(
        out.status.success(),
        "otp topics create over TLS: {}\n{}\nbroker: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tls.log_tail(2000)
    );

    // Without the CA, the same command is refused: the certificate is checked.
    let mut untrusted = Command::new(env!("CARGO_BIN_EXE_otp"));
    untrusted.args([
        "topics",
        "create",
        "--brokers",
        &brokers,
        "--topic-prefix",
        "untrusted.",
        "--replication-factor",
        "1",
        "--kafka-opt",
        "security.protocol=SSL",
        "--kafka-opt",
        "socket.timeout.ms=3000",
    ]);
    let out = untrusted.output().unwrap();
    assert!(
        !out.status.success(),
        "a client that does not trust the broker's CA created topics"
    );

    let mut kafka = test_kafka(&brokers);
    kafka.topic_prefix = prefix;
    kafka.kafka_opts = tls.client_opts();
    let t = TestTopics {
        topics: kafka.topics(),
        kafka,
    };

    let sim = otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), roomy_sim())
        .await
        .unwrap();
    let hasher = PhoneHasher::new(common::HASH_KEY);
    let worker = Worker::start(
        &t.kafka,
        test_config(),
        open_limits(),
        hasher.clone(),
        sms_client(&sim),
    );
    let publisher = t.publisher(hasher);
    let submission = Submission::new(
        "+15551230001",
        "482913",
        vec![Channel::Sms],
        chrono::Duration::minutes(5),
    );
    let id = publisher.publish(submission).await.unwrap();

    let statuses = read_until_final(&t, &id, Duration::from_secs(60)).await;
    let last = statuses.last().cloned().unwrap_or_default();
    assert_eq!(
        (last["status"].as_str(), last["final"].as_bool()),
        (Some("sent"), Some(true)),
        "request {id} over TLS: {statuses:#?}"
    );
    let sent: Vec<_> = sim
        .messages()
        .into_iter()
        .filter(|m| m.to == "+15551230001")
        .collect();
    assert_eq!(sent.len(), 1, "one send reached the provider: {sent:?}");
    assert_eq!(sent[0].code, "482913");
    worker.stop().await.unwrap();
}

/// The statuses of `id`, read over TLS with the pipeline's own client settings, until a final
/// one arrives.
async fn read_until_final(t: &TestTopics, id: &str, within: Duration) -> Vec<serde_json::Value> {
    let config = t.kafka.to_rdkafka(otp_kafka::KafkaRole::Reader {
        name: "tls-test-reader",
    });
    let topic = t.topics.delivery_status();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + within;
        let mut out: Vec<serde_json::Value> = Vec::new();
        while Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let status = payload_json(&m.detach());
                if status["request_id"] == id.as_str() {
                    let done = status["final"] == true;
                    out.push(status);
                    if done {
                        break;
                    }
                }
            }
        }
        out
    })
    .await
    .unwrap()
}
