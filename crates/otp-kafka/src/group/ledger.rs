//! The offset ledger: which positions may be committed. Per partition, everything below the
//! lowest offset still in flight. A message is *finished* when its final status, or its fallback request, was
//! acknowledged by the broker; a slow message holds back the commit of its partition (not the
//! work of the others), so a crash redelivers it instead of losing it.

use super::{Position, TopicPartition};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct OffsetLedger {
    inner: Mutex<HashMap<TopicPartition, Partition>>,
    generations: std::sync::atomic::AtomicU64,
}

/// Which ownership of a partition a message belongs to: a task abandoned when its partition
/// was revoked must not mark an offset of a later ownership finished.
pub type Generation = u64;

#[derive(Default)]
struct Partition {
    generation: Generation,
    /// Offsets in flight, with when each was handed over.
    in_flight: BTreeMap<i64, Instant>,
    /// One past the highest offset received.
    next: i64,
}

impl Partition {
    fn committable(&self) -> i64 {
        self.in_flight
            .first_key_value()
            .map_or(self.next, |(offset, _)| *offset)
    }
}

impl OffsetLedger {
    /// A message of `tp` was handed over; returns the ownership it belongs to.
    pub fn started(&self, tp: &TopicPartition, offset: i64) -> Generation {
        let mut inner = self.inner.lock().expect("offsets lock");
        let p = inner.entry(tp.clone()).or_insert_with(|| Partition {
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Partition::default()
        });
        p.in_flight.entry(offset).or_insert_with(Instant::now);
        p.next = p.next.max(offset + 1);
        p.generation
    }

    /// The message at `offset` is finished: its final word was acknowledged.
    pub fn finished(&self, tp: &TopicPartition, offset: i64, generation: Generation) {
        let mut inner = self.inner.lock().expect("offsets lock");
        if let Some(p) = inner.get_mut(tp) {
            if p.generation == generation {
                p.in_flight.remove(&offset);
            }
        }
    }

    /// The position to commit (next offset to read) of every partition that received
    /// messages, or of `only` those. Positions are offered every time, moved or not, so a
    /// commit that failed at the broker is simply repeated.
    pub fn committable(&self, only: Option<&[TopicPartition]>) -> Vec<Position> {
        let inner = self.inner.lock().expect("offsets lock");
        inner
            .iter()
            .filter(|(key, p)| p.next > 0 && only.is_none_or(|keys| keys.contains(key)))
            .map(|(key, p)| (key.clone(), p.committable()))
            .collect()
    }

    /// How long the oldest message still in flight has been (messages of a partition are
    /// handed over in offset order, so each partition's lowest is its oldest): what an alert
    /// compares with the code life. `None` when nothing is in flight.
    pub fn oldest_unfinished(&self) -> Option<Duration> {
        let inner = self.inner.lock().expect("offsets lock");
        inner
            .values()
            .filter_map(|p| p.in_flight.first_key_value().map(|(_, at)| at.elapsed()))
            .max()
    }

    /// Forget a partition that was given up.
    pub fn remove(&self, key: &TopicPartition) {
        self.inner.lock().expect("offsets lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new("a", partition)
    }

    #[test]
    fn an_abandoned_task_cannot_finish_an_offset_of_a_later_ownership() {
        let t = OffsetLedger::default();
        let old = t.started(&tp(0), 5);
        t.remove(&tp(0)); // revoked, task abandoned
        let new = t.started(&tp(0), 5); // assigned again, redelivered
        t.finished(&tp(0), 5, old); // the abandoned task's last gasp
        assert_eq!(t.committable(None), vec![(tp(0), 5)]);
        t.finished(&tp(0), 5, new);
        assert_eq!(t.committable(None), vec![(tp(0), 6)]);
    }

    #[test]
    fn commits_only_up_to_the_lowest_unfinished_offset() {
        let t = OffsetLedger::default();
        let g = t.started(&tp(0), 10);
        for o in 11..15 {
            t.started(&tp(0), o);
        }
        t.finished(&tp(0), 10, g);
        t.finished(&tp(0), 12, g);
        t.finished(&tp(0), 13, g);
        assert_eq!(t.committable(None), vec![(tp(0), 11)]);
        assert_eq!(
            t.committable(None),
            vec![(tp(0), 11)],
            "offered again: a failed commit is repeated"
        );
        t.finished(&tp(0), 11, g);
        assert_eq!(t.committable(None), vec![(tp(0), 14)]);
        t.finished(&tp(0), 14, g);
        assert_eq!(t.committable(None), vec![(tp(0), 15)]);
    }

    #[test]
    fn partitions_are_independent_and_can_be_selected() {
        let t = OffsetLedger::default();
        t.started(&tp(0), 0);
        let g = t.started(&tp(1), 0);
        t.finished(&tp(1), 0, g);
        let only = [tp(0)];
        assert_eq!(
            t.committable(Some(&only)),
            vec![(tp(0), 0)],
            "held at its unfinished offset"
        );
        let mut all = t.committable(None);
        all.sort();
        assert_eq!(all, vec![(tp(0), 0), (tp(1), 1)]);
    }
}
