//! The weights in force: each provider's configured weight in a country, times a factor that
//! drops when the provider is worse than its peers there and drifts back when it is not.
//!
//! GOV.UK Notify moves priority away from a provider with many errors or slow deliveries,
//! and tends it back to the middle every few minutes. Here, per (provider, country):
//! - **Slow:** the confirmation tracker compares delivery times per provider and country and
//!   signals the one much slower than its peers there.
//! - **Errors:** each send's answer is tallied over `error_window`. A provider whose share of
//!   failed sends is at least `error_margin` above its best peer's in the same route (both
//!   with `error_min_sends` sends in the window) is worse than its peers.
//!
//! - **Conversion:** each of this worker's sends is judged once its code had time to be
//!   entered (`crate::conversion`). A provider whose share of codes not entered over
//!   `conversion_window` is at least `conversion_margin` above its best peer's there (both with
//!   `conversion_min_sends` judged sends) is worse: receipts can say `delivered` while users
//!   get nothing, and only conversion shows it.
//!
//! Any of them halves its factor there, at most once per `demote_every`, down to
//! [`LOWEST_FACTOR`]; it doubles back every `recover_every` without another demotion, up to
//! one. The best provider of a country is never worse than its peers, so when all are
//! equally bad, nothing moves. A provider whose peers have no sends to compare with keeps its weight:
//! failover already moves its refused sends, which gives the peers their sends.
//!
//! Bounded: keyed by provider and ISO country (from the numbering plan, never user text), at
//! most [`MAX_COUNTRIES`] countries per provider in each map.

use super::RoutesConfig;
use crate::tally::Tally;
use otp_events::Provider;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lowest share of its weight a bad provider keeps.
pub const LOWEST_FACTOR: f64 = 1.0 / 16.0;
/// Countries tracked per provider (ISO 3166 has 249).
const MAX_COUNTRIES: usize = 300;

/// Why a provider lost weight in a country: the `reason` label of
/// `otp_route_demotions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demotion {
    /// Slower to deliver than its peers there (the tracker's signal).
    Slow,
    /// A larger share of failed sends than its best peer there.
    Errors,
    /// A smaller share of its codes entered than its best peer's there: a grey route that
    /// says `delivered` while users get nothing.
    Conversion,
}

impl Demotion {
    fn as_str(self) -> &'static str {
        match self {
            Demotion::Slow => "slow",
            Demotion::Errors => "errors",
            Demotion::Conversion => "conversion",
        }
    }
}

/// A provider's factor in one country: the factor set at `since`.
#[derive(Debug, Clone, Copy)]
struct Lowered {
    factor: f64,
    since: Instant,
}

type Key = (Provider, String);

#[derive(Debug)]
pub(super) struct Weights {
    demote_every: Duration,
    recover_every: Duration,
    lowered: Mutex<HashMap<Key, Lowered>>,
    /// Failed sends against the peers'.
    errors: Comparison,
    /// Codes not entered against the peers'.
    unconverted: Comparison,
}

/// A share of bad outcomes per (provider, country) over a window, compared with the best peer's.
#[derive(Debug)]
struct Comparison {
    window: Duration,
    min_sends: u32,
    margin: f64,
    reason: Demotion,
    tallies: Mutex<HashMap<Key, Tally>>,
}

impl Comparison {
    fn new(window: Duration, min_sends: u32, margin: f64, reason: Demotion) -> Self {
        Self {
            window: window.max(Duration::from_millis(1)),
            min_sends: min_sends.max(1),
            margin,
            reason,
            tallies: Mutex::new(HashMap::new()),
        }
    }

