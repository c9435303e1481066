//! What analysts ask of the status topic, as a pure function of its events: per channel and
//! country, how many requests went out, how many were delivered (by receipt) or only sent, why
//! they fell back, how many failed or expired, how long the first delivery took, and what it
//! cost; joined with the login systems' verification outcomes, conversion ([`conversion`]).
//! [`Tally`] takes events in topic order (any order across requests), drops replays by
//! `event_id`, and [`Tally::report`] sums them up. Requests are told apart by app and
//! request_id (ids are unique per app only). Nothing here reads Kafka.

use super::conversion::{self, ConversionRow, Dim, Seen};
use super::prices::Prices;
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use otp_events::{
    confirmation_key, Channel, DeliveryStatus, OutcomeKind, Provider, StatusKind,
    VerificationOutcome,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The events of a run, deduplicated, grouped by request.
#[derive(Default)]
pub struct Tally {
    seen: HashSet<String>,
    /// By confirmation key (`app/request_id`).
    requests: HashMap<String, Request>,
    /// Events dropped as replays (an `event_id` seen before).
    pub replays: u64,
    /// The first outcome reported per confirmation key, and when it happened.
    outcomes: HashMap<String, (OutcomeKind, DateTime<Utc>)>,
    outcome_events: HashSet<String>,
    /// Outcomes dropped as replays (an `event_id` seen before).
    pub outcome_replays: u64,
}

/// What one request went through, per channel tried.
#[derive(Default)]
struct Request {
    /// The request's country (from any of its events).
    country: Option<String>,
    app: Option<String>,
    /// When it was created: an event's time less its latency.
    created_at: Option<DateTime<Utc>>,
    /// The channels the user enabled (the `otp-channels` header), when a status said.
    enabled: Vec<Channel>,
    channels: BTreeMap<Channel, OnChannel>,
    /// Seen only as `duplicate` events (its first copy is outside the range read).
    duplicate_only: bool,
    rejected: bool,
}

#[derive(Default, Clone)]
struct OnChannel {
    /// Its attempt number: 1 for the request's first channel.
    attempt: u32,
    /// The provider that took it, or the last one tried.
    provider: Option<Provider>,
    /// The provider took it (`accepted` or `sent`).
    sent: bool,
    /// A receipt said delivered or read; with the first one's latency.
    delivered_ms: Option<u64>,
    sent_ms: Option<u64>,
    /// Handed on, with the reason (`error.code`).
    fallback: Option<String>,
    failed: bool,
    expired: bool,
}

impl Tally {
    /// Take one event; a replay (same `event_id`) is counted and dropped.
    pub fn add(&mut self, status: DeliveryStatus) {
        if !self.seen.insert(status.event_id.clone()) {
            self.replays += 1;
            return;
        }
        let key = confirmation_key(status.app.as_deref(), &status.request_id);
        let request = self.requests.entry(key).or_default();
        if request.country.is_none() {
            request.country = status.country.clone();
        }
        if request.app.is_none() {
            request.app = status.app.clone();
        }
        if request.enabled.is_empty() {
            request.enabled = status.enabled_channels.clone();
        }
        if let Some(ms) = status.latency_ms {
            let created = status.occurred_at - chrono::Duration::milliseconds(ms as i64);
            request.created_at = Some(request.created_at.map_or(created, |c| c.min(created)));
        }
        match status.status {
            // A duplicate says nothing about the request it duplicates; a request seen only
            // as duplicates is counted apart.
            StatusKind::Duplicate => {
                if request.channels.is_empty() && !request.rejected {
                    request.duplicate_only = true;
                }
                return;
            }
            StatusKind::Rejected => {
                request.rejected = true;
                return;
            }
            _ => request.duplicate_only = false,
        }
        let on = request.channels.entry(status.channel).or_default();
        on.attempt = on.attempt.max(status.attempt);
        // The provider that took it wins over one tried before it.
        if status.provider.is_some() && (!on.sent || on.provider.is_none()) {
            on.provider = status.provider;
        }
        let ms = status.latency_ms;
        match status.status {
            StatusKind::Accepted | StatusKind::Sent => {
                on.sent = true;
                on.sent_ms = min_of(on.sent_ms, ms);
            }
            StatusKind::Delivered | StatusKind::Read => {
                on.sent = true;
                on.delivered_ms = min_of(on.delivered_ms, ms);
            }
            StatusKind::Fallback => {
                on.fallback = Some(status.error.map(|e| e.code).unwrap_or_default());
            }
            StatusKind::Failed => on.failed = true,
            StatusKind::Expired => on.expired = true,
            StatusKind::Duplicate | StatusKind::Rejected => {}
        }
    }

    /// Take one verification outcome; a replay (same `event_id`) is counted and dropped. Of
    /// several about one request, `verified` wins (a user who left and came back got in),
    /// and otherwise the earliest counts.
    pub fn add_outcome(&mut self, outcome: VerificationOutcome) {
        if !self.outcome_events.insert(outcome.event_id.clone()) {
            self.outcome_replays += 1;
            return;
        }
        let reported = (outcome.outcome, outcome.occurred_at);
        let rank = |(kind, at): (OutcomeKind, DateTime<Utc>)| (kind != OutcomeKind::Verified, at);
        self.outcomes
            .entry(outcome.key())
            .and_modify(|kept| {
                if rank(reported) < rank(*kept) {
                    *kept = reported;
                }
            })
            .or_insert(reported);
    }

    /// The report, per channel and country (and per channel over all countries), with costs
    /// from `prices`, and conversion grouped by `group_by`.
    pub fn report(&self, prices: &Prices, group_by: &[Dim]) -> Report {
        let counted = self.count();
        let mut all = counted.summary;
        let rows = channel_rows(counted.rows, prices);
        all.estimated_cost = rows
            .iter()
            .filter(|r| r.country == "all")
            .map(|r| r.estimated_cost)
            .sum();
        all.cost_per_delivered = per(all.estimated_cost, all.delivered + all.sent_only);
        all.fallback_rate = ratio(all.fell_back, all.requests);
        all.first_delivery_ms = Percentiles::of(&counted.first_delivery);
        let by_provider = provider_rows(counted.by_provider);
        let conversion = conversion::rows(
            self.counted()
                .map(|(key, r)| r.seen(self.outcomes.get(key).copied())),
            group_by,
        );
        all.verified = conversion[0].verified;
        all.conversion = conversion[0].conversion;
        let enabled_channels = self.enabled_channels();
        let outcomes_unmatched = self.outcomes_unmatched();
        Report {
            currency: prices.currency.clone(),
            window: Window::default(),
            summary: all,
            rows,
            by_provider,
            conversion,
            enabled_channels,
            outcomes_unmatched,
            replays_dropped: self.replays,
            outcome_replays_dropped: self.outcome_replays,
        }
    }

    /// The requests the report counts (not refused outright, not only duplicates).
    fn counted(&self) -> impl Iterator<Item = (&String, &Request)> {
        self.requests.iter().filter(|(_, r)| r.counted())
    }

    /// Every request counted once in the summary, and per channel (by country and in all)
    /// and per provider.
    fn count(&self) -> Counted {
        let mut c = Counted {
            rows: BTreeMap::new(),
            by_provider: BTreeMap::new(),
            summary: Summary::default(),
            first_delivery: new_histogram(),
        };
        let all = &mut c.summary;
        for request in self.requests.values() {
            if request.rejected && request.channels.is_empty() {
                all.rejected += 1;
                continue;
            }
            if request.duplicate_only {
                all.duplicates_only += 1;
                continue;
            }
            all.requests += 1;
            let country = request.country.clone().unwrap_or_else(|| "??".into());
            let delivered_at = request
                .channels
                .values()
                .filter_map(|c| c.delivered_ms)
                .min();
            if let Some(ms) = delivered_at {
                all.delivered += 1;
                let _ = c.first_delivery.record(ms);
            } else if request.channels.values().any(|c| c.sent) {
                all.sent_only += 1;
            }
            if request.channels.values().any(|c| c.fallback.is_some()) {
                all.fell_back += 1;
            }
            // The channel tried last, by attempt: the channels' own order is not the user's.
            let last = request.channels.values().max_by_key(|c| c.attempt);
            if last.is_some_and(|c| c.failed) {
                all.failed += 1;
            }
            if last.is_some_and(|c| c.expired) {
                all.expired += 1;
            }
            for (channel, on) in &request.channels {
                for key in [(*channel, country.clone()), (*channel, "all".to_string())] {
                    c.rows.entry(key).or_default().add(on);
                }
                let provider = on.provider.map_or("none", |p| p.as_str()).to_string();
                for country in [country.clone(), "all".to_string()] {
                    let key = (*channel, provider.clone(), country);
                    c.by_provider.entry(key).or_default().add(on);
                }
            }
        }
        c
    }

    /// How many requests had each set of enabled channels (`whatsapp,sms`, `sms`, ...).
    fn enabled_channels(&self) -> BTreeMap<String, u64> {
        let mut enabled_channels: BTreeMap<String, u64> = BTreeMap::new();
        for (_, r) in self.counted() {
            let name = if r.enabled.is_empty() {
                "unknown".to_string()
            } else {
                r.enabled
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            *enabled_channels.entry(name).or_default() += 1;
        }
        enabled_channels
    }

    /// Outcomes about no request the report counted (unknown, or another app's).
    fn outcomes_unmatched(&self) -> u64 {
        self.outcomes
            .keys()
            .filter(|key| {
                !self
                    .requests
                    .get(*key)
                    .is_some_and(|r| !r.duplicate_only && !r.channels.is_empty())
            })
            .count() as u64
    }
}

impl Request {
    /// Whether it counts among the requests: neither only refused as invalid, nor seen only
    /// as duplicates of a request outside the range read.
    fn counted(&self) -> bool {
        !(self.duplicate_only || self.rejected && self.channels.is_empty())
    }

    /// What conversion needs of it: the channel that carried the code (the first delivered,
    /// else the last tried) and that channel's provider.
    fn seen(&self, outcome: Option<(OutcomeKind, DateTime<Utc>)>) -> Seen<'_> {
        let delivered = self
            .channels
            .iter()
            .filter(|(_, c)| c.delivered_ms.is_some())
            .min_by_key(|(_, c)| c.delivered_ms);
        let carried = delivered.or_else(|| self.channels.iter().max_by_key(|(_, c)| c.attempt));
        Seen {
            channel: carried.map(|(ch, _)| *ch),
            provider: carried.and_then(|(_, c)| c.provider),
            country: self.country.as_deref().unwrap_or("??"),
            app: self.app.as_deref(),
            created_at: self.created_at,
            delivered: delivered.is_some(),
            outcome,
        }
    }
}

fn min_of(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid histogram")
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn per(cost: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| cost / count as f64)
}

/// The span of statuses a report read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Window {
    /// From (`--since`); `None`: the topic's beginning.
    pub since: Option<DateTime<Utc>>,
    /// Up to (`--until`, or when the report started).
    pub until: Option<DateTime<Utc>>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub currency: String,
    pub window: Window,
    pub summary: Summary,
    pub rows: Vec<ChannelRow>,
    /// Conversion: the first row over every request, then one per group of `--group-by`.
    pub conversion: Vec<ConversionRow>,
    /// Requests by the channels the user enabled, in their order (`whatsapp,sms`; `unknown`
    /// for statuses written before they were carried).
    pub enabled_channels: BTreeMap<String, u64>,
    /// Outcomes about no request read here: another app's id, a request outside the window,
    /// or one we never saw. They join nothing.
    pub outcomes_unmatched: u64,
    pub outcome_replays_dropped: u64,
    /// The same by the provider each channel's send went through (`none`: no provider was
    /// tried, e.g. an abuse rule or an expired request; statuses written before providers
    /// were named count there too).
    pub by_provider: Vec<ProviderRow>,
    pub replays_dropped: u64,
}

