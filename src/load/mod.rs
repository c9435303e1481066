//! `otp load`: measure the pipeline on a real broker.
//!
//! It creates a fresh set of topics, starts the provider simulator in this process and the
//! workers as child processes (`otp worker <channel>`, the binaries' code), waits until they
//! own every partition, then publishes N requests at a target rate (or, with `--backlog`, all
//! of them before the workers start) and follows the status topic until every request is
//! final. It reports throughput, latency from `created_at` to the final status and to the
//! provider, the simulator's rate-limit violations, and each worker's CPU time and peak
//! memory ([`figures`]); `--plot` draws latency and throughput over time ([`plot`]).
//!
//! With `--receipts` the receipts path runs too: the simulator posts its status webhooks to
//! the receipts ingress (`otp receipts serve`), the confirmation tracker (`otp receipts
//! track`) ends each WhatsApp request with `delivered` (SMS, the last channel, ends `sent`
//! as without confirmation), and the workers run with delivery confirmation on. The run then
//! also reports the ingress's answer times as the simulator saw them, the confirmation
//! latency, and whether the tracker kept up with the accepted sends.
//!
//! Playing the login system ([`login`]), it can report a share of the delivered codes as
//! entered (`--entered`, some seconds after they arrive) and stage an SMS pump to one number
//! range (`--pump`); the report then shows the outcomes reported and how the pump ended.

mod figures;
mod fleet;
pub(crate) mod login;
mod plot;

use crate::follow::StatusFollower;
use anyhow::Context;
use chrono::Utc;
use fleet::{FleetSpec, Role, ServiceProcess};
use indicatif::{ProgressBar, ProgressStyle};
use login::LoginSystem;
use otp_events::{Channel, PhoneHasher, Submission};
use otp_kafka::admin::create_topics;
use otp_kafka::KafkaArgs;
use otp_producer::{CodeRequestPublisher, PublisherConfig};
use otp_provider_sim::SimConfig;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The Kafka cluster to load. Give this or `--embedded`.
    #[arg(long, env = "OTP_KAFKA_BROKERS", required_unless_present = "embedded")]
    brokers: Option<String>,
    /// Run on an embedded broker (librdkafka's mock cluster, in this process; the workers stay
    /// separate processes reaching it over TCP), to measure the pipeline's own ceiling without
    /// a real broker's in the way.
    #[arg(long, conflicts_with = "brokers")]
    embedded: bool,
    /// Topic prefix for this run. Default: a fresh one per run (`otp-load-<time>.`), so that
    /// runs never read each other's requests.
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Partitions of each topic created for the run.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Code requests to publish.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Requests published per second; 0 publishes as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// First channel of every request: `whatsapp` (with SMS to fall back to) or `sms`.
    #[arg(long, default_value = "whatsapp")]
    channel: Channel,
    /// Percent of WhatsApp recipients who are not on WhatsApp (they fall back to SMS).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    not_on_whatsapp: u8,
    /// Messages each worker handles at once (1 is the consumer most teams write first: one
    /// awaited send per message).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Worker processes per channel, one consumer group each channel: how throughput grows
    /// with workers (at most `--partitions` of them share the work). Each enforces its share
    /// of `--sender-rate` (by the partitions it owns); the simulator checks the sum.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// Whose numbers: `us-555` (fictional +1 555 numbers) or `world` (a mobile number of
    /// every region in turn, as a global service's traffic: what the phone-number facts cost
    /// when no cache holds one region's patterns).
    #[arg(long, value_enum, default_value_t = Numbers::Us555)]
    numbers: Numbers,
    /// Provider sends per second, per channel, enforced by the workers and checked by the
    /// simulator; 0 means no limit.
    #[arg(long, default_value_t = 0)]
    sender_rate: u32,
    /// The simulated providers' answer time.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    sim_latency: Duration,
    /// Random extra answer time, up to this much.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    sim_jitter: Duration,
    /// Publish every request before starting the workers (a backlog waiting in the topic).
    #[arg(long)]
    backlog: bool,
    /// Stop after this long even if requests are left unfinished (for backlog and memory
    /// runs); without it, the run waits until every request is final.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Give up (and fail) when requests are still unfinished after this long.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Life of each code.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    expires_in: Duration,
    /// The workers' log filter (`RUST_LOG` syntax); their logs go to files in the run's
    /// directory, named at the end of the run.
    #[arg(long, default_value = "warn,rdkafka=error")]
    worker_log: String,
    /// Run the receipts path too: the receipts ingress and the confirmation tracker as
    /// processes of their own, the simulator's status webhooks, delivery confirmation on in
    /// the workers. Every WhatsApp request then ends `delivered` from the tracker (or falls
    /// back when a receipt says failed; SMS, the last channel, ends `sent`), and the report
    /// adds the receipts figures.
    #[arg(long)]
    receipts: bool,
    /// With `--receipts`: how long after accepting a message the simulator reports it
    /// delivered (the confirmation latency includes it).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "receipts")]
    receipt_delay: Duration,
    /// Percent of the codes that reach their users which the users enter: reported as signed
    /// `verified` outcomes, as a login system reports them. 0 reports none.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    entered: u8,
    /// How long after its final status a user enters a code.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    enter_after: Duration,
    /// Stage an SMS pump: this many more requests (SMS only, spread over the run) to one
    /// number range, whose codes nobody enters. Counted apart from `--requests`.
    #[arg(long, default_value_t = 0)]
    pump: usize,
    /// The workers' conversion grace (`conversion.grace`): how old a request is before it is
    /// judged. The shipped 5 minutes outlasts most runs; a pump is cut off only after it.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    conversion_grace: Duration,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw latency and throughput over time to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// What the follower learned of one request.
