//! Which partitions this member is giving up, known from the moment librdkafka announces the
//! revoke, not from when the async side gets to the event.
//!
//! The revoke callback waits for the member's answer for a bounded time and then lets the
//! partitions go anyway. A member busy in a write that Kafka holds up (a tracker's fallback,
//! retried until acknowledged) may answer after that, when the partitions already have a new
//! owner that fires the same deadlines. The member asks [`LettingGo::holds_back`] before each
//! decision it carries out: a partition announced as revoked is left to its new owner, even
//! before the revoke event is handled.
//!
//! The mark is set by the poll thread, at once, and cleared by the runner when it hands the
//! member a later assignment of the partition, in the member's own order of events: a
//! partition that moved away and came back during one held-up write stays marked until the
//! member has handled its revoke (and dropped what it knew) and then its new assignment.

use super::TopicPartition;
use std::collections::HashSet;
use std::sync::Mutex;

/// Shared by the poll thread's rebalance callbacks (which write) and the member (which asks),
/// in the consumer's context.
#[derive(Default)]
pub struct LettingGo(Mutex<HashSet<TopicPartition>>);

impl LettingGo {
    /// A revoke was announced for `partitions` (called before the member is told).
    pub(crate) fn revoking(&self, partitions: &[TopicPartition]) {
        let mut set = self.0.lock().expect("letting-go lock");
        set.extend(partitions.iter().cloned());
    }

    /// `partitions` are this member's again: called by the runner as it hands the member
    /// their assignment, after the revoke before it.
    pub(crate) fn assigned(&self, partitions: &[TopicPartition]) {
        let mut set = self.0.lock().expect("letting-go lock");
        for p in partitions {
            set.remove(p);
        }
    }

    /// Whether work on `tp` must stop: its revoke was announced, and the member has not been
    /// handed a new assignment of it since.
    pub fn holds_back(&self, tp: &TopicPartition) -> bool {
        self.0.lock().expect("letting-go lock").contains(tp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_partition_is_held_back_until_it_is_assigned_again() {
        let board = LettingGo::default();
        let (p0, p1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        assert!(!board.holds_back(&p0));
        let member = &board; // the member's view, through the consumer's context
        board.revoking(std::slice::from_ref(&p0));
        assert!(member.holds_back(&p0), "seen by the member at once");
        assert!(!member.holds_back(&p1), "only the revoked partition");
        board.assigned(std::slice::from_ref(&p0));
        assert!(!member.holds_back(&p0));
    }
}
