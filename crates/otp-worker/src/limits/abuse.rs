//! Our own limits against abuse, SMS pumping above all: attackers trigger codes to number
//! ranges whose carrier fees they share. The rules follow the providers' guidance (Twilio
//! Verify Fraud Guard, AWS protect configurations): per number, per number range (the number
//! without its last 4 digits), per country, and no premium-rate or shared-cost numbers.
//!
//! A phone's state lives on the worker that owns its partition (the message key is the phone
//! hash), so no shared store is needed. A request is counted once, on its first channel.

use super::{Decision, Limit, Subject};
use otp_events::ErrorCategory;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `count` codes in any `window`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WindowRule {
    pub count: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// Abuse limits. Every rule can be switched off; the defaults suit a consumer login system.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AbuseConfig {
    /// Codes per phone number (default 5 per 10 minutes).
    #[serde(default = "default_per_phone")]
    pub per_phone: Option<WindowRule>,
    /// Codes per number range, the number without its last 4 digits (default 20 per 10
    /// minutes): catches pumping across a range.
    #[serde(default = "default_per_prefix")]
    pub per_prefix: Option<WindowRule>,
    /// Codes per destination country (default: no limit).
    #[serde(default)]
    pub per_country: Option<WindowRule>,
    /// Only these countries (ISO 3166-1 alpha-2); empty means all.
    #[serde(default)]
    pub allow_countries: Vec<String>,
    /// Never these countries.
    #[serde(default)]
    pub deny_countries: Vec<String>,
    /// Refuse premium-rate and shared-cost numbers (default true).
    #[serde(default = "default_block_premium")]
    pub block_premium: bool,
}

fn default_per_phone() -> Option<WindowRule> {
    Some(WindowRule {
        count: 5,
        window: Duration::from_secs(600),
    })
}
fn default_per_prefix() -> Option<WindowRule> {
    Some(WindowRule {
        count: 20,
        window: Duration::from_secs(600),
    })
}
fn default_block_premium() -> bool {
    true
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            per_phone: default_per_phone(),
            per_prefix: default_per_prefix(),
            per_country: None,
            allow_countries: Vec::new(),
            deny_countries: Vec::new(),
            block_premium: default_block_premium(),
        }
    }
}

impl AbuseConfig {
    pub(super) fn limits(&self) -> Vec<Box<dyn Limit>> {
        let mut out: Vec<Box<dyn Limit>> = Vec::new();
        if !self.allow_countries.is_empty() || !self.deny_countries.is_empty() || self.block_premium
        {
            out.push(Box::new(Destination {
                allow: self.allow_countries.clone(),
                deny: self.deny_countries.clone(),
                block_premium: self.block_premium,
            }));
        }
        let windows = [
            (self.per_phone, "per_phone", Key::Phone),
            (self.per_prefix, "per_prefix", Key::Prefix),
            (self.per_country, "per_country", Key::Country),
        ];
        for (rule, name, key) in windows {
            if let Some(rule) = rule {
                out.push(Box::new(Window::new(name, key, rule)));
            }
        }
        out
    }
}

/// Countries and number types we never send to.
struct Destination {
    allow: Vec<String>,
    deny: Vec<String>,
    block_premium: bool,
}

impl Limit for Destination {
    fn rule(&self) -> &'static str {
        "destination"
    }
    fn applies_to_fallbacks(&self) -> bool {
        false
    }
    fn check(&self, subject: &Subject) -> Decision {
        let country = subject.country.as_deref().unwrap_or("");
        let denied = self.deny.iter().any(|c| c == country)
            || (!self.allow.is_empty() && !self.allow.iter().any(|c| c == country))
            || (self.block_premium && subject.premium);
        if denied {
            Decision::Refuse(ErrorCategory::Blocked)
        } else {
            Decision::Go
        }
    }
}

#[derive(Clone, Copy)]
enum Key {
    Phone,
    Prefix,
    Country,
}