#[derive(Debug, Clone)]
pub(crate) struct Final {
    pub status: String,
    pub channel: String,
    /// Unix ms of the final status event.
    pub at_ms: i64,
}

/// Shared between the follower thread and the run.
#[derive(Default)]
pub(crate) struct Observed {
    pub finals: HashMap<String, Final>,
    /// Unix ms of each request's first `accepted` status (delivery confirmation on).
    pub accepted: HashMap<String, i64>,
    pub fallbacks: usize,
    pub duplicates: usize,
}

/// One published request: when it was created, and the recipient it was sent to.
pub(crate) struct Sent {
    pub created_at_ms: i64,
    pub phone: String,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let cluster = Cluster::start(&args).await?;
    let (rate, burst) = sender_budget(&args);
    // The ingress's address is chosen first: the simulator is told where to post.
    let ingress = if args.receipts {
        Some(fleet::free_port()?)
    } else {
        None
    };
    let sim = simulator(&args, rate, burst, ingress).await?;

    let dir = std::env::temp_dir().join(cluster.prefix.trim_end_matches('.'));
    std::fs::create_dir_all(&dir)?;
    let config_toml = |channel: Channel| worker_toml(&args, channel, rate, burst);
    let sim_url = sim.base_url();
    let hash_key = crate::stack::run_hash_key();
    let spec = FleetSpec {
        hash_key: &hash_key,
        seal_keys: &cluster.seal_keys,
        fallback_key: &cluster.fallback_key,
        record_keys: &cluster.record_keys,
        brokers: &cluster.brokers,
        topic_prefix: &cluster.prefix,
        sim_url: &sim_url,
        log_filter: &args.worker_log,
        config_toml: &config_toml,
        dir: &dir,
    };
    // A WhatsApp run falls back to SMS: both channels' workers run.
    let channels: &[Channel] = match args.channel {
        Channel::Whatsapp => &[Channel::Whatsapp, Channel::Sms],
        Channel::Sms => &[Channel::Sms],
    };