    /// Count one outcome; whether `provider`'s bad share in `country` is now `margin` above
    /// the best of `peers` with enough outcomes. Only a bad outcome can make it worse.
    fn worse(
        &self,
        provider: Provider,
        country: &str,
        bad: bool,
        peers: impl Iterator<Item = Provider>,
        now: Instant,
    ) -> bool {
        let mut tallies = self.tallies.lock().expect("weights lock");
        let key = (provider, country.to_string());
        if !tallies.contains_key(&key) && at_bound(&tallies, provider) {
            return false;
        }
        let (good, bads) = tallies.entry(key).or_default().count(bad, now, self.window);
        let Some(share) = self.share(good, bads) else {
            return false;
        };
        let mut best_peer: Option<f64> = None;
        for peer in peers {
            if let Some(tally) = tallies.get_mut(&(peer, country.to_string())) {
                let (g, b) = tally.at(now, self.window);
                if let Some(peer_share) = self.share(g, b) {
                    best_peer = Some(best_peer.map_or(peer_share, |s| s.min(peer_share)));
                }
            }
        }
        bad && best_peer.is_some_and(|best| share - best >= self.margin)
    }

    /// The bad share of a window's outcomes, when there are enough of them to compare.
    fn share(&self, good: u32, bad: u32) -> Option<f64> {
        let n = good + bad;
        (n >= self.min_sends).then(|| f64::from(bad) / f64::from(n))
    }
}

impl Weights {
    pub(super) fn new(config: &RoutesConfig) -> Self {
        Self {
            demote_every: config.demote_every,
            recover_every: config.recover_every.max(Duration::from_millis(1)),
            lowered: Mutex::new(HashMap::new()),
            errors: Comparison::new(
                config.error_window,
                config.error_min_sends,
                config.error_margin,
                Demotion::Errors,
            ),
            unconverted: Comparison::new(
                config.conversion_window,
                config.conversion_min_sends,
                config.conversion_margin,
                Demotion::Conversion,
            ),
        }
    }

    /// `provider` is worse than its peers in `country`: halve its factor there, unless it was
    /// halved less than `demote_every` ago.
    pub(super) fn demote(&self, provider: Provider, country: &str, why: Demotion, now: Instant) {
        let mut lowered = self.lowered.lock().expect("weights lock");
        let key = (provider, country.to_string());
        let current = lowered.get(&key).copied();
        if current.is_some_and(|d| now.saturating_duration_since(d.since) < self.demote_every) {
            return;
        }
        if current.is_none() && at_bound(&lowered, provider) {
            return;
        }
        let factor = current.map_or(1.0, |d| self.factor_of(d, now));
        let next = Lowered {
            factor: (factor / 2.0).max(LOWEST_FACTOR),
            since: now,
        };
        tracing::warn!(%provider, country, factor = next.factor, reason = why.as_str(), "route weight lowered");
        metrics::counter!("otp_route_demotions_total", "provider" => provider.as_str(), "country" => country.to_string(), "reason" => why.as_str())
            .increment(1);
        metrics::gauge!("otp_route_weight_factor", "provider" => provider.as_str(), "country" => country.to_string())
            .set(next.factor);
        lowered.insert(key, next);
    }

    /// A send's answer (see [`super::Routes::answered`]); demotes `provider` when its error
    /// share in `country` is `error_margin` above the best of `peers` with enough sends.
    pub(super) fn answered(
        &self,
        provider: Provider,
        country: &str,
        failed: bool,
        peers: impl Iterator<Item = Provider>,
        now: Instant,
    ) {
        self.compare(&self.errors, provider, country, failed, peers, now);
    }

    /// A send judged for conversion (see [`super::Routes::judged`]); demotes `provider` when
    /// its share of codes not entered in `country` is `conversion_margin` above the best of
    /// `peers` with enough judged sends.
    pub(super) fn judged(
        &self,
        provider: Provider,
        country: &str,
        verified: bool,
        peers: impl Iterator<Item = Provider>,
        now: Instant,
    ) {
        self.compare(&self.unconverted, provider, country, !verified, peers, now);
    }

    fn compare(
        &self,
        comparison: &Comparison,
        provider: Provider,
        country: &str,
        bad: bool,
        peers: impl Iterator<Item = Provider>,
        now: Instant,
    ) {
        if comparison.worse(provider, country, bad, peers, now) {
            self.demote(provider, country, comparison.reason, now);
        }
    }

