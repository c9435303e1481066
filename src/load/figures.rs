//! The figures of a load run, computed once from what was published, what the status topic
//! said, what the simulator received and what /proc said of the workers.

use super::fleet::{Role, Usage};
use super::{Observed, Sent};
use hdrhistogram::Histogram;
use otp_events::Channel;
use otp_provider_sim::{Quantiles, Received, Stats};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// One look at the run while it goes, for the plot.
pub struct Sample {
    pub at_s: f64,
    pub rss_bytes: u64,
}

pub struct Inputs<'a> {
    pub requests: usize,
    /// Unix ms the measurement starts from (first publish, or the workers' start for a
    /// backlog).
    pub measured_from_ms: i64,
    pub observed: &'a Observed,
    pub sent: &'a HashMap<String, Sent>,
    pub sim_messages: &'a [Received],
    pub sim_stats: &'a Stats,
    pub usage: &'a [(Role, Usage)],
    /// The simulator's receipt delay when the receipts path ran (`--receipts`).
    pub receipt_delay: Option<std::time::Duration>,
    /// The login system's part, when it reported outcomes or staged a pump.
    pub login: Option<super::login::LoginFigures>,
}

/// Percentiles of a run's latencies, as the simulator reports its own.
pub type Percentiles = Quantiles;

/// The percentiles of `values` (negative ones count as 0); None when there are none.
fn percentiles(values: impl IntoIterator<Item = i64>) -> Option<Percentiles> {
    let mut h = Histogram::<u64>::new(3).expect("valid histogram");
    for v in values {
        h.record(v.max(0) as u64).ok()?;
    }
    Quantiles::of(&h)
}

#[derive(Debug, Serialize)]
pub struct WorkerFigures {
    pub channel: Channel,
    /// Provider requests made by this channel's workers together (the simulator's count for
    /// its API).
    pub sends: u64,
    /// This process's CPU.
    pub cpu_seconds: f64,
    /// The channel's workers' CPU (all of them) per send.
    pub cpu_us_per_send: Option<f64>,
    pub cpu_seconds_per_10k_sends: Option<f64>,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub requests: usize,
    /// Requests with a final status.
    pub finished: usize,
    /// From the start of measurement to the last final status.
    pub elapsed_seconds: f64,
    /// Finished requests per second.
    pub throughput_per_second: f64,
    /// Final statuses by `status/channel`.
    pub finals: BTreeMap<String, usize>,
    pub fallbacks: usize,
    pub duplicates: usize,
    /// `created_at` to the final status, ms.
    pub latency_to_final_ms: Option<Percentiles>,
    /// `created_at` to the first provider request arriving at the simulator, ms.
    pub latency_to_provider_ms: Option<Percentiles>,
    /// For requests that fell back: `created_at` to the SMS request arriving, ms.
    pub latency_to_fallback_sms_ms: Option<Percentiles>,
    pub rate_limit_violations: u64,
    pub workers: Vec<WorkerFigures>,
    /// The receipts path, when it ran (`--receipts`).
    pub receipts: Option<ReceiptFigures>,
    /// Outcomes reported and the staged pump's endings (`--entered`, `--pump`).
    pub login: Option<super::login::LoginFigures>,
}