    let kafka = &cluster.kafka;
    let hasher = PhoneHasher::new(hash_key.as_bytes());
    let publisher = Arc::new(CodeRequestPublisher::new(
        kafka,
        PublisherConfig {
            topics: kafka.topics(),
            ..PublisherConfig::default()
        },
        kafka.credentials(hasher)?,
    )?);
    let observed = Arc::new(Mutex::new(Observed::default()));
    let sent = Arc::new(Mutex::new(HashMap::<String, Sent>::new()));
    let (login, to_report) = LoginSystem::new(args.entered, args.enter_after, args.pump);
    let reporter =
        to_report.map(|rx| tokio::spawn(login::report(login.clone(), rx, publisher.clone())));
    let bar = progress(args.requests, args.json);

    let mut services = Vec::new();
    if !args.backlog {
        services = start_fleet(&spec, channels, &args, ingress).await?;
    }
    let started = Instant::now();
    let started_ms = Utc::now().timestamp_millis();
    let mut publishing = Some(tokio::spawn(publish(
        args.clone(),
        publisher.clone(),
        sent.clone(),
        login.clone(),
        bar.clone(),
    )));
    if args.backlog {
        if let Some(p) = publishing.take() {
            p.await??;
        }
        bar.set_message("backlog published; starting the workers");
        services = start_fleet(&spec, channels, &args, ingress).await?;
    }
    // A backlog run measures from the moment the workers own their partitions.
    let (measured_from, measured_from_ms) = if args.backlog {
        (Instant::now(), Utc::now().timestamp_millis())
    } else {
        (started, started_ms)
    };

    // Follow the status topic on its own thread until every request is final or time is up.
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let (brokers, topic) = (cluster.brokers.clone(), kafka.topics().delivery_status());
        let (observed, done, login) = (observed.clone(), done.clone(), login.clone());
        let counts = (args.requests, args.pump);
        std::thread::spawn(move || follow(&brokers, &topic, counts, &observed, &login, &done))
    };
    let watching = Watching {
        follower: &follower,
        measured_from,
        limit: args.duration.unwrap_or(args.timeout),
        started,
    };
    let timeline = watching.sample(&bar, &observed, &services).await;
    done.store(true, Ordering::SeqCst);
    follower.join().expect("follower thread")?;
    finish_reporting(&login, reporter, args.enter_after).await?;
    bar.finish_and_clear();
    conclude(
        &args,
        services,
        &sim,
        publishing,
        Ended {
            observed: &observed,
            sent: &sent,
            timeline: &timeline,
            login: &login,
            measured_from_ms,
            started_ms,
            dir: &dir,
        },
    )
    .await
}

/// The last codes are entered `--enter-after` after their final status, with the workers still
/// reading: wait for their outcomes to be reported (bounded).
async fn finish_reporting(
    login: &LoginSystem,
    reporter: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    enter_after: Duration,
) -> anyhow::Result<()> {
    login.close();
    if let Some(reporter) = reporter {
        let within = enter_after + Duration::from_secs(30);
        match tokio::time::timeout(within, reporter).await {
            Ok(reported) => reported??,
            Err(_) => tracing::warn!("outcomes still unreported after {within:?}"),
        }
    }
    Ok(())
}

/// What a run leaves behind to be reported.
struct Ended<'a> {
    observed: &'a Mutex<Observed>,
    sent: &'a Mutex<HashMap<String, Sent>>,
    timeline: &'a [figures::Sample],
    login: &'a LoginSystem,
    measured_from_ms: i64,
    started_ms: i64,
    /// Where the workers' logs are.
    dir: &'a std::path::Path,
}

