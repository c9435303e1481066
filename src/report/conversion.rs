//! Conversion: of the requests in the window, the share whose login system reported the code
//! `verified` (`otp.verification-outcomes`), and how long that took from the request, grouped
//! by what `--group-by` names: the channel and provider that carried the code, the
//! destination country, the app, the request's day (UTC). Also the share of requests by the
//! channels the user enabled (the `otp-channels` header of statuses).
//!
//! A request is attributed to the channel whose delivery receipt came first, or, with no
//! receipt, to the last channel it was tried on (by attempt number: a request whose first
//! channel was SMS is attributed like any other). Outcomes join requests by their confirmation
//! key (`app/request_id`); of several about one request, `verified` counts if one says so,
//! else the earliest; one about a request not read in the window (another app's id, a typo, a
//! request outside the window) is counted as unmatched and joins nothing. Pure:
//! [`super::Tally`] hands it the requests.

use super::tally::Percentiles;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use otp_events::{Channel, OutcomeKind, Provider};
use serde::Serialize;
use std::collections::BTreeMap;

/// What conversion can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    Channel,
    Provider,
    Country,
    App,
    Day,
}

/// One request, as conversion sees it.
pub struct Seen<'a> {
    /// The channel that carried the code (see the module's doc); `None` when no channel was
    /// tried (a rule refused it).
    pub channel: Option<Channel>,
    pub provider: Option<Provider>,
    pub country: &'a str,
    pub app: Option<&'a str>,
    pub created_at: Option<DateTime<Utc>>,
    pub delivered: bool,
    /// The first outcome its login system reported, and when.
    pub outcome: Option<(OutcomeKind, DateTime<Utc>)>,
}

impl Seen<'_> {
    fn value(&self, dim: Dim) -> String {
        match dim {
            Dim::Channel => self.channel.map_or("none", |c| c.as_str()).to_string(),
            Dim::Provider => self.provider.map_or("none", |p| p.as_str()).to_string(),
            Dim::Country => self.country.to_string(),
            Dim::App => self.app.unwrap_or("none").to_string(),
            Dim::Day => self
                .created_at
                .map_or_else(|| "unknown".to_string(), |t| t.date_naive().to_string()),
        }
    }
}

/// Conversion in one group (every request, with no `--group-by`).
#[derive(Debug, Serialize)]
pub struct ConversionRow {
    /// The group's value of each `--group-by` dimension (empty for the row over all).
    pub group: BTreeMap<Dim, String>,
    pub requests: u64,
    /// Delivered by receipt (conversion above it means receipts are missing, not codes).
    pub delivered: u64,
    pub verified: u64,
    /// Verified over requests.
    pub conversion: f64,
    pub abandoned: u64,
    pub too_many_attempts: u64,
    /// Reported `expired` by the login system.
    pub expired: u64,
    /// No outcome reported (yet).
    pub no_outcome: u64,
    /// From the request's `created_at` to its `verified` outcome, in milliseconds.
    pub time_to_verify_ms: Option<Percentiles>,
}

#[derive(Default)]
struct Acc {
    requests: u64,
    delivered: u64,
    outcomes: BTreeMap<OutcomeKind, u64>,
    no_outcome: u64,
    to_verify: Option<Histogram<u64>>,
}

impl Acc {
    fn add(&mut self, r: &Seen<'_>) {
        self.requests += 1;
        self.delivered += u64::from(r.delivered);
        match r.outcome {
            None => self.no_outcome += 1,
            Some((kind, at)) => {
                *self.outcomes.entry(kind).or_default() += 1;
                if let (OutcomeKind::Verified, Some(created)) = (kind, r.created_at) {
                    let ms = (at - created).num_milliseconds().max(0) as u64;
                    let h = self.to_verify.get_or_insert_with(|| {
                        Histogram::new(3).expect("3 significant figures is valid")
                    });
                    let _ = h.record(ms);
                }
            }
        }
    }

