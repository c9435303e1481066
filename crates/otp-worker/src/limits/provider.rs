//! The providers' own rate limits: the sender's throughput, shared across the fleet, and the
//! per-recipient pair rate.

use super::{Decision, Limit, Subject};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub(super) fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}

pub(super) fn decision(
    result: Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>>,
) -> Decision {
    match result {
        Ok(()) => Decision::Go,
        Err(not_until) => Decision::WaitUntil(
            Instant::now() + not_until.wait_time_from(DefaultClock::default().now()),
        ),
    }
}

/// The provider's per-sender throughput (80/s on WhatsApp by default, 1/s on an SMS long
/// code) is for the whole fleet: each worker limits itself to the share of the topic's
/// partitions it owns, recomputed on every assignment change.
pub struct SenderLimit {
    total_per_second: u32,
    total_burst: u32,
    /// The share in force and its limiter. A new limiter starts with a full burst, so it is
    /// replaced only when the share really changes.
    limiter: RwLock<(f64, DefaultDirectRateLimiter)>,
}

impl SenderLimit {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            total_per_second: per_second,
            total_burst: burst,
            limiter: RwLock::new((1.0, direct(per_second as f64, burst as f64))),
        }
    }

    /// Own `owned` of `total` partitions: take that share of the rate and the burst. With no
    /// partitions known yet (before the first assignment) the whole budget applies.
    pub fn set_share(&self, owned: usize, total: usize) {
        let share = if total == 0 || owned == 0 {
            1.0
        } else {
            owned.min(total) as f64 / total as f64
        };
        let mut current = self.limiter.write().expect("sender limit lock");
        if current.0 == share {
            return;
        }
        let rate = self.total_per_second as f64 * share;
        let burst = self.total_burst as f64 * share;
        tracing::info!(owned, total, rate, "sender rate share");
        metrics::gauge!("otp_sender_rate_share_per_second").set(rate);
        *current = (share, direct(rate, burst));
    }
}

/// A direct limiter for a fractional rate (e.g. 0.5/s when one of two workers shares 1/s).
fn direct(per_second: f64, burst: f64) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
    let quota = Quota::with_period(period)
        .expect("period is non-zero")
        .allow_burst(nonzero(burst.floor() as u32));
    governor::RateLimiter::direct(quota)
}

impl Limit for Arc<SenderLimit> {
    fn rule(&self) -> &'static str {
        "sender_rate"
    }
    fn check(&self, _: &Subject) -> Decision {
        decision(self.limiter.read().expect("sender limit lock").1.check())
    }
}

/// One send per period to one recipient (WhatsApp's pair rate limit), keyed by phone hash.
pub struct RecipientLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

impl RecipientLimit {
    pub fn new(period: Duration) -> Self {
        let quota = Quota::with_period(period)
            .expect("recipient period is non-zero")
            .allow_burst(nonzero(1));
        Self {
            limiter: governor::RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }
}

impl Limit for RecipientLimit {
    fn rule(&self) -> &'static str {
        "recipient_rate"
    }
    fn applies_to_retries(&self) -> bool {
        false
    }
    fn check(&self, subject: &Subject) -> Decision {
        // Forget recipients whose state is back to idle, now and then, to bound memory.
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            self.limiter.retain_recent();
        }
        decision(self.limiter.check_key(&subject.phone_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_the_partitions_is_a_share_of_the_rate() {
        let limit = Arc::new(SenderLimit::new(10, 10));
        let s = Subject {
            phone_key: "k".into(),
            prefix_key: "p".into(),
            country: None,
            premium: false,
        };
        let goes = |l: &Arc<SenderLimit>| (0..100).filter(|_| l.check(&s) == Decision::Go).count();
        assert_eq!(goes(&limit), 10, "alone: the whole burst");
        limit.set_share(2, 2);
        assert_eq!(
            goes(&limit),
            0,
            "an unchanged share keeps the limiter's state"
        );
        limit.set_share(1, 2);
        assert_eq!(goes(&limit), 5, "half the partitions: half the burst");
    }
}