/// Stop the fleet, compute the figures and print them (and the plot); fails when requests
/// were left without a final status in a run not bounded by `--duration`.
async fn conclude(
    args: &LoadArgs,
    services: Vec<ServiceProcess>,
    sim: &otp_provider_sim::SimHandle,
    publishing: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    ended: Ended<'_>,
) -> anyhow::Result<()> {
    let Ended {
        observed,
        sent,
        timeline,
        login,
        measured_from_ms,
        started_ms,
        dir,
    } = ended;
    let usage: Vec<(Role, fleet::Usage)> = services
        .iter()
        .map(|s| Ok((s.role, s.usage()?)))
        .collect::<anyhow::Result<_>>()?;
    stop(services, sim).await?;
    if let Some(p) = publishing {
        p.await??;
    }

    let observed = std::mem::take(&mut *observed.lock().expect("observed lock"));
    let sent = std::mem::take(&mut *sent.lock().expect("sent lock"));
    let report = figures::Report::compute(figures::Inputs {
        requests: args.requests,
        measured_from_ms,
        observed: &observed,
        sent: &sent,
        sim_messages: &sim.messages(),
        sim_stats: &sim.stats(),
        usage: &usage,
        receipt_delay: args.receipts.then_some(args.receipt_delay),
        login: (args.entered > 0 || args.pump > 0).then(|| login.figures()),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
        eprintln!("worker logs: {}", dir.display());
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &observed, &sent, timeline, started_ms)?;
    }
    if args.duration.is_none() && report.finished < args.requests {
        anyhow::bail!(
            "{} of {} requests have no final status after {:?}",
            args.requests - report.finished,
            args.requests,
            args.timeout
        );
    }
    Ok(())
}

/// The run's Kafka: the embedded cluster (kept alive here until the run ends) or the brokers
/// given, its topics behind the run's prefix, and the run's keys.
struct Cluster {
    _embedded:
        Option<rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    brokers: String,
    prefix: String,
    /// For the run's publisher and the follower: brokers, prefix, sealing and record keys.
    kafka: KafkaArgs,
    seal_keys: String,
    /// Workers hold this; the run's publisher, like any producer, does not.
    fallback_key: String,
    /// The services' record keys (every role's); the publisher holds none.
    record_keys: String,
}

impl Cluster {
    async fn start(args: &LoadArgs) -> anyhow::Result<Self> {
        let prefix = args
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("otp-load-{}.", Utc::now().timestamp_millis()));
        let embedded = if args.embedded {
            Some(rdkafka::mocking::MockCluster::new(1).context("start the embedded Kafka")?)
        } else {
            None
        };
        let brokers = match (&args.brokers, &embedded) {
            (_, Some(m)) => m.bootstrap_servers(),
            (Some(b), None) => b.clone(),
            (None, None) => anyhow::bail!("--brokers or --embedded is required"),
        };
        let mut kafka = KafkaArgs::new(brokers.clone());
        kafka.topic_prefix = prefix.clone();
        let seal_keys = crate::stack::run_seal_keys();
        kafka.sealing = Some(otp_events::Keyring::parse(&seal_keys).context("OTP_SEAL_KEYS")?);
        let (record_keys, record_keys_text) = otp_events::RecordKeys::generate();
        kafka.record_keys = Some(record_keys);
        let topics = kafka.topics().all();
        match &embedded {
            Some(mock) => {
                for topic in &topics {
                    mock.create_topic(topic, args.partitions, 1)?;
                }
            }
            None => {
                create_topics(&kafka, &topics, args.partitions, 1)
                    .await
                    .context("create the run's topics")?;
            }
        }
        Ok(Self {
            _embedded: embedded,
            brokers,
            prefix,
            kafka,
            seal_keys,
            fallback_key: hex::encode(rand::random::<[u8; 32]>()),
            record_keys: record_keys_text,
        })
    }
}

/// The simulated providers' sender budget, per second and burst: `--sender-rate`, or no
/// bound at all (0).
fn sender_budget(args: &LoadArgs) -> (u32, u32) {
    if args.sender_rate == 0 {
        (1_000_000, 100_000)
    } else {
        (args.sender_rate, (args.sender_rate / 20).max(1))
    }
}

/// The provider simulator of the run, posting WhatsApp receipts to `ingress` when given.
async fn simulator(
    args: &LoadArgs,
    rate: u32,
    burst: u32,
    ingress: Option<std::net::SocketAddr>,
) -> anyhow::Result<otp_provider_sim::SimHandle> {
    Ok(otp_provider_sim::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            latency: args.sim_latency,
            latency_jitter: args.sim_jitter,
            whatsapp_rate: rate,
            whatsapp_burst: burst,
            sms_rate: rate,
            sms_burst: burst,
            whatsapp_webhook_url: ingress.map(|a| format!("http://{a}/webhooks/whatsapp")),
            receipt_delay: args.receipt_delay,
            ..SimConfig::default()
        },
    )
    .await?)
}

