//! The figures of a load run, computed once from what was published, what the status topic
//! said, what the simulator received and what /proc said of the workers.

use super::fleet::Usage;
use super::{Observed, Sent};
use hdrhistogram::Histogram;
use otp_events::Channel;
use otp_provider_sim::{Received, Stats};
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
    pub usage: &'a [(Channel, Usage)],
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(values: impl IntoIterator<Item = i64>) -> Option<Self> {
        let mut h = Histogram::<u64>::new(3).expect("valid histogram");
        for v in values {
            h.record(v.max(0) as u64).ok()?;
        }
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct WorkerFigures {
    pub channel: Channel,
    /// Provider requests this worker made (the simulator's count for its API).
    pub sends: u64,
    pub cpu_seconds: f64,
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

        let workers = i
            .usage
            .iter()
            .map(|(channel, u)| {
                let n = sends.get(channel.as_str()).copied().unwrap_or(0);
                let per = |scale: f64| (n > 0).then(|| u.cpu_seconds * scale / n as f64);
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
            latency_to_final_ms: Percentiles::of(to_final),
            latency_to_provider_ms: Percentiles::of(to_provider),
            latency_to_fallback_sms_ms: Percentiles::of(to_fallback),
            rate_limit_violations: i.sim_stats.rate_limit_violations.values().sum(),
            workers,
        }
    }

    pub fn print_table(&self) {
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
        println!(
            "\n{:<34} {:>7} {:>7} {:>7} {:>7} {:>8}",
            "latency (ms)", "p50", "p95", "p99", "max", "count"
        );
        for (label, p) in [
            ("created_at -> final status", &self.latency_to_final_ms),
            ("created_at -> provider", &self.latency_to_provider_ms),
            (
                "created_at -> fallback SMS",
                &self.latency_to_fallback_sms_ms,
            ),
        ] {
            if let Some(p) = p {
                println!(
                    "{label:<34} {:>7} {:>7} {:>7} {:>7} {:>8}",
                    p.p50, p.p95, p.p99, p.max, p.count
                );
            }
        }
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
