//! `otp_kafka::producer::Producer` against a real broker (tansu) and against none: every send
//! gets its own delivery report, a failed one too, and the serving thread goes with the last
//! clone.

use futures_util::future::join_all;
use otp_kafka::producer::Producer;
use otp_test_support::{read_messages, shared_broker, TestTopics};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::Mutex;

/// The tests count this process's delivery threads, so they take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn delivery_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "kafka-delivery")
        .count()
}

/// A producer whose broker is a closed port: nothing is ever delivered.
fn nowhere(extra: &[(&str, &str)]) -> Producer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("message.timeout.ms", "500");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    Producer::create(&config).expect("producer")
}

#[tokio::test]
async fn every_send_gets_its_own_delivery_report() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let broker = shared_broker();
    let topics = TestTopics::create(broker, 2).await;
    let topic = topics.topics.dead_letter();
    let producer = Producer::create(&producer_config(&topics)).expect("producer");
    let payloads: Vec<String> = (0..200).map(|i| format!("record {i}")).collect();
    let sends = payloads.iter().enumerate().map(|(i, p)| {
        let key = format!("k{i}");
        let (producer, topic) = (producer.clone(), topic.as_str());
        async move {
            let record = FutureRecord::to(topic).key(&key).payload(p);
            tokio::time::timeout(
                Duration::from_secs(30),
                producer.send(record, Duration::from_secs(5)),
            )
            .await
            .expect("a delivery report within 30 s")
            .expect("delivered")
        }
    });
    let reports = join_all(sends).await;
    let places: HashSet<(i32, i64)> = reports.iter().map(|d| (d.partition, d.offset)).collect();
    assert_eq!(places.len(), 200, "each report names its own record");

    let read = read_messages(&broker.bootstrap(), &topic, 200, Duration::from_secs(30)).await;
    let written: HashSet<Vec<u8>> = read
        .iter()
        .filter_map(|m| m.payload())
        .map(<[u8]>::to_vec)
        .collect();
    let sent: HashSet<Vec<u8>> = payloads.iter().map(|p| p.as_bytes().to_vec()).collect();
    assert_eq!(written, sent);
}

#[tokio::test]
async fn a_failed_delivery_is_reported_to_its_send_with_the_message() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let producer = nowhere(&[]);
    let record = FutureRecord::to("t").key("key").payload("payload");
    let (error, message) = tokio::time::timeout(
        Duration::from_secs(10),
        producer.send(record, Duration::from_secs(1)),
    )
    .await
    .expect("the report comes though nothing is polled by the caller")
    .expect_err("no broker");
    assert_eq!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
    );
    assert_eq!(message.payload(), Some(&b"payload"[..]));
    assert_eq!(message.key(), Some(&b"key"[..]));
}

#[tokio::test]
async fn a_full_queue_is_offered_again_until_the_queue_timeout() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let producer = nowhere(&[
        ("queue.buffering.max.messages", "1"),
        ("message.timeout.ms", "5000"),
    ]);
    let started = std::time::Instant::now();
    let first = producer.send(
        FutureRecord::to("t").key("a").payload("first"),
        Duration::ZERO,
    );
    let second = async {
        // Started once the first holds the queue's only place.
        tokio::task::yield_now().await;
        producer
            .send(
                FutureRecord::to("t").key("b").payload("second"),
                Duration::from_millis(300),
            )
            .await
    };
    let (_, second) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), first),
        tokio::time::timeout(Duration::from_secs(10), second)
    );
    let (error, message) = second
        .expect("given up after its queue timeout")
        .expect_err("full");
    assert_eq!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    );
    assert_eq!(message.payload(), Some(&b"second"[..]));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "offered again until its queue timeout, not refused at once"
    );
}

#[tokio::test]
async fn reports_wake_the_thread_rather_than_wait_for_its_sleep_to_end() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let broker = shared_broker();
    let topics = TestTopics::create(broker, 1).await;
    let topic = topics.topics.dead_letter();
    // Were the thread woken only by the end of its sleep, the first report would take an hour.
    let producer = Producer::with_idle_wait(&producer_config(&topics), Duration::from_secs(3600))
        .expect("producer");
    for i in 0..20 {
        let payload = format!("one after another {i}");
        let record: FutureRecord<'_, (), String> = FutureRecord::to(&topic).payload(&payload);
        tokio::time::timeout(
            Duration::from_secs(30),
            producer.send(record, Duration::from_secs(5)),
        )
        .await
        .expect("reported without waiting for the thread's sleep to end")
        .expect("delivered");
    }
}

#[test]
fn the_delivery_thread_goes_with_the_last_clone() {
    let _turn = ONE_AT_A_TIME.blocking_lock();
    let before = delivery_threads();
    let producer = nowhere(&[]);
    let clone = producer.clone();
    assert_eq!(delivery_threads(), before + 1, "one thread for both clones");
    drop(producer);
    assert_eq!(delivery_threads(), before + 1, "a clone keeps it");
    drop(clone);
    assert_eq!(
        delivery_threads(),
        before,
        "joined when the last clone is dropped"
    );
}

/// The project's producer settings, as every writer of ours has them.
fn producer_config(topics: &TestTopics) -> rdkafka::ClientConfig {
    topics.kafka.to_rdkafka(otp_kafka::KafkaRole::Producer {
        message_timeout: Duration::from_secs(30),
    })
}
