//! Reading a partition back after it is assigned: its deadlines wait until the tracker has
//! read both topics (pending records and receipts) as far as they stood at assignment, since a
//! decision on a half-read partition could fall back for a user already confirmed.
//!
//! Where the topics stand (their high watermarks, and the receipts' committed offset) is asked
//! of the broker in the background ([`look_up`]), so that a broker slow to answer never holds
//! up the tracker's loop: deadlines of other partitions, revokes and shutdown go on. Until the
//! answer comes, the partition counts as not read back; what it reads meanwhile is remembered,
//! so an answer that arrives after the partition was already read that far finds it ready.

use otp_kafka::group::GroupConsumer;
use rdkafka::consumer::Consumer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the background lookup keeps asking before it gives up.
pub const LOOK_UP_WITHIN: Duration = Duration::from_secs(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition being read back.
pub struct CatchUp {
    /// Topic → the offset that must be read before the partition is ready; `None` while the
    /// broker has not said yet.
    targets: Option<HashMap<String, i64>>,
    /// Topic → the highest offset read so far.
    read: HashMap<String, i64>,
    pub since: Instant,
    pub warned: bool,
}

/// What the lookup found for one topic of a partition: the offset to read up to (`None`:
/// nothing to read back, or the broker never answered).
pub type Found = (String, Option<i64>);

impl CatchUp {
    pub fn new(now: Instant) -> Self {
        Self {
            targets: None,
            read: HashMap::new(),
            since: now,
            warned: false,
        }
    }

    /// `offset` of `topic` was read. True when that makes the partition ready.
    pub fn seen(&mut self, topic: &str, offset: i64) -> bool {
        let read = self.read.entry(topic.to_string()).or_insert(offset);
        *read = (*read).max(offset);
        self.settle()
    }

    /// The broker's answer. True when the partition is ready.
    pub fn found(&mut self, found: Vec<Found>) -> bool {
        self.targets = Some(
            found
                .into_iter()
                .filter_map(|(topic, target)| Some((topic, target?)))
                .collect(),
        );
        self.settle()
    }

    /// Whether `topic` may still hold records to read back (unknown counts as yes).
    pub fn behind_on(&self, topic: &str) -> bool {
        self.targets.as_ref().is_none_or(|t| t.contains_key(topic))
    }

    pub fn describe(&self) -> String {
        match &self.targets {
            None => "waiting for the broker to say where the topics stand".into(),
            Some(t) => format!("reading back up to {t:?}, read {:?}", self.read),
        }
    }

    fn settle(&mut self) -> bool {
        let Some(targets) = &mut self.targets else {
            return false;
        };
        let read = &self.read;
        targets.retain(|topic, target| read.get(topic).is_none_or(|r| r + 1 < *target));
        targets.is_empty()
    }
}

/// Ask where `topics` stand for `partition`: per topic, the offset to read up to before the
/// partition is ready, if any (the high watermark, when there is something after the committed
/// offset). Blocking, bounded by [`LOOK_UP_WITHIN`]: run it in `spawn_blocking`.
pub fn look_up(consumer: Arc<GroupConsumer>, topics: Vec<String>, partition: i32) -> Vec<Found> {
    let deadline = Instant::now() + LOOK_UP_WITHIN;
    topics
        .into_iter()
        .map(|topic| {
            let (low, high) = loop {
                match consumer.fetch_watermarks(&topic, partition, CALL_TIMEOUT) {
                    Ok(w) => break w,
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(%topic, partition, error = %e, "watermarks unavailable; retrying");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => {
                        tracing::error!(%topic, partition, error = %e, "watermarks unavailable for 5 minutes; the partition's deadlines go live without its read-back");
                        return (topic, None);
                    }
                }
            };
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            let committed = consumer
                .committed_offsets(tpl, CALL_TIMEOUT)
                .ok()
                .and_then(|c| c.elements().first().and_then(|e| e.offset().to_raw()))
                .filter(|o| *o >= 0)
                .unwrap_or(low);
            let target = (high > committed.max(low)).then_some(high);
            (topic, target)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(pending: Option<i64>, receipts: Option<i64>) -> Vec<Found> {
        vec![("p".into(), pending), ("r".into(), receipts)]
    }

    #[test]
    fn not_ready_until_the_broker_answers_then_until_read_that_far() {
        let mut c = CatchUp::new(Instant::now());
        assert!(!c.seen("p", 3), "no answer yet");
        assert!(
            c.behind_on("p") && c.behind_on("r"),
            "unknown counts as behind"
        );
        assert!(!c.found(found(Some(10), Some(5))));
        assert!(c.behind_on("p") && c.behind_on("r"));
        assert!(!c.seen("r", 4), "receipts read up to their target");
        assert!(!c.behind_on("r"));
        assert!(c.seen("p", 9), "and the records: ready");
    }

    #[test]
    fn an_answer_after_the_partition_was_read_that_far_finds_it_ready() {
        let mut c = CatchUp::new(Instant::now());
        c.seen("p", 20);
        c.seen("r", 7);
        assert!(
            c.found(found(Some(12), Some(8))),
            "read past both targets already"
        );
    }

    #[test]
    fn nothing_to_read_back_is_ready_at_once() {
        let mut c = CatchUp::new(Instant::now());
        assert!(c.found(found(None, None)));
    }
}
