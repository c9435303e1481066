//! `otp report`: what analysts want from the delivery-status topic, on the command line.
//!
//! Reads `otp.delivery-status` over a window (`--since 1h`, or `--from-beginning`, up to
//! `--until`, or else the end it had when the report started, so a report ends even while
//! workers keep writing), drops replays by `event_id`, and prints per channel and country:
//! requests, delivered (by receipt) and sent, fallbacks by reason, failed and expired, time to
//! first delivery, and an estimated cost ([`prices`]); then per provider and country (the
//! provider from v2's `provider` field or, in v1, the `otp-provider` header). It joins the
//! login systems' `otp.verification-outcomes` (from the window's start to now: outcomes come
//! after their requests) for conversion, grouped by `--group-by` ([`conversion`]), and counts
//! requests by the channels their users enabled. `--json` and `--csv` print the same for other
//! tools, with the window. The reader joins no consumer group and commits nothing.

mod conversion;
mod prices;
mod print;
mod tally;

pub use conversion::{ConversionRow, Dim};
pub use prices::Prices;
pub use tally::{ChannelRow, Percentiles, Report, Summary, Tally, Window};

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use otp_events::{DeliveryStatus, VerificationOutcome};
use otp_kafka::KafkaArgs;
use otp_kafka::KafkaRole;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::path::PathBuf;
use std::time::Duration;

/// Bound of each broker call (metadata, offsets, a poll).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The tables `--csv` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CsvTable {
    /// Per channel and country: delivery, fallbacks, cost.
    Delivery,
    /// Per `--group-by` group: conversion.
    Conversion,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Read the statuses written from this time: a span back from now (`1h`, `30m`, `7d`)
    /// or an RFC 3339 time (`2026-12-01T00:00:00Z`).
    #[arg(long, value_parser = parse_when, conflicts_with = "from_beginning")]
    pub since: Option<DateTime<Utc>>,
    /// Read the whole topic (its retention).
    #[arg(long)]
    pub from_beginning: bool,
    /// Read the statuses written before this time (a span back from now, or RFC 3339); the
    /// default is when the report started.
    #[arg(long, value_parser = parse_when)]
    pub until: Option<DateTime<Utc>>,
    /// Group conversion by these, comma-separated: channel, provider, country, app, day.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "channel,country"
    )]
    pub group_by: Vec<Dim>,
    /// Price table (TOML; see `src/report/prices.rs`); illustrative list prices without it.
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV: one row per channel and country, or per conversion group with
    /// `--csv-table conversion`; every row carries the window.
    #[arg(long)]
    pub csv: bool,
    /// Which table `--csv` prints.
    #[arg(long, value_enum, default_value = "delivery", requires = "csv")]
    pub csv_table: CsvTable,
    /// No progress bar (it goes to stderr, and only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
}

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let prices = match &args.prices {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--prices: cannot read {}", path.display()))?;
            Prices::from_toml(&text)
                .with_context(|| format!("--prices: {} is not a price table", path.display()))?
        }
        None => Prices::default(),
    };
    let since = match (args.since, args.from_beginning) {
        (Some(t), false) => Some(t),
        (None, true) => None,
        _ => anyhow::bail!("say where to start: --since DURATION or --from-beginning"),
    };
    let started = Utc::now();
    let until = args.until.unwrap_or(started);
    if since.is_some_and(|s| s >= until) {
        anyhow::bail!("--until must be after --since");
    }
    let kafka = args.kafka.clone();
    let quiet = args.quiet;
    let tally = tokio::task::spawn_blocking(move || -> anyhow::Result<Tally> {
        let mut tally = Tally::default();
        let statuses = kafka.topics().delivery_status();
        let until = args.until;
        read(&kafka, &statuses, since, until, quiet, |m| {
            let mut status: DeliveryStatus =
                serde_json::from_slice(m.payload().unwrap_or_default()).ok()?;
            // v1 carries the provider in a header only; both carry the enabled channels there.
            if status.provider.is_none() {
                status.provider =
                    header(m, otp_events::HEADER_PROVIDER).and_then(|v| v.parse().ok());
            }
            if let Some(channels) = header(m, otp_events::HEADER_CHANNELS) {
                status.enabled_channels = otp_events::channels_of_header(channels);
            }
            tally.add(status);
            Some(())
        })?;
        let outcomes = kafka.topics().verification_outcomes();
        if topic_exists(&kafka, &outcomes)? {
            read(&kafka, &outcomes, since, None, quiet, |m| {
                let o: VerificationOutcome =
                    serde_json::from_slice(m.payload().unwrap_or_default()).ok()?;
                tally.add_outcome(o);
                Some(())
            })?;
        } else {
            eprintln!(
                "{outcomes} does not exist (yet): no conversion; `otp topics create` makes it"
            );
        }
        Ok(tally)
    })
    .await??;
    let mut report = tally.report(&prices, &args.group_by);
    report.window = Window {
        since,
        until: Some(until),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        println!();
    } else if args.csv {
        match args.csv_table {
            CsvTable::Delivery => print::csv(&report, &mut out)?,
            CsvTable::Conversion => print::conversion_csv(&report, &args.group_by, &mut out)?,
        }
    } else {
        print::table(&report, &mut out)?;
        print::conversion_table(&report, &args.group_by, &mut out)?;
    }
    Ok(())
}

