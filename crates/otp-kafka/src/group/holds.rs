//! Partitions a member keeps from being fetched until it releases them, whatever the
//! in-flight back-pressure does.
//!
//! The confirmation tracker reads a partition's pending records back before its receipts can
//! be applied: receipts fetched earlier would wait in memory, beside the in-flight bound. So
//! the partitions of one topic (the receipts) start held on every assignment: the rebalance
//! callback pauses them before anything is fetched, and they are resumed once the member
//! releases them ([`Holds::release`]). The poll thread owns every pause and resume: the
//! member only says what it wants, and the poll thread applies it on its next turn, keeping
//! held partitions paused when it resumes the rest after back-pressure.

use super::TopicPartition;
use std::collections::HashSet;
use std::sync::Mutex;

/// Shared by the poll thread and the member, in the consumer's context.
#[derive(Default)]
pub struct Holds(Mutex<State>);

#[derive(Default)]
struct State {
    /// The topic whose partitions start held when assigned.
    topic: Option<String>,
    held: HashSet<TopicPartition>,
    /// Released since the poll thread last looked.
    released: Vec<TopicPartition>,
}

impl Holds {
    /// Partitions of `topic` start held on every assignment; none when `None`.
    pub(crate) fn new(topic: Option<String>) -> Self {
        Self(Mutex::new(State {
            topic,
            ..State::default()
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("holds lock")
    }

    /// Newly assigned `partitions`: those of the held topic are held; returns them (to pause).
    pub(crate) fn on_assign(&self, partitions: &[TopicPartition]) -> Vec<TopicPartition> {
        let mut s = self.state();
        let Some(topic) = s.topic.clone() else {
            return Vec::new();
        };
        let held: Vec<TopicPartition> = partitions
            .iter()
            .filter(|p| p.topic == topic)
            .cloned()
            .collect();
        for p in &held {
            s.released.retain(|r| r != p);
            s.held.insert(p.clone());
        }
        held
    }

    /// `partitions` were given up: nothing of them is held any more.
    pub(crate) fn on_revoke(&self, partitions: &[TopicPartition]) {
        let mut s = self.state();
        for p in partitions {
            s.held.remove(p);
            s.released.retain(|r| r != p);
        }
    }

    /// The member is ready for `tp`: it is fetched again (on the poll thread's next turn,
    /// unless back-pressure pauses everything; then with the rest). Releasing what is not
    /// held does nothing.
    pub fn release(&self, tp: &TopicPartition) {
        let mut s = self.state();
        if s.held.remove(tp) {
            s.released.push(tp.clone());
        }
    }

    /// Whether `tp` is held.
    pub fn is_held(&self, tp: &TopicPartition) -> bool {
        self.state().held.contains(tp)
    }

    /// What was released since the last call (for the poll thread to resume).
    pub(crate) fn take_released(&self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.state().released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    #[test]
    fn the_held_topics_partitions_start_held_until_released() {
        let holds = Holds::new(Some("receipts".into()));
        let held = holds.on_assign(&[tp("pending", 0), tp("receipts", 0), tp("receipts", 1)]);
        assert_eq!(held, vec![tp("receipts", 0), tp("receipts", 1)]);
        assert!(!holds.is_held(&tp("pending", 0)));
        assert!(holds.is_held(&tp("receipts", 0)));
        holds.release(&tp("receipts", 0));
        holds.release(&tp("pending", 0)); // not held: nothing to resume
        assert!(!holds.is_held(&tp("receipts", 0)));
        assert_eq!(holds.take_released(), vec![tp("receipts", 0)]);
        assert!(holds.take_released().is_empty(), "taken once");
    }

    #[test]
    fn a_revoke_forgets_holds_and_pending_releases() {
        let holds = Holds::new(Some("receipts".into()));
        holds.on_assign(&[tp("receipts", 0), tp("receipts", 1)]);
        holds.release(&tp("receipts", 1));
        holds.on_revoke(&[tp("receipts", 0), tp("receipts", 1)]);
        assert!(!holds.is_held(&tp("receipts", 0)));
        assert!(
            holds.take_released().is_empty(),
            "nothing of a revoked partition to resume"
        );
    }

    #[test]
    fn without_a_held_topic_nothing_is_held() {
        let holds = Holds::new(None);
        assert!(holds.on_assign(&[tp("receipts", 0)]).is_empty());
    }
}
