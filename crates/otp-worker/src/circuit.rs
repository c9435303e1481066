//! Health per provider and destination country: circuit breakers, so that a broken provider
//! (expired token, locked account) or a broken route (a country's sender registration lapsed)
//! does not turn into thousands of failed sends, and one country's trouble closes nothing
//! elsewhere.
//!
//! Each provider has one circuit for itself (scope `all`: account-level errors) and one per
//! destination country it sent to (route errors: Twilio 21408, 30032/30034, Vonage 1120, Meta
//! 130497). A send may go through a provider only when both of its circuits admit it.
//!
//! A circuit counts outcomes over a sliding `window`: accepted sends as healthy; broken
//! answers and broken signals (failed receipts, system errors, from `otp.channel-signals`) as
//! broken. It opens when the window holds at least `min_volume` outcomes of which at least
//! `failure_ratio` are broken: a ratio, so that a few failures among many sends (or a few
//! replayed signals) open nothing, and a volume floor, so that one unlucky send does not
//! either. A provider that accepts every send and fails them all later opens it too: each
//! accepted send is then followed by its broken signal, half the window. One route error in a
//! send's answer opens that country's circuit at once: the provider said it will not send
//! there, for anyone.
//!
//! Open, nothing is sent through it for `cool_down`; then one probe goes (half-open): accepted
//! closes it, broken opens it again. A probe whose answer never comes (its task was abandoned,
//! or panicked) stops holding it after `probe_timeout`. State changes are logged once at error
//! level, exported as the gauge `otp_circuit_state{channel,provider,country}` (0 closed, 1
//! half-open, 2 open; `country="all"` for the provider's own) and counted in
//! `otp_circuit_transitions_total`.
//!
//! Bounded: circuits are keyed by provider and ISO country (from the numbering plan, never
//! from user text), at most [`MAX_COUNTRIES`] per provider.

use crate::tally::Tally;
use otp_events::Provider;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Least number of outcomes (sends answered, signals) in the window before a circuit may
    /// open.
    #[serde(default = "default_min_volume", alias = "failures_to_open")]
    pub min_volume: u32,
    /// Share of the window's outcomes that must be broken to open a circuit (0 to 1).
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    /// How far back outcomes count.
    #[serde(
        default = "default_window",
        with = "humantime_serde",
        alias = "signal_window"
    )]
    pub window: Duration,
    /// How long an open circuit sends nothing before one probe.
    #[serde(default = "default_cool_down", with = "humantime_serde")]
    pub cool_down: Duration,
    /// How long a probe may go unanswered before another request may probe; keep it above the
    /// provider client's request timeout.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
}

fn default_min_volume() -> u32 {
    5
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_cool_down() -> Duration {
    Duration::from_secs(30)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            min_volume: default_min_volume(),
            failure_ratio: default_failure_ratio(),
            window: default_window(),
            cool_down: default_cool_down(),
            probe_timeout: default_probe_timeout(),
        }
    }
}

/// Countries with a circuit of their own, per provider (ISO 3166 has 249).
pub const MAX_COUNTRIES: usize = 300;

/// May this send go to the provider?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Send,
    /// A circuit is open: try the route's next provider, or fall back.
    Refuse,
}

/// How a send went, as far as health cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Healthy,
    /// The provider is broken everywhere (account-level).
    ProviderBroken,
    /// The provider refuses the destination's country.
    RouteBroken,
    /// Transient trouble, or a recipient's refusal: says nothing about the provider's health,
    /// so it neither counts nor forgives.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `probing`: since when a probe is out, if one is.
    HalfOpen {
        probing: Option<Instant>,
    },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// One circuit: its state and the outcomes of its window.
#[derive(Debug)]
struct Cell {
    state: State,
    outcomes: Tally,
}

impl Cell {
    fn new() -> Self {
        Self {
            state: State::Closed,
            outcomes: Tally::default(),
        }
    }

    /// Count one outcome at `now`; true when the window now says open.
    fn count(&mut self, broken: bool, now: Instant, config: &CircuitConfig) -> bool {
        let (healthy, bad) = self.outcomes.count(broken, now, config.window);
        let volume = healthy + bad;
        broken
            && volume >= config.min_volume.max(1)
            && f64::from(bad) >= config.failure_ratio * f64::from(volume)
    }
}

/// The circuits of one worker's providers.
pub struct Health {
    channel: &'static str,
    config: CircuitConfig,
    /// Keyed by provider and country (`None`: the provider's own circuit).
    cells: Mutex<HashMap<(Provider, Option<String>), Cell>>,
}

