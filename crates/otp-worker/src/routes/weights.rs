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
//! Either halves its factor there, at most once per `demote_every`, down to
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
}

impl Demotion {
    fn as_str(self) -> &'static str {
        match self {
            Demotion::Slow => "slow",
            Demotion::Errors => "errors",
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
    error_window: Duration,
    error_min_sends: u32,
    error_margin: f64,
    lowered: Mutex<HashMap<Key, Lowered>>,
    answers: Mutex<HashMap<Key, Tally>>,
}

impl Weights {
    pub(super) fn new(config: &RoutesConfig) -> Self {
        Self {
            demote_every: config.demote_every,
            recover_every: config.recover_every.max(Duration::from_millis(1)),
            error_window: config.error_window.max(Duration::from_millis(1)),
            error_min_sends: config.error_min_sends.max(1),
            error_margin: config.error_margin,
            lowered: Mutex::new(HashMap::new()),
            answers: Mutex::new(HashMap::new()),
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
        let worse = {
            let mut answers = self.answers.lock().expect("weights lock");
            let key = (provider, country.to_string());
            if !answers.contains_key(&key) && at_bound(&answers, provider) {
                return;
            }
            let (good, bad) = answers
                .entry(key)
                .or_default()
                .count(failed, now, self.error_window);
            let Some(share) = self.error_share(good, bad) else {
                return;
            };
            // Only a failure can make a provider worse; a success cannot.
            let mut best_peer: Option<f64> = None;
            for peer in peers {
                if let Some(tally) = answers.get_mut(&(peer, country.to_string())) {
                    let (g, b) = tally.at(now, self.error_window);
                    if let Some(peer_share) = self.error_share(g, b) {
                        best_peer = Some(best_peer.map_or(peer_share, |s| s.min(peer_share)));
                    }
                }
            }
            failed && best_peer.is_some_and(|best| share - best >= self.error_margin)
        };
        if worse {
            self.demote(provider, country, Demotion::Errors, now);
        }
    }

    /// The failed share of a window's sends, when there are enough of them to compare.
    fn error_share(&self, good: u32, bad: u32) -> Option<f64> {
        let sends = good + bad;
        (sends >= self.error_min_sends).then(|| f64::from(bad) / f64::from(sends))
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
    for why in [Demotion::Slow, Demotion::Errors] {
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
        assert_eq!(w.answers.lock().unwrap().len(), MAX_COUNTRIES);
        assert_eq!(w.lowered.lock().unwrap().len(), MAX_COUNTRIES);
    }
}