/// A header's value, as text.
fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// `--since`/`--until`: a span back from now, or an RFC 3339 time.
fn parse_when(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let span = humantime::parse_duration(text)
        .map_err(|_| "must be a span back from now (1h, 7d) or an RFC 3339 time".to_string())?;
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| "is too far back".to_string())
}

/// Whether `topic` exists.
fn topic_exists(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<bool> {
    let config = kafka.to_rdkafka(KafkaRole::Admin);
    let consumer: BaseConsumer = config.create().context("a Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .context("topic metadata")?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// Where each partition's reading starts and ends: the first offset at or after each time,
/// else the partition's beginning (`since`) or its end as it is now (`until`).
fn span(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let mut lows = Vec::new();
    let mut highs = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, CALL_TIMEOUT)
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        lows.push(low);
        highs.push(high);
    }
    let at = |time: Option<DateTime<Utc>>, otherwise: &[i64]| -> anyhow::Result<Vec<i64>> {
        let Some(time) = time else {
            return Ok(otherwise.to_vec());
        };
        let mut asked = TopicPartitionList::new();
        for p in 0..partitions {
            asked.add_partition_offset(topic, p, Offset::Offset(time.timestamp_millis()))?;
        }
        let found = consumer
            .offsets_for_times(asked, CALL_TIMEOUT)
            .context("offsets for a time")?;
        Ok((0..partitions)
            .map(
                |p| match found.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // No message at or after the time: the partition's end.
                    _ => highs[p as usize],
                },
            )
            .collect())
    };
    let ends = at(until, &highs)?;
    let from: Vec<i64> = at(since, &lows)?
        .iter()
        .zip(&ends)
        .map(|(f, e)| *f.min(e))
        .collect();
    Ok((from, ends))
}

/// A progress bar over the `total` records to read, or none when `quiet`.
fn reading_bar(topic: &str, total: i64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    ProgressBar::new(total.max(0) as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} reading {topic} {{pos}}/{{len}} ({{per_sec}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Read `topic` from `since` (or its beginning) to `until` (or the ends it had at the start),
/// handing each record to `each`; a record `each` cannot read (`None`) is counted as skipped.
pub fn read(
    kafka: &KafkaArgs,
    topic: &str,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    quiet: bool,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Option<()>,
) -> anyhow::Result<()> {
    let config = kafka.to_rdkafka(KafkaRole::Reader { name: "otp-report" });
    let consumer: BaseConsumer = config.create().context("a Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .context("topic metadata")?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .with_context(|| format!("topic {topic} not found"))?;
    let (from, ends) = span(&consumer, topic, partitions, since, until)?;
    let mut starts = TopicPartitionList::new();
    for (p, f) in from.iter().enumerate() {
        starts.add_partition_offset(topic, p as i32, Offset::Offset(*f))?;
    }
    consumer.assign(&starts)?;
    let total: i64 = ends.iter().zip(&from).map(|(e, f)| e - f).sum();
    let bar = reading_bar(topic, total, quiet);
    let mut positions = from.clone();
    let mut unreadable = 0u64;
    let done = |positions: &[i64]| positions.iter().zip(&ends).all(|(p, e)| p >= e);
    let mut idle = 0;
    while !done(&positions) {
        match consumer.poll(Duration::from_millis(500)) {
            None => {
                // A run of empty polls with messages still due: the broker is away.
                idle += 1;
                anyhow::ensure!(
                    idle < 60,
                    "no progress for 30 s reading {topic} (at {positions:?} of {ends:?})"
                );
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
            Some(Ok(m)) => {
                idle = 0;
                let p = m.partition() as usize;
                positions[p] = m.offset() + 1;
                if m.offset() >= ends[p] {
                    continue;
                }
                bar.inc(1);
                if each(&m).is_none() {
                    unreadable += 1;
                }
            }
        }
    }
    bar.finish_and_clear();
    if unreadable > 0 {
        eprintln!("{unreadable} records of {topic} could not be read and were skipped");
    }
    Ok(())
}
