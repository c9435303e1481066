//! `otp demo`: the whole pipeline in one command, no accounts needed.
//!
//! With no `--brokers`, Kafka is librdkafka's in-process mock cluster; the providers are the
//! simulator on loopback; both workers run in this process with the binaries' code, the SMS
//! one with two providers (Twilio and Vonage). Twilio is down for the whole run (every call
//! answered 503): its share of the SMS moves to Vonage inside the channel. It publishes a
//! realistic mix of requests, follows the status topic with a progress bar until every request
//! has its final status, and prints a summary. Playing the login system, it reports what
//! became of each code (`verified` for most delivered codes, `abandoned` for the rest and for
//! codes that never arrived) on `otp.verification-outcomes`, and the summary shows conversion
//! per channel. Then it stages an SMS pumping attack: requests to one number range, at 10 a
//! second, whose codes nobody enters; the workers' conversion defence (with demo-speed
//! settings) refuses the range once it has seen enough of them, and the summary shows how many
//! got through. It exits non-zero if any request is left without a final status, or if the
//! attack is not stopped.

use crate::follow::{count_messages, StatusFollower};
use crate::stack::{sms_client_with_vonage, whatsapp_client, ReceiptsIngress, Tracker, Worker};
use anyhow::Context;
use chrono::Utc;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use otp_events::{Channel, CodeRequest, PhoneHasher, Submission, CODE_REQUEST_SCHEMA};
use otp_kafka::KafkaArgs;
use otp_producer::{CodeRequestPublisher, PublisherConfig};
use otp_provider_sim::{Outage, SimConfig};
use otp_receipts::tracker::TrackerConfig;
use otp_worker::{
    ConfirmationConfig, ConversionConfig, ConversionRule, LimitsConfig, WorkerConfig,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Run against this Kafka cluster instead of the embedded one (topics must exist:
    /// `otp topics create`).
    #[arg(long, env = "OTP_KAFKA_BROKERS")]
    brokers: Option<String>,
    /// How many code requests to publish (plus one malformed event and one duplicate).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Give up waiting for final statuses after this long.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

const PARTITIONS: i32 = 4;
const CONFIRMATION_WINDOW: Duration = Duration::from_secs(3);
/// The staged pump: this many requests to one number range, this far apart.
const PUMP_REQUESTS: usize = 60;
const PUMP_EVERY: Duration = Duration::from_millis(100);

/// The conversion defence at demo speed: the production rule's shape (a range with enough
/// judged requests and under a fifth of them entered is refused), judged 2 s after admission
/// instead of 5 minutes, over 10 judged requests instead of 20.
fn demo_conversion() -> ConversionConfig {
    ConversionConfig {
        per_range: Some(ConversionRule {
            min_requests: 10,
            floor: 0.2,
        }),
        window: Duration::from_secs(600),
        grace: Duration::from_secs(2),
        ..ConversionConfig::default()
    }
}

/// One recipient of the mix: who they are and what the simulator will make of them.
struct Persona {
    label: &'static str,
    channels: &'static [Channel],
    /// Last four digits that stage the simulator's behaviour (see otp_provider_sim::behaviour).
    suffix: Option<&'static str>,
    expired: bool,
}

const MIX: &[(u32, Persona)] = &[
    (
        55,
        Persona {
            label: "WhatsApp user",
            channels: &[Channel::Whatsapp, Channel::Sms],
            suffix: None,
            expired: false,
        },
    ),
    (
        15,
        Persona {
            label: "not on WhatsApp",
            channels: &[Channel::Whatsapp, Channel::Sms],
            suffix: Some("0026"),
            expired: false,
        },
    ),
    (
        6,
        Persona {
            label: "not on WhatsApp, told by webhook",
            channels: &[Channel::Whatsapp, Channel::Sms],
            suffix: Some("2026"),
            expired: false,
        },
    ),
    (
        4,
        Persona {
            label: "WhatsApp never delivered",
            channels: &[Channel::Whatsapp, Channel::Sms],
            suffix: Some("0404"),
            expired: false,
        },
    ),
    (
        6,
        Persona {
            label: "reads WhatsApp",
            channels: &[Channel::Whatsapp, Channel::Sms],
            suffix: Some("0777"),
            expired: false,
        },
    ),
    (
        15,
        Persona {
            label: "SMS only",
            channels: &[Channel::Sms],
            suffix: None,
            expired: false,
        },
    ),
    (
        5,
        Persona {
            label: "flaky provider (two 500s)",
            channels: &[Channel::Whatsapp, Channel::Sms],
            suffix: Some("0500"),
            expired: false,
        },
    ),
    (
        5,
        Persona {
            label: "landline, SMS only",
            channels: &[Channel::Sms],
            suffix: Some("0614"),
            expired: false,
        },
    ),
    (
        5,
        Persona {
            label: "already expired",
            channels: &[Channel::Sms],
            suffix: None,
            expired: true,
        },
    ),
];

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // The embedded cluster lives on this (the main) task until the demo ends.
    let mock = match &args.brokers {
        Some(_) => None,
        None => Some(rdkafka::mocking::MockCluster::new(1).context("start the embedded Kafka")?),
    };
    let brokers = match (&args.brokers, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap_servers(),
        (None, None) => unreachable!(),
    };
    let kafka = demo_kafka(&brokers)?;
    let topics = kafka.topics();
    if let Some(mock) = &mock {
        for topic in topics.all() {
            mock.create_topic(&topic, PARTITIONS, 1)?;
        }
    }
    println!(
        "Kafka: {}",
        if mock.is_some() {
            "embedded (librdkafka mock cluster)".to_string()
        } else {
            brokers.clone()
        }
    );

    // Receipts: the webhook ingress the simulator posts to, and the confirmation tracker.
    let hash_key = crate::stack::run_hash_key();
    let hasher = PhoneHasher::new(hash_key.as_bytes());
    let ingress = ReceiptsIngress::start(&kafka, hasher.clone()).await?;
    println!("Receipts ingress: {}", ingress.url());
    let sim = simulator(&ingress).await?;
    let tracker = Tracker::start(&kafka, TrackerConfig::default(), hasher.clone());
    let workers = start_workers(&kafka, &hasher, &sim, &ingress);

    let publisher = CodeRequestPublisher::new(
        &kafka,
        PublisherConfig {
            topics: topics.clone(),
            ..PublisherConfig::default()
        },
        kafka.credentials(hasher)?,
    )?;
    let (expected, bad_events) = publish_mix(&publisher, &kafka, args.requests).await?;
    println!(
        "Published {} code requests, 1 duplicate and {bad_events} malformed event.",
        expected.len()
    );

    let outcome = follow(
        &brokers,
        &topics.delivery_status(),
        &expected,
        args.timeout,
        &publisher,
    )
    .await?;
    let pump = stage_pump(
        &publisher,
        &brokers,
        &topics.delivery_status(),
        args.timeout,
    )
    .await?;
    for w in workers {
        w.stop().await?;
    }
    tracker.stop().await?;
    ingress.stop().await;
    let dead_letters = count_messages(&brokers, &topics.dead_letter())?;
    let stats = sim.stats();
    print_summary(&outcome, dead_letters, &stats);
    pump.print();
    let missing = expected.len() - outcome.finals.len();
    if missing > 0 {
        anyhow::bail!("{missing} requests have no final status");
    }
    pump.check()
}

/// The demo's Kafka settings: this run's keys, as a production deployment has its own.
fn demo_kafka(brokers: &str) -> anyhow::Result<KafkaArgs> {
    let mut kafka = KafkaArgs::new(brokers);
    // Codes and numbers are sealed on the topics, as in production, with this run's key.
    kafka.sealing = Some(otp_events::Keyring::parse(&crate::stack::run_seal_keys())?);
    // The demo's workers and tracker share this run's fallback-proof key.
    kafka.fallback_key = Some(otp_events::FallbackKey::new(&rand::random::<[u8; 32]>()));
    // And this run's record keys: every internal record is authenticated by its writer's role.
    kafka.record_keys = Some(otp_events::RecordKeys::generate().0);
    // The demo reads the provider of each status: v2 names it.
    kafka.status_schema = otp_events::StatusVersion::V2;
    Ok(kafka)
}

/// The providers, simulated: receipts posted to the ingress, and Twilio down for the run.
async fn simulator(ingress: &ReceiptsIngress) -> anyhow::Result<otp_provider_sim::SimHandle> {
    let sim_config = SimConfig {
        whatsapp_webhook_url: Some(ingress.whatsapp_webhook()),
        vonage_webhook_url: Some(ingress.vonage_webhook()),
        vonage_rate: 200,
        latency: Duration::from_millis(20),
        latency_jitter: Duration::from_millis(40),
        sms_rate: 200,
        sms_burst: 50,
        ..SimConfig::default()
    };
    let sim = otp_provider_sim::start("127.0.0.1:0".parse()?, sim_config).await?;
    println!("Provider simulator: {}", sim.base_url());
    sim.set_outage("twilio", None, Outage::Http(503));
    println!("Twilio is down for this run (every call answered 503); SMS has Vonage beside it.");
    Ok(sim)
}

/// A WhatsApp worker and an SMS worker (Twilio and Vonage), confirming by receipt.
fn start_workers(
    kafka: &KafkaArgs,
    hasher: &PhoneHasher,
    sim: &otp_provider_sim::SimHandle,
    ingress: &ReceiptsIngress,
) -> Vec<Worker> {
    let mut config = WorkerConfig::default();
    config.retry.initial_delay = Duration::from_millis(100);
    // Deliveries are confirmed by receipt; a short window so silent users fall back quickly.
    config.confirmation = Some(ConfirmationConfig {
        window: CONFIRMATION_WINDOW,
        ..ConfirmationConfig::default()
    });
    config.conversion = demo_conversion();
    // A range's count above the staged pump's size, so that what stops it is its conversion:
    // a real pump spreads over hours to stay under the count, which a demo cannot wait for.
    config.abuse.per_prefix = Some(otp_worker::WindowRule {
        count: 100,
        window: Duration::from_secs(600),
    });
    let whatsapp_limits = otp_channel_whatsapp::default_limits();
    // A short code's throughput: the demo would take minutes at a long code's 1/s.
    let sms_limits = LimitsConfig {
        sender_per_second: 100,
        sender_burst: 20,
        recipient_period: None,
    };
    vec![
        Worker::start(
            kafka,
            config.clone(),
            whatsapp_limits,
            hasher.clone(),
            whatsapp_client(sim),
        ),
        Worker::start(
            kafka,
            config,
            sms_limits,
            hasher.clone(),
            sms_client_with_vonage(sim, &sim.base_url(), Some(ingress.sms_status_callback())),
        ),
    ]
}

/// What became of the staged pump's requests.
#[derive(Debug, Default)]
struct Pump {
    sent: usize,
    refused: usize,
    other: usize,
}

impl Pump {
    fn print(&self) {
        println!(
            "\nSMS pumping attack: {PUMP_REQUESTS} requests to one number range (+1555950xxxx), \
             none entered"
        );
        println!(
            "  sent before the range was refused {:>4}\n  refused (low_conversion)          {:>4}",
            self.sent, self.refused
        );
        if self.other > 0 {
            println!("  other endings                     {:>4}", self.other);
        }
        if self.refused > 0 {
            println!("  attack stopped: the range converted under 20 % over 10 judged requests");
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let ended = self.sent + self.refused + self.other;
        anyhow::ensure!(
            ended == PUMP_REQUESTS,
            "{} pumped requests have no final status",
            PUMP_REQUESTS - ended
        );
        anyhow::ensure!(self.refused > 0, "the pumping attack was not stopped");
        Ok(())
    }
}

/// Publish the pump (SMS only, to one range, `PUMP_EVERY` apart, the app of the SMS-only
/// users) with a real SMS-only user of that app every fifth request, and follow them all to
/// their ends. Playing the login system, it reports the real users' codes entered as they
/// arrive (the defence counts a request only once its app has reported after it); the
/// pump's codes are never entered.
async fn stage_pump(
    publisher: &CodeRequestPublisher,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Pump> {
    let (ids_tx, mut ids_rx) = tokio::sync::mpsc::channel::<(String, bool)>(PUMP_REQUESTS * 2);
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(PUMP_EVERY);
            for i in 0..PUMP_REQUESTS {
                pace.tick().await;
                let pumped = format!("+1555950{:04}", 5000 + i);
                let mut requests = vec![(pumped, true)];
                if i % 5 == 0 {
                    requests.push((format!("+1555960{:04}", 5000 + i), false));
                }
                for (phone, pump) in requests {
                    let code = format!("{:06}", (i * 7_919 + 13) % 1_000_000);
                    let ttl = chrono::Duration::minutes(5);
                    let mut s = Submission::new(phone, code, vec![Channel::Sms], ttl);
                    s.app = Some("SMS-only".to_string());
                    let id = publisher.publish(s).await?;
                    let _ = ids_tx.send((id, pump)).await;
                }
            }
            anyhow::Ok(())
        })
    };
    let follower = StatusFollower::new(brokers, topic)?;
    let (mut pumped, mut users) = (HashSet::new(), HashSet::new());
    let mut pump = Pump::default();
    // Final statuses by request_id, until their request is known to be this phase's (an id
    // comes through the channel after its publish returns; its status may come first).
    let mut finals: HashMap<String, Value> = HashMap::new();
    let mut ended = 0;
    let deadline = Instant::now() + timeout;
    while (!publishing.is_finished() || ended < pumped.len() + users.len())
        && Instant::now() < deadline
    {
        let mut known = Vec::new();
        while let Ok((id, is_pump)) = ids_rx.try_recv() {
            if is_pump { &mut pumped } else { &mut users }.insert(id.clone());
            known.push(id);
        }
        let polled = tokio::task::block_in_place(|| follower.next(Duration::from_millis(50)))?;
        if let Some(status) = polled.filter(|s| s["final"] == true) {
            let id = status["request_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            known.push(id.clone());
            finals.entry(id).or_insert(status);
        }
        for id in known {
            let Some(status) = finals.get(&id) else {
                continue;
            };
            if users.contains(&id) {
                if matches!(status["status"].as_str(), Some("sent" | "delivered")) {
                    use otp_events::{OutcomeKind, VerificationOutcome};
                    let mut entered =
                        VerificationOutcome::new(&id, OutcomeKind::Verified, Utc::now());
                    entered.app = Some("SMS-only".to_string());
                    publisher.publish_outcome(&entered).await?;
                }
            } else if pumped.contains(&id) {
                match (status["status"].as_str(), status["error"]["code"].as_str()) {
                    (Some("sent" | "delivered"), _) => pump.sent += 1,
                    (Some("failed"), Some("low_conversion")) => pump.refused += 1,
                    _ => pump.other += 1,
                }
            } else {
                continue; // not this phase's, or not known yet
            }
            ended += 1;
            finals.remove(&id);
        }
    }
    publishing.await??;
    Ok(pump)
}

async fn publish_mix(
    publisher: &CodeRequestPublisher,
    kafka: &KafkaArgs,
    n: usize,
) -> anyhow::Result<(HashSet<String>, usize)> {
    let total: u32 = MIX.iter().map(|(w, _)| w).sum();
    let mut ids = HashSet::new();
    let mut sends = Vec::new();
    for i in 0..n {
        let mut pick = (i as u32 * 7919) % total;
        let persona = &MIX
            .iter()
            .find(|(w, _)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .expect("weights cover")
            .1;
        let last4 = persona
            .suffix
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:04}", 2000 + i % 7000));
        let phone = format!("+1555{:03}{last4}", 100 + i / 7000 + i % 800);
        let code = format!("{:06}", (i * 104_729) % 1_000_000);
        let mut s = Submission::new(
            phone,
            code,
            persona.channels.to_vec(),
            chrono::Duration::minutes(5),
        );
        s.app = Some(persona.label.replace(' ', "-").replace([',', '(', ')'], ""));
        let request = if persona.expired {
            let now = Utc::now();
            s.created_at = Some(now - chrono::Duration::seconds(90));
            s.expires_at = now - chrono::Duration::seconds(30);
            s.complete(now)
        } else {
            s.complete(Utc::now())
        };
        ids.insert(request.request_id.clone());
        sends.push(request);
    }
    let results =
        futures_util::future::join_all(sends.iter().map(|r| publisher.publish_request(r))).await;
    for r in results {
        r?;
    }
    // The same request again: the worker sends it once and reports `duplicate`.
    let dup: &CodeRequest = sends
        .iter()
        .find(|r| r.expires_at > Utc::now())
        .expect("a live request");
    publisher.publish_request(dup).await?;
    // And a malformed event, which must end on the dead-letter topic.
    let raw: FutureProducer = kafka
        .to_rdkafka(otp_kafka::KafkaRole::Producer {
            message_timeout: Duration::from_secs(5),
        })
        .create()?;
    let topic = kafka.topics().requests(Channel::Sms);
    let bad = format!("{{\"schema\":\"{CODE_REQUEST_SCHEMA}\",\"phone\":\"not a phone\"");
    raw.send(
        FutureRecord::<(), _>::to(&topic).payload(&bad),
        Duration::from_secs(5),
    )
    .await
    .map_err(|(e, _)| e)?;
    Ok((ids, 1))
}

struct Outcome {
    finals: HashMap<String, Value>,
    /// SMS sends accepted, by provider (from `sent` and `accepted` statuses).
    sms_by_provider: BTreeMap<String, usize>,
    fallbacks: usize,
    /// Fallbacks by why: a provider code, `receipt_failed` or `receipt_timeout`.
    fallback_reasons: BTreeMap<String, usize>,
    duplicates: usize,
    /// Statuses reported from receipts, by status and channel (final or not).
    receipts: BTreeMap<(String, String), usize>,
    /// Per final channel: requests, and those the login system reported verified.
    conversion: BTreeMap<String, (usize, usize)>,
    /// Reporting outcomes failed once: no more tries.
    no_outcomes: bool,
}

async fn follow(
    brokers: &str,
    topic: &str,
    expected: &HashSet<String>,
    timeout: Duration,
    login_system: &CodeRequestPublisher,
) -> anyhow::Result<Outcome> {
    let follower = StatusFollower::new(brokers, topic)?;
    let bar = ProgressBar::new(expected.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} requests final  {msg}")
            .expect("valid template"),
    );
    let mut outcome = Outcome {
        finals: HashMap::new(),
        sms_by_provider: BTreeMap::new(),
        fallbacks: 0,
        fallback_reasons: BTreeMap::new(),
        duplicates: 0,
        receipts: BTreeMap::new(),
        conversion: BTreeMap::new(),
        no_outcomes: false,
    };
    let deadline = Instant::now() + timeout;
    while outcome.finals.len() < expected.len() && Instant::now() < deadline {
        let polled = tokio::task::block_in_place(|| follower.next(Duration::from_millis(100)))?;
        let Some(status) = polled else { continue };
        match status["status"].as_str() {
            Some("fallback") => {
                outcome.fallbacks += 1;
                let why = status["error"]["code"].as_str().unwrap_or("?").to_string();
                *outcome.fallback_reasons.entry(why).or_default() += 1;
            }
            Some("duplicate") => outcome.duplicates += 1,
            Some("sent" | "accepted") if status["channel"] == "sms" && status["tries"].is_u64() => {
                let provider = status["provider"].as_str().unwrap_or("?").to_string();
                *outcome.sms_by_provider.entry(provider).or_default() += 1;
            }
            Some(kind @ ("delivered" | "read")) => {
                let channel = status["channel"].as_str().unwrap_or("?").to_string();
                *outcome
                    .receipts
                    .entry((kind.to_string(), channel))
                    .or_default() += 1;
            }
            _ => {}
        }
        let id = status["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if status["final"] == true && expected.contains(&id) && !outcome.finals.contains_key(&id) {
            let reported = if outcome.no_outcomes {
                Ok(None)
            } else {
                report_outcome(login_system, &status).await
            };
            match reported {
                Ok(Some(verified)) => {
                    let channel = status["channel"].as_str().unwrap_or("?").to_string();
                    let (requests, converted) = outcome.conversion.entry(channel).or_default();
                    *requests += 1;
                    *converted += usize::from(verified);
                }
                Ok(None) => {}
                // An external cluster whose topics predate outcomes: the summary goes without
                // conversion, and the demo goes on.
                Err(e) => {
                    eprintln!("outcomes not reported ({e}); the summary has no conversion");
                    outcome.no_outcomes = true;
                    outcome.conversion.clear();
                }
            }
            outcome.finals.insert(id, status);
            bar.set_position(outcome.finals.len() as u64);
            bar.set_message(format!("{} fallbacks", outcome.fallbacks));
        }
    }
    bar.finish();
    Ok(outcome)
}