impl Health {
    pub fn new(channel: &'static str, providers: &[Provider], config: CircuitConfig) -> Self {
        // Every provider's series from the start, so dashboards and `increase()` alerts see
        // zero, not nothing, until the first change.
        for provider in providers {
            let p = provider.as_str();
            metrics::gauge!("otp_circuit_state", "channel" => channel, "provider" => p, "country" => "all")
                .set(0.0);
            for to in ["open", "half_open", "closed"] {
                metrics::counter!("otp_circuit_transitions_total", "channel" => channel, "provider" => p, "country" => "all", "to" => to)
                    .absolute(0);
            }
        }
        Self {
            channel,
            config,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a send to `country` may go through `provider` now: both its circuits admit it.
    /// Asking a half-open circuit takes its one probe.
    pub fn admit(&self, provider: Provider, country: Option<&str>) -> Admission {
        let now = Instant::now();
        let mut cells = self.cells.lock().expect("health lock");
        let keys = self.keys(provider, country);
        for key in &keys {
            if let Some(cell) = cells.get(key) {
                if self.refuses(cell, now) {
                    return Admission::Refuse;
                }
            }
        }
        // Neither refuses: take the probe of whichever is half-open.
        for key in keys {
            if let Some(cell) = cells.get_mut(&key) {
                let next = match cell.state {
                    State::Open { .. } | State::HalfOpen { .. } => {
                        State::HalfOpen { probing: Some(now) }
                    }
                    State::Closed => continue,
                };
                self.transition(&key, cell, next);
            }
        }
        Admission::Send
    }

    /// Whether a send through `provider` to `country` would be refused now, without taking a
    /// probe: for ordering a route.
    pub fn is_open(&self, provider: Provider, country: Option<&str>) -> bool {
        let now = Instant::now();
        let cells = self.cells.lock().expect("health lock");
        self.keys(provider, country)
            .iter()
            .any(|key| cells.get(key).is_some_and(|cell| self.refuses(cell, now)))
    }

    /// A send's answer. A half-open circuit the answer says nothing about (the provider's own
    /// after a route error, the country's after an account error) gives its probe back.
    pub fn record(&self, provider: Provider, country: Option<&str>, verdict: Verdict) {
        let now = Instant::now();
        let mut cells = self.cells.lock().expect("health lock");
        let keys = self.keys(provider, country);
        let own = (provider, None);
        let route = country.map(|c| (provider, Some(c.to_string())));
        // The circuit the answer is about, if any.
        let about = match verdict {
            Verdict::Healthy => {
                for key in &keys {
                    let Some(cell) = self.cell(&mut cells, key) else {
                        continue;
                    };
                    cell.count(false, now, &self.config);
                    if !matches!(cell.state, State::Closed) {
                        self.transition(key, cell, State::Closed);
                    }
                }
                return;
            }
            Verdict::ProviderBroken => {
                self.broken(&mut cells, own.clone(), now, false);
                Some(own)
            }
            // The provider refused the country itself: no one there gets through it. A
            // destination without a known country has no route circuit: nothing closes.
            Verdict::RouteBroken => {
                if let Some(route) = &route {
                    self.broken(&mut cells, route.clone(), now, true);
                }
                route
            }
            Verdict::Unknown => None,
        };
        for key in keys.iter().filter(|k| Some(*k) != about.as_ref()) {
            if let Some(cell) = cells.get_mut(key) {
                if matches!(cell.state, State::HalfOpen { .. }) {
                    // The probe learned nothing about this one: let the next request probe.
                    cell.state = State::HalfOpen { probing: None };
                }
            }
        }
    }

    /// The provider said, outside a send's answer, that it is broken everywhere (`country`
    /// `None`) or for one country.
    pub fn signal(&self, provider: Provider, country: Option<&str>) {
        let now = Instant::now();
        let mut cells = self.cells.lock().expect("health lock");
        let key = (provider, country.map(str::to_owned));
        self.broken(&mut cells, key, now, false);
    }

    fn broken(
        &self,
        cells: &mut HashMap<(Provider, Option<String>), Cell>,
        key: (Provider, Option<String>),
        now: Instant,
        at_once: bool,
    ) {
        let cool_down = self.config.cool_down;
        let Some(cell) = self.cell(cells, &key) else {
            return;
        };
        let enough = cell.count(true, now, &self.config);
        let open = State::Open {
            until: now + cool_down,
        };
        match cell.state {
            State::HalfOpen { .. } => self.transition(&key, cell, open),
            State::Closed if enough || at_once => self.transition(&key, cell, open),
            _ => {}
        }
    }

    /// The circuit of `key`, made on first use (within the bound).
    fn cell<'a>(
        &self,
        cells: &'a mut HashMap<(Provider, Option<String>), Cell>,
        key: &(Provider, Option<String>),
    ) -> Option<&'a mut Cell> {
        if !cells.contains_key(key) {
            let countries = cells
                .keys()
                .filter(|(p, c)| *p == key.0 && c.is_some())
                .count();
            if key.1.is_some() && countries >= MAX_COUNTRIES {
                return None;
            }
            cells.insert(key.clone(), Cell::new());
        }
        cells.get_mut(key)
    }