    fn finish(self, group: BTreeMap<Dim, String>) -> ConversionRow {
        let of = |k| self.outcomes.get(&k).copied().unwrap_or(0);
        let verified = of(OutcomeKind::Verified);
        ConversionRow {
            group,
            requests: self.requests,
            delivered: self.delivered,
            verified,
            conversion: if self.requests == 0 {
                0.0
            } else {
                verified as f64 / self.requests as f64
            },
            abandoned: of(OutcomeKind::Abandoned),
            too_many_attempts: of(OutcomeKind::TooManyAttempts),
            expired: of(OutcomeKind::Expired),
            no_outcome: self.no_outcome,
            time_to_verify_ms: self.to_verify.as_ref().and_then(Percentiles::of),
        }
    }
}

/// Conversion of `requests`, one row per group of `group_by` (in the groups' order), and a
/// first row over all of them.
pub fn rows<'a>(requests: impl Iterator<Item = Seen<'a>>, group_by: &[Dim]) -> Vec<ConversionRow> {
    let mut all = Acc::default();
    let mut groups: BTreeMap<Vec<String>, Acc> = BTreeMap::new();
    for r in requests {
        all.add(&r);
        if !group_by.is_empty() {
            let key = group_by.iter().map(|d| r.value(*d)).collect();
            groups.entry(key).or_default().add(&r);
        }
    }
    let mut out = vec![all.finish(BTreeMap::new())];
    out.extend(
        groups
            .into_iter()
            .map(|(values, acc)| acc.finish(group_by.iter().copied().zip(values).collect())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Channel::{Sms, Whatsapp};

    fn at(s: u64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_765_000_000 + s as i64, 0).unwrap()
    }

    fn seen(
        channel: Channel,
        country: &'static str,
        outcome: Option<(OutcomeKind, u64)>,
    ) -> Seen<'static> {
        Seen {
            channel: Some(channel),
            provider: None,
            country,
            app: Some("shop"),
            created_at: Some(at(0)),
            delivered: true,
            outcome: outcome.map(|(k, s)| (k, at(s))),
        }
    }

    #[test]
    fn conversion_is_verified_over_requests_per_group() {
        use OutcomeKind::*;
        let requests = vec![
            seen(Whatsapp, "DE", Some((Verified, 10))),
            seen(Whatsapp, "DE", Some((Verified, 30))),
            seen(Whatsapp, "DE", Some((Abandoned, 60))),
            seen(Sms, "DE", Some((Verified, 20))),
            seen(Sms, "US", None),
            seen(Sms, "US", Some((TooManyAttempts, 90))),
        ];
        let rows = rows(requests.into_iter(), &[Dim::Channel, Dim::Country]);
        let all = &rows[0];
        assert!(all.group.is_empty());
        assert_eq!((all.requests, all.verified, all.no_outcome), (6, 3, 1));
        assert_eq!(all.conversion, 0.5);
        let find = |c: &str, k: &str| {
            rows.iter()
                .find(|r| {
                    r.group.get(&Dim::Channel).map(String::as_str) == Some(c)
                        && r.group.get(&Dim::Country).map(String::as_str) == Some(k)
                })
                .unwrap()
        };
        let wa = find("whatsapp", "DE");
        assert_eq!((wa.requests, wa.verified, wa.abandoned), (3, 2, 1));
        assert!((wa.conversion - 2.0 / 3.0).abs() < 1e-9);
        let p = wa.time_to_verify_ms.unwrap();
        // Three significant figures: within 0.1 %.
        assert!(
            p.p50.abs_diff(10_000) <= 10 && p.p99.abs_diff(30_000) <= 30,
            "{p:?}"
        );
        let us = find("sms", "US");
        assert_eq!(
            (
                us.requests,
                us.verified,
                us.too_many_attempts,
                us.no_outcome
            ),
            (2, 0, 1, 1)
        );
        assert_eq!(rows.len(), 4, "all, and three groups");
    }
}
