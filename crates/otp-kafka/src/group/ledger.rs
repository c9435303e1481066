//! The offset ledger: which positions may be committed. Per partition, everything below the
//! lowest offset still in flight. A message is *finished* when its final status, or its fallback
//! request, was acknowledged by the broker; a slow message holds back the commit of its
//! partition (not the work of the others), so a crash redelivers it instead of losing it.
//!
//! What is finished beyond the position goes with it, in the commit's metadata ([`beyond`]):
//! a partition's next owner is handed those offsets ([`OffsetLedger::inherit`]) and skips their
//! messages ([`OffsetLedger::already_finished`]) rather than doing their work again.

use super::{beyond, Position, TopicPartition};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Offsets finished above the lowest in flight (this ownership's), and those a previous
    /// owner's commit named that have not been received yet; at most [`beyond::MAX_NAMED`]
    /// of this ownership's (past that, a finished offset is not noted: it would be handled
    /// again after a move, as without notes).
    finished: BTreeSet<i64>,
    /// One past the highest offset received (or the committed position inherited).
    next: i64,
}

impl Partition {
    /// The lowest offset not finished: the lowest in flight, or the next to be received; past
    /// any that are finished already.
    fn position(&self) -> i64 {
        let mut at = self
            .in_flight
            .first_key_value()
            .map_or(self.next, |(offset, _)| *offset);
        while self.finished.contains(&at) {
            at += 1;
        }
        at
    }

    /// Drop the finished offsets the position has passed (its commit covers them), except
    /// inherited ones not received yet: their messages must still be recognised when they come.
    fn prune(&mut self) {
        let keep_from = self.position().min(self.next);
        self.finished = self.finished.split_off(&keep_from);
    }
}