/// The run while it lasts: until the follower has every final status, or the limit.
struct Watching<'a> {
    follower: &'a std::thread::JoinHandle<anyhow::Result<()>>,
    measured_from: Instant,
    limit: Duration,
    started: Instant,
}

impl Watching<'_> {
    /// Show progress and sample the workers' memory four times a second, until the end.
    async fn sample(
        &self,
        bar: &ProgressBar,
        observed: &Mutex<Observed>,
        services: &[ServiceProcess],
    ) -> Vec<figures::Sample> {
        let mut timeline = Vec::new();
        while !self.follower.is_finished() && self.measured_from.elapsed() < self.limit {
            tokio::time::sleep(Duration::from_millis(250)).await;
            bar.set_position(observed.lock().expect("observed lock").finals.len() as u64);
            let rss_bytes = services
                .iter()
                .filter(|s| matches!(s.role, Role::Worker(_)))
                .map(|w| w.usage().map_or(0, |u| u.rss_bytes))
                .sum();
            timeline.push(figures::Sample {
                at_s: self.started.elapsed().as_secs_f64(),
                rss_bytes,
            });
        }
        timeline
    }
}

/// Stop the services, workers first: the tracker and the ingress stay until nothing more
/// comes to them (the simulator's last webhooks, such as an SMS's `delivered` after its final
/// `sent`).
async fn stop(
    mut services: Vec<ServiceProcess>,
    sim: &otp_provider_sim::SimHandle,
) -> anyhow::Result<()> {
    services.sort_by_key(|s| !matches!(s.role, Role::Worker(_)));
    for s in services {
        if s.role == Role::Ingress && !sim.webhooks_sent(WEBHOOKS_WITHIN).await {
            tracing::warn!(
                "webhooks still pending after {WEBHOOKS_WITHIN:?}; stopping the ingress"
            );
        }
        s.stop().await?;
    }
    Ok(())
}

/// How long the ingress waits for the simulator's last webhooks at the end of a run: the
/// longest retry schedule (Meta's, as the simulator keeps it: 6 tries 0.2 s apart, doubling)
/// plus a margin.
const WEBHOOKS_WITHIN: Duration = Duration::from_secs(30);

/// Start the run's services (with `ingress`, the receipts path before the workers) and wait
/// until they own every partition.
async fn start_fleet(
    spec: &FleetSpec<'_>,
    channels: &[Channel],
    args: &LoadArgs,
    ingress: Option<std::net::SocketAddr>,
) -> anyhow::Result<Vec<ServiceProcess>> {
    let mut services = Vec::new();
    if let Some(listen) = ingress {
        services.push(ServiceProcess::ingress(spec, listen)?);
        services.push(ServiceProcess::tracker(spec)?);
    }
    let callback = ingress.map(|a| format!("http://{a}{}", otp_receipts::config::SMS_STATUS_PATH));
    for channel in channels {
        for instance in 1..=args.workers {
            services.push(ServiceProcess::worker(
                spec,
                *channel,
                instance,
                callback.as_deref(),
            )?);
        }
    }
    fleet::wait_ready(&mut services, args.partitions, Duration::from_secs(60)).await?;
    Ok(services)
}

/// The workers' settings for this run: the channel's limits at the run's rate, abuse limits
/// that real traffic would not trip (every recipient is distinct), delivery confirmation
/// (shipped defaults) with `--receipts`, the rest as shipped.
fn worker_toml(args: &LoadArgs, channel: Channel, rate: u32, burst: u32) -> String {
    let recipient = match channel {
        Channel::Whatsapp => "recipient_period = \"6s\"\n",
        Channel::Sms => "",
    };
    let confirmation = if args.receipts {
        "[confirmation]\n"
    } else {
        ""
    };
    format!(
        "max_in_flight = {}\n\
         [limits]\nsender_per_second = {rate}\nsender_burst = {burst}\n{recipient}\
         [abuse]\nper_phone = {{ count = 5, window = \"10m\" }}\n\
         per_prefix = {{ count = {}, window = \"10m\" }}\n{confirmation}\
         [conversion]\ngrace = \"{}\"\n",
        args.max_in_flight,
        (args.requests + args.pump).max(20),
        humantime::format_duration(args.conversion_grace)
    )
}

