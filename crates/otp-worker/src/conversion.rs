//! Conversion: the share of codes users entered, per number range and per country, over a
//! sliding window. What catches SMS pumping that stays under every count, and a route that
//! says `delivered` while users get nothing.
//!
//! Pumped traffic shows volume to a number range and almost no conversions (Twilio's Fraud
//! Guard blocks prefixes on exactly that). Every worker learns of every request the fleet's
//! abuse rules admitted (`crate::fleet_counts`: each admission carries the request's
//! confirmation key) and of every verification outcome (`otp.verification-outcomes`, signed
//! by the login system's key). A request is *judged* once it is `grace` old (a person needs
//! time to read and type a code) and counts until it is `window` old: judged, and whether it
//! was verified. When a range (or, if configured, a country) has at least `min_requests`
//! judged requests and fewer than `floor` of them verified, its new requests are refused on
//! the configured channels with `low_conversion` (or only counted, in `dry_run`).
//!
//! Guards against blocking real users:
//! - A request counts only if its app reported a verified outcome (any of its requests')
//!   after the request was admitted and before it was judged. A login system that reports
//!   nothing adds nothing to the counts, and neither does one whose reports stop (a stalled
//!   publisher, a lagging reader): its newer requests go unjudged, not unconverted. The rule
//!   refuses by range, though: a range that other apps' requests show pumped is refused for
//!   every app's users.
//! - A verified outcome read before its request's admission (the fleet's admissions may lag)
//!   is held for `grace` and applied when the admission comes.
//! - Requests admitted before this worker began to read outcomes are not judged, nor kept
//!   (their outcomes may have gone by): a restarted worker learns afresh.
//! - An allow-list of ranges and countries, and `dry_run` (whose would-be refusals are
//!   admitted, so they add volume that enforcement would not: its counts are an upper bound).
//!
//! A refused request is not admitted, so it adds nothing to the range's volume: once the
//! judged requests leave the window, the range is open again until it has `min_requests`
//! judged requests once more. A pump therefore gets at most `min_requests` judged requests,
//! plus what it sends within `grace` of them, per `window` and range.
//!
//! The worker's own sends also remember their provider: when they are judged, the routes hear
//! whether that provider's codes were entered (`crate::routes`'s conversion demotion).
//!
//! Bounded: at most [`MAX_REQUESTS`] requests are remembered (the oldest forgotten first, and
//! taken out of the counts), ranges only while they have a request in the window, and at most
//! [`MAX_APPS`] apps.

use otp_events::{Channel, Provider};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests remembered at most: about 90 bytes each (the map entry and its place in the
/// time order), some 90 MB at the bound. A fleet admitting more than this per `window` (280 a
/// second for an hour) shortens the window in effect: the oldest are forgotten first.
pub const MAX_REQUESTS: usize = 1_000_000;
/// Verified outcomes held for requests not known yet, at most.
const MAX_EARLY: usize = 100_000;
/// Apps remembered as reporting outcomes, at most.
pub const MAX_APPS: usize = 10_000;
/// Judged sends held for the routes between two ticks, at most.
const MAX_JUDGED_SENDS: usize = 100_000;

/// What the rules do when a range or country converts below its floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversionMode {
    /// Refuse new requests there (`failed`, `error.code = low_conversion`).
    Enforce,
    /// Count what would be refused (`otp_conversion_refused_total{mode="dry_run"}`), refuse
    /// nothing: to try a floor on real traffic first.
    DryRun,
    /// Neither judge nor count.
    Off,
}

/// At least `min_requests` judged requests, of which fewer than `floor` verified: refused.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConversionRule {
    pub min_requests: u32,
    /// A share, 0 to 1.
    pub floor: f64,
}