/// The login system's part: once a code's request is final, say what the user did. Most
/// users who got a code enter it (85 % on WhatsApp, 75 % by SMS, drawn by the request_id so
/// a run is repeatable); the others, and those whose code never came, abandon. A refused
/// request has no code to report on. Returns whether it was reported verified.
async fn report_outcome(
    login_system: &CodeRequestPublisher,
    status: &Value,
) -> Result<Option<bool>, otp_kafka::PublishError> {
    use otp_events::{OutcomeKind, VerificationOutcome};
    let Some(id) = status["request_id"].as_str() else {
        return Ok(None);
    };
    let got_it = matches!(
        status["status"].as_str(),
        Some("sent" | "delivered" | "read")
    );
    if status["status"] == "rejected" {
        return Ok(None);
    }
    let share = if status["channel"] == "whatsapp" {
        85
    } else {
        75
    };
    let verified = got_it && crate::load::login::user_enters(id, share);
    let kind = if verified {
        OutcomeKind::Verified
    } else {
        OutcomeKind::Abandoned
    };
    let mut outcome = VerificationOutcome::new(id, kind, Utc::now());
    outcome.app = status["app"].as_str().map(str::to_owned);
    outcome.attempts = verified.then_some(1);
    login_system.publish_outcome(&outcome).await?;
    Ok(Some(verified))
}

