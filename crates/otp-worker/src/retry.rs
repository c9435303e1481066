//! The retry policy: exponential backoff with jitter, bounded by the code's deadline.
//!
//! The only module that touches the `backoff` crate (unmaintained, RUSTSEC-2025-0012), so it
//! can be swapped in one place.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How transient failures are retried.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before the first retry.
    #[serde(default = "default_initial", with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Longest delay between two tries.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// Growth of the delay from one retry to the next.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Random spread of each delay, as a fraction of it (0.5 = ±50 %).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Most tries on one channel (first send included) before falling back.
    #[serde(default = "default_max_tries")]
    pub max_tries: u32,
    /// No retry is scheduled later than `expires_at` minus this margin: the rest is left to the
    /// next channel. And no try at all (a fallback's first included) starts with less than a
    /// fifth of it left: a send started a moment before expiry would reach the provider after
    /// it. Such a request is reported `expired` without a send.
    #[serde(default = "default_safety_margin", with = "humantime_serde")]
    pub safety_margin: Duration,
    /// Most sends on one channel answered with a rate window (throttling, the pair limit),
    /// each tried again after the limits without spending a try.
    #[serde(default = "default_max_requeues")]
    pub max_requeues: u32,
}

fn default_initial() -> Duration {
    Duration::from_millis(200)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_jitter() -> f64 {
    0.5
}
fn default_max_tries() -> u32 {
    5
}
fn default_safety_margin() -> Duration {
    Duration::from_secs(5)
}
fn default_max_requeues() -> u32 {
    20
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_delay: default_initial(),
            max_delay: default_max_delay(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
            max_tries: default_max_tries(),
            safety_margin: default_safety_margin(),
            max_requeues: default_max_requeues(),
        }
    }
}

/// The retry schedule of one request on one channel.
pub struct RetrySchedule {
    backoff: backoff::ExponentialBackoff,
    /// Sends made.
    tries: u32,
    max_tries: u32,
    /// Sends answered with a rate window, tried again without spending a try.
    requeues: u32,
    max_requeues: u32,
}

impl RetrySchedule {
    pub fn new(config: &RetryConfig) -> Self {
        let backoff = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(config.initial_delay)
            .with_max_interval(config.max_delay)
            .with_multiplier(config.multiplier)
            .with_randomization_factor(config.jitter)
            .with_max_elapsed_time(None)
            .build();
        Self {
            backoff,
            tries: 0,
            max_tries: config.max_tries,
            requeues: 0,
            max_requeues: config.max_requeues,
        }
    }

    /// Record a try; returns how many were made.
    pub fn record_try(&mut self) -> u32 {
        self.tries += 1;
        self.tries
    }

    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// The last send met a rate window: it does not count against the tries. Returns false
    /// once `max_requeues` were made (the cap on that loop).
    pub fn requeue(&mut self) -> bool {
        if self.requeues >= self.max_requeues {
            return false;
        }
        self.requeues += 1;
        true
    }

    /// Whether the retry budget allows another try (a move to the route's next provider is
    /// one: it is capped like the rest).
    pub fn tries_left(&self) -> bool {
        self.tries - self.requeues < self.max_tries
    }

    /// The delay before the next try, or `None` when tries are used up or the next try would
    /// start after `latest_start`.
    pub fn next_delay(&mut self, time_left_before_latest_start: Duration) -> Option<Duration> {
        use backoff::backoff::Backoff;
        if self.tries - self.requeues >= self.max_tries {
            return None;
        }
        let delay = self.backoff.next_backoff()?;
        (delay < time_left_before_latest_start).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stop_at_max_tries() {
        let config = RetryConfig {
            jitter: 0.0,
            max_tries: 3,
            ..RetryConfig::default()
        };
        let mut s = RetrySchedule::new(&config);
        let plenty = Duration::from_secs(600);
        s.record_try();
        assert_eq!(s.next_delay(plenty), Some(Duration::from_millis(200)));
        s.record_try();
        assert_eq!(s.next_delay(plenty), Some(Duration::from_millis(400)));
        s.record_try();
        assert_eq!(s.next_delay(plenty), None, "three tries made");
    }

    #[test]
    fn never_schedules_past_the_deadline() {
        let config = RetryConfig {
            jitter: 0.0,
            ..RetryConfig::default()
        };
        let mut s = RetrySchedule::new(&config);
        s.record_try();
        assert_eq!(s.next_delay(Duration::from_millis(150)), None);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let config = RetryConfig::default();
        for _ in 0..100 {
            let mut s = RetrySchedule::new(&config);
            s.record_try();
            let d = s.next_delay(Duration::from_secs(600)).unwrap();
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(300),
                "{d:?}"
            );
        }
    }
}
