//! The Twilio sender queue: a message over the sender's rate is not refused, it waits its turn.
//!
//! Twilio, "Error 21611" / "Error 30001": "Twilio queues messages based on the sending rate of
//! a sender": a message sent faster than the sender's rate is accepted (`queued`) and leaves
//! the queue later, one per rate interval; only when the queue is full is the send refused
//! (21611 for a `From` number). This module keeps the queue as a virtual schedule (the
//! generic cell rate algorithm): each accepted message gets the instant it leaves, which is
//! the same rule as the rate limiter the simulator used to refuse with, except that the wait
//! is handed out instead of refused. No message is held in memory, so a large capacity costs
//! nothing.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What the queue did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It leaves the queue after this long (zero: at once, within the sender's burst).
    Leaves(Duration),
    /// The queue is full: it was not taken.
    Full,
}

pub(crate) struct SenderQueue {
    /// One message per this long, the sender's rate.
    interval: Duration,
    /// How far ahead of the schedule a burst may run: `interval * (burst - 1)`.
    tolerance: Duration,
    /// Most messages waiting at once.
    capacity: u64,
    /// When the next message would leave if nothing were waiting (the theoretical arrival time).
    next: Mutex<Option<Instant>>,
}

impl SenderQueue {
    pub(crate) fn new(rate_per_second: u32, burst: u32, capacity: u64) -> Self {
        let interval = Duration::from_secs(1) / rate_per_second.max(1);
        Self {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            capacity,
            next: Mutex::new(None),
        }
    }

    /// Take one message arriving now.
    pub(crate) fn admit(&self) -> Admission {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Admission {
        let mut next = self.next.lock().expect("queue lock");
        let tat = next.map_or(now, |t| t.max(now));
        let leaves = if tat > now + self.tolerance {
            tat - self.tolerance
        } else {
            now
        };
        let wait = leaves - now;
        // The messages waiting, this one included, leave one interval apart ending with it.
        let waiting = wait.as_nanos().div_ceil(self.interval.as_nanos().max(1));
        if waiting > u128::from(self.capacity) {
            return Admission::Full;
        }
        *next = Some(tat + self.interval);
        Admission::Leaves(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_one_per_interval_until_the_queue_is_full() {
        // 10/s, burst 2, room for 3 waiting.
        let q = SenderQueue::new(10, 2, 3);
        let now = Instant::now();
        let waits: Vec<_> = (0..6).map(|_| q.admit_at(now)).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            waits,
            vec![
                Admission::Leaves(ms(0)),
                Admission::Leaves(ms(0)),
                Admission::Leaves(ms(100)),
                Admission::Leaves(ms(200)),
                Admission::Leaves(ms(300)),
                Admission::Full,
            ]
        );
        // As the queue drains there is room again, and the wait is what is left of it.
        assert_eq!(q.admit_at(now + ms(150)), Admission::Leaves(ms(250)));
    }

    #[test]
    fn a_quiet_sender_sends_at_once() {
        let q = SenderQueue::new(1, 1, 0);
        let now = Instant::now();
        assert_eq!(q.admit_at(now), Admission::Leaves(Duration::ZERO));
        // Capacity 0: nothing may wait.
        assert_eq!(q.admit_at(now), Admission::Full);
        assert_eq!(
            q.admit_at(now + Duration::from_secs(1)),
            Admission::Leaves(Duration::ZERO)
        );
    }
}
