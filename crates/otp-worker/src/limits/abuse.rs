//! Our own limits against abuse, SMS pumping above all: attackers trigger codes to number
//! ranges whose carrier fees they share. The rules follow the providers' guidance (Twilio
//! Verify Fraud Guard, AWS protect configurations): per number, per number range (the number
//! without its last 4 digits), per country, and no premium-rate or shared-cost numbers.
//!
//! A request is counted once, on its first channel, by the worker that admits it, and that
//! admission is shared with the rest of the fleet (`crate::fleet_counts`), so that the counts
//! hold across channels and workers.

use super::Subject;
use otp_events::ErrorCategory;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
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
    /// Share the counts with the whole fleet through `otp.abuse-admissions` (default true):
    /// both channels' workers, and every worker of a group, count every admission, and a
    /// started worker reads back the admissions of the last window. Off, each worker counts only what it
    /// admitted itself.
    #[serde(default = "default_fleet_counts")]
    pub fleet_counts: bool,
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
fn default_fleet_counts() -> bool {
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
            fleet_counts: default_fleet_counts(),
        }
    }
}

/// The abuse rules of one worker, asked together: a request is admitted only if every rule has
/// room for it, and only then counted by each, so a request that one rule refuses takes no
/// room in the others. Admissions made elsewhere in the fleet are counted with
/// [`Abuse::record`].
pub struct Abuse {
    destination: Option<Destination>,
    windows: Vec<Window>,
}

impl Abuse {
    pub fn new(config: &AbuseConfig) -> Self {
        Self::bounded(config, MAX_KEYS)
    }

    fn bounded(config: &AbuseConfig, max_keys: usize) -> Self {
        let destination = (!config.allow_countries.is_empty()
            || !config.deny_countries.is_empty()
            || config.block_premium)
            .then(|| Destination {
                allow: config.allow_countries.clone(),
                deny: config.deny_countries.clone(),
                block_premium: config.block_premium,
            });
        let windows = [
            (config.per_phone, "per_phone", Key::Phone),
            (config.per_prefix, "per_prefix", Key::Prefix),
            (config.per_country, "per_country", Key::Country),
        ]
        .into_iter()
        .filter_map(|(rule, name, key)| Some(Window::bounded(name, key, rule?, max_keys)))
        .collect();
        Self {
            destination,
            windows,
        }
    }

    /// The names of the rules in force.
    pub fn rules(&self) -> Vec<&'static str> {
        let destination = self.destination.as_ref().map(|_| "destination");
        destination
            .into_iter()
            .chain(self.windows.iter().map(|w| w.name))
            .collect()
    }

    /// The longest window of any rule: how far back the fleet's admissions still count.
    pub fn longest_window(&self) -> Option<Duration> {
        self.windows.iter().map(|w| w.window).max()
    }

    /// The destination rules alone (premium-rate and shared-cost numbers, allowed and denied
    /// countries): stateless and cheap, so they hold for every try, fallbacks included. A
    /// fallback's proof says the counts were passed on the first channel, not that the
    /// destination is allowed: a forged pending record or receipt that makes the tracker sign
    /// a fallback must still not reach a premium-rate number.
    pub fn destination(&self, subject: &Subject) -> Result<(), Refusal> {
        match &self.destination {
            Some(d) if d.refuses(subject) => Err(Refusal {
                rule: "destination",
                category: ErrorCategory::Blocked,
            }),
            _ => Ok(()),
        }
    }

    /// Admit `subject` at `now` and count it, or name the rule that refuses it.
    pub fn admit(&self, subject: &Subject, now: Instant) -> Result<(), Refusal> {
        self.destination(subject)?;
        // Every window's state at once (always in this order, so two requests cannot wait for
        // each other): checked, then counted, with no other request in between.
        let mut states: Vec<_> = self.windows.iter().map(Window::lock).collect();
        for (w, state) in self.windows.iter().zip(states.iter_mut()) {
            if let Some(key) = w.key_of(subject) {
                if !w.has_room(state, key, now) {
                    return Err(Refusal {
                        rule: w.name,
                        category: ErrorCategory::RateLimited,
                    });
                }
            }
        }
        for (w, state) in self.windows.iter().zip(states.iter_mut()) {
            if let Some(key) = w.key_of(subject) {
                w.push(state, key, now);
            }
        }
        Ok(())
    }

    /// Count an admission that another worker made at `at` (whatever room is left: it was
    /// admitted there).
    pub fn record(&self, subject: &Subject, at: Instant) {
        for w in &self.windows {
            if let Some(key) = w.key_of(subject) {
                let mut state = w.lock();
                w.push(&mut state, key, at);
            }
        }
    }
}

