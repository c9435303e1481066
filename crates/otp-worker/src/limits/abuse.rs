//! Our own limits against abuse, SMS pumping above all: attackers trigger codes to number
//! ranges whose carrier fees they share. The rules follow the providers' guidance (Twilio
//! Verify Fraud Guard, AWS protect configurations): per number, per number range (the number
//! without its last 4 digits), per country, and no premium-rate or shared-cost numbers.
//!
//! A phone's state lives on the worker that owns its partition (the message key is the phone
//! hash), so no shared store is needed. A request is counted once, on its first channel.

use super::provider::{decision, nonzero};
use super::{Decision, Limit, Subject};
use governor::{DefaultKeyedRateLimiter, Quota};
use otp_events::ErrorCategory;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// At most `count` codes per `window`.
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

/// At most `count` per `window` per key (GCRA: `count` at once, then one per window/count).
struct Window {
    name: &'static str,
    key: Key,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Window {
    fn new(name: &'static str, key: Key, rule: WindowRule) -> Self {
        let period = rule.window / rule.count.max(1);
        let quota = Quota::with_period(period.max(Duration::from_millis(1)))
            .expect("non-zero period")
            .allow_burst(nonzero(rule.count));
        Self {
            name,
            key,
            limiter: governor::RateLimiter::keyed(quota),
        }
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
        match decision(self.limiter.check_key(key)) {
            Decision::Go => Decision::Go,
            _ => Decision::Refuse(ErrorCategory::RateLimited),
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
