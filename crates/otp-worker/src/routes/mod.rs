//! Routes: which providers a send to a destination country may go through, and in what order.
//!
//! An operator gives, per destination country (ISO 3166-1 alpha-2), the providers of the
//! channel with weights, and a default route for every other country. Each send draws its
//! first provider by weight among those whose circuits admit it (GOV.UK Notify's weighted
//! choice, keyed by country); the others follow, drawn the same way, as the failover order
//! for a send refused in a way that proves nothing was sent. A weight of 0 makes a provider a
//! standby: tried only after every weighted one. Providers with an open circuit go last, so
//! that when every provider of a route is bad nothing moves and the first one's circuit
//! answers.
//!
//! **Weights move away from a bad provider** in a country: one much slower to deliver there
//! than its peers (the confirmation tracker's `slow` signal), or one failing a much larger
//! share of its sends there than its best peer. Its weight there halves, and drifts back to
//! the configured weight when it recovers ([`weights`]). When every provider of a route is
//! equally bad, none is worse than its peers, and nothing moves.
//!
//! [`order`](Routes::order) is a function of the route, the weights in force, the circuits'
//! answers and a source of random numbers, tested here.

mod weights;

use otp_events::Provider;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
pub use weights::Demotion;
use weights::Weights;

/// Routes of one worker's channel.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// The route of every country without one of its own. Absent: every provider the worker
    /// is configured with, weight 1 each, in the order the channel lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default: Vec<RouteStep>,
    /// Routes by destination country, keyed by ISO 3166-1 alpha-2 code (`US`, `DE`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub countries: BTreeMap<String, Vec<RouteStep>>,
    /// After an ambiguous failure (no answer: a timeout after the request left), send again
    /// through the route's next provider. The user may then get the code twice; off, the send
    /// is retried on the same provider (which may deliver it twice as well: no provider offers
    /// an idempotency key), and a provider that stops answering costs that retry budget.
    #[serde(default)]
    pub failover_ambiguous: bool,
    /// A provider signalled slow in a country, or failing too many sends there, loses half its
    /// weight there, at most once per this period, down to a sixteenth.
    #[serde(default = "default_demote_every", with = "humantime_serde")]
    pub demote_every: Duration,
    /// A demoted provider's weight doubles back every this period without being demoted
    /// again, up to its configured weight.
    #[serde(default = "default_recover_every", with = "humantime_serde")]
    pub recover_every: Duration,
    /// A provider whose share of failed sends to a country over this window is at least
    /// `error_margin` above its best peer's there loses half its weight there, as a slow one
    /// does. A failed send is one the provider answered with an error of its own (transient,
    /// throttled, account or route broken); a recipient's refusal is not its fault.
    #[serde(default = "default_error_window", with = "humantime_serde")]
    pub error_window: Duration,
    /// The fewest sends in `error_window`, for the provider and for a peer, before their
    /// error shares are compared.
    #[serde(default = "default_error_min_sends")]
    pub error_min_sends: u32,
    /// How much larger (0 to 1, in shares of sends) a provider's error share must be than its
    /// best peer's before it loses weight.
    #[serde(default = "default_error_margin")]
    pub error_margin: f64,
    /// A provider whose share of codes not entered in a country over this window is at least
    /// `conversion_margin` above its best peer's there loses half its weight there. Needs
    /// login systems that report verification outcomes.
    #[serde(default = "default_conversion_window", with = "humantime_serde")]
    pub conversion_window: Duration,
    /// The fewest judged sends in `conversion_window`, for the provider and for a peer,
    /// before their conversions are compared: the guard against noise. At 100 judged sends
    /// each, two providers that both convert 65 % differ by 20 points by chance about once in
    /// 500 windows; such a demotion halves a weight and drifts back (`recover_every`).
    #[serde(default = "default_conversion_min_sends")]
    pub conversion_min_sends: u32,
    /// How much lower (0 to 1) a provider's conversion must be than its best peer's.
    #[serde(default = "default_error_margin")]
    pub conversion_margin: f64,
}

fn default_demote_every() -> Duration {
    Duration::from_secs(60)
}
fn default_recover_every() -> Duration {
    Duration::from_secs(120)
}
fn default_error_window() -> Duration {
    Duration::from_secs(60)
}
fn default_error_min_sends() -> u32 {
    20
}
fn default_error_margin() -> f64 {
    0.2
}
fn default_conversion_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_conversion_min_sends() -> u32 {
    100
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            default: Vec::new(),
            countries: BTreeMap::new(),
            failover_ambiguous: false,
            demote_every: default_demote_every(),
            recover_every: default_recover_every(),
            error_window: default_error_window(),
            error_min_sends: default_error_min_sends(),
            error_margin: default_error_margin(),
            conversion_window: default_conversion_window(),
            conversion_min_sends: default_conversion_min_sends(),
            conversion_margin: default_error_margin(),
        }
    }
}

