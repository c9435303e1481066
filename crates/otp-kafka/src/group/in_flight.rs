//! The in-flight bound: how many messages the poll thread has handed to the runtime and the
//! runtime has not finished. It is one count, kept in one place.
//!
//! The poll thread takes a [`Permit`] before it hands a message over; the permit travels with
//! the message and is dropped when the message is finished (its offset may be committed) or
//! abandoned. At the bound the poll thread waits for a permit on a condition variable (woken by
//! the drop, no sleep loop), and the `otp_in_flight` gauge is set on every take and every
//! release, so it reads the exact figure.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The bound shared by the poll thread (which takes) and the tasks (which release).
#[derive(Clone)]
pub struct InFlight {
    inner: Arc<Inner>,
}

struct Inner {
    held: Mutex<usize>,
    room: Condvar,
    max: usize,
    gauge: metrics::Gauge,
}

/// One message's place under the bound; dropping it makes room.
pub struct Permit {
    inner: Arc<Inner>,
}

impl InFlight {
    /// At most `max` (at least one) messages at once; the gauge is labelled with `group`.
    pub fn new(max: usize, group: &str) -> Self {
        let gauge = metrics::gauge!("otp_in_flight", "group" => group.to_string());
        gauge.set(0.0);
        Self {
            inner: Arc::new(Inner {
                held: Mutex::new(0),
                room: Condvar::new(),
                max: max.max(1),
                gauge,
            }),
        }
    }

    /// Take a place, waiting at most `within` for one to be released.
    pub fn acquire(&self, within: Duration) -> Option<Permit> {
        let inner = &self.inner;
        let held = inner.held.lock().expect("in-flight lock");
        let (mut held, _) = inner
            .room
            .wait_timeout_while(held, within, |held| *held >= inner.max)
            .expect("in-flight lock");
        if *held >= inner.max {
            return None;
        }
        *held += 1;
        inner.gauge.set(*held as f64);
        Some(Permit {
            inner: inner.clone(),
        })
    }

    /// Messages handed over and not yet finished.
    pub fn held(&self) -> usize {
        *self.inner.held.lock().expect("in-flight lock")
    }

    pub fn max(&self) -> usize {
        self.inner.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.inner.held.lock().expect("in-flight lock");
        *held -= 1;
        self.inner.gauge.set(*held as f64);
        self.inner.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_and_a_release_makes_room() {
        let bound = InFlight::new(2, "test");
        let a = bound.acquire(Duration::ZERO).expect("room");
        let _b = bound.acquire(Duration::ZERO).expect("room");
        assert!(bound.acquire(Duration::ZERO).is_none(), "full");
        assert_eq!(bound.held(), 2);
        drop(a);
        assert_eq!(bound.held(), 1);
        assert!(bound.acquire(Duration::ZERO).is_some());
    }

    #[test]
    fn a_waiting_taker_is_woken_by_a_release_on_another_thread() {
        let bound = InFlight::new(1, "test");
        let held = bound.acquire(Duration::ZERO).expect("room");
        let releaser = std::thread::spawn(move || drop(held));
        let got = bound.acquire(Duration::from_secs(30));
        releaser.join().unwrap();
        assert!(
            got.is_some(),
            "woken by the release, well before the 30 s bound"
        );
    }
}
