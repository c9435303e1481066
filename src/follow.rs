//! Reading the status topic back, from the start of every partition: what `otp demo` and
//! `otp load` know of each request. The consumer has no group, so following never takes
//! partitions from anyone and never commits.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use serde_json::Value;
use std::time::Duration;

pub struct StatusFollower {
    consumer: BaseConsumer,
}

impl StatusFollower {
    /// Assign every partition of `topic` from its beginning.
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "otp-status-follower")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions(&consumer, topic)? {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer })
    }

    /// The next status event, or None when none arrived within `timeout`. Blocks the thread.
    pub fn next(&self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(m)) => Ok(Some(serde_json::from_slice(
                m.payload().unwrap_or_default(),
            )?)),
        }
    }
}

pub fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32))
}

/// Messages currently in `topic` (high minus low watermark, summed over partitions).
pub fn count_messages(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut n = 0;
    for p in 0..partitions(&consumer, topic)? {
        let (lo, hi) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        n += hi - lo;
    }
    Ok(n)
}
