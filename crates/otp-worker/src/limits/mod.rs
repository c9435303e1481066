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

use otp_events::{ErrorCategory, Provider};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One provider's rate limits, in force.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sends per second to the provider for the whole fleet of this channel's workers (the
    /// sender limit). Each worker takes the share of the partitions it owns.
    pub sender_per_second: u32,
    /// The provider's burst: sends that may go out at once after an idle spell (shared the
    /// same way). A worker uses half of it; the other half absorbs the network's jitter, so
    /// the provider never sees more than its limit.
    pub sender_burst: u32,
    /// At most one send per this period to one recipient (WhatsApp's pair limit); none when
    /// absent.
    #[serde(default, with = "humantime_serde")]
    pub recipient_period: Option<Duration>,
}

/// Limits as an operator writes them: every field optional, each one given replacing only
/// that field of the provider's defaults (an operator who sets only a rate keeps the pair
/// period and the burst).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// Sends per second to the provider for the whole fleet (see [`LimitsConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_per_second: Option<u32>,
    /// The provider's burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_burst: Option<u32>,
    /// At most one send per this period to one recipient.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub recipient_period: Option<Duration>,
}

impl LimitsPatch {
    /// `base` with every field this patch gives replaced.
    pub fn over(&self, base: &LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            sender_per_second: self.sender_per_second.unwrap_or(base.sender_per_second),
            sender_burst: self.sender_burst.unwrap_or(base.sender_burst),
            recipient_period: self.recipient_period.or(base.recipient_period),
        }
    }

    /// All of `limits`, as a patch that gives every field.
    pub fn all_of(limits: &LimitsConfig) -> Self {
        Self {
            sender_per_second: Some(limits.sender_per_second),
            sender_burst: Some(limits.sender_burst),
            recipient_period: limits.recipient_period,
        }
    }
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
    /// Each provider's sender limit: its own rate and burst, shared across the fleet.
    senders: Vec<(Provider, SenderLimit)>,
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
    /// Limits for `providers`, each with its own sender limit. The recipient window is the
    /// first provider's (a channel with a pair limit has one provider).
    pub fn new(providers: &[(Provider, LimitsConfig)], abuse: &AbuseConfig) -> Self {
        assert!(!providers.is_empty(), "a channel has a provider");
        let limits = &providers[0].1;
        // Every rule's series from the start (zero until it refuses), and the slow-downs.
        for rule in Abuse::new(abuse)
            .rules()
            .into_iter()
            .chain(["sender_rate", "recipient_rate"])
        {
            metrics::counter!("otp_limited_total", "rule" => rule).increment(0);
        }
        Self {
            abuse: Abuse::new(abuse),
            senders: providers
                .iter()
                .map(|(p, l)| {
                    (
                        *p,
                        SenderLimit::new(p.as_str(), l.sender_per_second, l.sender_burst),
                    )
                })
                .collect(),
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

    /// Take `owned` of the topic's `total` partitions' share of every provider's sender rate.
    pub fn set_sender_share(&self, owned: usize, total: usize) {
        for (_, sender) in &self.senders {
            sender.set_share(owned, total);
        }
    }

    /// `provider` says we are over a rate window: slow its sender rate down (every
    /// provider's when `None`: a signal that does not say whose).
    pub fn throttled(&self, provider: Option<Provider>) {
        for (p, sender) in &self.senders {
            if provider.is_none_or(|named| named == *p) {
                sender.slow_down(Instant::now());
            }
        }
    }

    fn sender(&self, provider: Provider) -> &SenderLimit {
        self.senders
            .iter()
            .find(|(p, _)| *p == provider)
            .map(|(_, s)| s)
            .unwrap_or(&self.senders[0].1)
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
        provider: Provider,
        subject: &Subject,
        latest: Instant,
        attempt: Attempt,
    ) -> Result<(), Limited> {
        self.acquire_in_line(provider, subject, latest, attempt, ())
            .await
    }

    /// [`Limiter::acquire`], holding `in_line` until the sender slot is reserved (or refused)
    /// and dropping it then: the caller's turn among messages that must reserve in order.
    pub async fn acquire_in_line<T>(
        &self,
        provider: Provider,
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
            let sender = self.sender(provider);
            let reserved = sender.reserve(latest);
            drop(in_line.take());
            match reserved {
                Ok(slot) => sleep_until(slot).await,
                Err(_) => return refused("sender_rate"),
            }
            // The slot has come; if the process stalled on the way, the send still leaves
            // no faster than the rate allows.
            match sender.pace(latest) {
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
            &[(
                Provider::Twilio,
                LimitsConfig {
                    sender_per_second: 1,
                    // A worker uses half the burst: one send at once.
                    sender_burst: 2,
                    recipient_period: None,
                },
            )],
            &no_abuse(),
        );
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(limiter
            .acquire(Provider::Twilio, &subject("a"), soon, Attempt::First)
            .await
            .is_ok());
        let started = Instant::now();
        let err = limiter
            .acquire(Provider::Twilio, &subject("b"), soon, Attempt::First)
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
            &[(
                Provider::Twilio,
                LimitsConfig {
                    sender_per_second: 1000,
                    sender_burst: 100,
                    recipient_period: Some(Duration::from_secs(6)),
                },
            )],
            &no_abuse(),
        );
        let latest = Instant::now() + Duration::from_secs(1);
        assert!(limiter
            .acquire(Provider::Twilio, &subject("alice"), latest, Attempt::First)
            .await
            .is_ok());
        assert!(limiter
            .acquire(Provider::Twilio, &subject("bob"), latest, Attempt::First)
            .await
            .is_ok());
        let err = limiter
            .acquire(Provider::Twilio, &subject("alice"), latest, Attempt::First)
            .await
            .unwrap_err();
        assert_eq!(err.rule, "recipient_rate");
        assert!(limiter
            .acquire(Provider::Twilio, &subject("alice"), latest, Attempt::Retry)
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
            &[(Provider::Twilio, limits)],
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

#[cfg(test)]
mod merge_tests {
    use super::*;

    /// An operator who sets only a rate keeps the provider's pair period and burst.
    #[test]
    fn a_patch_replaces_only_the_fields_it_gives() {
        let whatsapp = LimitsConfig {
            sender_per_second: 80,
            sender_burst: 10,
            recipient_period: Some(Duration::from_secs(6)),
        };
        let patch: LimitsPatch = toml::from_str("sender_per_second = 50").unwrap();
        let merged = patch.over(&whatsapp);
        assert_eq!(merged.sender_per_second, 50);
        assert_eq!(merged.sender_burst, 10);
        assert_eq!(merged.recipient_period, Some(Duration::from_secs(6)));
        assert_eq!(LimitsPatch::all_of(&merged).over(&whatsapp), merged);
        let err = toml::from_str::<LimitsPatch>("sender_per_secnd = 5").unwrap_err();
        assert!(err.to_string().contains("sender_per_secnd"), "{err}");
    }

    #[tokio::test]
    async fn each_provider_has_its_own_sender_rate() {
        let slow = LimitsConfig {
            sender_per_second: 1,
            sender_burst: 2,
            recipient_period: None,
        };
        let fast = LimitsConfig {
            sender_per_second: 1000,
            sender_burst: 100,
            recipient_period: None,
        };
        let abuse = AbuseConfig {
            per_phone: None,
            per_prefix: None,
            ..AbuseConfig::default()
        };
        let limiter = Limiter::new(
            &[(Provider::Twilio, slow), (Provider::Vonage, fast)],
            &abuse,
        );
        let subject = Subject {
            phone_key: "k".into(),
            prefix_key: "p".into(),
            country: Some("US".into()),
            premium: false,
        };
        let soon = Instant::now() + Duration::from_millis(100);
        let twilio = || limiter.acquire(Provider::Twilio, &subject, soon, Attempt::Retry);
        assert!(twilio().await.is_ok());
        assert_eq!(
            twilio().await.unwrap_err().rule,
            "sender_rate",
            "Twilio's 1/s is spent"
        );
        for _ in 0..20 {
            let vonage = limiter.acquire(Provider::Vonage, &subject, soon, Attempt::Retry);
            assert!(vonage.await.is_ok(), "Vonage's own rate");
        }
    }
}