    /// The share of its configured weight `provider` has in `country` now (1 when not
    /// demoted), forgetting demotions that have drifted all the way back.
    pub(super) fn factor(&self, provider: Provider, country: &str, now: Instant) -> f64 {
        let mut lowered = self.lowered.lock().expect("weights lock");
        let key = (provider, country.to_string());
        let Some(d) = lowered.get(&key).copied() else {
            return 1.0;
        };
        let factor = self.factor_of(d, now);
        if factor >= 1.0 {
            lowered.remove(&key);
            metrics::gauge!("otp_route_weight_factor", "provider" => provider.as_str(), "country" => country.to_string())
                .set(1.0);
        }
        factor
    }

    /// A demotion's factor at `now`: doubled for every `recover_every` since it was set.
    fn factor_of(&self, d: Lowered, now: Instant) -> f64 {
        let periods =
            now.saturating_duration_since(d.since).as_secs_f64() / self.recover_every.as_secs_f64();
        (d.factor * 2f64.powi(periods.floor().min(16.0) as i32)).min(1.0)
    }
}

/// `provider`'s series in `country` at their resting values: factor 1, no demotions.
pub(super) fn export_baseline(provider: Provider, country: &str) {
    let p = provider.as_str();
    metrics::gauge!("otp_route_weight_factor", "provider" => p, "country" => country.to_string())
        .set(1.0);
    for why in [Demotion::Slow, Demotion::Errors, Demotion::Conversion] {
        metrics::counter!("otp_route_demotions_total", "provider" => p, "country" => country.to_string(), "reason" => why.as_str())
            .absolute(0);
    }
}

/// Whether `provider` already has [`MAX_COUNTRIES`] entries in `map`.
fn at_bound<V>(map: &HashMap<Key, V>, provider: Provider) -> bool {
    map.keys().filter(|(p, _)| *p == provider).count() >= MAX_COUNTRIES
}

#[cfg(test)]
mod tests {
    use super::*;
    use Provider::{Twilio, Vonage};

    fn weights(toml_text: &str) -> Weights {
        Weights::new(&toml::from_str(toml_text).unwrap())
    }

    /// A slow provider loses half its weight per signal (not more often than `demote_every`),
    /// down to a sixteenth, in that country only, and doubles back every `recover_every`.
    #[test]
    fn a_slow_provider_loses_weight_in_its_country_and_drifts_back() {
        let w = weights("demote_every = \"10s\"\nrecover_every = \"60s\"");
        let t0 = Instant::now();
        w.demote(Twilio, "DE", Demotion::Slow, t0);
        assert_eq!(w.factor(Twilio, "DE", t0), 0.5);
        w.demote(Twilio, "DE", Demotion::Slow, t0 + Duration::from_secs(5));
        assert_eq!(w.factor(Twilio, "DE", t0), 0.5, "once per demote_every");
        for i in 1..=6 {
            w.demote(
                Twilio,
                "DE",
                Demotion::Slow,
                t0 + Duration::from_secs(10 * i),
            );
        }
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(w.factor(Twilio, "DE", t1), LOWEST_FACTOR);
        assert_eq!(w.factor(Twilio, "US", t1), 1.0, "that country only");
        assert_eq!(w.factor(Vonage, "DE", t1), 1.0);
        assert_eq!(
            w.factor(Twilio, "DE", t1 + Duration::from_secs(60)),
            2.0 * LOWEST_FACTOR
        );
        assert_eq!(w.factor(Twilio, "DE", t1 + Duration::from_secs(240)), 1.0);
        assert!(
            w.lowered.lock().unwrap().is_empty(),
            "back to the configured weight"
        );
    }

    /// Feed `sends` answers of `provider` in `country`, one in `every` failed.
    fn answer(w: &Weights, provider: Provider, country: &str, sends: u32, every: u32, at: Instant) {
        let peer = if provider == Twilio { Vonage } else { Twilio };
        for i in 0..sends {
            w.answered(provider, country, i % every == 0, [peer].into_iter(), at);
        }
    }