/// One provider of one channel in one country (or `all`).
#[derive(Debug, Serialize)]
pub struct ProviderRow {
    pub channel: Channel,
    pub provider: String,
    pub country: String,
    /// Requests whose send on this channel went through (or was last tried on) the provider.
    pub requests: u64,
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
    pub expired: u64,
    /// Handed to the next channel.
    pub fell_back: u64,
    pub first_delivery_ms: Option<Percentiles>,
    pub sent_ms: Option<Percentiles>,
}

/// Per request, over all channels.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Distinct requests (not counting those seen only as duplicates or rejected).
    pub requests: u64,
    /// Delivered on some channel, by receipt.
    pub delivered: u64,
    /// Taken by a provider, with no delivery receipt (confirmation off, or not yet).
    pub sent_only: u64,
    /// Handed to another channel at least once.
    pub fell_back: u64,
    pub fallback_rate: f64,
    /// Ended failed or expired on their last channel.
    pub failed: u64,
    pub expired: u64,
    /// Refused as invalid (dead-lettered).
    pub rejected: u64,
    /// Seen only as duplicates of a request outside the range read.
    pub duplicates_only: u64,
    /// From `created_at` to the first delivery receipt, in milliseconds.
    pub first_delivery_ms: Option<Percentiles>,
    pub estimated_cost: f64,
    /// Per request delivered or sent.
    pub cost_per_delivered: Option<f64>,
    /// Reported `verified` by their login system.
    pub verified: u64,
    /// Verified over requests.
    pub conversion: f64,
}

