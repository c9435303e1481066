//! Which providers deliver slowly to a country, from the time between acceptance and the
//! delivered receipt, compared with their peers (GOV.UK Notify's "slow delivery" rule, with
//! windows sized for codes that live minutes).
//!
//! Per (channel, provider, destination country) it keeps the delivery times of the last
//! `window`. Every `check_every`, in each (channel, country) where at least two providers have
//! `min_samples` each, a provider whose 95th percentile is more than twice the best one's (and
//! above [`FLOOR_MS`]) is slow there: the tracker tells the workers (a `slow` channel signal),
//! which move weight away from it in that country. The best provider is never slow, so when
//! every provider of a country is slow, nothing moves. Bounded: at most [`MAX_SAMPLES`] per
//! key, and keys per provider by the ISO countries of the numbering plan (at most
//! [`MAX_COUNTRIES`]).

use chrono::{DateTime, Duration, Utc};
use otp_events::{Channel, Provider};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Delivery times kept per (channel, provider, country).
pub const MAX_SAMPLES: usize = 512;
/// Countries tracked per provider.
pub const MAX_COUNTRIES: usize = 300;
/// A provider is never called slow under this 95th percentile (ms): a few seconds is a
/// good delivery, however much faster a peer is.
pub const FLOOR_MS: i64 = 5_000;
/// How many times the best provider's 95th percentile makes a provider slow.
pub const RATIO: f64 = 2.0;

#[derive(Debug, Clone)]
pub struct SlowConfig {
    pub window: Duration,
    pub min_samples: usize,
    pub check_every: Duration,
}

type Key = (Channel, Provider, String);

/// One provider found slow in one country.
#[derive(Debug, Clone, PartialEq)]
pub struct Slow {
    pub channel: Channel,
    pub provider: Provider,
    pub country: String,
    pub p95_ms: i64,
    pub best_p95_ms: i64,
}

pub struct Slowness {
    config: SlowConfig,
    samples: HashMap<Key, VecDeque<(DateTime<Utc>, i64)>>,
    last_check: Option<DateTime<Utc>>,
}

impl Slowness {
    pub fn new(config: SlowConfig) -> Self {
        Self {
            config,
            samples: HashMap::new(),
            last_check: None,
        }
    }

    /// A delivery through `provider` to `country`, `latency_ms` after acceptance.
    pub fn observe(
        &mut self,
        channel: Channel,
        provider: Provider,
        country: String,
        latency_ms: i64,
        at: DateTime<Utc>,
    ) {
        let key = (channel, provider, country);
        if !self.samples.contains_key(&key) {
            let countries = self
                .samples
                .keys()
                .filter(|(_, p, _)| *p == provider)
                .count();
            if countries >= MAX_COUNTRIES {
                return;
            }
        }
        let samples = self.samples.entry(key).or_default();
        if samples.len() >= MAX_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((at, latency_ms.max(0)));
    }

    /// The providers slow in a country now, once per `check_every` (empty between).
    pub fn check(&mut self, now: DateTime<Utc>) -> Vec<Slow> {
        if self
            .last_check
            .is_some_and(|last| now - last < self.config.check_every)
        {
            return Vec::new();
        }
        self.last_check = Some(now);
        let window = self.config.window;
        self.samples.retain(|_, samples| {
            while samples.front().is_some_and(|(at, _)| now - *at > window) {
                samples.pop_front();
            }
            !samples.is_empty()
        });
        let mut by_country: BTreeMap<(Channel, String), Vec<(Provider, i64)>> = BTreeMap::new();
        for ((channel, provider, country), samples) in &self.samples {
            if samples.len() < self.config.min_samples {
                continue;
            }
            let mut times: Vec<i64> = samples.iter().map(|(_, ms)| *ms).collect();
            times.sort_unstable();
            let p95 = times[((times.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)];
            by_country
                .entry((*channel, country.clone()))
                .or_default()
                .push((*provider, p95));
        }
        let mut slow = Vec::new();
        for ((channel, country), providers) in by_country {
            if providers.len() < 2 {
                continue;
            }
            let best = providers.iter().map(|(_, p95)| *p95).min().unwrap_or(0);
            for (provider, p95) in providers {
                if p95 > FLOOR_MS && p95 as f64 > RATIO * best as f64 {
                    slow.push(Slow {
                        channel,
                        provider,
                        country: country.clone(),
                        p95_ms: p95,
                        best_p95_ms: best,
                    });
                }
            }
        }
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Provider::{Twilio, Vonage};

    fn slowness() -> Slowness {
        Slowness::new(SlowConfig {
            window: Duration::seconds(60),
            min_samples: 5,
            check_every: Duration::seconds(10),
        })
    }

    fn feed(
        s: &mut Slowness,
        provider: Provider,
        country: &str,
        ms: i64,
        n: usize,
        at: DateTime<Utc>,
    ) {
        for _ in 0..n {
            s.observe(Channel::Sms, provider, country.into(), ms, at);
        }
    }

    #[test]
    fn a_provider_much_slower_than_its_peer_in_a_country_is_slow_there_only() {
        let mut s = slowness();
        let now = Utc::now();
        feed(&mut s, Twilio, "DE", 20_000, 10, now);
        feed(&mut s, Vonage, "DE", 1_500, 10, now);
        feed(&mut s, Twilio, "US", 1_000, 10, now);
        feed(&mut s, Vonage, "US", 1_200, 10, now);
        let slow = s.check(now);
        assert_eq!(slow.len(), 1, "{slow:?}");
        assert_eq!((slow[0].provider, slow[0].country.as_str()), (Twilio, "DE"));
        assert!(s.check(now).is_empty(), "once per check_every");
    }

    #[test]
    fn when_every_provider_is_slow_or_samples_are_few_nothing_moves() {
        let mut s = slowness();
        let now = Utc::now();
        feed(&mut s, Twilio, "DE", 40_000, 10, now);
        feed(&mut s, Vonage, "DE", 30_000, 10, now);
        feed(&mut s, Twilio, "FR", 40_000, 10, now);
        feed(&mut s, Vonage, "FR", 1_000, 4, now); // under min_samples
        feed(&mut s, Twilio, "IT", 4_000, 10, now); // under the floor
        feed(&mut s, Vonage, "IT", 500, 10, now);
        assert!(s.check(now).is_empty());
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut s = slowness();
        let then = Utc::now() - Duration::seconds(120);
        feed(&mut s, Twilio, "DE", 20_000, 10, then);
        feed(&mut s, Vonage, "DE", 1_000, 10, then);
        assert!(s.check(Utc::now()).is_empty());
        assert!(s.samples.is_empty(), "forgotten");
    }
}