/// CPU and memory of a receipts service, per unit of its work.
#[derive(Debug, Serialize)]
pub struct ServiceFigures {
    pub cpu_seconds: f64,
    /// CPU per unit: per webhook call answered (ingress), per request confirmed (tracker).
    pub cpu_us_per_unit: Option<f64>,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct ReceiptFigures {
    /// The simulator's delay from accepting a message to reporting it delivered, ms: part of
    /// every confirmation latency.
    pub receipt_delay_ms: u64,
    /// Webhook calls the simulator made, by outcome (`attempts`, `delivered`, `retried`,
    /// `given_up`).
    pub webhooks: BTreeMap<String, u64>,
    /// How long the ingress took to answer a webhook call, as the simulator saw it, µs.
    pub ingress_answer_us: Option<Quantiles>,
    /// Requests ended by the tracker: a final `delivered` or `read`.
    pub confirmed: usize,
    /// Requests reported `accepted` by a worker, per second from the first to the last.
    pub accepted_per_second: f64,
    /// Confirmations per second from the first to the last: the tracker keeps up when this
    /// matches `accepted_per_second` and the confirmation latency stays near the receipt
    /// delay.
    pub confirmed_per_second: f64,
    /// A request's `accepted` status to its confirming final status, ms.
    pub confirmation_latency_ms: Option<Percentiles>,
    pub ingress: Option<ServiceFigures>,
    pub tracker: Option<ServiceFigures>,
}

impl Report {
    pub fn compute(i: Inputs<'_>) -> Self {
        let mut finals = BTreeMap::new();
        let mut last_ms = i.measured_from_ms;
        let mut to_final = Vec::new();
        for (id, f) in &i.observed.finals {
            *finals
                .entry(format!("{}/{}", f.status, f.channel))
                .or_default() += 1;
            last_ms = last_ms.max(f.at_ms);
            if let Some(s) = i.sent.get(id) {
                to_final.push(f.at_ms - s.created_at_ms);
            }
        }
        let finished = i.observed.finals.len();
        let elapsed_seconds = (last_ms - i.measured_from_ms).max(1) as f64 / 1000.0;

        // The simulator knows recipients, not request_ids (SMS carries none without a status
        // callback); every recipient of a run is distinct, so the number identifies it.
        let created_by_phone: HashMap<&str, i64> = i
            .sent
            .values()
            .map(|s| (s.phone.as_str(), s.created_at_ms))
            .collect();
        let mut first_seen: HashMap<&str, (i64, Option<i64>, bool)> = HashMap::new();
        let mut sends: HashMap<&str, u64> = HashMap::new();
        for m in i.sim_messages {
            *sends.entry(m.api.as_str()).or_default() += 1;
            let e = first_seen
                .entry(m.to.as_str())
                .or_insert((m.received_at_ms, None, false));
            e.0 = e.0.min(m.received_at_ms);
            if m.api == "whatsapp" {
                e.2 = true;
            } else if e.1.is_none() {
                e.1 = Some(m.received_at_ms);
            }
        }
        let mut to_provider = Vec::new();
        let mut to_fallback = Vec::new();
        for (phone, (first, sms, had_whatsapp)) in &first_seen {
            let Some(created) = created_by_phone.get(phone) else {
                continue;
            };
            to_provider.push(first - created);
            if let (Some(sms), true) = (sms, had_whatsapp) {
                to_fallback.push(sms - created);
            }
        }

        let processes = || {
            i.usage.iter().filter_map(|(role, u)| match role {
                Role::Worker(channel) => Some((channel, u)),
                _ => None,
            })
        };
        // With several workers per channel, the provider counts their sends together: CPU per
        // send is the channel's workers' CPU over the channel's sends.
        let mut channel_cpu: HashMap<Channel, f64> = HashMap::new();
        for (channel, u) in processes() {
            *channel_cpu.entry(*channel).or_default() += u.cpu_seconds;
        }
        let workers = processes()
            .map(|(channel, u)| {
                let n = sends.get(channel.as_str()).copied().unwrap_or(0);
                let cpu = channel_cpu[channel];
                let per = |scale: f64| (n > 0).then(|| cpu * scale / n as f64);
                WorkerFigures {
                    channel: *channel,
                    sends: n,
                    cpu_seconds: u.cpu_seconds,
                    cpu_us_per_send: per(1e6),
                    cpu_seconds_per_10k_sends: per(1e4),
                    peak_rss_mb: u.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                }
            })
            .collect();
        Report {
            requests: i.requests,
            finished,
            elapsed_seconds,
            throughput_per_second: finished as f64 / elapsed_seconds,
            finals,
            fallbacks: i.observed.fallbacks,
            duplicates: i.observed.duplicates,
            latency_to_final_ms: percentiles(to_final),
            latency_to_provider_ms: percentiles(to_provider),
            latency_to_fallback_sms_ms: percentiles(to_fallback),
            rate_limit_violations: i.sim_stats.rate_limit_violations.values().sum(),
            workers,
            receipts: i
                .receipt_delay
                .map(|delay| ReceiptFigures::compute(&i, delay)),
            login: i.login.clone(),
        }
    }

    pub fn print_table(&self) {
        self.print_deliveries();
        if let Some(r) = &self.receipts {
            r.print_table();
        }
        if let Some(l) = &self.login {
            println!(
                "\nlogin system: users enter {} % of the codes that reach them; {} outcomes \
                 reported ({} not, the queue full)",
                l.entered_percent, l.outcomes_reported, l.outcomes_dropped
            );
            if l.pump_requests > 0 {
                println!(
                    "  pump: {} requests to one range, none entered",
                    l.pump_requests
                );
                for (ending, n) in &l.pump_endings {
                    println!("    {ending:<28} {n:>6}");
                }
            }
        }
    }

