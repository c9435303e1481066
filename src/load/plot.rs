//! `otp load --plot FILE.svg`: latency, throughput and worker memory over the run, one panel
//! each, sharing the time axis. Latency is drawn as per-second percentiles rather than one
//! dot per request, so the file stays small at any run size.

use super::figures::Sample;
use super::{Observed, Sent};
use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub fn draw(
    path: &Path,
    observed: &Observed,
    sent: &HashMap<String, Sent>,
    timeline: &[Sample],
    started_ms: i64,
) -> anyhow::Result<()> {
    // Per second of the run: latencies of the requests that became final in it.
    let mut seconds: BTreeMap<i64, Histogram<u64>> = BTreeMap::new();
    for (id, f) in &observed.finals {
        let Some(s) = sent.get(id) else { continue };
        let second = (f.at_ms - started_ms).max(0) / 1000;
        seconds
            .entry(second)
            .or_insert_with(|| Histogram::new(3).expect("valid histogram"))
            .saturating_record((f.at_ms - s.created_at_ms).max(0) as u64);
    }
    let p = |q: f64| -> Vec<(f64, f64)> {
        seconds
            .iter()
            .map(|(s, h)| (*s as f64 + 0.5, h.value_at_quantile(q) as f64))
            .collect()
    };
    let (p50, p99) = (p(0.50), p(0.99));
    let throughput: Vec<(f64, f64)> = seconds
        .iter()
        .map(|(s, h)| (*s as f64 + 0.5, h.len() as f64))
        .collect();
    let memory: Vec<(f64, f64)> = timeline
        .iter()
        .map(|t| (t.at_s, t.rss_bytes as f64 / (1024.0 * 1024.0)))
        .collect();
    let end = timeline
        .last()
        .map_or(1.0, |t| t.at_s)
        .max(seconds.keys().last().map_or(0.0, |s| *s as f64 + 1.0));

    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let max_of = |v: &[(f64, f64)]| v.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    panel(
        &panels[0],
        "Latency, created_at to final status (ms)",
        end,
        max_of(&p99),
        &[("p50", &p50, BLUE), ("p99", &p99, RED)],
    )?;
    panel(
        &panels[1],
        "Throughput (requests final per second)",
        end,
        max_of(&throughput),
        &[("final/s", &throughput, GREEN)],
    )?;
    panel(
        &panels[2],
        "Workers' resident memory (MB, all workers)",
        end,
        max_of(&memory),
        &[("RSS", &memory, MAGENTA)],
    )?;
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

type Series<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_end: f64,
    y_end: f64,
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_end, 0.0..y_end)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first request")
        .draw()?;
    for (label, points, color) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