/// The conversion defence (`[conversion]` in a worker's TOML). The defaults refuse SMS to a
/// number range that had 20 judged requests in the last hour with fewer than 20 % entered.
/// Real users convert 60 % and more: 20 real requests with fewer than 4 entered is a chance of
/// about 1 in 160,000 at 65 %.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConversionConfig {
    /// `enforce` (default), `dry_run` or `off`.
    #[serde(default = "default_mode")]
    pub mode: ConversionMode,
    /// Per number range, the number without its last 4 digits (default 20 requests, 0.2).
    #[serde(default = "default_per_range")]
    pub per_range: Option<ConversionRule>,
    /// Per destination country (default: none; a country rule refuses real users with the
    /// pumped ones, so it suits a country the service does not expect traffic from).
    #[serde(default)]
    pub per_country: Option<ConversionRule>,
    /// How long a request counts (default 1 h). A started worker judges only what is
    /// admitted after it began to read outcomes, so it has a full window an hour later.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// How old a request is before it is judged: the time a person takes to enter a code
    /// (default 5 minutes).
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// The channels whose new requests are refused (default `["sms"]`: pumping is an SMS
    /// fraud; WhatsApp is billed per conversation, not per carrier fee).
    #[serde(default = "default_channels")]
    pub channels: Vec<Channel>,
    /// Number ranges never refused: E.164 numbers without their last 4 digits (`+4420794`).
    #[serde(default)]
    pub allow_ranges: Vec<String>,
    /// Countries (ISO 3166-1 alpha-2) never refused.
    #[serde(default)]
    pub allow_countries: Vec<String>,
}

fn default_mode() -> ConversionMode {
    ConversionMode::Enforce
}
fn default_per_range() -> Option<ConversionRule> {
    Some(ConversionRule {
        min_requests: 20,
        floor: 0.2,
    })
}
fn default_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_grace() -> Duration {
    Duration::from_secs(300)
}
fn default_channels() -> Vec<Channel> {
    vec![Channel::Sms]
}

impl Default for ConversionConfig {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            per_range: default_per_range(),
            per_country: None,
            window: default_window(),
            grace: default_grace(),
            channels: default_channels(),
            allow_ranges: Vec::new(),
            allow_countries: Vec::new(),
        }
    }
}

impl ConversionConfig {
    /// The first setting that cannot work, named with its rule.
    pub fn check(&self) -> Result<(), String> {
        for (name, rule) in [
            ("per_range", self.per_range),
            ("per_country", self.per_country),
        ] {
            if let Some(r) = rule {
                if !(0.0..=1.0).contains(&r.floor) {
                    return Err(format!("conversion.{name}.floor must be between 0 and 1"));
                }
                if r.min_requests == 0 {
                    return Err(format!("conversion.{name}.min_requests must be at least 1"));
                }
            }
        }
        let range = |r: &String| {
            r.strip_prefix('+').is_some_and(|d| {
                (4..=14).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
            })
        };
        if !self.allow_ranges.iter().all(range) {
            return Err("conversion.allow_ranges: each must be '+' and 4 to 14 digits (an E.164 number without its last 4 digits)".into());
        }
        if self.grace >= self.window {
            return Err("conversion.grace must be shorter than conversion.window".into());
        }
        Ok(())
    }
}

/// Who a request is about, as the conversion counts know it.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    /// The request's confirmation key (`app/request_id`).
    pub request: &'a str,
    /// The request's app, when it has one.
    pub app: Option<&'a str>,
    /// The keyed hash of its number range (`Subject::prefix_key`).
    pub range: &'a str,
    pub country: Option<&'a str>,
}

/// Where a request's conversion fell below the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Range,
    Country,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Range => "range",
            Scope::Country => "country",
        }
    }
}

/// A judged send of this worker: did its provider's code get entered?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub provider: Provider,
    pub country: String,
    pub verified: bool,
    /// When it reached its grace (at or before the tick that hands it on).
    pub at: Instant,
}

/// Judged requests, and how many of them verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    judged: u32,
    verified: u32,
}

impl Counts {
    fn below(&self, rule: &ConversionRule) -> bool {
        self.judged >= rule.min_requests
            && f64::from(self.verified) < rule.floor * f64::from(self.judged)
    }

    fn add(&mut self, verified: bool) {
        self.judged += 1;
        self.verified += u32::from(verified);
    }

    fn remove(&mut self, verified: bool) {
        self.judged = self.judged.saturating_sub(1);
        self.verified = self.verified.saturating_sub(u32::from(verified));
    }
}