    #[test]
    fn a_provider_failing_more_than_its_peer_loses_weight_there_and_drifts_back() {
        let w = weights("error_min_sends = 20\nerror_margin = 0.2\nrecover_every = \"60s\"");
        let t0 = Instant::now();
        answer(&w, Vonage, "DE", 40, 20, t0); // 5 % failed
        answer(&w, Twilio, "DE", 19, 2, t0); // 50 %, but under 20 sends
        assert_eq!(w.factor(Twilio, "DE", t0), 1.0, "too few sends to judge");
        answer(&w, Twilio, "DE", 2, 1, t0); // 12 of 21
        assert_eq!(w.factor(Twilio, "DE", t0), 0.5);
        assert_eq!(w.factor(Vonage, "DE", t0), 1.0, "the better one keeps it");
        assert_eq!(w.factor(Twilio, "US", t0), 1.0, "that country only");
        let later = t0 + Duration::from_secs(120);
        assert_eq!(w.factor(Twilio, "DE", later), 1.0, "drifted back");
    }

    #[test]
    fn a_provider_whose_codes_are_not_entered_loses_weight_there() {
        let w = weights("conversion_min_sends = 50\nconversion_margin = 0.2");
        let t0 = Instant::now();
        let judge = |provider, n: u32, entered_every: u32| {
            let peer = if provider == Twilio { Vonage } else { Twilio };
            for i in 0..n {
                w.judged(
                    provider,
                    "BR",
                    i % entered_every != 0,
                    [peer].into_iter(),
                    t0,
                );
            }
        };
        judge(Vonage, 60, 4); // 75 % entered
        judge(Twilio, 49, 1); // none entered, but under 50 judged
        assert_eq!(w.factor(Twilio, "BR", t0), 1.0, "too few to judge");
        judge(Twilio, 1, 1);
        assert_eq!(w.factor(Twilio, "BR", t0), 0.5, "a grey route");
        assert_eq!(w.factor(Vonage, "BR", t0), 1.0);
        // Entered codes alone never demote.
        let w = weights("conversion_min_sends = 5");
        for _ in 0..10 {
            w.judged(Vonage, "BR", true, [Twilio].into_iter(), t0);
            w.judged(Twilio, "BR", true, [Vonage].into_iter(), t0);
        }
        assert_eq!(w.factor(Twilio, "BR", t0), 1.0);
    }

    #[test]
    fn when_every_provider_fails_alike_or_a_peer_has_no_sends_nothing_moves() {
        let w = weights("error_min_sends = 20\nerror_margin = 0.2");
        let t0 = Instant::now();
        answer(&w, Vonage, "FR", 40, 2, t0); // 50 %
        answer(&w, Twilio, "FR", 40, 2, t0); // 50 %
        assert_eq!(w.factor(Twilio, "FR", t0), 1.0);
        assert_eq!(w.factor(Vonage, "FR", t0), 1.0);
        // Ten more failures: 30 of 50, 60 % against 50 %, under the margin.
        answer(&w, Twilio, "FR", 10, 1, t0 + Duration::from_secs(1));
        assert_eq!(w.factor(Twilio, "FR", t0), 1.0);
        // Every Twilio send to Spain fails, and Vonage has none there to compare with.
        answer(&w, Twilio, "ES", 50, 1, t0);
        assert_eq!(w.factor(Twilio, "ES", t0), 1.0);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let w = weights("error_min_sends = 10\nerror_window = \"60s\"");
        let t0 = Instant::now();
        answer(&w, Vonage, "IT", 20, 100, t0);
        answer(&w, Twilio, "IT", 9, 1, t0); // 9 failures, under the floor
        let later = t0 + Duration::from_secs(90);
        answer(&w, Vonage, "IT", 20, 100, later);
        answer(&w, Twilio, "IT", 9, 100, later); // 1 failure in 9, the old ones gone
        w.answered(Twilio, "IT", true, [Vonage].into_iter(), later);
        assert_eq!(
            w.factor(Twilio, "IT", later),
            1.0,
            "2 of 10, under the margin"
        );
    }

    #[test]
    fn countries_are_bounded() {
        let w = weights("");
        let t0 = Instant::now();
        for i in 0..(MAX_COUNTRIES + 50) {
            w.answered(Twilio, &format!("C{i}"), true, std::iter::empty(), t0);
            w.demote(Twilio, &format!("C{i}"), Demotion::Slow, t0);
        }
        assert_eq!(w.errors.tallies.lock().unwrap().len(), MAX_COUNTRIES);
        assert_eq!(w.lowered.lock().unwrap().len(), MAX_COUNTRIES);
    }
}
