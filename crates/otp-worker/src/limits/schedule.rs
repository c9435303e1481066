//! Send slots at a rate with a burst, handed out in the order they are asked for.
//!
//! This is the generic cell rate algorithm (GCRA, which governor implements too) with
//! *reservations*: each caller takes the next free slot and sleeps once until it. Callers are
//! served first come, first served, a waiter costs one timer and no CPU, and nobody asks
//! again. (governor answers "not until T" without reserving anything, so its waiters race for
//! the next cell and ask again and again; under a limit that cost more CPU than the sends.)
//!
//! The burst may be fractional: a worker that owns a quarter of the partitions of a fleet
//! whose burst is 1 gets a burst of 0.25, so after an idle spell its first send waits three
//! quarters of an interval, and the fleet together never sends more than its burst at once.
//! A changed rate keeps the state: a new share or a slow-down never hands out a fresh burst.
//!
//! Slots are handed out ahead of time, so a process that stalls (a CPU-throttled container, a
//! blocked runtime thread) wakes its overdue waiters together, and the provider would see
//! them as one burst. So each send is also *paced*: right before it goes, the instant it
//! actually leaves is checked against the same rate and burst (with the wake-up grid as
//! tolerance), and a send that would exceed them waits its turn. On time, pacing never
//! delays anything.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Schedule {
    state: Mutex<State>,
}

struct State {
    origin: Instant,
    /// Seconds between slots.
    interval: f64,
    /// Slots that may go at once after an idle spell.
    burst: f64,
    /// Wake-ups are rounded up to a multiple of this (seconds), so that waiters wake in small
    /// groups rather than one by one: fewer wake-ups and larger Kafka batches. A send woken
    /// later than its slot never makes the rate higher; a group is at most the burst (a
    /// worker's burst is already half the provider's: the rest is the network's headroom).
    quantum: f64,
    /// When the bucket was (or will be) empty, in seconds after `origin`: each slot taken moves
    /// it one interval on; it never lags `now` by more than the burst.
    empty_at: f64,
    /// The same, counted at the instants sends actually left ([`Schedule::pace`]).
    sent_empty_at: f64,
}

/// A rate below this is treated as this (one slot in about 17 minutes).
const SLOWEST_PER_SECOND: f64 = 0.001;
/// Wake-ups are grouped over at most this (seconds): each wake-up costs a task switch, and a
/// wake-up per send cost about 2.6 times the CPU per limited send of a 20 ms grid
/// (`otp load --embedded` at a 1,000/s limit, burst 50; docs/performance.md has how to
/// measure it). It bounds what a grid adds to a limited send's wait...
const MAX_QUANTUM: f64 = 0.050;
/// ...and not at all when the burst allows less than this.
const MIN_QUANTUM: f64 = 0.001;
/// How late a timer may fire (seconds) without the send counting as held back.
const TIMER_SLACK: f64 = 0.002;

impl Schedule {
    pub fn new(per_second: f64, burst: f64) -> Self {
        let now = Instant::now();
        let mut state = State {
            origin: now,
            interval: 0.0,
            burst: 0.0,
            quantum: 0.0,
            empty_at: 0.0,
            sent_empty_at: 0.0,
        };
        state.set(per_second, burst);
        state.empty_at = -state.burst * state.interval; // full
        state.sent_empty_at = state.empty_at;
        Self {
            state: Mutex::new(state),
        }
    }

    /// Change the rate and the burst from now on; slots already handed out stand.
    pub fn set(&self, per_second: f64, burst: f64) {
        self.state
            .lock()
            .expect("schedule lock")
            .set(per_second, burst);
    }

