//! The signal that a message's partition is being let go (revoked in a rebalance, or the
//! worker is stopping): from then on no new provider call starts for it, except where one
//! must.
//!
//! A send already under way finishes, and its outcome is written. A message that has not
//! reached its send (waiting for a rate-limit slot, for a retry, or still queued) is
//! *abandoned*: left unfinished, so its offset is not committed and the partition's next owner
//! (or this worker's next run) delivers it. This is what keeps a graceful rebalance or
//! shutdown from sending a code twice: nothing is cut off in the middle of a send, and nothing
//! starts a send that the grace period might cut off.
//!
//! The exception keeps commits whole. A partition commits one position, the lowest unfinished
//! offset, so abandoning a message while a *later* one of the partition is already sending
//! would make the next owner repeat that later send. So a message earlier than the latest
//! send started on its partition goes on to its own send (within the grace) even after the
//! partition is let go; only the messages after it are abandoned.
//!
//! For that to end within the grace, a partition's messages reserve their first sender slot
//! in the order they were handed over ([`Stop::turn`]): then a message earlier than one
//! already sending holds an earlier slot, and goes at once. (Tasks do not start in the order
//! they were spawned: tokio runs the newest first, so without turns the last message of each
//! batch took the batch's first slot, and its predecessors' slots stretched over seconds.)
//! A retry reserves again, at the back of the line; what it leaves behind if the grace runs
//! out is named in the commit instead (`otp_kafka::group`'s ledger).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Held by the runtime, one per assigned partition: [`LetGo::now`] tells every message of it.
pub struct LetGo {
    /// Wakes the messages waiting; [`Partition`] is what they decide by.
    set: watch::Sender<bool>,
    state: Arc<Mutex<Partition>>,
    line: Arc<Line>,
}

/// Whether the partition is let go, and the highest offset of it whose send has started: one
/// lock, so that a message deciding to start its send and an earlier one deciding to be
/// abandoned cannot both win. (Read apart, a later message could pass its check, an earlier
/// one then be abandoned, and the later one start: the next owner would send it again.)
#[derive(Debug)]
struct Partition {
    let_go: bool,
    highest_sending: i64,
}

impl Partition {
    fn abandons(&self, offset: i64) -> bool {
        self.let_go && offset > self.highest_sending
    }
}

/// The partition's messages in the order they were handed over, for their turns.
struct Line {
    /// The next place in line to hand out.
    next: AtomicU64,
    /// How many places, from the first, have had their turn; watched by those waiting.
    passed: watch::Sender<u64>,
    /// Places that had their turn out of order (their task ended first), not yet counted.
    early: Mutex<BTreeSet<u64>>,
}

impl Line {
    fn pass(&self, place: u64) {
        let mut early = self.early.lock().expect("line lock");
        let mut passed = *self.passed.borrow();
        if place < passed {
            return;
        }
        early.insert(place);
        while early.remove(&passed) {
            passed += 1;
        }
        self.passed.send_if_modified(|p| {
            let moved = *p != passed;
            *p = passed;
            moved
        });
    }
}

/// Held by each message's task.
pub struct Stop {
    set: watch::Receiver<bool>,
    state: Arc<Mutex<Partition>>,
    offset: i64,
    line: Arc<Line>,
    place: u64,
}

/// A message's turn, from [`Stop::turn`]: the partition's later messages wait until it is
/// dropped. Drop it once the message's first sender slot is reserved, or it needs none.
pub struct Turn<'a>(&'a Stop);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.pass();
    }
}