impl OffsetLedger {
    fn partition<'a>(
        &self,
        inner: &'a mut HashMap<TopicPartition, Partition>,
        tp: &TopicPartition,
    ) -> &'a mut Partition {
        inner.entry(tp.clone()).or_insert_with(|| Partition {
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Partition::default()
        })
    }

    /// A newly assigned partition's committed position and its note of what a previous owner
    /// finished beyond it: those offsets count as finished (they are skipped, and named again
    /// in this owner's commits until its position passes them).
    pub fn inherit(&self, tp: &TopicPartition, position: i64, note: &str) {
        let finished = beyond::decode(position, note);
        if finished.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("offsets lock");
        let p = self.partition(&mut inner, tp);
        p.next = p.next.max(position);
        p.finished.extend(finished);
        p.prune();
    }

    /// Whether the message at `offset` was finished by a previous owner (named in its commit):
    /// then it counts as received and finished here too, and must not be handled again.
    pub fn already_finished(&self, tp: &TopicPartition, offset: i64) -> bool {
        let mut inner = self.inner.lock().expect("offsets lock");
        let Some(p) = inner.get_mut(tp) else {
            return false;
        };
        if !p.finished.contains(&offset) {
            return false;
        }
        p.next = p.next.max(offset + 1);
        p.prune();
        true
    }

    /// A message of `tp` was handed over; returns the ownership it belongs to.
    pub fn started(&self, tp: &TopicPartition, offset: i64) -> Generation {
        let mut inner = self.inner.lock().expect("offsets lock");
        let p = self.partition(&mut inner, tp);
        p.finished.remove(&offset); // handed over again: in flight until it is finished again
        p.in_flight.entry(offset).or_insert_with(Instant::now);
        p.next = p.next.max(offset + 1);
        p.generation
    }

    /// The message at `offset` is finished: its final word was acknowledged.
    pub fn finished(&self, tp: &TopicPartition, offset: i64, generation: Generation) {
        let mut inner = self.inner.lock().expect("offsets lock");
        if let Some(p) = inner.get_mut(tp) {
            if p.generation == generation && p.in_flight.remove(&offset).is_some() {
                if p.finished.len() < beyond::MAX_NAMED as usize {
                    p.finished.insert(offset);
                }
                p.prune();
            }
        }
    }

    /// The position to commit (next offset to read) of every partition that received
    /// messages, or of `only` those, with a note of what is finished beyond it. Positions are
    /// offered every time, moved or not, so a commit that failed at the broker is simply
    /// repeated.
    pub fn committable(&self, only: Option<&[TopicPartition]>) -> Vec<Position> {
        let inner = self.inner.lock().expect("offsets lock");
        inner
            .iter()
            .filter(|(key, p)| p.next > 0 && only.is_none_or(|keys| keys.contains(key)))
            .map(|(key, p)| {
                let offset = p.position();
                Position {
                    partition: key.clone(),
                    offset,
                    note: beyond::encode(offset, &p.finished),
                }
            })
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

    /// A position with nothing finished beyond it.
    fn at(partition: i32, offset: i64) -> Position {
        Position {
            partition: tp(partition),
            offset,
            note: String::new(),
        }
    }

    #[test]
    fn an_abandoned_task_cannot_finish_an_offset_of_a_later_ownership() {
        let t = OffsetLedger::default();
        let old = t.started(&tp(0), 5);
        t.remove(&tp(0)); // revoked, task abandoned
        let new = t.started(&tp(0), 5); // assigned again, redelivered
        t.finished(&tp(0), 5, old); // the abandoned task's last gasp
        assert_eq!(t.committable(None), vec![at(0, 5)]);
        t.finished(&tp(0), 5, new);
        assert_eq!(t.committable(None), vec![at(0, 6)]);
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
        assert_eq!(
            t.committable(None),
            vec![Position {
                note: "otp-finished@11=1-2".into(),
                ..at(0, 11)
            }],
            "12 and 13 are named finished beyond it"
        );
        assert_eq!(
            t.committable(None)[0].offset,
            11,
            "offered again: a failed commit is repeated"
        );
        t.finished(&tp(0), 11, g);
        assert_eq!(t.committable(None), vec![at(0, 14)]);
        t.finished(&tp(0), 14, g);
        assert_eq!(t.committable(None), vec![at(0, 15)]);
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
            vec![at(0, 0)],
            "held at its unfinished offset"
        );
        let mut all = t.committable(None);
        all.sort();
        assert_eq!(all, vec![at(0, 0), at(1, 1)]);
    }

    #[test]
    fn a_new_owner_skips_what_the_last_one_finished_beyond_its_position() {
        let t = OffsetLedger::default();
        // The last owner committed 20, with 21-22 and 25 finished beyond it.
        t.inherit(&tp(0), 20, "otp-finished@20=1-2,5");
        assert!(!t.already_finished(&tp(0), 20), "20 is handled");
        let g = t.started(&tp(0), 20);
        assert!(t.already_finished(&tp(0), 21));
        assert!(t.already_finished(&tp(0), 22));
        assert_eq!(
            t.committable(None),
            vec![Position {
                note: "otp-finished@20=1-2,5".into(),
                ..at(0, 20)
            }],
            "named again while 20 is unfinished, so a second move skips them too"
        );
        t.finished(&tp(0), 20, g);
        assert_eq!(
            t.committable(None),
            vec![Position {
                note: "otp-finished@23=2".into(),
                ..at(0, 23)
            }],
            "the position passes what is finished; 25 is still named"
        );
        assert!(!t.already_finished(&tp(0), 23));
        assert!(t.already_finished(&tp(0), 25));
    }

    #[test]
    fn a_note_not_ours_skips_nothing_and_a_given_up_partition_forgets_its_note() {
        let t = OffsetLedger::default();
        t.inherit(&tp(0), 20, "written by another tool");
        assert!(!t.already_finished(&tp(0), 21));
        t.inherit(&tp(1), 0, "otp-finished@0=1");
        t.remove(&tp(1));
        assert!(!t.already_finished(&tp(1), 1));
    }

    #[test]
    fn a_message_handed_over_again_is_in_flight_not_finished() {
        let t = OffsetLedger::default();
        let g = t.started(&tp(0), 0);
        t.started(&tp(0), 1);
        t.finished(&tp(0), 1, g);
        assert!(t.already_finished(&tp(0), 1), "finished beyond 0");
        t.started(&tp(0), 1);
        t.finished(&tp(0), 0, g);
        assert_eq!(t.committable(None), vec![at(0, 1)]);
    }

    #[test]
    fn inherited_offsets_are_kept_until_received_though_the_position_passed_them() {
        let t = OffsetLedger::default();
        t.inherit(&tp(0), 20, "otp-finished@20=1-2");
        let g = t.started(&tp(0), 20);
        // 20 finishes before 21 and 22 arrive: the position passes them...
        t.finished(&tp(0), 20, g);
        assert_eq!(t.committable(None), vec![at(0, 23)]);
        // ...and they are still known when they come.
        assert!(t.already_finished(&tp(0), 21));
        assert!(t.already_finished(&tp(0), 22));
        assert!(!t.already_finished(&tp(0), 23));
        assert_eq!(t.committable(None), vec![at(0, 23)], "never backwards");
    }
}