/// At most `count` per `window` per key, over any window of that length: a log of each key's
/// admissions in the last window (at most `count` of them). A token bucket would let a burst
/// and then its refill through in the first window (about twice `count`); this does not.
///
/// Memory is bounded: a key is forgotten once its newest admission is a window old, and at most
/// `max_keys` keys are held; under a flood of distinct numbers the key admitted longest ago is
/// forgotten first (counted in `otp_abuse_keys_evicted_total`). A key costs about 100 bytes.
struct Window {
    name: &'static str,
    key: Key,
    count: usize,
    window: Duration,
    max_keys: usize,
    state: Mutex<WindowState>,
}

struct WindowState {
    origin: Instant,
    /// Per key (a 64-bit hash of it): admission times, milliseconds after `origin`, oldest first.
    log: HashMap<u64, VecDeque<u64>>,
    /// Every admission still inside its window, oldest first: when one leaves its window, its
    /// key may be forgotten.
    admissions: VecDeque<(u64, u64)>,
    hasher: std::collections::hash_map::RandomState,
}

/// Keys held per rule, at most (about 50 MB per rule at this bound).
const MAX_KEYS: usize = 500_000;

impl Window {
    fn new(name: &'static str, key: Key, rule: WindowRule) -> Self {
        Self::bounded(name, key, rule, MAX_KEYS)
    }

    fn bounded(name: &'static str, key: Key, rule: WindowRule, max_keys: usize) -> Self {
        Self {
            name,
            key,
            count: rule.count.max(1) as usize,
            window: rule.window,
            max_keys: max_keys.max(1),
            state: Mutex::new(WindowState {
                origin: Instant::now(),
                log: HashMap::new(),
                admissions: VecDeque::new(),
                hasher: Default::default(),
            }),
        }
    }

    /// Admit one for `key` at `now` if fewer than `count` were admitted in the window before.
    fn admit(&self, key: &str, now: Instant) -> bool {
        use std::hash::BuildHasher;
        let mut state = self.state.lock().expect("abuse window lock");
        let state = &mut *state;
        let window = self.window.as_millis() as u64;
        // Times count from one window before `origin`, so that "a window ago" is never
        // before zero.
        let at = now.saturating_duration_since(state.origin).as_millis() as u64 + window;
        let since = at - window;
        let h = state.hasher.hash_one(key);
        // Forget what left its window: admissions, and keys with nothing left in theirs. A
        // new key at the bound makes room by forgetting the key admitted longest ago.
        let new_key = !state.log.contains_key(&h);
        while let Some(&(t, k)) = state.admissions.front() {
            if t > since && !(new_key && state.log.len() >= self.max_keys) {
                break;
            }
            state.admissions.pop_front();
            let evicted = t > since;
            if let Some(times) = state.log.get_mut(&k) {
                while times.front().is_some_and(|x| *x <= t) {
                    times.pop_front();
                }
                if times.is_empty() || evicted {
                    state.log.remove(&k);
                    if evicted {
                        metrics::counter!("otp_abuse_keys_evicted_total", "rule" => self.name)
                            .increment(1);
                    }
                }
            }
        }
        let times = state.log.entry(h).or_default();
        while times.front().is_some_and(|t| *t <= since) {
            times.pop_front();
        }
        if times.len() >= self.count {
            return false;
        }
        times.push_back(at);
        state.admissions.push_back((at, h));
        true
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.state.lock().expect("abuse window lock").log.len()
    }
}