/// One channel in one country (or `all`).
#[derive(Debug, Serialize)]
pub struct ChannelRow {
    pub channel: Channel,
    pub country: String,
    /// Requests tried on this channel.
    pub requests: u64,
    /// Taken by the provider.
    pub sent: u64,
    /// Delivered, by receipt.
    pub delivered: u64,
    pub failed: u64,
    pub expired: u64,
    /// Handed to the next channel, by reason (`error.code`).
    pub fallbacks: BTreeMap<String, u64>,
    pub fallback_rate: f64,
    /// From `created_at` to the first delivery receipt on this channel.
    pub first_delivery_ms: Option<Percentiles>,
    /// From `created_at` to the provider taking it.
    pub sent_ms: Option<Percentiles>,
    /// Messages charged for ([`Prices`] says which count) times the price.
    pub estimated_cost: f64,
    pub cost_per_delivered: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
}

impl Percentiles {
    pub(super) fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
        })
    }
}

#[derive(Default)]
struct Row {
    requests: u64,
    sent: u64,
    delivered: u64,
    failed: u64,
    expired: u64,
    fallbacks: BTreeMap<String, u64>,
    delivered_ms: Option<Histogram<u64>>,
    sent_ms: Option<Histogram<u64>>,
}

impl Row {
    fn add(&mut self, on: &OnChannel) {
        self.requests += 1;
        self.sent += u64::from(on.sent);
        self.delivered += u64::from(on.delivered_ms.is_some());
        self.failed += u64::from(on.failed);
        self.expired += u64::from(on.expired);
        if let Some(reason) = &on.fallback {
            *self.fallbacks.entry(reason.clone()).or_default() += 1;
        }
        if let Some(ms) = on.delivered_ms {
            let _ = self
                .delivered_ms
                .get_or_insert_with(new_histogram)
                .record(ms);
        }
        if let Some(ms) = on.sent_ms {
            let _ = self.sent_ms.get_or_insert_with(new_histogram).record(ms);
        }
    }