/// ISO 3166-1 alpha-2, in two bytes: a request is held by every worker, so it is kept small.
type Country = [u8; 2];

fn country_code(country: &str) -> Option<Country> {
    <Country>::try_from(country.as_bytes()).ok()
}

fn country_str(country: &Country) -> &str {
    std::str::from_utf8(country).unwrap_or("??")
}

struct Request {
    at: Instant,
    app: u64,
    range: u64,
    country: Option<Country>,
    verified: bool,
    /// Judged and in the counts (false until `grace` old, and for a request that is not
    /// judged at all).
    counted: bool,
    /// Sent by this worker, through this provider.
    provider: Option<Provider>,
}

struct State {
    requests: HashMap<u64, Request>,
    /// Requests by admission time, oldest first; the first `judged` of them are judged.
    order: VecDeque<(Instant, u64)>,
    judged: usize,
    ranges: HashMap<u64, Counts>,
    countries: HashMap<Country, Counts>,
    /// Apps that reported a verified outcome, and when last.
    reporting: HashMap<u64, Instant>,
    /// Verified outcomes read before their request's admission (another worker's admission
    /// comes through the fleet's topic, which may lag): by request key, its app and when read;
    /// applied when the admission comes. At most [`MAX_EARLY`], none older than `grace`.
    early: HashMap<u64, (u64, Instant)>,
    early_order: VecDeque<(Instant, u64)>,
    /// Countries whose conversion series are exported (at zero from their first request on,
    /// so that a dashboard and an alert see them before anything is judged). At most the
    /// numbering plan's countries.
    exported: std::collections::HashSet<Country>,
    /// Requests admitted before this are not judged (see the module doc).
    listening_since: Option<Instant>,
    judged_sends: Vec<Judged>,
}

/// One worker's conversion counts; shared by its messages and its two listeners.
pub struct Conversion {
    config: ConversionConfig,
    /// Whether this worker's channel is one the rules refuse on.
    refuses_here: bool,
    channel: &'static str,
    allowed_ranges: Vec<String>,
    hasher: RandomState,
    state: Mutex<State>,
    max_requests: usize,
}

impl Conversion {
    /// `allowed_ranges` are the keyed hashes of `config.allow_ranges` (as `Subject::prefix_key`
    /// spells them).
    pub fn new(config: &ConversionConfig, channel: Channel, allowed_ranges: Vec<String>) -> Self {
        Self::bounded(config, channel, allowed_ranges, MAX_REQUESTS)
    }

