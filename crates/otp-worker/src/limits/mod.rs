//! Limits checked before a send: our own abuse limits, so that nobody can use our login codes
//! to pump SMS fees, and the providers' rate limits, so they never have to reject us.
//!
//! The abuse rules ([`Abuse`]) are asked once per request, on its first channel, before its id
//! is claimed: they admit or refuse, never wait. The provider limits are asked before every
//! try ([`Limiter::acquire`]): a slot of the sender rate (first come, first served), then the
//! recipient's pair window at that slot; a wait that would pass the request's latest useful
//! send time is not taken.

mod abuse;
mod provider;
mod schedule;

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
    /// The provider's burst: sends that may go out at once after an idle spell (shared the
    /// same way). A worker uses half of it; the other half absorbs the network's jitter, so
    /// the provider never sees more than its limit.
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
    sender: SenderLimit,
    /// The recipient window: the configured per-recipient limit, or (asked only after the
    /// provider's pair-rate answer) one of Meta's period.
    pair: Arc<RecipientLimit>,
    /// Whether every first try passes the recipient window (`recipient_period` configured).
    pair_always: bool,
}

/// Rounds of "sender slot, then the recipient was not free" before a try gives up: each round
/// waits for the recipient, so this is reached only when requests for one recipient race.
const MAX_ROUNDS: u32 = 8;

impl Limiter {
    pub fn new(limits: &LimitsConfig, abuse: &AbuseConfig) -> Self {
        // Every rule's series from the start (zero until it refuses), and the slow-downs.
        for rule in Abuse::new(abuse)
            .rules()
            .into_iter()
            .chain(["sender_rate", "recipient_rate"])
        {
            metrics::counter!("otp_limited_total", "rule" => rule).increment(0);
        }
        metrics::counter!("otp_sender_slow_downs_total").increment(0);
        metrics::counter!("otp_sender_paced_total").increment(0);
        Self {
            abuse: Abuse::new(abuse),
            sender: SenderLimit::new(limits.sender_per_second, limits.sender_burst),
            pair: Arc::new(RecipientLimit::new(
                limits.recipient_period.unwrap_or(DEFAULT_PAIR_PERIOD),
            )),
            pair_always: limits.recipient_period.is_some(),
        }
    }

    /// The abuse rules' answer for a request's first try on its first channel (counting it
    /// when they admit it). A proven fallback was counted on its first channel, and a retry
    /// with its first try: they meet the destination rules only.
    pub fn admit(&self, subject: &Subject, attempt: Attempt) -> Result<(), Limited> {
        let answer = match attempt {
            Attempt::First => self.abuse.admit(subject, Instant::now()),
            // A proven fallback passed the counts on its first channel; the destination
            // rules hold for every try.
            _ => self.abuse.destination(subject),
        };
        answer.map_err(|Refusal { rule, category }| {
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
        let _ = self.pair.take(subject);
    }

    /// Take `owned` of the topic's `total` partitions' share of the fleet's sender rate.
    pub fn set_sender_share(&self, owned: usize, total: usize) {
        self.sender.set_share(owned, total);
    }

    /// The provider says we are over a rate window: slow the sender rate down.
    pub fn throttled(&self) {
        self.sender.slow_down(Instant::now());
    }

    /// Pass the provider limits that apply to `attempt`, waiting as needed, never past
    /// `latest`: a slot of the sender rate, first come, first served, paced at the instant it
    /// comes; then the recipient's pair window (first tries and fallbacks when configured, and
    /// every try after the provider's pair-rate answer; a failed send delivered nothing, so
    /// retries skip it).
    ///
    /// The recipient is asked last, right before the send, so neither limit is
    /// taken long before the send it counts. A recipient that is not free costs that sender
    /// slot (the fleet then sends less than its rate, never more), and the try waits for the
    /// recipient and takes a new slot.
    pub async fn acquire(
        &self,
        subject: &Subject,
        latest: Instant,
        attempt: Attempt,
    ) -> Result<(), Limited> {
        self.acquire_in_line(subject, latest, attempt, ()).await
    }

    /// [`Limiter::acquire`], holding `in_line` until the sender slot is reserved (or refused)
    /// and dropping it then: the caller's turn among messages that must reserve in order.
    pub async fn acquire_in_line<T>(
        &self,
        subject: &Subject,
        latest: Instant,
        attempt: Attempt,
        in_line: T,
    ) -> Result<(), Limited> {
        let mut in_line = Some(in_line);
        let pair = match attempt {
            Attempt::First | Attempt::Fallback => self.pair_always,
            Attempt::AfterPairLimit => true,
            Attempt::Retry => false,
        };
        let refused = |rule: &'static str| {
            metrics::counter!("otp_limited_total", "rule" => rule).increment(1);
            Err(Limited {
                rule,
                category: ErrorCategory::RateLimited,
                waited_too_long: true,
            })
        };
        for _ in 0..MAX_ROUNDS {
            let reserved = self.sender.reserve(latest);
            drop(in_line.take());
            match reserved {
                Ok(slot) => sleep_until(slot).await,
                Err(_) => return refused("sender_rate"),
            }
            // The slot has come; if the process stalled on the way, the send still leaves
            // no faster than the rate allows.
            match self.sender.pace(latest) {
                Ok(at) => sleep_until(at).await,
                Err(_) => return refused("sender_rate"),
            }
            // The recipient last, right before the send, so that its window starts when the
            // send leaves.
            if pair {
                match self.pair.take(subject) {
                    None => {}
                    Some(free) if free > latest => return refused("recipient_rate"),
                    Some(free) => {
                        sleep_until(free).await;
                        continue;
                    }
                }
            }
            return Ok(());
        }
        refused("recipient_rate")
    }
}

async fn sleep_until(at: Instant) {
    if at > Instant::now() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
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
                // A worker uses half the burst: one send at once.
                sender_burst: 2,
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

    /// A proven fallback skips the counts it passed on its first channel, never the
    /// destination rules: the tracker signs fallbacks for what it reads, and what it reads can
    /// be forged.
    #[test]
    fn a_fallback_meets_the_destination_rules_but_not_the_counts() {
        let limits = LimitsConfig {
            sender_per_second: 1000,
            sender_burst: 100,
            recipient_period: None,
        };
        let limiter = Limiter::new(
            &limits,
            &AbuseConfig {
                per_phone: Some(WindowRule {
                    count: 1,
                    window: Duration::from_secs(600),
                }),
                per_prefix: None,
                deny_countries: vec!["GB".into()],
                ..AbuseConfig::default()
            },
        );
        let premium = Subject {
            premium: true,
            ..subject("premium")
        };
        let denied = Subject {
            country: Some("GB".into()),
            ..subject("denied")
        };
        for refused in [&premium, &denied] {
            let err = limiter.admit(refused, Attempt::Fallback).unwrap_err();
            assert_eq!(err.rule, "destination", "{refused:?}");
        }
        // The per-phone count (1) is spent by the first try; the fallback is not counted again.
        assert!(limiter.admit(&subject("alice"), Attempt::First).is_ok());
        assert!(limiter.admit(&subject("alice"), Attempt::Fallback).is_ok());
        assert_eq!(
            limiter
                .admit(&subject("alice"), Attempt::First)
                .unwrap_err()
                .rule,
            "per_phone"
        );
    }
}
