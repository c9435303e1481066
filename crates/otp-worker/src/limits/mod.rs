//! Limits checked before a send: our own abuse limits, so that nobody can use our login codes
//! to pump SMS fees, and the providers' rate limits, so they never have to reject us.
//!
//! The abuse rules ([`Abuse`]) are asked once per request, on its first channel, before its id
//! is claimed: they admit or refuse, never wait. The provider limits are [`Limit`]s asked
//! before every try: the sender rate, then the per-recipient rate (last, so its slot is taken
//! right before the send); they answer *go* or *wait until*, and a wait that would pass the
//! request's latest useful send time is not taken.

mod abuse;
mod provider;

pub use abuse::{Abuse, AbuseConfig, Refusal, WindowRule};
pub use provider::{RecipientLimit, SenderLimit};

use otp_events::ErrorCategory;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Provider rate limits of one worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sends per second to the provider for the whole fleet of this channel's workers (the
    /// sender limit). Each worker takes the share of the partitions it owns.
    pub sender_per_second: u32,
    /// Sends that may go out at once after an idle spell (shared the same way).
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

/// What limits look at: derived from the request once, with no phone number in it.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Keyed hash of the phone number.
    pub phone_key: String,
    /// Keyed hash of the number without its last 4 digits (a number range).
    pub prefix_key: String,
    /// ISO country of the calling code, when known.
    pub country: Option<String>,
    /// Premium-rate or shared-cost number, where the numbering plan says so.
    pub premium: bool,
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
    /// Name used as the error code in statuses and as the `rule` metric label.
    fn rule(&self) -> &'static str;
    fn check(&self, subject: &Subject) -> Decision;
    /// Whether a retry of a failed send must pass this limit again. A failed send delivered
    /// nothing to the recipient, so per-recipient limits count only first tries.
    fn applies_to_retries(&self) -> bool {
        true
    }
}

/// Refused by `rule`. `category` is `rate_limited` or `blocked`; `waited_too_long` tells a
/// provider limit whose wait would pass the deadline (the request may fall back) from an
/// abuse refusal (the request fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub rule: &'static str,
    pub category: ErrorCategory,
    pub waited_too_long: bool,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.waited_too_long {
            write!(
                f,
                "rate limit {} would delay the send past the code's deadline",
                self.rule
            )
        } else {
            write!(f, "refused by the {} rule", self.rule)
        }
    }
}

impl std::error::Error for Limited {}

/// Which kind of send is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The request's first try on its first channel.
    First,
    /// The first try on a channel after a fallback.
    Fallback,
    /// A retry after a failed send.
    Retry,
    /// A try after the provider's pair-rate answer: the recipient's window applies again.
    AfterPairLimit,
}

/// The recipient window waited for after a pair-rate answer when no `recipient_period` is
/// configured: Meta's figure, about one message per 6 s to one user.
const DEFAULT_PAIR_PERIOD: Duration = Duration::from_secs(6);

pub struct Limiter {
    abuse: Abuse,
    /// The provider limits, in the order they are asked.
    limits: Vec<Arc<dyn Limit>>,
    sender: Arc<SenderLimit>,
    /// The recipient window a try waits for after the provider's pair-rate answer: the
    /// configured per-recipient limit (the same one, shared), or one of Meta's period.
    pair: Arc<RecipientLimit>,
}

impl Limiter {
    pub fn new(limits: &LimitsConfig, abuse: &AbuseConfig) -> Self {
        let sender = Arc::new(SenderLimit::new(
            limits.sender_per_second,
            limits.sender_burst,
        ));
        let mut all: Vec<Arc<dyn Limit>> = vec![Arc::new(sender.clone())];
        let pair = Arc::new(RecipientLimit::new(
            limits.recipient_period.unwrap_or(DEFAULT_PAIR_PERIOD),
        ));
        if limits.recipient_period.is_some() {
            all.push(pair.clone());
        }
        Self {
            abuse: Abuse::new(abuse),
            limits: all,
            sender,
            pair,
        }
    }

    /// The abuse rules' answer for a request's first try on its first channel (counting it
    /// when they admit it). A fallback was counted on its first channel, and a retry with its
    /// first try: both pass.
    pub fn admit(&self, subject: &Subject, attempt: Attempt) -> Result<(), Limited> {
        if attempt != Attempt::First {
            return Ok(());
        }
        self.abuse
            .admit(subject, Instant::now())
            .map_err(|Refusal { rule, category }| {
                metrics::counter!("otp_limited_total", "rule" => rule).increment(1);
                Limited {
                    rule,
                    category,
                    waited_too_long: false,
                }
            })
    }