    fn finish(self, channel: Channel, country: String, prices: &Prices) -> ChannelRow {
        let charged = prices.charged(channel, self.sent, self.delivered);
        let estimated_cost = charged as f64 * prices.price(channel, &country);
        let fell_back: u64 = self.fallbacks.values().sum();
        ChannelRow {
            channel,
            requests: self.requests,
            sent: self.sent,
            delivered: self.delivered,
            failed: self.failed,
            expired: self.expired,
            fallback_rate: ratio(fell_back, self.requests),
            fallbacks: self.fallbacks,
            first_delivery_ms: self.delivered_ms.as_ref().and_then(Percentiles::of),
            sent_ms: self.sent_ms.as_ref().and_then(Percentiles::of),
            cost_per_delivered: None,
            estimated_cost,
            country,
        }
        .with_cost_per_delivered()
    }
}

impl ChannelRow {
    /// What a cost is shared over: delivered codes, or sent ones when no receipts were seen.
    fn charged_basis(&self) -> u64 {
        if self.delivered > 0 {
            self.delivered
        } else {
            self.sent
        }
    }

    fn with_cost_per_delivered(mut self) -> Self {
        self.cost_per_delivered = per(self.estimated_cost, self.charged_basis());
        self
    }
}

/// What [`Tally::count`] found.
struct Counted {
    rows: BTreeMap<(Channel, String), Row>,
    by_provider: BTreeMap<(Channel, String, String), Row>,
    summary: Summary,
    first_delivery: Histogram<u64>,
}