/// The rule that refused a request, and the category its status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub rule: &'static str,
    pub category: ErrorCategory,
}

/// Countries and number types we never send to.
struct Destination {
    allow: Vec<String>,
    deny: Vec<String>,
    block_premium: bool,
}

impl Destination {
    fn refuses(&self, subject: &Subject) -> bool {
        let country = subject.country.as_deref().unwrap_or("");
        self.deny.iter().any(|c| c == country)
            || (!self.allow.is_empty() && !self.allow.iter().any(|c| c == country))
            || (self.block_premium && subject.premium)
    }
}

#[derive(Clone, Copy)]
enum Key {
    Phone,
    Prefix,
    Country,
}

/// At most `count` per `window` per key, over any window of that length: a log of each key's
/// admissions in the last window (at most `count` of them, plus what other workers admitted).
/// A token bucket would let a burst and then its refill through in the first window (about
/// twice `count`); this does not.
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
    #[cfg(test)]
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

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().expect("abuse window lock")
    }

    /// What this rule counts a subject by; `None`: the rule does not apply to it.
    fn key_of<'a>(&self, subject: &'a Subject) -> Option<&'a str> {
        match self.key {
            Key::Phone => Some(&subject.phone_key),
            Key::Prefix => Some(&subject.prefix_key),
            Key::Country => subject.country.as_deref(),
        }
    }

    /// Times count from one window before `origin`, so that "a window ago" is never before
    /// zero; an admission from before that (another worker's, read back) is at zero.
    fn ms(&self, state: &WindowState, at: Instant) -> u64 {
        let window = self.window.as_millis() as u64;
        match at.checked_duration_since(state.origin) {
            Some(after) => window + after.as_millis() as u64,
            None => window.saturating_sub(state.origin.duration_since(at).as_millis() as u64),
        }
    }

    /// Whether `key` had fewer than `count` admissions in the window before `now`.
    fn has_room(&self, state: &mut WindowState, key: &str, now: Instant) -> bool {
        let since = self.ms(state, now) - self.window.as_millis() as u64;
        let h = state.hasher.hash_one(key);
        self.forget(state, since, h);
        state.log.get(&h).map_or(0, |times| {
            times.len() - times.partition_point(|t| *t <= since)
        }) < self.count
    }

    /// Count an admission of `key` at `at`, in time order (another worker's may be older than
    /// ours).
    fn push(&self, state: &mut WindowState, key: &str, at: Instant) {
        let t = self.ms(state, at);
        let now = self.ms(state, Instant::now().max(at));
        let since = now - self.window.as_millis() as u64;
        if t <= since {
            return; // already out of its window
        }
        let h = state.hasher.hash_one(key);
        self.forget(state, since, h);
        let times = state.log.entry(h).or_default();
        let i = times.partition_point(|x| *x <= t);
        times.insert(i, t);
        // A key's log holds at most its rule's count: more cannot refuse more, and admissions
        // read from the fleet (however many) cannot grow it.
        while times.len() > self.count {
            times.pop_front();
        }
        let i = state.admissions.partition_point(|x| x.0 <= t);
        state.admissions.insert(i, (t, h));
    }

    /// Forget what left its window by `since`: admissions, and keys with nothing left in
    /// theirs. To make room for `h` when it is new at the bound, forget the key admitted
    /// longest ago.
    fn forget(&self, state: &mut WindowState, since: u64, h: u64) {
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
    }

    /// Admit one for `key` at `now` if fewer than `count` were admitted in the window before.
    #[cfg(test)]
    fn admit(&self, key: &str, now: Instant) -> bool {
        let mut state = self.lock();
        let room = self.has_room(&mut state, key, now);
        if room {
            self.push(&mut state, key, now);
        }
        room
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.lock().log.len()
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

    fn outcome(abuse: &Abuse, s: &Subject) -> Option<&'static str> {
        abuse.admit(s, Instant::now()).err().map(|r| r.rule)
    }

    #[test]
    fn per_phone_allows_five_then_refuses() {
        let limits = Abuse::new(&AbuseConfig::default());
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
        let limits = Abuse::new(&AbuseConfig::default());
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
    fn a_keys_log_is_capped_at_its_rules_count() {
        let rule = WindowRule {
            count: 3,
            window: Duration::from_secs(600),
        };
        let w = Window::bounded("per_phone", Key::Phone, rule, 10_000);
        let now = Instant::now();
        let mut state = w.lock();
        for i in 0..1_000u64 {
            w.push(&mut state, "k", now - Duration::from_millis(i));
        }
        let h = state.hasher.hash_one("k");
        assert_eq!(state.log[&h].len(), 3);
        assert!(!w.has_room(&mut state, "k", now));
    }

    #[test]
    fn countries_and_premium_numbers_are_blocked() {
        let config = AbuseConfig {
            deny_countries: vec!["GB".into()],
            ..AbuseConfig::default()
        };
        let limits = Abuse::new(&config);
        assert_eq!(
            outcome(&limits, &subject("a", "p", "GB", false)),
            Some("destination")
        );
        assert_eq!(
            outcome(&limits, &subject("b", "q", "US", true)),
            Some("destination")
        );
        assert_eq!(outcome(&limits, &subject("c", "r", "US", false)), None);
        let allow = Abuse::new(&AbuseConfig {
            allow_countries: vec!["US".into()],
            ..AbuseConfig::default()
        });
        assert_eq!(
            outcome(&allow, &subject("d", "s", "DE", false)),
            Some("destination")
        );
    }

    #[test]
    fn a_request_one_rule_refuses_takes_no_room_in_another() {
        let abuse = Abuse::new(&AbuseConfig {
            per_prefix: Some(WindowRule {
                count: 1,
                window: Duration::from_secs(600),
            }),
            ..AbuseConfig::default()
        });
        assert_eq!(outcome(&abuse, &subject("a", "r1", "US", false)), None);
        for _ in 0..3 {
            assert_eq!(
                outcome(&abuse, &subject("b", "r1", "US", false)),
                Some("per_prefix")
            );
        }
        // b was refused three times: none of them counted against b's own five.
        for i in 0..5 {
            assert_eq!(
                outcome(&abuse, &subject("b", &format!("s{i}"), "US", false)),
                None,
                "b's code {i}"
            );
        }
        assert_eq!(
            outcome(&abuse, &subject("b", "s9", "US", false)),
            Some("per_phone")
        );
    }

    #[test]
    fn admissions_made_elsewhere_count_in_time_order_and_only_inside_the_window() {
        let abuse = Abuse::new(&AbuseConfig::default());
        let now = Instant::now();
        let ago = |s| now.checked_sub(Duration::from_secs(s)).unwrap_or(now);
        // Out of order, as admissions of several workers arrive.
        for s in [30, 500, 10, 200] {
            abuse.record(&subject("a", &format!("p{s}"), "US", false), ago(s));
        }
        // Older than the window: does not count.
        abuse.record(&subject("a", "old", "US", false), ago(700));
        assert_eq!(outcome(&abuse, &subject("a", "x", "US", false)), None);
        assert_eq!(
            outcome(&abuse, &subject("a", "y", "US", false)),
            Some("per_phone"),
            "four from elsewhere and one here make five"
        );
        let w = &abuse.windows[0];
        let state = w.lock();
        let times: Vec<u64> = state.admissions.iter().map(|(t, _)| *t).collect();
        assert!(times.windows(2).all(|p| p[0] <= p[1]), "{times:?}");
    }
}
