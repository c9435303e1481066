//! The report as a table for people and as CSV for tools (JSON is serde's).

use super::conversion::Dim;
use super::tally::{Percentiles, Report, Window};
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
    writeln!(
        out,
        "verified {} (conversion {:.1} %)  outcomes about no request read here: {}",
        s.verified,
        s.conversion * 100.0,
        report.outcomes_unmatched
    )?;
    writeln!(
        out,
        "window {} to {}  channels enabled: {}",
        when(&report.window.since, "the beginning"),
        when(&report.window.until, "now"),
        reasons(&report.enabled_channels)
    )?;
    if report.replays_dropped + report.outcome_replays_dropped > 0 {
        writeln!(
            out,
            "replayed events dropped: {} statuses, {} outcomes",
            report.replays_dropped, report.outcome_replays_dropped
        )?;
    }
    channel_table(report, out)?;
    provider_table(report, out)
}

/// A row per channel and country.
fn channel_table(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
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
    Ok(())
}

/// A row per channel, provider and country.
fn provider_table(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
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

fn when(t: &Option<chrono::DateTime<chrono::Utc>>, otherwise: &str) -> String {
    t.map_or_else(|| otherwise.to_string(), |t| t.to_rfc3339())
}

/// The window's two CSV cells.
fn window_cells(w: &Window) -> [String; 2] {
    [
        w.since.map(|t| t.to_rfc3339()).unwrap_or_default(),
        w.until.map(|t| t.to_rfc3339()).unwrap_or_default(),
    ]
}

fn dim_name(d: Dim) -> &'static str {
    match d {
        Dim::Channel => "channel",
        Dim::Provider => "provider",
        Dim::Country => "country",
        Dim::App => "app",
        Dim::Day => "day",
    }
}

/// The conversion table for people (after the delivery tables).
pub fn conversion_table(
    report: &Report,
    group_by: &[Dim],
    out: &mut impl Write,
) -> std::io::Result<()> {
    writeln!(out)?;
    let mut head: Vec<String> = group_by
        .iter()
        .map(|d| format!("{:<10}", dim_name(*d)))
        .collect();
    head.push(format!(
        "{:>8} {:>9} {:>8} {:>11} {:>9} {:>9} {:>7} {:>10}  {:<18}",
        "requests",
        "delivered",
        "verified",
        "conversion",
        "abandoned",
        "too_many",
        "expired",
        "no_outcome",
        "verify p50/95/99"
    ));
    writeln!(out, "{}", head.join(" "))?;
    for r in &report.conversion {
        let mut cells: Vec<String> = group_by
            .iter()
            .map(|d| format!("{:<10}", r.group.get(d).map_or("all", String::as_str)))
            .collect();
        cells.push(format!(
            "{:>8} {:>9} {:>8} {:>10.1}% {:>9} {:>9} {:>7} {:>10}  {:<18}",
            r.requests,
            r.delivered,
            r.verified,
            r.conversion * 100.0,
            r.abandoned,
            r.too_many_attempts,
            r.expired,
            r.no_outcome,
            percentiles(&r.time_to_verify_ms)
        ));
        writeln!(out, "{}", cells.join(" "))?;
    }
    Ok(())
}

/// Conversion as CSV: one row per group (`all` in a dimension's column for the total row).
pub fn conversion_csv(
    report: &Report,
    group_by: &[Dim],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let mut head: Vec<&str> = vec!["window_since", "window_until"];
    head.extend(group_by.iter().map(|d| dim_name(*d)));
    head.extend([
        "requests",
        "delivered",
        "verified",
        "conversion",
        "abandoned",
        "too_many_attempts",
        "expired",
        "no_outcome",
        "time_to_verify_p50_ms",
        "time_to_verify_p95_ms",
        "time_to_verify_p99_ms",
    ]);
    w.write_record(&head)?;
    for r in &report.conversion {
        let mut row: Vec<String> = window_cells(&report.window).to_vec();
        row.extend(
            group_by
                .iter()
                .map(|d| r.group.get(d).cloned().unwrap_or_else(|| "all".into())),
        );
        let p = |f: fn(&Percentiles) -> u64| {
            r.time_to_verify_ms
                .as_ref()
                .map(|p| f(p).to_string())
                .unwrap_or_default()
        };
        row.extend([
            r.requests.to_string(),
            r.delivered.to_string(),
            r.verified.to_string(),
            format!("{:.4}", r.conversion),
            r.abandoned.to_string(),
            r.too_many_attempts.to_string(),
            r.expired.to_string(),
            r.no_outcome.to_string(),
            p(|p| p.p50),
            p(|p| p.p95),
            p(|p| p.p99),
        ]);
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

pub fn csv(report: &Report, out: &mut impl Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "window_since",
        "window_until",
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
    let [since, until] = window_cells(&report.window);
    for r in &report.rows {
        w.write_record([
            since.clone(),
            until.clone(),
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
