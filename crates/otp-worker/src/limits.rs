//! Rate limits checked before every send, so the providers never have to reject us.
//!
//! Each limit is a [`Limit`]: it answers *go*, *wait until*, or *refused*. The [`Limiter`]
//! asks them in order and waits only while the wait ends before the request's latest useful
//! send time; a wait past it is not taken and the request falls back (or expires) instead.
//! Abuse limits (per phone, per prefix, per country) and fleet-wide budgets are more `Limit`s
//! in the same list.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Provider rate limits of one worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sends per second this worker may make to the provider (the sender limit).
    pub sender_per_second: u32,
    /// Sends that may go out at once after an idle spell.
    #[serde(default = "default_sender_burst")]
    pub sender_burst: u32,
    /// At most one send per this period to one recipient (WhatsApp's pair limit); none when
    /// absent.
    #[serde(default, with = "humantime_serde")]
    pub recipient_period: Option<Duration>,
}

fn default_sender_burst() -> u32 {
    1
}

/// The outcome of asking a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// Not before this instant.
    WaitUntil(Instant),
}

/// One limit. `check` must take its share (consume a cell) when it answers `Go`.
pub trait Limit: Send + Sync {
    /// Name used in statuses and the `rule` metric label.
    fn rule(&self) -> &'static str;
    fn check(&self, recipient_key: &str) -> Decision;
    /// Whether a retry of a failed send must pass this limit again. A failed send delivered
    /// nothing to the recipient, so per-recipient limits count only first tries.
    fn applies_to_retries(&self) -> bool {
        true
    }
}

/// Refused: the wait for `rule` would pass the request's latest useful send time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit {rule} would delay the send past the code's deadline")]
pub struct Limited {
    pub rule: &'static str,
}

pub struct Limiter {
    limits: Vec<Box<dyn Limit>>,
}

impl Limiter {
    pub fn new(config: &LimitsConfig) -> Self {
        let mut limits: Vec<Box<dyn Limit>> = vec![Box::new(SenderLimit::new(
            config.sender_per_second,
            config.sender_burst,
        ))];
        // Last, so that its slot is taken right before the send: a wait for the sender limit
        // after it would bunch two sends to one recipient together again.
        if let Some(period) = config.recipient_period {
            limits.push(Box::new(RecipientLimit::new(period)));
        }
        Self { limits }
    }

    pub fn push(&mut self, limit: Box<dyn Limit>) {
        self.limits.push(limit);
    }

    /// Pass every limit in turn, waiting as needed, but never past `latest`. `retry` says
    /// whether this send retries a failed one.
    pub async fn acquire(
        &self,
        recipient_key: &str,
        latest: Instant,
        retry: bool,
    ) -> Result<(), Limited> {
        for limit in self
            .limits
            .iter()
            .filter(|l| !retry || l.applies_to_retries())
        {
            loop {
                match limit.check(recipient_key) {
                    Decision::Go => break,
                    Decision::WaitUntil(when) if when > latest => {
                        metrics::counter!("otp_limited_total", "rule" => limit.rule()).increment(1);
                        return Err(Limited { rule: limit.rule() });
                    }
                    Decision::WaitUntil(when) => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(when)).await
                    }
                }
            }
        }
        Ok(())
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}

fn decision(result: Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>>) -> Decision {
    match result {
        Ok(()) => Decision::Go,
        Err(not_until) => Decision::WaitUntil(
            Instant::now() + not_until.wait_time_from(DefaultClock::default().now()),
        ),
    }
}

/// The provider's per-sender throughput (80/s on WhatsApp by default, 1/s on an SMS long code).
pub struct SenderLimit {
    limiter: DefaultDirectRateLimiter,
}

impl SenderLimit {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let quota = Quota::per_second(nonzero(per_second)).allow_burst(nonzero(burst));
        Self {
            limiter: governor::RateLimiter::direct(quota),
        }
    }
}

impl Limit for SenderLimit {
    fn rule(&self) -> &'static str {
        "sender_rate"
    }
    fn check(&self, _: &str) -> Decision {
        decision(self.limiter.check())
    }
}

/// One send per period to one recipient (WhatsApp's pair rate limit), keyed by phone hash.
pub struct RecipientLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    checks: std::sync::atomic::AtomicU64,
}

impl RecipientLimit {
    pub fn new(period: Duration) -> Self {
        let quota = Quota::with_period(period)
            .expect("recipient period is non-zero")
            .allow_burst(nonzero(1));
        Self {
            limiter: governor::RateLimiter::keyed(quota),
            checks: Default::default(),
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
    fn check(&self, recipient_key: &str) -> Decision {
        // Forget recipients whose state is back to idle, now and then, to bound memory.
        if self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            self.limiter.retain_recent();
        }
        decision(self.limiter.check_key(&recipient_key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_past_the_deadline_is_refused_not_taken() {
        let limiter = Limiter::new(&LimitsConfig {
            sender_per_second: 1,
            sender_burst: 1,
            recipient_period: None,
        });
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(limiter.acquire("a", soon, false).await.is_ok());
        let started = Instant::now();
        assert_eq!(
            limiter.acquire("b", soon, false).await,
            Err(Limited {
                rule: "sender_rate"
            })
        );
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "refused without waiting"
        );
    }

    #[tokio::test]
    async fn recipient_limit_is_per_key() {
        let limiter = Limiter::new(&LimitsConfig {
            sender_per_second: 1000,
            sender_burst: 100,
            recipient_period: Some(Duration::from_secs(6)),
        });
        let latest = Instant::now() + Duration::from_secs(1);
        assert!(limiter.acquire("alice", latest, false).await.is_ok());
        assert!(limiter.acquire("bob", latest, false).await.is_ok());
        assert_eq!(
            limiter.acquire("alice", latest, false).await,
            Err(Limited {
                rule: "recipient_rate"
            })
        );
        assert!(
            limiter.acquire("alice", latest, true).await.is_ok(),
            "retries skip it"
        );
    }
}