/// Publish `args.requests` requests, paced to `args.rate` per second when it is not 0. Each
/// request's `created_at` is the moment it is handed to the producer, so pacing lag is not
/// counted as pipeline latency.
async fn publish(
    args: LoadArgs,
    publisher: Arc<CodeRequestPublisher>,
    sent: Arc<Mutex<HashMap<String, Sent>>>,
    login: Arc<LoginSystem>,
    bar: ProgressBar,
) -> anyhow::Result<()> {
    // The pump's requests, spread evenly among the run's.
    let pump_every = args.requests.checked_div(args.pump).unwrap_or(0).max(1);
    let mut pumped = 0;
    // Enough acknowledgements outstanding to keep the producer's batches full.
    let window = Arc::new(Semaphore::new(2_000));
    let ttl = chrono::Duration::from_std(args.expires_in)?;
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.requests {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due).await;
        }
        let permit = window.clone().acquire_owned().await?;
        let (phone, channels) = recipient(&args, i);
        let code = format!("{:06}", (i * 104_729 + 17) % 1_000_000);
        let request = Submission::new(phone.clone(), code, channels, ttl).complete(Utc::now());
        sent.lock().expect("sent lock").insert(
            request.request_id.clone(),
            Sent {
                created_at_ms: request.created_at.timestamp_millis(),
                phone,
            },
        );
        let publisher = publisher.clone();
        let pump = (pumped < args.pump && i % pump_every == 0).then(|| {
            pumped += 1;
            let phone = login::pump_phone(pumped);
            let pump = Submission::new(phone, "424242", vec![Channel::Sms], ttl);
            let pump = pump.complete(Utc::now());
            login.pumping(&pump.request_id);
            pump
        });
        tasks.spawn(async move {
            let _permit = permit;
            if let Some(pump) = pump {
                publisher.publish_request(&pump).await?;
            }
            publisher.publish_request(&request).await
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
        if args.backlog {
            bar.set_message(format!("{} published", i + 1));
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Whose numbers a run sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Numbers {
    Us555,
    World,
}

/// The i-th recipient: a distinct number each, staged "not on WhatsApp" (last digits 0026)
/// for the requested share, the others ordinary.
fn recipient(args: &LoadArgs, i: usize) -> (String, Vec<Channel>) {
    match args.channel {
        Channel::Sms => (ordinary(args.numbers, i), vec![Channel::Sms]),
        Channel::Whatsapp => {
            // 37 is prime to 100: any 100 consecutive requests hold exactly the share.
            let phone = if (i * 37) % 100 < args.not_on_whatsapp as usize {
                // GB mobiles, +44 7xxxxx 0026: 100,000 distinct numbers.
                format!("+447{:05}0026", i % 100_000)
            } else {
                ordinary(args.numbers, i)
            };
            (phone, vec![Channel::Whatsapp, Channel::Sms])
        }
    }
}

/// A number whose last four digits are from 4000 to 9999, clear of the simulator's staged
/// recipients (its API answers and its receipt plans, such as 2026 or 3005). `us-555`:
/// +1 555 NNN NNNN, six million distinct numbers. `world`: each region's example mobile
/// number in turn with its last four digits replaced, over a million distinct numbers.
fn ordinary(numbers: Numbers, i: usize) -> String {
    match numbers {
        Numbers::Us555 => format!("+1555{:03}{:04}", (i / 6000) % 1000, 4000 + i % 6000),
        Numbers::World => {
            let mobiles = world_mobiles();
            let example = &mobiles[i % mobiles.len()];
            let last = 4000 + (i / mobiles.len()) % 6000;
            format!("{}{last:04}", &example[..example.len() - 4])
        }
    }
}

/// Every region's example mobile number (at least 8 digits after the code), as E.164, in
/// region order, no two alike but for their last four digits.
fn world_mobiles() -> &'static [String] {
    static MOBILES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let mut regions: Vec<_> = phonenumber::metadata::DATABASE
            .iter()
            .filter_map(|meta| {
                let example = meta.descriptors().mobile()?.example()?;
                (example.len() >= 8)
                    .then(|| (meta.id(), format!("+{}{example}", meta.country_code())))
            })
            .collect();
        regions.sort();
        // Regions that share an example (+7: RU, KZ) would share recipients.
        let mut seen = std::collections::HashSet::new();
        regions
            .into_iter()
            .filter_map(|(_, phone)| {
                seen.insert(phone[..phone.len() - 4].to_string())
                    .then_some(phone)
            })
            .collect()
    });
    &MOBILES
}