fn print_summary(outcome: &Outcome, dead_letters: i64, stats: &otp_provider_sim::Stats) {
    let mut table: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut latency = Histogram::<u64>::new(3).expect("valid histogram");
    let mut confirmed = Histogram::<u64>::new(3).expect("valid histogram");
    for s in outcome.finals.values() {
        let key = (
            s["status"].as_str().unwrap_or("?").to_string(),
            s["channel"].as_str().unwrap_or("?").to_string(),
        );
        *table.entry(key).or_default() += 1;
        let ms = s["latency_ms"].as_u64().unwrap_or(0);
        match s["status"].as_str() {
            Some("sent") => drop(latency.record(ms)),
            Some("delivered" | "read") => drop(confirmed.record(ms)),
            _ => {}
        }
    }
    println!("\nFinal status by channel");
    println!("  {:<10} {:<10} {:>8}", "status", "channel", "requests");
    for ((status, channel), n) in &table {
        println!("  {status:<10} {channel:<10} {n:>8}");
    }
    println!("\nReported from provider receipts (final or not)");
    for ((status, channel), n) in &outcome.receipts {
        println!("  {status:<10} {channel:<10} {n:>8}");
    }
    println!("\n  fallbacks            {:>6}", outcome.fallbacks);
    for (why, n) in &outcome.fallback_reasons {
        println!("    {why:<18} {n:>6}");
    }
    println!("  duplicates refused   {:>6}", outcome.duplicates);
    println!("  dead letters         {:>6}", dead_letters);
    println!(
        "  provider rate-limit violations {:>3}",
        stats.rate_limit_violations.values().sum::<u64>()
    );
    println!("\nConversion: codes the login system reported verified, by final channel");
    for (channel, (requests, verified)) in &outcome.conversion {
        println!(
            "  {channel:<10} {verified:>5} of {requests:>5}  {:>5.1} %",
            *verified as f64 * 100.0 / (*requests).max(1) as f64
        );
    }
    println!("\nSMS accepted by provider (Twilio down: its share moved to Vonage)");
    for (provider, n) in &outcome.sms_by_provider {
        println!("  {provider:<10} {n:>8}");
    }
    let twilio_refused = stats.errors_by_code.get("http_503").copied().unwrap_or(0);
    println!("  Twilio calls refused with 503 {twilio_refused:>4}, each moved on at once");
    if !latency.is_empty() {
        println!(
            "\nEnd-to-end latency of sent codes (created_at to provider accepted, including the\n\
             workers joining their consumer groups at start): p50 {} ms, p95 {} ms, p99 {} ms",
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.95),
            latency.value_at_quantile(0.99)
        );
    }
    if !confirmed.is_empty() {
        println!(
            "Confirmed by receipt (created_at to the delivered/read status; the simulator \n\
             reports delivery after 1 s): p50 {} ms, p95 {} ms, p99 {} ms",
            confirmed.value_at_quantile(0.50),
            confirmed.value_at_quantile(0.95),
            confirmed.value_at_quantile(0.99)
        );
    }
}