impl LetGo {
    pub fn new() -> Self {
        Self {
            set: watch::channel(false).0,
            state: Arc::new(Mutex::new(Partition {
                let_go: false,
                highest_sending: -1,
            })),
            line: Arc::new(Line {
                next: AtomicU64::new(0),
                passed: watch::channel(0).0,
                early: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// The stop of the message at `offset`; call it in the order messages are handed over
    /// (it gives the message its place in the partition's line).
    pub fn subscribe(&self, offset: i64) -> Stop {
        Stop {
            set: self.set.subscribe(),
            state: self.state.clone(),
            offset,
            line: self.line.clone(),
            place: self.line.next.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Let the partition go: no new send starts for its messages after the latest one sending.
    pub fn now(&self) {
        self.state.lock().expect("partition lock").let_go = true;
        self.set.send_replace(true);
    }
}

impl Default for LetGo {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// Whether this message must be abandoned now: its partition is let go, and no later
    /// message of it has started sending.
    pub fn abandons(&self) -> bool {
        self.state
            .lock()
            .expect("partition lock")
            .abandons(self.offset)
    }

    /// Resolves once this message must be abandoned; never, if it need not be.
    pub async fn wait(&self) {
        let mut rx = self.set.clone();
        // A dropped switch (the partition is gone) counts as set.
        let _ = rx.wait_for(|set| *set).await;
        if !self.abandons() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once every message handed over before this one on its partition has had its
    /// turn (reserved its first slot, or ended).
    pub async fn turn(&self) -> Turn<'_> {
        let mut passed = self.line.passed.subscribe();
        // The sender is held by the line, which this stop holds: it cannot close.
        let _ = passed.wait_for(|p| *p >= self.place).await;
        Turn(self)
    }

    /// This message has had its turn, or will take none (it ended): idempotent.
    pub fn pass(&self) {
        self.line.pass(self.place);
    }

    /// This message's send starts now (call right before the provider call), unless it must
    /// be abandoned: false then, and nothing may be sent.
    #[must_use]
    pub fn begin_send(&self) -> bool {
        let mut state = self.state.lock().expect("partition lock");
        if state.abandons(self.offset) {
            return false;
        }
        state.highest_sending = state.highest_sending.max(self.offset);
        true
    }
}

/// What became of a message on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Its outcome was written: its offset may be committed.
    Finished,
    /// Let go before its send started: not finished, delivered by the next owner.
    Abandoned,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_message_of_the_partition_hears_it_once_set() {
        let switch = LetGo::new();
        let (a, b) = (switch.subscribe(1), switch.subscribe(2));
        assert!(!a.abandons());
        let waiting = tokio::spawn(async move { b.wait().await });
        switch.now();
        assert!(a.abandons());
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiter woke")
            .unwrap();
    }

    #[tokio::test]
    async fn a_partition_not_let_go_keeps_its_messages_waiting() {
        let switch = LetGo::new();
        let stop = switch.subscribe(1);
        assert!(tokio::time::timeout(Duration::from_millis(50), stop.wait())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_message_before_the_latest_send_goes_on_the_ones_after_it_stop() {
        let switch = LetGo::new();
        let (early, sending, late) = (
            switch.subscribe(10),
            switch.subscribe(11),
            switch.subscribe(12),
        );
        assert!(sending.begin_send());
        switch.now();
        assert!(
            !early.abandons(),
            "an earlier message goes on: commits stay whole"
        );
        assert!(late.abandons());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), early.wait())
                .await
                .is_err(),
            "the earlier message is not told to stop"
        );
        tokio::time::timeout(Duration::from_secs(1), late.wait())
            .await
            .expect("the later one is");
    }

    /// A later message that checked before the partition was let go, and an earlier one
    /// abandoned after: the later one must not start its send then, or the next owner, which
    /// starts at the earlier one, sends it again.
    #[tokio::test]
    async fn once_an_earlier_message_is_abandoned_no_later_send_starts() {
        let switch = LetGo::new();
        let (early, late) = (switch.subscribe(10), switch.subscribe(11));
        assert!(!late.abandons(), "checked before the partition was let go");
        switch.now();
        assert!(early.abandons());
        assert!(
            !late.begin_send(),
            "the check is made again as the send starts"
        );
        assert!(!early.begin_send());
        // The other order: the later send started first, so the earlier one goes on.
        let switch = LetGo::new();
        let (early, late) = (switch.subscribe(20), switch.subscribe(21));
        assert!(late.begin_send());
        switch.now();
        assert!(!early.abandons() && early.begin_send());
    }

    #[tokio::test]
    async fn turns_follow_the_order_of_hand_over_whoever_asks_first() {
        let switch = LetGo::new();
        let stops: Vec<Stop> = (0..4).map(|o| switch.subscribe(o)).collect();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        // The last asks first, as tokio's newest-first start does.
        for stop in stops.into_iter().rev() {
            let order = order.clone();
            tasks.spawn(async move {
                let turn = stop.turn().await;
                order.lock().unwrap().push(stop.offset);
                drop(turn);
            });
            tokio::task::yield_now().await;
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_message_that_ends_before_its_turn_does_not_hold_up_the_line() {
        let switch = LetGo::new();
        let (a, b, c) = (
            switch.subscribe(0),
            switch.subscribe(1),
            switch.subscribe(2),
        );
        b.pass(); // ended early (its task panicked, say)
        b.pass(); // idempotent
        let waiting = async { c.turn().await.0.offset };
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err(),
            "0 has not had its turn"
        );
        drop(a.turn().await);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(1), waiting)
                .await
                .unwrap(),
            2
        );
    }
}