/// Read statuses until the run's `requests` and the pump's requests (`counts`) are final.
fn follow(
    brokers: &str,
    topic: &str,
    (requests, pump): (usize, usize),
    observed: &Mutex<Observed>,
    login: &LoginSystem,
    done: &AtomicBool,
) -> anyhow::Result<()> {
    let follower = StatusFollower::new(brokers, topic)?;
    while !done.load(Ordering::SeqCst) {
        let Some(status) = follower.next(Duration::from_millis(100))? else {
            continue;
        };
        let mut o = observed.lock().expect("observed lock");
        match status["status"].as_str() {
            Some("fallback") => o.fallbacks += 1,
            Some("duplicate") => o.duplicates += 1,
            Some("accepted") => {
                let id = str_of(&status, "request_id");
                let at_ms = occurred_ms(&status);
                o.accepted.entry(id).or_insert(at_ms);
            }
            _ => {}
        }
        if status["final"] == true {
            let id = str_of(&status, "request_id");
            let code = status["error"]["code"].as_str();
            if login.ended(&id, &str_of(&status, "status"), code) {
                if o.finals.len() >= requests && login.pump_finished() >= pump {
                    break;
                }
                continue;
            }
            let at_ms = occurred_ms(&status);
            o.finals.insert(
                id,
                Final {
                    status: str_of(&status, "status"),
                    channel: str_of(&status, "channel"),
                    at_ms,
                },
            );
            if o.finals.len() >= requests && login.pump_finished() >= pump {
                break;
            }
        }
    }
    Ok(())
}

/// A status's `occurred_at`, Unix ms (0 when it has none).
fn occurred_ms(status: &Value) -> i64 {
    status["occurred_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_millis())
}

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn progress(requests: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    ProgressBar::new(requests as u64).with_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} requests final  {msg}")
            .expect("valid template"),
    )
}

#[cfg(test)]
mod tests {
    use super::{ordinary, Numbers};
    use otp_provider_sim::behaviour::{self, ReceiptPlan, Staged};

    /// A load run's ordinary recipients are accepted and delivered by the simulator: none of
    /// them stages an error or a failed receipt that would count as the pipeline's doing.
    #[test]
    fn ordinary_recipients_stage_nothing_in_the_simulator() {
        let mut seen = std::collections::HashSet::new();
        for i in (0..12_000).chain(1_000_000..1_012_000) {
            let numbers = if i < 12_000 {
                Numbers::Us555
            } else {
                Numbers::World
            };
            let phone = ordinary(numbers, i);
            assert!(seen.insert(phone.clone()), "{phone} repeats");
            let digits = phone.trim_start_matches('+');
            assert_eq!(behaviour::whatsapp(digits, 1), Staged::Accept, "{phone}");
            assert_eq!(behaviour::sms(digits, 1), Staged::Accept, "{phone}");
            for api in ["whatsapp", "sms"] {
                assert!(
                    matches!(behaviour::receipts(api, digits), ReceiptPlan::Delivered),
                    "{api} {phone}"
                );
            }
        }
    }
}
