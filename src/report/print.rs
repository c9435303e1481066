//! The report as a table for people and as CSV for tools (JSON is serde's).

use super::tally::{Percentiles, Report};
use std::io::Write;

fn percentiles(p: &Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("{}/{}/{}", p.p50, p.p95, p.p99),
        None => "-".to_string(),
    }
}

fn money(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

fn reasons(r: &std::collections::BTreeMap<String, u64>) -> String {
    r.iter()
        .map(|(code, n)| format!("{code}:{n}"))
        .collect::<Vec<_>>()
        .join(";")
}

pub fn table(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let s = &report.summary;
    writeln!(
        out,
        "requests {}  delivered {}  sent (no receipt) {}  fell back {} ({:.1} %)  failed {}  expired {}  rejected {}",
        s.requests,
        s.delivered,
        s.sent_only,
        s.fell_back,
        s.fallback_rate * 100.0,
        s.failed,
        s.expired,
        s.rejected
    )?;
    writeln!(
        out,
        "time to first delivery p50/p95/p99 ms: {}  estimated cost {:.4} {}  per code delivered or sent: {}",
        percentiles(&s.first_delivery_ms),
        s.estimated_cost,
        report.currency,
        money(s.cost_per_delivered)
    )?;
    if report.replays_dropped > 0 {
        writeln!(out, "replayed events dropped: {}", report.replays_dropped)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<9} {:<7} {:>8} {:>8} {:>9} {:>7} {:>7} {:>9}  {:<18} {:<18} {:>10}  fallbacks by reason",
        "channel",
        "country",
        "requests",
        "sent",
        "delivered",
        "failed",
        "expired",
        "fallback%",
        "delivered p50/95/99",
        "sent p50/95/99",
        "cost/code"
    )?;
    for r in &report.rows {
        writeln!(
            out,
            "{:<9} {:<7} {:>8} {:>8} {:>9} {:>7} {:>7} {:>8.1}%  {:<18} {:<18} {:>10}  {}",
            r.channel.as_str(),
            r.country,
            r.requests,
            r.sent,
            r.delivered,
            r.failed,
            r.expired,
            r.fallback_rate * 100.0,
            percentiles(&r.first_delivery_ms),
            percentiles(&r.sent_ms),
            money(r.cost_per_delivered),
            reasons(&r.fallbacks)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<9} {:<15} {:<7} {:>8} {:>8} {:>9} {:>7} {:>7} {:>9}  {:<18} {:<18}",
        "channel",
        "provider",
        "country",
        "requests",
        "sent",
        "delivered",
        "failed",
        "expired",
        "fell back",
        "delivered p50/95/99",
        "sent p50/95/99",
    )?;
    for r in &report.by_provider {
        writeln!(
            out,
            "{:<9} {:<15} {:<7} {:>8} {:>8} {:>9} {:>7} {:>7} {:>9}  {:<18} {:<18}",
            r.channel.as_str(),
            r.provider,
            r.country,
            r.requests,
            r.sent,
            r.delivered,
            r.failed,
            r.expired,
            r.fell_back,
            percentiles(&r.first_delivery_ms),
            percentiles(&r.sent_ms),
        )?;
    }
    Ok(())
}

pub fn csv(report: &Report, out: &mut impl Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "channel",
        "country",
        "requests",
        "sent",
        "delivered",
        "failed",
        "expired",
        "fallback_rate",
        "fallbacks_by_reason",
        "first_delivery_p50_ms",
        "first_delivery_p95_ms",
        "first_delivery_p99_ms",
        "sent_p50_ms",
        "sent_p95_ms",
        "sent_p99_ms",
        "estimated_cost",
        "cost_per_delivered",
        "currency",
    ])?;
    let p = |p: &Option<Percentiles>, f: fn(&Percentiles) -> u64| {
        p.as_ref().map(|p| f(p).to_string()).unwrap_or_default()
    };
    for r in &report.rows {
        w.write_record([
            r.channel.as_str().to_string(),
            r.country.clone(),
            r.requests.to_string(),
            r.sent.to_string(),
            r.delivered.to_string(),
            r.failed.to_string(),
            r.expired.to_string(),
            format!("{:.4}", r.fallback_rate),
            reasons(&r.fallbacks),
            p(&r.first_delivery_ms, |p| p.p50),
            p(&r.first_delivery_ms, |p| p.p95),
            p(&r.first_delivery_ms, |p| p.p99),
            p(&r.sent_ms, |p| p.p50),
            p(&r.sent_ms, |p| p.p95),
            p(&r.sent_ms, |p| p.p99),
            format!("{:.6}", r.estimated_cost),
            r.cost_per_delivered
                .map(|c| format!("{c:.6}"))
                .unwrap_or_default(),
            report.currency.clone(),
        ])?;
    }
    w.flush()?;
    Ok(())
}