    /// The provider's own circuit, and its country's when the destination has one.
    fn keys(&self, provider: Provider, country: Option<&str>) -> Vec<(Provider, Option<String>)> {
        let mut keys = vec![(provider, None)];
        if let Some(country) = country {
            keys.push((provider, Some(country.to_string())));
        }
        keys
    }

    fn refuses(&self, cell: &Cell, now: Instant) -> bool {
        match cell.state {
            State::Closed => false,
            State::Open { until } => now < until,
            State::HalfOpen { probing } => {
                probing.is_some_and(|since| now.duration_since(since) < self.config.probe_timeout)
            }
        }
    }

    fn transition(&self, key: &(Provider, Option<String>), cell: &mut Cell, next: State) {
        let (from, to) = (cell.state.name(), next.name());
        cell.state = next;
        if from == to {
            return;
        }
        let provider = key.0.as_str();
        let country = key.1.clone().unwrap_or_else(|| "all".to_string());
        tracing::error!(
            channel = self.channel,
            provider,
            country = %country,
            from,
            to,
            "circuit changed state"
        );
        let gauge = match to {
            "closed" => 0.0,
            "half_open" => 1.0,
            _ => 2.0,
        };
        metrics::gauge!("otp_circuit_state", "channel" => self.channel, "provider" => provider, "country" => country.clone())
            .set(gauge);
        metrics::counter!("otp_circuit_transitions_total", "channel" => self.channel, "provider" => provider, "country" => country, "to" => to)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Provider::{Twilio, Vonage};

    fn config(min_volume: u32, cool_down_ms: u64) -> CircuitConfig {
        CircuitConfig {
            min_volume,
            failure_ratio: 0.5,
            window: Duration::from_secs(60),
            cool_down: Duration::from_millis(cool_down_ms),
            probe_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_destination_without_a_country_closes_nothing_on_a_route_error() {
        let h = health(config(5, 30_000));
        h.record(Vonage, None, Verdict::RouteBroken);
        assert_eq!(h.admit(Vonage, None), Admission::Send);
        assert_eq!(h.admit(Vonage, Some("DE")), Admission::Send);
    }

    /// A probe answered with a route error says nothing of the provider's own circuit, which
    /// gives its probe back (and the other way round).
    #[test]
    fn a_probe_answered_about_one_circuit_frees_the_other() {
        let h = health(config(1, 100));
        h.record(Twilio, Some("US"), Verdict::ProviderBroken);
        std::thread::sleep(Duration::from_millis(150)); // the cool-down is the behaviour under test
        assert_eq!(
            h.admit(Twilio, Some("US")),
            Admission::Send,
            "the provider's probe"
        );
        h.record(Twilio, Some("US"), Verdict::RouteBroken);
        assert_eq!(
            h.admit(Twilio, Some("US")),
            Admission::Refuse,
            "the US is closed now"
        );
        assert_eq!(
            h.admit(Twilio, Some("DE")),
            Admission::Send,
            "another probe elsewhere"
        );
    }

    fn health(config: CircuitConfig) -> Health {
        Health::new("sms", &[Twilio, Vonage], config)
    }

    #[test]
    fn opens_on_a_ratio_with_a_volume_floor_then_probes_once_and_closes() {
        let h = health(config(4, 200));
        h.record(Twilio, Some("US"), Verdict::ProviderBroken);
        h.record(Twilio, Some("US"), Verdict::ProviderBroken);
        h.record(Twilio, Some("US"), Verdict::ProviderBroken);
        assert_eq!(h.admit(Twilio, Some("US")), Admission::Send, "3 < volume 4");
        for _ in 0..6 {
            h.record(Twilio, Some("DE"), Verdict::Healthy);
        }
        h.record(Twilio, Some("US"), Verdict::ProviderBroken);
        assert_eq!(h.admit(Twilio, Some("US")), Admission::Send, "4 of 10");
        h.record(Twilio, Some("US"), Verdict::ProviderBroken);
        assert_eq!(
            h.admit(Twilio, Some("US")),
            Admission::Send,
            "5 of 11, under half"
        );
        h.record(Twilio, Some("US"), Verdict::ProviderBroken);
        assert_eq!(h.admit(Twilio, Some("US")), Admission::Refuse, "6 of 12");
        assert_eq!(h.admit(Twilio, Some("FR")), Admission::Refuse, "everywhere");
        assert_eq!(
            h.admit(Vonage, Some("US")),
            Admission::Send,
            "not the other"
        );
        std::thread::sleep(Duration::from_millis(250)); // the cool-down is the behaviour under test
        assert_eq!(h.admit(Twilio, Some("US")), Admission::Send, "the probe");
        assert_eq!(h.admit(Twilio, Some("DE")), Admission::Refuse, "one probe");
        h.record(Twilio, Some("US"), Verdict::Healthy);
        assert_eq!(h.admit(Twilio, Some("DE")), Admission::Send, "closed");
    }

    #[test]
    fn a_route_error_closes_that_country_only_and_at_once() {
        let h = health(config(5, 30_000));
        h.record(Twilio, Some("US"), Verdict::RouteBroken);
        assert_eq!(h.admit(Twilio, Some("US")), Admission::Refuse);
        assert!(h.is_open(Twilio, Some("US")));
        assert_eq!(h.admit(Twilio, Some("DE")), Admission::Send);
        assert_eq!(h.admit(Twilio, None), Admission::Send);
        assert_eq!(h.admit(Vonage, Some("US")), Admission::Send);
    }

    #[test]
    fn signals_count_against_the_accepted_sends_they_follow() {
        let h = health(config(5, 30_000));
        // A locked account: every send accepted, every receipt failed.
        for _ in 0..2 {
            h.record(Twilio, Some("GB"), Verdict::Healthy);
            h.signal(Twilio, None);
        }
        assert_eq!(h.admit(Twilio, Some("GB")), Admission::Send, "4 < volume 5");
        h.record(Twilio, Some("GB"), Verdict::Healthy);
        h.signal(Twilio, None);
        assert_eq!(h.admit(Twilio, Some("GB")), Admission::Refuse, "3 of 6");
    }

    #[test]
    fn a_few_replayed_signals_among_many_sends_open_nothing() {
        let h = health(config(5, 30_000));
        for _ in 0..100 {
            h.record(Twilio, Some("US"), Verdict::Healthy);
        }
        for _ in 0..8 {
            h.signal(Twilio, None);
            h.signal(Twilio, Some("US"));
        }
        assert_eq!(h.admit(Twilio, Some("US")), Admission::Send);
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_an_unanswered_one_stops_holding_it() {
        let mut c = config(1, 100);
        c.probe_timeout = Duration::from_millis(300);
        let h = health(c);
        h.record(Vonage, Some("DE"), Verdict::ProviderBroken);
        assert_eq!(h.admit(Vonage, Some("DE")), Admission::Refuse);
        std::thread::sleep(Duration::from_millis(150)); // the cool-down, likewise
        assert_eq!(h.admit(Vonage, Some("DE")), Admission::Send);
        h.record(Vonage, Some("DE"), Verdict::ProviderBroken);
        assert_eq!(h.admit(Vonage, Some("DE")), Admission::Refuse, "open again");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            h.admit(Vonage, Some("DE")),
            Admission::Send,
            "a probe, never answered"
        );
        assert_eq!(h.admit(Vonage, Some("DE")), Admission::Refuse);
        std::thread::sleep(Duration::from_millis(350)); // the probe timeout
        assert_eq!(
            h.admit(Vonage, Some("DE")),
            Admission::Send,
            "another probes"
        );
    }

    #[test]
    fn countries_are_bounded() {
        let h = health(config(5, 30_000));
        for i in 0..(MAX_COUNTRIES + 50) {
            h.record(Twilio, Some(&format!("C{i}")), Verdict::Healthy);
        }
        let cells = h.cells.lock().unwrap();
        assert_eq!(
            cells.len(),
            MAX_COUNTRIES + 1,
            "the bound, plus the provider's own"
        );
    }

    #[test]
    fn old_keys_still_read() {
        let c: CircuitConfig =
            toml::from_str("failures_to_open = 3\nsignal_window = \"2m\"").unwrap();
        assert_eq!((c.min_volume, c.window), (3, Duration::from_secs(120)));
    }
}