    fn print_deliveries(&self) {
        println!(
            "requests {:>9}   final {:>9}   in {:.1} s   throughput {:.0}/s",
            self.requests, self.finished, self.elapsed_seconds, self.throughput_per_second
        );
        for (what, n) in &self.finals {
            println!("  {what:<22} {n:>9}");
        }
        println!(
            "  fallbacks {}, duplicates {}, provider rate-limit violations {}",
            self.fallbacks, self.duplicates, self.rate_limit_violations
        );
        println!();
        print_percentiles(
            "latency (ms)",
            &[
                (
                    "created_at -> final status",
                    self.latency_to_final_ms.as_ref(),
                ),
                (
                    "created_at -> provider",
                    self.latency_to_provider_ms.as_ref(),
                ),
                (
                    "created_at -> fallback SMS",
                    self.latency_to_fallback_sms_ms.as_ref(),
                ),
            ],
        );
        println!(
            "\n{:<10} {:>9} {:>10} {:>12} {:>16} {:>13}",
            "worker", "sends", "CPU s", "CPU us/send", "CPU s/10k sends", "peak RSS MB"
        );
        for w in &self.workers {
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or("-".to_string(), |v| format!("{v:.digits$}"))
            };
            println!(
                "{:<10} {:>9} {:>10.2} {:>12} {:>16} {:>13.1}",
                w.channel.as_str(),
                w.sends,
                w.cpu_seconds,
                opt(w.cpu_us_per_send, 0),
                opt(w.cpu_seconds_per_10k_sends, 2),
                w.peak_rss_mb
            );
        }
    }
}

/// A table of percentiles under `heading`; rows without figures are left out.
fn print_percentiles(heading: &str, rows: &[(&str, Option<&Percentiles>)]) {
    println!(
        "{heading:<34} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "p50", "p95", "p99", "max", "count"
    );
    for (label, p) in rows {
        if let Some(p) = p {
            println!(
                "{label:<34} {:>7} {:>7} {:>7} {:>7} {:>8}",
                p.p50, p.p95, p.p99, p.max, p.count
            );
        }
    }
}

/// Events per second between the first and the last of `times` (Unix ms).
fn rate(times: impl IntoIterator<Item = i64>) -> f64 {
    let (mut n, mut first, mut last) = (0usize, i64::MAX, i64::MIN);
    for t in times {
        n += 1;
        first = first.min(t);
        last = last.max(t);
    }
    if n < 2 {
        return 0.0;
    }
    n as f64 * 1000.0 / (last - first).max(1) as f64
}

impl ReceiptFigures {
    fn compute(i: &Inputs<'_>, delay: std::time::Duration) -> Self {
        let confirmations: Vec<(&String, &super::Final)> = i
            .observed
            .finals
            .iter()
            .filter(|(_, f)| matches!(f.status.as_str(), "delivered" | "read"))
            .collect();
        let latency = confirmations.iter().filter_map(|(id, f)| {
            let accepted = i.observed.accepted.get(*id)?;
            Some(f.at_ms - accepted)
        });
        let webhook_calls = i.sim_stats.webhooks.get("attempts").copied().unwrap_or(0);
        let service = |role: Role, units: u64| {
            i.usage
                .iter()
                .find(|(r, _)| *r == role)
                .map(|(_, u)| ServiceFigures {
                    cpu_seconds: u.cpu_seconds,
                    cpu_us_per_unit: (units > 0).then(|| u.cpu_seconds * 1e6 / units as f64),
                    peak_rss_mb: u.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                })
        };
        Self {
            receipt_delay_ms: delay.as_millis() as u64,
            webhooks: i.sim_stats.webhooks.clone(),
            ingress_answer_us: i.sim_stats.webhook_answer_us,
            confirmed: confirmations.len(),
            accepted_per_second: rate(i.observed.accepted.values().copied()),
            confirmed_per_second: rate(confirmations.iter().map(|(_, f)| f.at_ms)),
            confirmation_latency_ms: percentiles(latency),
            ingress: service(Role::Ingress, webhook_calls),
            tracker: service(Role::Tracker, confirmations.len() as u64),
        }
    }

    fn print_table(&self) {
        println!(
            "\nreceipts: {} confirmed; accepted {:.0}/s, confirmed {:.0}/s; webhook calls {}; \
             the simulator reports delivered {} ms after accepting",
            self.confirmed,
            self.accepted_per_second,
            self.confirmed_per_second,
            self.webhooks.get("attempts").copied().unwrap_or(0),
            self.receipt_delay_ms
        );
        print_percentiles(
            "",
            &[
                (
                    "accepted -> confirmed (ms)",
                    self.confirmation_latency_ms.as_ref(),
                ),
                ("ingress answer (us)", self.ingress_answer_us.as_ref()),
            ],
        );
        for (name, unit, f) in [
            ("ingress", "webhook call", &self.ingress),
            ("tracker", "confirmation", &self.tracker),
        ] {
            if let Some(f) = f {
                let per = f.cpu_us_per_unit.map_or("-".into(), |v| format!("{v:.0}"));
                println!(
                    "{name:<10} CPU {:.2} s, {per} us per {unit}, peak RSS {:.1} MB",
                    f.cpu_seconds, f.peak_rss_mb
                );
            }
        }
    }
}