/// A row per channel and country, and one per channel in all, priced: prices are per
/// country, so a channel's total is the sum of its countries' costs.
fn channel_rows(rows: BTreeMap<(Channel, String), Row>, prices: &Prices) -> Vec<ChannelRow> {
    let mut rows: Vec<ChannelRow> = rows
        .into_iter()
        .map(|((channel, country), row)| row.finish(channel, country, prices))
        .collect();
    for i in 0..rows.len() {
        if rows[i].country == "all" {
            let channel = rows[i].channel;
            let cost = rows
                .iter()
                .filter(|r| r.channel == channel && r.country != "all")
                .map(|r| r.estimated_cost)
                .sum();
            let row = &mut rows[i];
            row.estimated_cost = cost;
            row.cost_per_delivered = per(cost, row.charged_basis());
        }
    }
    rows
}

/// A row per channel, provider and country (and per channel and provider in all).
fn provider_rows(rows: BTreeMap<(Channel, String, String), Row>) -> Vec<ProviderRow> {
    rows.into_iter()
        .map(|((channel, provider, country), row)| ProviderRow {
            channel,
            provider,
            country,
            requests: row.requests,
            sent: row.sent,
            delivered: row.delivered,
            failed: row.failed,
            expired: row.expired,
            fell_back: row.fallbacks.values().sum(),
            first_delivery_ms: row.delivered_ms.as_ref().and_then(Percentiles::of),
            sent_ms: row.sent_ms.as_ref().and_then(Percentiles::of),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_events::{StatusError, DELIVERY_STATUS_SCHEMA};

    fn status(id: &str, kind: StatusKind, channel: Channel, ms: u64) -> DeliveryStatus {
        DeliveryStatus {
            schema: DELIVERY_STATUS_SCHEMA.to_string(),
            event_id: format!("{id}-{}-{channel}-{ms}", kind.as_str()),
            request_id: id.to_string(),
            status: kind,
            channel,
            provider: None,
            attempt: 1,
            tries: None,
            provider_message_id: None,
            error: None,
            country: Some("GB".into()),
            phone_hash: Some("h".into()),
            occurred_at: chrono::Utc::now(),
            latency_ms: Some(ms),
            next_channel: None,
            app: None,
            is_final: false,
            enabled_channels: Vec::new(),
        }
    }

    fn fallback(id: &str, reason: &str) -> DeliveryStatus {
        let mut s = status(id, StatusKind::Fallback, Channel::Whatsapp, 900);
        s.error = Some(StatusError {
            category: otp_events::ErrorCategory::Recipient,
            code: reason.into(),
            message: String::new(),
        });
        s
    }

    #[test]
    fn a_run_with_known_outcomes_sums_up_to_them() {
        use Channel::{Sms, Whatsapp};
        use StatusKind::*;
        let mut t = Tally::default();
        // a: WhatsApp, delivered at 1.2 s.
        t.add(status("a", Accepted, Whatsapp, 800));
        t.add(status("a", Delivered, Whatsapp, 1200));
        // b: not on WhatsApp, fell back, SMS sent (no receipt).
        t.add(fallback("b", "131026"));
        t.add(status("b", Sent, Sms, 1500));
        // c: SMS failed; d: expired on WhatsApp; e: rejected; f: only a duplicate.
        t.add(status("c", Failed, Sms, 300));
        t.add(status("d", Expired, Whatsapp, 0));
        t.add(status("e", Rejected, Whatsapp, 0));
        t.add(status("f", Duplicate, Whatsapp, 0));
        // a replay of a's delivery.
        t.add(status("a", Delivered, Whatsapp, 1200));
        let r = t.report(&Prices::default(), &[]);
        let s = &r.summary;
        assert_eq!(
            (
                s.requests,
                s.delivered,
                s.sent_only,
                s.fell_back,
                s.failed,
                s.expired
            ),
            (4, 1, 1, 1, 1, 1)
        );
        assert_eq!(
            (s.rejected, s.duplicates_only, r.replays_dropped),
            (1, 1, 1)
        );
        assert_eq!(s.fallback_rate, 0.25);
        assert_eq!(s.first_delivery_ms.map(|p| p.p50), Some(1200));
        let row = |c: Channel, country: &str| {
            r.rows
                .iter()
                .find(|x| x.channel == c && x.country == country)
                .unwrap()
        };
        let wa = row(Whatsapp, "GB");
        assert_eq!(
            (wa.requests, wa.sent, wa.delivered, wa.expired),
            (3, 1, 1, 1)
        );
        assert_eq!(wa.fallbacks.get("131026"), Some(&1));
        let sms = row(Sms, "all");
        assert_eq!((sms.requests, sms.sent, sms.failed), (2, 1, 1));
        // WhatsApp is charged per delivered, SMS per sent, at GB prices.
        let p = Prices::default();
        let expected = p.price(Whatsapp, "GB") + p.price(Sms, "GB");
        assert!(
            (s.estimated_cost - expected).abs() < 1e-9,
            "{}",
            s.estimated_cost
        );
        assert!((row(Whatsapp, "all").estimated_cost - p.price(Whatsapp, "GB")).abs() < 1e-9);
    }

    /// SMS through two providers: each request counts under the provider that took it, a
    /// request whose first provider refused counting under the one that sent it.
    #[test]
    fn requests_are_broken_down_by_the_provider_that_took_them() {
        use Channel::Sms;
        use StatusKind::*;
        let via = |id: &str, kind, ms, provider| {
            let mut s = status(id, kind, Sms, ms);
            s.provider = provider;
            s
        };
        let mut t = Tally::default();
        t.add(via("t1", Sent, 400, Some(Provider::Twilio)));
        t.add(via("t1", Delivered, 2400, Some(Provider::Twilio)));
        t.add(via("v1", Sent, 500, Some(Provider::Vonage)));
        t.add(via("v2", Sent, 700, Some(Provider::Vonage)));
        t.add(via("v2", Delivered, 1700, Some(Provider::Vonage)));
        t.add(via("x", Expired, 0, None));
        let r = t.report(&Prices::default(), &[]);
        let row = |provider: &str| {
            r.by_provider
                .iter()
                .find(|x| x.provider == provider && x.country == "GB")
                .unwrap()
        };
        assert_eq!((row("twilio").requests, row("twilio").delivered), (1, 1));
        assert_eq!(
            (
                row("vonage").requests,
                row("vonage").sent,
                row("vonage").delivered
            ),
            (2, 2, 1)
        );
        assert_eq!(row("vonage").first_delivery_ms.map(|p| p.p50), Some(1700));
        assert_eq!((row("none").requests, row("none").expired), (1, 1));
        assert!(r
            .by_provider
            .iter()
            .any(|x| x.provider == "vonage" && x.country == "all"));
    }

    /// A scenario whose numbers were worked out by hand: two apps (one reusing the other's
    /// request_id), a request whose first channel was SMS and that failed on WhatsApp after
    /// it, two days, outcomes verified, abandoned, none, one about a request never seen and
    /// one replayed.
    #[test]
    fn conversion_joins_outcomes_per_channel_country_app_and_day() {
        use Channel::{Sms, Whatsapp};
        use StatusKind::*;
        let day1: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let day2: DateTime<Utc> = "2026-12-02T09:00:00Z".parse().unwrap();
        let ev = |app: &str,
                  id: &str,
                  kind,
                  channel,
                  attempt,
                  created: DateTime<Utc>,
                  after_ms: u64,
                  country: &str,
                  enabled: &[Channel]| {
            let mut s = status(id, kind, channel, after_ms);
            s.event_id = format!("{app}-{id}-{}-{channel}-{attempt}", kind.as_str());
            s.app = Some(app.into());
            s.attempt = attempt;
            s.country = Some(country.into());
            s.occurred_at = created + chrono::Duration::milliseconds(after_ms as i64);
            s.enabled_channels = enabled.to_vec();
            s
        };
        let (wa_sms, sms_wa, sms) = (&[Whatsapp, Sms][..], &[Sms, Whatsapp][..], &[Sms][..]);
        let mut t = Tally::default();
        t.add(ev(
            "shop", "a", Accepted, Whatsapp, 1, day1, 800, "DE", wa_sms,
        ));
        t.add(ev(
            "shop", "a", Delivered, Whatsapp, 1, day1, 1000, "DE", wa_sms,
        ));
        t.add(ev(
            "shop", "b", Fallback, Whatsapp, 1, day1, 900, "DE", wa_sms,
        ));
        t.add(ev("shop", "b", Sent, Sms, 2, day1, 1500, "DE", wa_sms));
        t.add(ev("bank", "a", Fallback, Sms, 1, day1, 700, "US", sms_wa));
        t.add(ev(
            "bank", "a", Failed, Whatsapp, 2, day1, 2000, "US", sms_wa,
        ));
        t.add(ev("bank", "c", Sent, Sms, 1, day2, 600, "US", sms));
        t.add(ev(
            "shop", "d", Delivered, Whatsapp, 1, day1, 1200, "DE", wa_sms,
        ));
        let outcome = |app: &str, id: &str, kind, at: DateTime<Utc>, event: &str| {
            let mut o = VerificationOutcome::new(id, kind, at);
            o.app = Some(app.into());
            o.event_id = event.into();
            o
        };
        let secs = |s| chrono::Duration::seconds(s);
        let verified_a = outcome("shop", "a", OutcomeKind::Verified, day1 + secs(20), "o1");
        t.add_outcome(verified_a.clone());
        t.add_outcome(verified_a); // replayed: the same event_id
        t.add_outcome(outcome(
            "shop",
            "b",
            OutcomeKind::Verified,
            day1 + secs(40),
            "o2",
        ));
        t.add_outcome(outcome(
            "shop",
            "d",
            OutcomeKind::Abandoned,
            day1 + secs(90),
            "o3",
        ));
        t.add_outcome(outcome("ghost", "z", OutcomeKind::Verified, day1, "o4"));
        let r = t.report(
            &Prices::default(),
            &[Dim::Channel, Dim::Country, Dim::App, Dim::Day],
        );
        let s = &r.summary;
        assert_eq!(
            (s.requests, s.failed, s.verified),
            (5, 1, 2),
            "bank/a failed on its last channel"
        );
        assert!((s.conversion - 0.4).abs() < 1e-9);
        assert_eq!((r.outcomes_unmatched, r.outcome_replays_dropped), (1, 1));
        let group = |channel: &str, country: &str, app: &str, day: &str| {
            r.conversion
                .iter()
                .find(|row| {
                    row.group.get(&Dim::Channel).map(String::as_str) == Some(channel)
                        && row.group[&Dim::Country] == country
                        && row.group[&Dim::App] == app
                        && row.group[&Dim::Day] == day
                })
                .unwrap_or_else(|| panic!("{channel} {country} {app} {day}: {:#?}", r.conversion))
        };
        let wa = group("whatsapp", "DE", "shop", "2026-12-01");
        assert_eq!(
            (wa.requests, wa.delivered, wa.verified, wa.abandoned),
            (2, 2, 1, 1)
        );
        assert!(wa.time_to_verify_ms.unwrap().p50.abs_diff(20_000) <= 20);
        let sms_de = group("sms", "DE", "shop", "2026-12-01");
        assert_eq!((sms_de.requests, sms_de.verified), (1, 1));
        assert!(sms_de.time_to_verify_ms.unwrap().p50.abs_diff(40_000) <= 40);
        let bank_a = group("whatsapp", "US", "bank", "2026-12-01");
        assert_eq!(
            (bank_a.requests, bank_a.verified, bank_a.no_outcome),
            (1, 0, 1)
        );
        let bank_c = group("sms", "US", "bank", "2026-12-02");
        assert_eq!((bank_c.requests, bank_c.no_outcome), (1, 1));
        assert_eq!(r.conversion.len(), 5, "all, and four groups");
        let enabled: Vec<(&str, u64)> = r
            .enabled_channels
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            enabled,
            vec![("sms", 1), ("sms,whatsapp", 1), ("whatsapp,sms", 3)]
        );
    }
}
