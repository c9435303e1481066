//! Reading topics back in tests, with a plain rdkafka consumer (no consumer group, so nothing
//! a test does can disturb the pipeline's groups).

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use std::time::{Duration, Instant};

fn consumer(bootstrap: &str) -> BaseConsumer {
    consumer_of(bootstrap, "otp-test-reader")
}

/// A consumer that names `group` but never joins it (it only assigns or asks), so the group
/// is not disturbed.
fn consumer_of(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("test consumer")
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    md.topics()[0].partitions().iter().map(|p| p.id()).collect()
}

/// Read `topic` from the beginning until `at_least` messages arrived or `within` passed;
/// returns what arrived (callers assert on the count). Blocking: call from spawn_blocking in
/// async tests, or use [`read_messages`].
pub fn read_messages_blocking(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let consumer = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in partitions(&consumer, topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < at_least && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

pub async fn read_messages(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_messages_blocking(&b, &t, at_least, within))
        .await
        .expect("reader thread")
}

/// Messages ever written to `topic` (sum of high watermarks minus low ones).
/// How many partitions `topic` has: 0 when it does not exist (its metadata names an error or
/// no partitions), so a test can tell a missing topic from an empty one.
pub fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let consumer = consumer(bootstrap);
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len())
}

pub fn message_count(bootstrap: &str, topic: &str) -> i64 {
    let consumer = consumer(bootstrap);
    partitions(&consumer, topic)
        .into_iter()
        .map(|p| {
            let (lo, hi) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            hi - lo
        })
        .sum()
}

/// Payload of a message as JSON (panics with the topic's name when it is not).
pub fn payload_json(m: &OwnedMessage) -> serde_json::Value {
    serde_json::from_slice(m.payload().unwrap_or_default())
        .unwrap_or_else(|e| panic!("message on {} is not JSON: {e}", m.topic()))
}

/// Read `topic` from the beginning, collecting payloads as JSON, until `done` holds for what
/// was collected or `within` passes. Returns what was collected either way; callers assert.
pub async fn collect_json_until(
    bootstrap: &str,
    topic: &str,
    within: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool + Send + 'static,
) -> Vec<serde_json::Value> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&b);
        let mut tpl = TopicPartitionList::new();
        for p in partitions(&consumer, &t) {
            tpl.add_partition_offset(&t, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while !done(&out) && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(payload_json(&m.detach()));
            }
        }
        out
    })
    .await
    .expect("reader thread")
}

/// Wait until consumer group `group` has committed `topic`/`partition` past `offset`, or
/// `within` passes; returns whether it did. For consumers that commit only what they have
/// finished (the confirmation tracker), this is the event that says a message was applied.
pub async fn committed_past(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    within: Duration,
) -> bool {
    let (b, g, t) = (bootstrap.to_string(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = consumer_of(&b, &g);
        let deadline = Instant::now() + within;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&t, partition);
        loop {
            let committed = consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(5))
                .ok()
                .and_then(|c| c.elements().first().and_then(|e| e.offset().to_raw()));
            if committed.is_some_and(|c| c > offset) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // The group commits on its own tick; there is no event to wait on from outside.
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .expect("offset reader thread")
}

/// Where each of `ids` (by the request-id header) sits in `topic`, beside `group`'s committed
/// offset of that partition: a lost request's first question is whether it reached the topic
/// at all, and whether its group committed past it. One line per id.
pub async fn locate_requests(
    bootstrap: &str,
    topic: &str,
    group: &str,
    ids: &[String],
) -> Vec<String> {
    use rdkafka::message::Headers;
    let messages = read_messages(bootstrap, topic, usize::MAX, Duration::from_secs(5)).await;
    let (b, g, t) = (bootstrap.to_string(), group.to_string(), topic.to_string());
    let committed: Vec<(i32, Option<i64>)> = tokio::task::spawn_blocking(move || {
        let consumer = consumer_of(&b, &g);
        let mut tpl = TopicPartitionList::new();
        for p in partitions(&consumer, &t) {
            tpl.add_partition(&t, p);
        }
        consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .map(|c| {
                c.elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw()))
                    .collect()
            })
            .unwrap_or_default()
    })
    .await
    .expect("offset reader thread");
    ids.iter()
        .map(|id| {
            let found = messages.iter().find(|m| {
                m.headers().is_some_and(|h| {
                    h.iter().any(|h| {
                        h.key == otp_events::HEADER_REQUEST_ID && h.value == Some(id.as_bytes())
                    })
                })
            });
            match found {
                None => format!("{id}: not in {topic} ({} messages read)", messages.len()),
                Some(m) => {
                    let done = committed.iter().find(|(p, _)| *p == m.partition());
                    format!(
                        "{id}: {topic} partition {} offset {}; {group} committed {:?}",
                        m.partition(),
                        m.offset(),
                        done.and_then(|(_, o)| *o)
                    )
                }
            }
        })
        .collect()
}
