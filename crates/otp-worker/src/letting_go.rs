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

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Held by the runtime, one per assigned partition: [`LetGo::now`] tells every message of it.
pub struct LetGo {
    set: watch::Sender<bool>,
    /// The highest offset of the partition whose send has started.
    highest_sending: Arc<AtomicI64>,
}

/// Held by each message's task.
#[derive(Clone)]
pub struct Stop {
    set: watch::Receiver<bool>,
    highest_sending: Arc<AtomicI64>,
    offset: i64,
}

impl LetGo {
    pub fn new() -> Self {
        Self {
            set: watch::channel(false).0,
            highest_sending: Arc::new(AtomicI64::new(-1)),
        }
    }

    /// The stop of the message at `offset`.
    pub fn subscribe(&self, offset: i64) -> Stop {
        Stop {
            set: self.set.subscribe(),
            highest_sending: self.highest_sending.clone(),
            offset,
        }
    }

    /// Let the partition go: no new send starts for its messages after the latest one sending.
    pub fn now(&self) {
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
        *self.set.borrow() && self.offset > self.highest_sending.load(Ordering::SeqCst)
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

    /// This message's send starts now (call right before the provider call).
    pub fn sending(&self) {
        self.highest_sending
            .fetch_max(self.offset, Ordering::SeqCst);
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
        sending.sending();
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
}