impl Limit for Window {
    fn rule(&self) -> &'static str {
        self.name
    }
    fn applies_to_fallbacks(&self) -> bool {
        false
    }
    fn check(&self, subject: &Subject) -> Decision {
        let key = match self.key {
            Key::Phone => &subject.phone_key,
            Key::Prefix => &subject.prefix_key,
            Key::Country => match &subject.country {
                Some(c) => c,
                None => return Decision::Go,
            },
        };
        if self.admit(key, Instant::now()) {
            Decision::Go
        } else {
            Decision::Refuse(ErrorCategory::RateLimited)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(phone: &str, prefix: &str, country: &str, premium: bool) -> Subject {
        Subject {
            phone_key: phone.into(),
            prefix_key: prefix.into(),
            country: Some(country.into()),
            premium,
        }
    }

    fn outcome(limits: &[Box<dyn Limit>], s: &Subject) -> Option<&'static str> {
        limits
            .iter()
            .find(|l| l.check(s) != Decision::Go)
            .map(|l| l.rule())
    }

    #[test]
    fn per_phone_allows_five_then_refuses() {
        let limits = AbuseConfig::default().limits();
        for i in 0..5 {
            assert_eq!(
                outcome(&limits, &subject("a", &format!("p{i}"), "US", false)),
                None
            );
        }
        assert_eq!(
            outcome(&limits, &subject("a", "p9", "US", false)),
            Some("per_phone")
        );
        assert_eq!(
            outcome(&limits, &subject("b", "p9", "US", false)),
            None,
            "another number"
        );
    }

    #[test]
    fn per_prefix_catches_a_range() {
        let limits = AbuseConfig::default().limits();
        for i in 0..20 {
            assert_eq!(
                outcome(&limits, &subject(&format!("n{i}"), "range", "US", false)),
                None
            );
        }
        assert_eq!(
            outcome(&limits, &subject("n20", "range", "US", false)),
            Some("per_prefix")
        );
    }

    #[test]
    fn five_per_ten_minutes_means_five_in_any_ten_minutes() {
        let w = Window::new(
            "per_phone",
            Key::Phone,
            WindowRule {
                count: 5,
                window: Duration::from_secs(600),
            },
        );
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // One a minute: five, then refused until the first is ten minutes old.
        for m in 0..5 {
            assert!(w.admit("a", at(m * 60)), "minute {m}");
        }
        for m in 5..10 {
            assert!(
                !w.admit("a", at(m * 60)),
                "minute {m}: five already in the window"
            );
        }
        assert!(!w.admit("a", at(599)), "just inside the first one's window");
        assert!(w.admit("a", at(600)), "the first left the window");
        assert!(!w.admit("a", at(601)), "and only one slot came free");
        // A token bucket of 5 with a refill of one per 2 minutes lets 9 through in the first
        // ten minutes; this lets 5.
        let mut first_ten = 0;
        let v = Window::new(
            "per_phone",
            Key::Phone,
            WindowRule {
                count: 5,
                window: Duration::from_secs(600),
            },
        );
        for s in (0..600).step_by(10) {
            first_ten += usize::from(v.admit("b", at(s)));
        }
        assert_eq!(first_ten, 5);
    }

    #[test]
    fn a_flood_of_distinct_numbers_holds_at_most_max_keys_and_keys_expire() {
        let rule = WindowRule {
            count: 5,
            window: Duration::from_secs(600),
        };
        let w = Window::bounded("per_phone", Key::Phone, rule, 10_000);
        let t0 = Instant::now();
        for i in 0..1_000_000u32 {
            w.admit(&format!("n{i}"), t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(w.keys() <= 10_000, "{} keys held", w.keys());
        // A window later, every key has left its window: one admission clears them.
        w.admit("late", t0 + Duration::from_secs(1_000));
        assert_eq!(w.keys(), 1);
    }

    #[test]
    fn countries_and_premium_numbers_are_blocked() {
        let config = AbuseConfig {
            deny_countries: vec!["GB".into()],
            ..AbuseConfig::default()
        };
        let limits = config.limits();
        assert_eq!(
            outcome(&limits, &subject("a", "p", "GB", false)),
            Some("destination")
        );
        assert_eq!(
            outcome(&limits, &subject("b", "q", "US", true)),
            Some("destination")
        );
        assert_eq!(outcome(&limits, &subject("c", "r", "US", false)), None);
        let allow = AbuseConfig {
            allow_countries: vec!["US".into()],
            ..AbuseConfig::default()
        }
        .limits();
        assert_eq!(
            outcome(&allow, &subject("d", "s", "DE", false)),
            Some("destination")
        );
    }
}
