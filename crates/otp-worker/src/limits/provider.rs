//! The providers' own rate limits: the sender's throughput, shared across the fleet, and the
//! per-recipient pair rate.

use super::schedule::Schedule;
use super::Subject;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}

/// One clock for the process. Building governor's default clock calibrates quanta's TSC
/// (cpuid and a measurement): it is built once, not per decision.
fn clock() -> &'static DefaultClock {
    static CLOCK: std::sync::OnceLock<DefaultClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(DefaultClock::default)
}

/// The provider's per-sender throughput (80/s on WhatsApp by default, 1/s on an SMS long
/// code) is for the whole fleet: each worker limits itself to the share of the topic's
/// partitions it owns, recomputed on every assignment change.
///
/// It also adapts: when the provider says we are over a window (130429, 429), the rate is
/// halved (at most once per [`SLOW_DOWN_EVERY`], down to [`SLOWEST`] of the share), and it
/// recovers by a quarter every [`RECOVER_EVERY`] without such an answer.
///
/// Slots are handed out by a [`Schedule`]: first come, first served, each waiter sleeping once
/// until its slot, and the burst shared like the rate (a fraction of one when the share is
/// small), so that the fleet never sends more than its burst at once.
pub struct SenderLimit {
    /// The provider's name (a metric label).
    provider: &'static str,
    total_per_second: u32,
    total_burst: u32,
    current: RwLock<Current>,
    schedule: Schedule,
}

/// The share of the fleet's rate in force.
struct Current {
    share: f64,
    /// The fraction of the share in force: 1 unless the provider throttled us lately.
    factor: f64,
    /// When `factor` last changed.
    changed: Instant,
}

/// How often the rate may be halved: one burst of throttled answers is one signal.
pub const SLOW_DOWN_EVERY: Duration = Duration::from_secs(1);
/// How long without throttling before the rate grows back by a quarter.
pub const RECOVER_EVERY: Duration = Duration::from_secs(5);
/// The lowest fraction of the share the rate goes down to.
pub const SLOWEST: f64 = 1.0 / 16.0;
/// The part of the provider's burst a worker uses. The rest is headroom for the network:
/// sends leave at their slots but reach the provider with varying delays, and at the full
/// rate an early arrival would find the provider's bucket empty.
pub const BURST_USED: f64 = 0.5;

impl SenderLimit {
    pub fn new(provider: &'static str, per_second: u32, burst: u32) -> Self {
        metrics::gauge!("otp_sender_rate_share_per_second", "provider" => provider)
            .set(f64::from(per_second));
        metrics::counter!("otp_sender_slow_downs_total", "provider" => provider).increment(0);
        metrics::counter!("otp_sender_paced_total", "provider" => provider).increment(0);
        Self {
            provider,
            total_per_second: per_second,
            total_burst: burst,
            current: RwLock::new(Current {
                share: 1.0,
                factor: 1.0,
                changed: Instant::now(),
            }),
            schedule: Schedule::new(f64::from(per_second), f64::from(burst) * BURST_USED),
        }
    }

    /// Own `owned` of `total` partitions: take that share of the rate and the burst. Before
    /// the first assignment nothing is sent, so the whole budget stands until then. A count
    /// that says nothing (no partitions owned while a revoke drains; metadata that shows
    /// none) keeps the share in force: it never hands one worker the whole fleet's budget.
    pub fn set_share(&self, owned: usize, total: usize) {
        if total == 0 || owned == 0 {
            return;
        }
        let share = owned.min(total) as f64 / total as f64;
        let mut current = self.current.write().expect("sender limit lock");
        if current.share == share {
            return;
        }
        tracing::info!(owned, total, "sender rate share");
        current.share = share;
        self.rebuild(&mut current);
    }

    /// The provider throttled us at `now`: halve the rate, unless it was just halved.
    pub fn slow_down(&self, now: Instant) {
        let mut current = self.current.write().expect("sender limit lock");
        if current.factor <= SLOWEST {
            // Still throttled at the floor: the quiet period that recovery waits for restarts.
            current.changed = now;
            return;
        }
        if current.factor < 1.0 && now.duration_since(current.changed) < SLOW_DOWN_EVERY {
            return;
        }
        current.factor = (current.factor / 2.0).max(SLOWEST);
        current.changed = now;
        metrics::counter!("otp_sender_slow_downs_total", "provider" => self.provider).increment(1);
        tracing::warn!(
            provider = self.provider,
            factor = current.factor,
            "the provider throttled us; sender rate lowered"
        );
        self.rebuild(&mut current);
    }