    fn bounded(
        config: &ConversionConfig,
        channel: Channel,
        allowed_ranges: Vec<String>,
        max_requests: usize,
    ) -> Self {
        for scope in [Scope::Range, Scope::Country] {
            for mode in ["enforce", "dry_run"] {
                metrics::counter!("otp_conversion_refused_total", "channel" => channel.as_str(), "scope" => scope.as_str(), "mode" => mode)
                    .increment(0);
            }
        }
        Self {
            config: config.clone(),
            refuses_here: config.channels.contains(&channel),
            channel: channel.as_str(),
            allowed_ranges,
            hasher: RandomState::new(),
            state: Mutex::new(State {
                requests: HashMap::new(),
                order: VecDeque::new(),
                judged: 0,
                ranges: HashMap::new(),
                countries: HashMap::new(),
                reporting: HashMap::new(),
                early: HashMap::new(),
                early_order: VecDeque::new(),
                exported: std::collections::HashSet::new(),
                listening_since: None,
                judged_sends: Vec::new(),
            }),
            max_requests: max_requests.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("conversion lock")
    }

    /// This worker now reads every outcome: requests admitted from now on are judged.
    pub fn listening(&self, now: Instant) {
        self.lock().listening_since.get_or_insert(now);
    }

    /// Whether a new request about `about` may go out on this worker's channel; counts what
    /// it refuses (or would refuse, in dry run). `Some(scope)` refuses.
    pub fn refuses(&self, about: &About<'_>, now: Instant) -> Option<Scope> {
        if !self.refuses_here || self.config.mode == ConversionMode::Off {
            return None;
        }
        if about
            .country
            .is_some_and(|c| self.config.allow_countries.iter().any(|a| a == c))
            || self.allowed_ranges.iter().any(|r| r == about.range)
        {
            return None;
        }
        let mut state = self.lock();
        self.advance(&mut state, now);
        let country = about.country.and_then(country_code);
        let range = self.config.per_range.and_then(|rule| {
            let h = self.hasher.hash_one(about.range);
            state
                .ranges
                .get(&h)
                .is_some_and(|c| c.below(&rule))
                .then_some(Scope::Range)
        });
        let scope = range.or_else(|| {
            let rule = self.config.per_country?;
            state
                .countries
                .get(&country?)
                .is_some_and(|c| c.below(&rule))
                .then_some(Scope::Country)
        })?;
        let mode = match self.config.mode {
            ConversionMode::DryRun => "dry_run",
            _ => "enforce",
        };
        metrics::counter!("otp_conversion_refused_total", "channel" => self.channel, "scope" => scope.as_str(), "mode" => mode)
            .increment(1);
        (self.config.mode == ConversionMode::Enforce).then_some(scope)
    }

    /// A request admitted at `at` (by this worker or another of the fleet).
    pub fn admitted(&self, about: &About<'_>, at: Instant) {
        if self.config.mode == ConversionMode::Off {
            return;
        }
        let key = self.hasher.hash_one(about.request);
        let country = about.country.and_then(country_code);
        let mut state = self.lock();
        if let Some(country) = country {
            if state.exported.insert(country) {
                let label = country_str(&country).to_string();
                metrics::counter!("otp_conversion_judged_total", "country" => label.clone())
                    .increment(0);
                metrics::counter!("otp_conversion_verified_total", "country" => label).increment(0);
            }
        }
        // Admitted before this worker read outcomes (read back from the fleet's topic at its
        // start): never judged, so not kept.
        if state.listening_since.is_none_or(|since| at < since) {
            return;
        }
        if state.requests.contains_key(&key) {
            return; // one request, counted once (a fallback, a batch read twice)
        }
        while state.requests.len() >= self.max_requests {
            metrics::counter!("otp_conversion_requests_evicted_total").increment(1);
            self.forget_oldest(&mut state);
        }
        let app = self.hasher.hash_one(about.app.unwrap_or(""));
        // Its user may have entered the code before its admission reached this worker.
        let verified = state
            .early
            .remove(&key)
            .is_some_and(|(early_app, _)| early_app == app);
        state.requests.insert(
            key,
            Request {
                at,
                app,
                range: self.hasher.hash_one(about.range),
                country,
                verified,
                counted: false,
                provider: None,
            },
        );
        // In time order: another worker's admission may be older than the newest.
        let i = state.order.partition_point(|(t, _)| *t <= at);
        state.order.insert(i, (at, key));
        if i < state.judged {
            // Older than requests already judged (another worker's, read late): judged now,
            // so that the judged ones stay the oldest.
            state.judged += 1;
            self.judge(&mut state, key, at + self.config.grace);
        }
    }

    /// This worker sent `request` through `provider`.
    pub fn sent_through(&self, request: &str, provider: Provider) {
        let key = self.hasher.hash_one(request);
        if let Some(r) = self.lock().requests.get_mut(&key) {
            r.provider = Some(provider);
        }
    }

    /// A verified outcome of `request` of `app` (authenticated by the caller). Whether the
    /// request was known.
    pub fn verified(&self, request: &str, app: Option<&str>, now: Instant) -> bool {
        let key = self.hasher.hash_one(request);
        let app = self.hasher.hash_one(app.unwrap_or(""));
        let mut state = self.lock();
        if state.reporting.len() >= MAX_APPS && !state.reporting.contains_key(&app) {
            let window = self.config.window;
            state
                .reporting
                .retain(|_, last| now.saturating_duration_since(*last) < window);
        }
        if state.reporting.len() < MAX_APPS || state.reporting.contains_key(&app) {
            state.reporting.insert(app, now);
        }
        let Some(r) = state.requests.get_mut(&key) else {
            self.keep_early(&mut state, key, app, now);
            return false;
        };
        if r.app != app {
            return false;
        }
        if r.verified {
            return true;
        }
        r.verified = true;
        if r.counted {
            let (range, country) = (r.range, r.country);
            if let Some(c) = state.ranges.get_mut(&range) {
                c.verified += 1;
            }
            if let Some(country) = country {
                if let Some(c) = state.countries.get_mut(&country) {
                    c.verified += 1;
                }
                let label = country_str(&country).to_string();
                metrics::counter!("otp_conversion_verified_total", "country" => label).increment(1);
            }
        }
        true
    }

    /// Keep a verified outcome whose request is not known yet, for `grace` (its admission
    /// may come later through the fleet's topic); the oldest go first past [`MAX_EARLY`].
    fn keep_early(&self, state: &mut State, key: u64, app: u64, now: Instant) {
        while let Some(&(at, old)) = state.early_order.front() {
            let full = state.early.len() >= MAX_EARLY;
            if !full && now.saturating_duration_since(at) < self.config.grace {
                break;
            }
            state.early_order.pop_front();
            if state.early.get(&old).is_some_and(|(_, t)| *t == at) {
                state.early.remove(&old);
            }
        }
        state.early.insert(key, (app, now));
        state.early_order.push_back((now, key));
    }

    /// Judge what reached `grace`, forget what left the window; the worker's own judged sends
    /// since the last call, for the routes.
    pub fn tick(&self, now: Instant) -> Vec<Judged> {
        let mut state = self.lock();
        self.advance(&mut state, now);
        std::mem::take(&mut state.judged_sends)
    }

    fn advance(&self, state: &mut State, now: Instant) {
        // Forget what left the window.
        while let Some(&(at, _)) = state.order.front() {
            if now.saturating_duration_since(at) < self.config.window {
                break;
            }
            self.forget_oldest(state);
        }
        // Judge what is `grace` old.
        while let Some(&(at, key)) = state.order.get(state.judged) {
            if now.saturating_duration_since(at) < self.config.grace {
                break;
            }
            state.judged += 1;
            self.judge(state, key, now);
        }
    }

    /// Judge `key` at `now`: into the counts, if its app reported an outcome since the
    /// request was admitted. (An app that stopped reporting, or a stalled outcome feed, makes
    /// its newer requests unjudged rather than unconverted.)
    fn judge(&self, state: &mut State, key: u64, now: Instant) {
        let State {
            requests,
            reporting,
            ..
        } = &mut *state;
        let Some(r) = requests.get_mut(&key) else {
            return;
        };
        if reporting.get(&r.app).is_none_or(|last| *last < r.at) {
            return;
        }
        r.counted = true;
        let (range, country, verified, provider, r_at) =
            (r.range, r.country, r.verified, r.provider, r.at);
        state.ranges.entry(range).or_default().add(verified);
        if let Some(country) = country {
            state.countries.entry(country).or_default().add(verified);
            let label = country_str(&country).to_string();
            metrics::counter!("otp_conversion_judged_total", "country" => label.clone())
                .increment(1);
            if verified {
                metrics::counter!("otp_conversion_verified_total", "country" => label).increment(1);
            }
        }
        if let (Some(provider), Some(country)) = (provider, country) {
            if state.judged_sends.len() < MAX_JUDGED_SENDS {
                state.judged_sends.push(Judged {
                    provider,
                    country: country_str(&country).to_string(),
                    verified,
                    at: (r_at + self.config.grace).min(now),
                });
            }
        }
    }

    /// Forget the oldest request (at the front of the order), taking it out of the counts.
    fn forget_oldest(&self, state: &mut State) {
        let Some((_, key)) = state.order.pop_front() else {
            return;
        };
        // The judged ones are the oldest: the front was judged if any was.
        state.judged = state.judged.saturating_sub(1);
        let Some(r) = state.requests.remove(&key) else {
            return;
        };
        if !r.counted {
            return;
        }
        if let Some(c) = state.ranges.get_mut(&r.range) {
            c.remove(r.verified);
            if c.judged == 0 {
                state.ranges.remove(&r.range);
            }
        }
        if let Some(country) = &r.country {
            if let Some(c) = state.countries.get_mut(country) {
                c.remove(r.verified);
                if c.judged == 0 {
                    state.countries.remove(country);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