    /// Take the next free slot at or after `now`, unless waiting for it would pass `latest`:
    /// then nothing is taken and `Err` tells when it would have been.
    pub fn reserve(&self, now: Instant, latest: Instant) -> Result<Instant, Instant> {
        let mut s = self.state.lock().expect("schedule lock");
        let n = s.seconds(now);
        let empty_at = s.empty_at.max(n - s.burst * s.interval);
        let at = n.max(empty_at + s.interval);
        // (A microsecond of float rounding is not a wait.)
        let wake = if at > n + 1e-6 && s.quantum > 0.0 {
            (at / s.quantum).ceil() * s.quantum
        } else {
            at.min(n.max(at - 1e-6))
        };
        let slot = s.instant(wake);
        // Only a wait is refused: a slot free now is taken even past `latest` (the deadline
        // checks that follow decide whether the send is still worth it).
        if slot > latest && wake > n {
            return Err(slot);
        }
        s.empty_at = empty_at + s.interval;
        Ok(slot)
    }

    /// A send whose slot has come is about to leave at `now`: when it goes, unless that would
    /// pass `latest` (then `Err`, and nothing is counted).
    ///
    /// Sends that leave at their slots (or up to one wake-up grid step after) go at once.
    /// Sends held back by a stall leave at most a burst at once, then one per interval.
    pub fn pace(&self, now: Instant, latest: Instant) -> Result<Instant, Instant> {
        let mut s = self.state.lock().expect("schedule lock");
        let n = s.seconds(now);
        // At least one whole interval: a burst below one (a small share of the fleet's) is
        // already waited for by the reservation; pacing only spreads sends that bunch.
        // A group on the grid is at most the burst (the quantum is at most burst x interval),
        // so the burst's own tolerance covers it: a stalled worker's overdue sends leave at
        // most a burst (and a timer's slack) at once, within what the provider allows.
        let tolerance = s.burst.max(1.0) * s.interval + TIMER_SLACK;
        let empty_at = s.sent_empty_at.max(n - tolerance);
        let at = empty_at + s.interval;
        s.sent_empty_at = at;
        if at <= n {
            // Go now: `now` itself, not a round trip through seconds (float rounding).
            return Ok(now);
        }
        let go = s.instant(at);
        if go > latest {
            s.sent_empty_at = empty_at; // nothing taken
            return Err(go);
        }
        Ok(go)
    }
}

impl State {
    fn set(&mut self, per_second: f64, burst: f64) {
        self.interval = 1.0 / per_second.max(SLOWEST_PER_SECOND);
        self.burst = burst.max(0.0);
        self.quantum = (self.burst * self.interval).min(MAX_QUANTUM);
        if self.quantum < MIN_QUANTUM {
            self.quantum = 0.0;
        }
    }