    /// Grow back toward the full share after a quiet period.
    fn recover(&self, now: Instant) {
        let quiet = {
            let current = self.current.read().expect("sender limit lock");
            current.factor < 1.0 && now.duration_since(current.changed) >= RECOVER_EVERY
        };
        if quiet {
            let mut current = self.current.write().expect("sender limit lock");
            if current.factor < 1.0 && now.duration_since(current.changed) >= RECOVER_EVERY {
                current.factor = (current.factor * 1.25).min(1.0);
                current.changed = now;
                self.rebuild(&mut current);
            }
        }
    }

    fn rebuild(&self, current: &mut Current) {
        let scale = current.share * current.factor;
        let rate = self.total_per_second as f64 * scale;
        let burst = self.total_burst as f64 * scale * BURST_USED;
        metrics::gauge!("otp_sender_rate_share_per_second", "provider" => self.provider).set(rate);
        self.schedule.set(rate, burst);
    }

    /// Take the next send slot, unless it is later than `latest` (then `Err`: when it would
    /// have been; nothing is taken).
    pub fn reserve(&self, latest: Instant) -> Result<Instant, Instant> {
        let now = Instant::now();
        self.recover(now);
        self.schedule.reserve(now, latest)
    }

    /// A send whose slot has come leaves now: when it may (see [`Schedule::pace`]), unless
    /// that is later than `latest`. A send held back by pacing is counted: the process
    /// stalled (CPU throttling, a blocked thread) and its overdue sends were spread out.
    pub fn pace(&self, latest: Instant) -> Result<Instant, Instant> {
        let now = Instant::now();
        let paced = self.schedule.pace(now, latest);
        if !matches!(paced, Ok(at) if at <= now) {
            metrics::counter!("otp_sender_paced_total", "provider" => self.provider).increment(1);
        }
        paced
    }

    /// The rate in force, per second.
    #[cfg(test)]
    fn rate(&self) -> f64 {
        let current = self.current.read().expect("sender limit lock");
        self.total_per_second as f64 * current.share * current.factor
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

    /// Take `subject`'s slot now (`None`), or say when it is free (nothing taken).
    pub fn take(&self, subject: &Subject) -> Option<Instant> {
        // Forget recipients whose state is back to idle, now and then, to bound memory.
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            self.limiter.retain_recent();
        }
        match self.limiter.check_key(&subject.phone_key) {
            Ok(()) => None,
            Err(not_until) => Some(Instant::now() + not_until.wait_time_from(clock().now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_the_partitions_is_a_share_of_the_rate_and_burst() {
        let limit = SenderLimit::new("t", 10, 10);
        let soon = Instant::now() + Duration::from_millis(5);
        let at_once = |l: &SenderLimit| (0..100).filter(|_| l.reserve(soon).is_ok()).count();
        assert_eq!(at_once(&limit), 5, "alone: the burst, less the headroom");
        limit.set_share(2, 2);
        assert_eq!(
            at_once(&limit),
            0,
            "an unchanged share grants no fresh burst"
        );
        let fresh = SenderLimit::new("t", 10, 10);
        fresh.set_share(1, 2);
        assert_eq!(
            at_once(&fresh),
            2,
            "half the partitions: half of that (2.5)"
        );
        fresh.set_share(0, 2);
        fresh.set_share(1, 0);
        assert_eq!(
            fresh.rate(),
            5.0,
            "no partitions known: the share in force stands"
        );
    }

    #[test]
    fn throttling_halves_the_rate_once_per_burst_of_answers_and_quiet_brings_it_back() {
        let limit = SenderLimit::new("t", 80, 10);
        let t0 = Instant::now();
        limit.slow_down(t0);
        limit.slow_down(t0 + Duration::from_millis(10)); // the same burst of throttled answers
        assert_eq!(limit.rate(), 40.0);
        limit.slow_down(t0 + SLOW_DOWN_EVERY);
        assert_eq!(limit.rate(), 20.0);
        for i in 2..10 {
            limit.slow_down(t0 + SLOW_DOWN_EVERY * i);
        }
        assert_eq!(limit.rate(), 80.0 * SLOWEST, "never below the floor");
        limit.recover(t0 + SLOW_DOWN_EVERY * 9 + RECOVER_EVERY);
        assert_eq!(
            limit.rate(),
            80.0 * SLOWEST * 1.25,
            "a quarter back after a quiet period"
        );
        let mut at = t0 + SLOW_DOWN_EVERY * 9 + RECOVER_EVERY;
        for _ in 0..20 {
            at += RECOVER_EVERY;
            limit.recover(at);
        }
        assert_eq!(limit.rate(), 80.0, "the full share, and no more");
    }
}
