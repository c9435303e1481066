//! `otp report`: what analysts want from the delivery-status topic, on the command line.
//!
//! Reads `otp.delivery-status` from a time (`--since 1h`) or from the beginning, up to the end
//! it had when the report started (so a report ends even while workers keep writing), drops
//! replays by `event_id`, and prints per channel and country: requests, delivered (by receipt)
//! and sent, fallbacks by reason, failed and expired, time to first delivery, and an estimated
//! cost ([`prices`]); then per provider and country (the provider from v2's `provider` field
//! or, in v1, the `otp-provider` header). `--json` and `--csv` print the same for other tools. The reader joins no
//! consumer group and commits nothing.

mod prices;
mod print;
mod tally;

pub use prices::Prices;
pub use tally::{ChannelRow, Percentiles, Report, Summary, Tally};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use otp_events::DeliveryStatus;
use otp_kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::path::PathBuf;
use std::time::Duration;

/// Bound of each broker call (metadata, offsets, a poll).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Read the statuses written in this last span (e.g. `1h`, `30m`, `7d`).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "from_beginning")]
    pub since: Option<Duration>,
    /// Read the whole topic (its retention).
    #[arg(long)]
    pub from_beginning: bool,
    /// Price table (TOML; see `src/report/prices.rs`); illustrative list prices without it.
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV, one row per channel and country.
    #[arg(long)]
    pub csv: bool,
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
        (Some(d), false) => Some(d),
        (None, true) => None,
        _ => anyhow::bail!("say where to start: --since DURATION or --from-beginning"),
    };
    let topic = args.kafka.topics().delivery_status();
    let kafka = args.kafka.clone();
    let quiet = args.quiet;
    let tally = tokio::task::spawn_blocking(move || read(&kafka, &topic, since, quiet)).await??;
    let report = tally.report(&prices);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        println!();
    } else if args.csv {
        print::csv(&report, &mut out)?;
    } else {
        print::table(&report, &mut out)?;
    }
    Ok(())
}

/// The `otp-provider` header of a status record, when it names a provider.
fn provider_header(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<otp_events::Provider> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == otp_events::HEADER_PROVIDER)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// Read `topic` from `since` ago (or its beginning) to the ends it had at the start.
pub fn read(
    kafka: &KafkaArgs,
    topic: &str,
    since: Option<Duration>,
    quiet: bool,
) -> anyhow::Result<Tally> {
    let mut config: ClientConfig = kafka.client_config();
    config
        .set("group.id", format!("{}otp-report", kafka.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100");
    kafka.apply_overrides(&mut config);
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
    // Where each partition starts and ends.
    let mut starts = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, CALL_TIMEOUT)
            .with_context(|| format!("watermarks of {topic}/{p}"))?;
        ends.push(high);
        let start = match since {
            None => Offset::Offset(low),
            Some(d) => {
                let at = chrono::Utc::now() - chrono::Duration::from_std(d)?;
                Offset::Offset(at.timestamp_millis())
            }
        };
        starts.add_partition_offset(topic, p, start)?;
    }
    if since.is_some() {
        starts = consumer
            .offsets_for_times(starts, CALL_TIMEOUT)
            .context("offsets for --since")?;
    }
    let mut from = Vec::new();
    for (p, end) in ends.iter().enumerate() {
        let start = match starts.find_partition(topic, p as i32).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            // No message at or after the time: nothing to read there.
            _ => *end,
        };
        from.push(start.min(*end));
        starts.set_partition_offset(topic, p as i32, Offset::Offset(start.min(*end)))?;
    }
    consumer.assign(&starts)?;
    let total: i64 = ends.iter().zip(&from).map(|(e, f)| e - f).sum();
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total.max(0) as u64).with_style(
            ProgressStyle::with_template("{spinner} reading statuses {pos}/{len} ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let mut positions = from.clone();
    let mut tally = Tally::default();
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
            Some(Err(e)) => return Err(e).context("reading statuses"),
            Some(Ok(m)) => {
                idle = 0;
                let p = m.partition() as usize;
                positions[p] = m.offset() + 1;
                if m.offset() >= ends[p] {
                    continue;
                }
                bar.inc(1);
                match serde_json::from_slice::<DeliveryStatus>(m.payload().unwrap_or_default()) {
                    Ok(mut status) => {
                        // v1 carries the provider in a header only.
                        if status.provider.is_none() {
                            status.provider = provider_header(&m);
                        }
                        tally.add(status)
                    }
                    Err(_) => unreadable += 1,
                }
            }
        }
    }
    bar.finish_and_clear();
    if unreadable > 0 {
        eprintln!("{unreadable} events were not delivery statuses and were skipped");
    }
    Ok(tally)
}