    fn seconds(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.origin) {
            Some(d) => d.as_secs_f64(),
            None => -self.origin.duration_since(at).as_secs_f64(),
        }
    }

    fn instant(&self, seconds: f64) -> Instant {
        if seconds >= 0.0 {
            self.origin + Duration::from_secs_f64(seconds)
        } else {
            self.origin
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn a_burst_goes_at_once_then_one_slot_per_interval_in_order() {
        let s = Schedule::new(10.0, 3.0);
        let now = Instant::now();
        let slots: Vec<Duration> = (0..6)
            .map(|_| {
                s.reserve(now, far())
                    .unwrap()
                    .saturating_duration_since(now)
            })
            .collect();
        // Each at its slot, or woken at most one grid step (50 ms) after it.
        let due = [0, 0, 0, 100, 200, 300];
        for (slot, due) in slots.iter().zip(due) {
            let ms = slot.as_millis();
            assert!(
                (due..due + 50).contains(&ms),
                "first come, first served: {slots:?}"
            );
        }
    }

    #[test]
    fn a_slot_past_the_deadline_is_not_taken() {
        let s = Schedule::new(1.0, 1.0);
        let now = Instant::now();
        assert!(s.reserve(now, now + Duration::from_millis(1)).is_ok());
        let soon = now + Duration::from_millis(500);
        let refused = s.reserve(now, soon).unwrap_err();
        assert!(
            refused >= now + Duration::from_millis(999),
            "would be a second later"
        );
        // Nothing was taken: the next caller gets that same slot.
        let next = s.reserve(now, far()).unwrap();
        assert_eq!(next, refused);
        // A slot free now is taken even past `latest`: only a wait is refused.
        let idle = Schedule::new(1.0, 1.0);
        let now = Instant::now();
        let past = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        assert!(idle.reserve(now, past).is_ok());
    }

    #[test]
    fn a_fractional_burst_delays_the_first_slot_and_a_new_rate_grants_no_fresh_burst() {
        // A quarter of a fleet of 4/s with a burst of 1: 1/s, burst 0.25.
        let s = Schedule::new(1.0, 0.25);
        let now = Instant::now();
        let first = s.reserve(now, far()).unwrap().duration_since(now);
        // (Or up to one 50 ms grid step after it.)
        assert!(
            (0.75..0.801).contains(&first.as_secs_f64()),
            "three quarters of an interval: {first:?}"
        );
        // A rebalance doubles the share: the next slot follows the last, no burst at once.
        s.set(2.0, 0.5);
        let next = s.reserve(now, far()).unwrap().duration_since(now);
        assert!(next > first, "{next:?} after {first:?}");
    }

    #[test]
    fn sends_that_leave_at_their_slots_are_never_held_back_by_pacing() {
        // 100/s, burst 5: slots on a 50 ms grid; each send leaves at its slot or a timer's
        // slack after it.
        let s = Schedule::new(100.0, 5.0);
        let now = Instant::now();
        let slots: Vec<Instant> = (0..300).map(|_| s.reserve(now, far()).unwrap()).collect();
        for (i, slot) in slots.iter().enumerate() {
            let leaves = *slot + Duration::from_micros(if i % 2 == 0 { 0 } else { 1900 });
            assert_eq!(s.pace(leaves, far()), Ok(leaves), "send {i} held back");
        }
    }

    #[test]
    fn a_burst_below_one_is_waited_for_once_not_again_by_pacing() {
        // A quarter of a fleet of 1/s with a burst of 1 (half used): 0.25/s, burst 0.125.
        let s = Schedule::new(0.25, 0.125);
        let now = Instant::now();
        let slot = s.reserve(now, far()).unwrap();
        assert!(slot > now, "the reservation waits");
        assert_eq!(s.pace(slot, far()), Ok(slot), "pacing does not wait again");
        let next = s.reserve(slot, far()).unwrap();
        assert_eq!(s.pace(next, far()), Ok(next), "nor for the next, on time");
    }

    #[test]
    fn sends_held_back_by_a_stall_leave_a_burst_at_once_then_one_per_interval() {
        // 10/s, burst 2; the process stalls for over a second, so twelve slots are overdue.
        let s = Schedule::new(10.0, 2.0);
        let now = Instant::now();
        let slots: Vec<Instant> = (0..12).map(|_| s.reserve(now, far()).unwrap()).collect();
        let woke = now + Duration::from_millis(1200);
        assert!(slots.iter().all(|slot| *slot <= woke), "all overdue");
        let leave: Vec<Instant> = slots.iter().map(|_| s.pace(woke, far()).unwrap()).collect();
        let at_once = leave.iter().filter(|t| **t == woke).count();
        assert_eq!(at_once, 2, "the burst, not the backlog: {leave:?}");
        // The third within a timer's slack of an interval later, and the rest an interval
        // apart.
        assert!(leave[2].duration_since(woke) >= Duration::from_millis(97));
        for pair in leave[2..].windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            assert!(
                gap >= Duration::from_millis(99),
                "then one per interval: {leave:?}"
            );
        }
        // A send that would have to wait past its deadline is refused, and takes no turn.
        let refused = s.pace(woke, woke).unwrap_err();
        assert_eq!(s.pace(woke, far()), Ok(refused));
    }

    #[test]
    fn after_a_stall_no_more_than_the_burst_leaves_at_once_on_the_longest_grid() {
        // A worker's share of 1000/s with the provider's burst of 50 (25 used): groups of 25
        // on a 25 ms grid. A stall of a second makes a thousand slots overdue.
        let s = Schedule::new(1000.0, 25.0);
        let now = Instant::now();
        let slots: Vec<Instant> = (0..1000).map(|_| s.reserve(now, far()).unwrap()).collect();
        let woke = now + Duration::from_millis(1100);
        assert!(slots.iter().all(|slot| *slot <= woke), "all overdue");
        let at_once = slots
            .iter()
            .filter(|_| s.pace(woke, far()).unwrap() == woke)
            .count();
        // The burst and a timer's slack (2 ms, two slots): well under the provider's 50.
        assert!(at_once <= 27, "{at_once} at once");
        // On time, a whole group still leaves at once: pacing holds nothing back.
        let s = Schedule::new(1000.0, 25.0);
        let now = Instant::now();
        let slots: Vec<Instant> = (0..500).map(|_| s.reserve(now, far()).unwrap()).collect();
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(s.pace(*slot, far()), Ok(*slot), "send {i} held back");
        }
    }

    #[test]
    fn waiters_wake_in_small_groups_never_before_their_slot() {
        // 1000/s with a burst of 50: wake-ups on a 50 ms grid, 50 slots each.
        let s = Schedule::new(1000.0, 50.0);
        let now = Instant::now();
        let slots: Vec<Instant> = (0..200).map(|_| s.reserve(now, far()).unwrap()).collect();
        let waiting = &slots[50..]; // after the burst
        let mut groups: Vec<Instant> = waiting.to_vec();
        groups.dedup();
        assert!(
            groups.len() <= 31,
            "{} wake-ups for 150 waiters",
            groups.len()
        );
        for (i, slot) in waiting.iter().enumerate() {
            let due = now + Duration::from_micros(1000 * (i as u64 + 1));
            assert!(
                *slot + Duration::from_micros(5) >= due,
                "waiter {i} woken before its slot"
            );
        }
    }

    #[test]
    fn a_group_is_as_large_as_the_burst_up_to_the_longest_grid_step() {
        // A worker's share of a provider's 1000/s with a burst of 50 (half used: 25): groups
        // of 25 on a 25 ms grid; with a burst of 10, groups of 10 on a 10 ms grid; with a
        // burst of 100, groups of 50 on the longest step, 50 ms.
        for (burst, step_ms) in [(25.0, 25), (10.0, 10), (100.0, 50)] {
            let s = Schedule::new(1000.0, burst);
            let now = Instant::now();
            let slots: Vec<Instant> = (0..1025).map(|_| s.reserve(now, far()).unwrap()).collect();
            let mut sizes = std::collections::BTreeMap::<Instant, usize>::new();
            for slot in &slots[burst as usize..] {
                *sizes.entry(*slot).or_default() += 1;
            }
            let largest = sizes.values().max().copied().unwrap_or(0);
            assert_eq!(largest, step_ms, "burst {burst}: groups of {sizes:?}");
            assert!(largest as f64 <= burst, "never more than the burst at once");
        }
    }

    #[test]
    fn over_any_second_the_slots_never_exceed_rate_plus_burst() {
        let s = Schedule::new(100.0, 5.0);
        let now = Instant::now();
        let slots: Vec<f64> = (0..1000)
            .map(|_| {
                s.reserve(now, far())
                    .unwrap()
                    .duration_since(now)
                    .as_secs_f64()
            })
            .collect();
        for (i, start) in slots.iter().enumerate() {
            let within = slots[i..].iter().take_while(|t| **t < start + 1.0).count();
            assert!(within <= 105, "{within} slots in the second from {start}");
        }
        let last = slots.last().unwrap();
        assert!(
            (9.95..10.001).contains(last),
            "1000 slots at 100/s after a burst of 5 (woken on a 50 ms grid): {last}"
        );
    }
}