/// One provider of a route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteStep {
    pub provider: Provider,
    /// Its share of first tries, against the route's other weights; 0: standby only.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A route that cannot be used, naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routes.{field}: {rule}")]
pub struct RouteError {
    pub field: String,
    pub rule: String,
}

/// Validated routes, and the weights in force.
#[derive(Debug)]
pub struct Routes {
    default: Vec<RouteStep>,
    countries: BTreeMap<String, Vec<RouteStep>>,
    pub failover_ambiguous: bool,
    /// The configured weights' factors in force.
    weights: Weights,
}

impl Routes {
    /// Check `config` against the providers this worker is configured with (`configured`,
    /// in the channel's order).
    pub fn new(config: &RoutesConfig, configured: &[Provider]) -> Result<Self, RouteError> {
        let default = if config.default.is_empty() {
            configured
                .iter()
                .map(|&provider| RouteStep {
                    provider,
                    weight: 1,
                })
                .collect()
        } else {
            config.default.clone()
        };
        check("default", &default, configured)?;
        for (country, route) in &config.countries {
            let field = format!("countries.{country}");
            if !(country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())) {
                return Err(RouteError {
                    field,
                    rule: "the key must be an ISO 3166-1 alpha-2 code (two capital letters)".into(),
                });
            }
            check(&field, route, configured)?;
        }
        if !(config.error_margin > 0.0 && config.error_margin <= 1.0) {
            return Err(RouteError {
                field: "error_margin".into(),
                rule: "must be above 0 and at most 1 (a share of sends)".into(),
            });
        }
        // Every route's series from the start, so that dashboards and `increase()` see 1 and
        // 0, not nothing, until the first demotion (`default`: the default route's countries).
        let routes = std::iter::once(("default", &default))
            .chain(config.countries.iter().map(|(c, r)| (c.as_str(), r)));
        for (country, route) in routes {
            for step in route {
                weights::export_baseline(step.provider, country);
            }
        }
        Ok(Self {
            default,
            countries: config.countries.clone(),
            failover_ambiguous: config.failover_ambiguous,
            weights: Weights::new(config),
        })
    }

    /// `provider` delivers slowly to `country` (the tracker's signal): see [`Weights::demote`].
    pub fn demote(&self, provider: Provider, country: &str, now: Instant) {
        self.weights.demote(provider, country, Demotion::Slow, now);
    }

    /// A send through `provider` to `country` was answered: `failed` when the provider
    /// answered with an error of its own. A provider whose error share there is then
    /// `error_margin` above its best peer's in the route loses weight.
    pub fn answered(&self, provider: Provider, country: Option<&str>, failed: bool, now: Instant) {
        let Some(country) = country else {
            return;
        };
        let peers = self.peers(provider, country);
        self.weights.answered(provider, country, failed, peers, now);
    }

    /// A send of this worker through `provider` to `country` was judged: `verified` when
    /// the user entered its code. A provider whose conversion there is `conversion_margin`
    /// below its best peer's in the route loses weight.
    pub fn judged(&self, provider: Provider, country: &str, verified: bool, now: Instant) {
        let peers = self.peers(provider, country);
        self.weights.judged(provider, country, verified, peers, now);
    }

    /// The other providers of `country`'s route.
    fn peers(&self, provider: Provider, country: &str) -> impl Iterator<Item = Provider> + '_ {
        self.route(Some(country))
            .iter()
            .map(|s| s.provider)
            .filter(move |&p| p != provider)
    }

    /// The share of its configured weight `provider` has in `country` now.
    pub fn weight_factor(&self, provider: Provider, country: Option<&str>, now: Instant) -> f64 {
        country.map_or(1.0, |c| self.weights.factor(provider, c, now))
    }

    fn route(&self, country: Option<&str>) -> &[RouteStep] {
        country
            .and_then(|c| self.countries.get(c))
            .unwrap_or(&self.default)
    }

    /// The route's providers for `country`, in the order to try them: weighted draws (each
    /// `random()` in [0, 1)) among the providers whose circuits are closed, by their weights
    /// in force (see [`weights`]), standbys after them, then the ones `is_open` says
    /// are refused.
    pub fn order(
        &self,
        country: Option<&str>,
        is_open: impl Fn(Provider) -> bool,
        mut random: impl FnMut() -> f64,
    ) -> Vec<Provider> {
        let route = self.route(country);
        let now = Instant::now();
        let mut usable = Vec::with_capacity(route.len());
        let mut open = Vec::new();
        for step in route {
            if is_open(step.provider) {
                open.push(step.provider);
            } else {
                let factor = self.weight_factor(step.provider, country, now);
                usable.push((step.provider, f64::from(step.weight) * factor));
            }
        }
        let mut order = Vec::with_capacity(route.len());
        while !usable.is_empty() {
            let total: f64 = usable.iter().map(|(_, w)| w).sum();
            let pick = if total <= 0.0 {
                0 // standbys, in the route's order
            } else {
                let mut point = random().clamp(0.0, 1.0) * total;
                usable
                    .iter()
                    .position(|(_, w)| {
                        if point < *w {
                            true
                        } else {
                            point -= w;
                            false
                        }
                    })
                    .unwrap_or(usable.len() - 1)
            };
            order.push(usable.remove(pick).0);
        }
        order.extend(open);
        order
    }

    /// Every provider named in any route.
    pub fn providers(&self) -> Vec<Provider> {
        let mut all: Vec<Provider> = self
            .default
            .iter()
            .chain(self.countries.values().flatten())
            .map(|s| s.provider)
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

fn check(field: &str, route: &[RouteStep], configured: &[Provider]) -> Result<(), RouteError> {
    let error = |rule: String| {
        Err(RouteError {
            field: field.to_string(),
            rule,
        })
    };
    if route.iter().all(|s| s.weight == 0) {
        return error("needs at least one provider with a weight above 0".into());
    }
    for (i, step) in route.iter().enumerate() {
        if !configured.contains(&step.provider) {
            return error(format!(
                "{} is not configured on this worker (configured: {})",
                step.provider,
                configured
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if route[..i].iter().any(|s| s.provider == step.provider) {
            return error(format!("{} is listed twice", step.provider));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Provider::{Twilio, Vonage};

    fn routes(text: &str) -> Result<Routes, RouteError> {
        let config: RoutesConfig = toml::from_str(text).unwrap();
        Routes::new(&config, &[Twilio, Vonage])
    }

    #[test]
    fn weights_share_first_tries_and_the_rest_follow() {
        let r = routes(
            r#"default = [{ provider = "twilio", weight = 3 }, { provider = "vonage", weight = 1 }]"#,
        )
        .unwrap();
        let closed = |_| false;
        // 4 points: [0, 3) Twilio, [3, 4) Vonage.
        assert_eq!(r.order(Some("DE"), closed, || 0.70), [Twilio, Vonage]);
        assert_eq!(r.order(Some("DE"), closed, || 0.80), [Vonage, Twilio]);
        let mut firsts = [0u32; 2];
        for i in 0..1000 {
            let first = r.order(None, closed, || (i as f64 + 0.5) / 1000.0)[0];
            firsts[usize::from(first == Vonage)] += 1;
        }
        assert_eq!(firsts, [750, 250]);
    }

    #[test]
    fn a_country_has_its_own_route_and_standbys_come_last() {
        let r = routes(
            r#"
            [countries]
            US = [{ provider = "vonage", weight = 0 }, { provider = "twilio" }]
            "#,
        )
        .unwrap();
        assert_eq!(r.order(Some("US"), |_| false, || 0.0), [Twilio, Vonage]);
        assert_eq!(r.order(Some("US"), |_| false, || 0.99), [Twilio, Vonage]);
        // The default: every configured provider, weight 1.
        assert_eq!(r.order(Some("DE"), |_| false, || 0.99), [Vonage, Twilio]);
    }

    #[test]
    fn open_circuits_go_last_and_when_all_are_open_nothing_moves() {
        let r = routes("").unwrap();
        assert_eq!(
            r.order(Some("US"), |p| p == Twilio, || 0.0),
            [Vonage, Twilio]
        );
        assert_eq!(r.order(Some("US"), |_| true, || 0.99), [Twilio, Vonage]);
    }

    #[test]
    fn bad_routes_name_the_field_and_the_rule() {
        let e = routes(r#"countries.us = [{ provider = "twilio" }]"#).unwrap_err();
        assert_eq!(e.field, "countries.us");
        assert!(e.rule.contains("ISO 3166-1 alpha-2"), "{e}");
        let config: RoutesConfig =
            toml::from_str(r#"default = [{ provider = "vonage" }]"#).unwrap();
        let e = Routes::new(&config, &[Twilio]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "routes.default: vonage is not configured on this worker (configured: twilio)"
        );
        let e = routes(r#"default = [{ provider = "twilio", weight = 0 }]"#).unwrap_err();
        assert!(e.rule.contains("weight above 0"), "{e}");
        let e =
            routes(r#"default = [{ provider = "twilio" }, { provider = "twilio" }]"#).unwrap_err();
        assert!(e.rule.contains("twice"), "{e}");
        assert!(toml::from_str::<RoutesConfig>(r#"default = [{ provider = "sms" }]"#).is_err());
    }
}