    /// Count a request that another worker of the fleet admitted at `at`.
    pub fn admitted_elsewhere(&self, subject: &Subject, at: Instant) {
        self.abuse.record(subject, at);
    }

    /// How far back admissions made elsewhere still count; `None` without window rules.
    pub fn abuse_lookback(&self) -> Option<Duration> {
        self.abuse.longest_window()
    }

    /// The provider refused a send to `subject` for its pair rate: its window starts now
    /// (unless a send of ours already started it), and the next try waits for it.
    pub fn pair_limited(&self, subject: &Subject) {
        let _ = self.pair.check(subject);
    }

    /// Take `owned` of the topic's `total` partitions' share of the fleet's sender rate.
    pub fn set_sender_share(&self, owned: usize, total: usize) {
        self.sender.set_share(owned, total);
    }

    /// The provider says we are over a rate window: slow the sender rate down.
    pub fn throttled(&self) {
        self.sender.slow_down(Instant::now());
    }

    /// Pass every provider limit that applies to `attempt`, waiting as needed, never past
    /// `latest`.
    pub async fn acquire(
        &self,
        subject: &Subject,
        latest: Instant,
        attempt: Attempt,
    ) -> Result<(), Limited> {
        let applies = |l: &dyn Limit| match attempt {
            Attempt::First | Attempt::Fallback => true,
            Attempt::Retry | Attempt::AfterPairLimit => l.applies_to_retries(),
        };
        // After a pair-rate answer the recipient's window comes first, whatever is configured.
        let pair = (attempt == Attempt::AfterPairLimit).then(|| self.pair.as_ref() as &dyn Limit);
        let others = self
            .limits
            .iter()
            .map(|l| l.as_ref())
            .filter(|l| applies(*l));
        for limit in pair.into_iter().chain(others) {
            loop {
                match limit.check(subject) {
                    Decision::Go => break,
                    Decision::WaitUntil(when) if when > latest => {
                        metrics::counter!("otp_limited_total", "rule" => limit.rule()).increment(1);
                        return Err(Limited {
                            rule: limit.rule(),
                            category: ErrorCategory::RateLimited,
                            waited_too_long: true,
                        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(phone_key: &str) -> Subject {
        Subject {
            phone_key: phone_key.into(),
            prefix_key: "p".into(),
            country: Some("US".into()),
            premium: false,
        }
    }

    fn no_abuse() -> AbuseConfig {
        AbuseConfig {
            per_phone: None,
            per_prefix: None,
            ..AbuseConfig::default()
        }
    }

    #[tokio::test]
    async fn a_wait_past_the_deadline_is_refused_not_taken() {
        let limiter = Limiter::new(
            &LimitsConfig {
                sender_per_second: 1,
                sender_burst: 1,
                recipient_period: None,
            },
            &no_abuse(),
        );
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(limiter
            .acquire(&subject("a"), soon, Attempt::First)
            .await
            .is_ok());
        let started = Instant::now();
        let err = limiter
            .acquire(&subject("b"), soon, Attempt::First)
            .await
            .unwrap_err();
        assert_eq!((err.rule, err.waited_too_long), ("sender_rate", true));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "refused without waiting"
        );
    }

    #[tokio::test]
    async fn recipient_limit_is_per_key_and_skips_retries() {
        let limiter = Limiter::new(
            &LimitsConfig {
                sender_per_second: 1000,
                sender_burst: 100,
                recipient_period: Some(Duration::from_secs(6)),
            },
            &no_abuse(),
        );
        let latest = Instant::now() + Duration::from_secs(1);
        assert!(limiter
            .acquire(&subject("alice"), latest, Attempt::First)
            .await
            .is_ok());
        assert!(limiter
            .acquire(&subject("bob"), latest, Attempt::First)
            .await
            .is_ok());
        let err = limiter
            .acquire(&subject("alice"), latest, Attempt::First)
            .await
            .unwrap_err();
        assert_eq!(err.rule, "recipient_rate");
        assert!(limiter
            .acquire(&subject("alice"), latest, Attempt::Retry)
            .await
            .is_ok());
    }
}
