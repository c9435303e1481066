//! The `otp` command: every program of otp-pipeline in one binary, and the tools around them.
//!
//! - `demo`: the whole pipeline on an embedded Kafka and the provider simulator, and a report;
//! - `load`: publish requests at a rate to a real broker, run the workers, measure the pipeline;
//! - `send`, `outcome`: publish one code request, or one verification outcome, from a shell;
//! - `report`: sum up the delivery-status topic (and the outcomes) for analysts;
//! - `worker whatsapp|sms`, `receipts serve|track`, `producer serve|keys new`, `sim`: the same
//!   programs as `otp-whatsapp-worker`, `otp-sms-worker`, `otp-receipts`, `otp-producer` and
//!   `otp-provider-sim`;
//! - `topics create`: create the pipeline's topics;
//! - `keys init`: the docker-compose stack's development secrets.

use anyhow::Context;
use clap::{Parser, Subcommand};
use otp_events::{Channel, Rules, Submission};
use otp_kafka::admin::{create_topics, TopicOutcome};
use otp_kafka::KafkaArgs;
use otp_producer::{CodeRequestPublisher, Credentials, PublisherConfig};
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "otp-pipeline: deliver one-time login codes over WhatsApp and SMS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on an embedded Kafka and the provider simulator, and report.
    Demo(otp::demo::DemoArgs),
    /// Publish requests at a rate to a real broker, run the workers, and measure the pipeline.
    Load(Box<otp::load::LoadArgs>),
    /// Publish one code request and print its request_id once the broker acknowledged it.
    Send(SendArgs),
    /// Report what became of a code (for conversion): verified, abandoned,
    /// too_many_attempts or expired; printed back once the broker acknowledged it.
    Outcome(OutcomeArgs),
    /// Sum up the delivery-status topic for analysts: per channel and country, delivered,
    /// sent, fallbacks by reason, failures, time to first delivery, estimated cost.
    Report(otp::report::ReportArgs),
    /// Run a delivery worker: the same program as `otp-whatsapp-worker` / `otp-sms-worker`.
    Worker {
        #[command(subcommand)]
        channel: WorkerCommand,
    },
    /// Provider receipts: the same program as `otp-receipts` (`serve` the webhooks, `track`
    /// confirmations).
    Receipts {
        #[command(subcommand)]
        command: otp_receipts::ReceiptsCommand,
    },
    /// The HTTP ingress for login systems: the same program as `otp-producer`.
    Producer {
        #[command(subcommand)]
        command: otp_producer::cli::ProducerCommand,
    },
    /// The provider simulator: the same program as `otp-provider-sim`.
    Sim(otp_provider_sim::SimCli),
    /// Manage the pipeline's topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Development secrets.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate the compose stack's development secrets: `.env` (keys, the API key file's
    /// path, the receipts' public URL) and `secrets/` (the API key file of an app `demo`,
    /// placeholder provider tokens). Then `docker compose --profile sim up` delivers.
    Init(otp::keys::InitArgs),
}

#[derive(clap::Args)]
struct SendArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Recipient in E.164, e.g. +15551234567.
    #[arg(long)]
    phone: String,
    /// The one-time code, 4 to 10 digits.
    #[arg(long)]
    code: String,
    /// Channels in order of preference, comma-separated: whatsapp,sms.
    #[arg(long, value_delimiter = ',', default_value = "whatsapp,sms")]
    channels: Vec<Channel>,
    /// Life of the code.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    expires_in: Duration,
    /// Keep this request_id instead of assigning one (idempotency key).
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long)]
    locale: Option<String>,
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    dev: otp_kafka::process::DevMode,
}

#[derive(clap::Args)]
struct OutcomeArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The request whose code this is.
    #[arg(long)]
    request_id: String,
    /// verified, abandoned, too_many_attempts or expired.
    #[arg(long)]
    outcome: String,
    /// The request's app, when it had one.
    #[arg(long)]
    app: Option<String>,
    /// Codes the user entered, the right one included.
    #[arg(long)]
    attempts: Option<u32>,
    /// When the login ended (RFC 3339); now when left out.
    #[arg(long)]
    occurred_at: Option<String>,
    #[command(flatten)]
    dev: otp_kafka::process::DevMode,
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// Deliver over WhatsApp (Cloud API); see `otp-whatsapp-worker --help`.
    Whatsapp(Box<otp_channel_whatsapp::WorkerCli>),
    /// Deliver by SMS (Twilio and Vonage, routed per country); see `otp-sms-worker --help`.
    Sms(Box<otp_channel_sms::WorkerCli>),
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the request, status, dead-letter, receipts and pending-confirmation topics;
    /// existing ones are left as they are.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Copies of each partition. The default suits a production cluster (with
        /// `min.insync.replicas=2`, no acknowledged write is lost with one broker down); pass
        /// 1 for a single-broker development cluster.
        #[arg(long, default_value_t = otp_kafka::admin::DEFAULT_REPLICATION)]
        replication_factor: i32,
        #[command(flatten)]
        check: otp_kafka::process::CheckConfig,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // A worker sets up its own logging, exactly as its binary does.
    match command {
        Command::Worker {
            channel: WorkerCommand::Whatsapp(cli),
        } => return cli.run().await,
        Command::Worker {
            channel: WorkerCommand::Sms(cli),
        } => return cli.run().await,
        Command::Receipts { command } => return command.run().await,
        Command::Producer { command } => return command.run().await,
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match command {
        Command::Demo(args) => otp::demo::run(args).await,
        Command::Load(args) => otp::load::run(*args).await,
        Command::Send(args) => send(args).await,
        Command::Outcome(args) => outcome(args).await,
        Command::Report(args) => otp::report::run(args).await,
        Command::Sim(sim) => sim.run().await,
        Command::Keys {
            command: KeysCommand::Init(args),
        } => {
            let written = otp::keys::init(&args)?;
            for file in &written.files {
                println!("wrote {}", file.display());
            }
            println!(
                "\nAPI key of the app `demo` (shown once; the key file holds its digest):\n{}\n\n\
                 Next: docker compose --profile sim up --build, then POST a code request with \
                 this key to http://127.0.0.1:8080/v1/code-requests (README.md, \"The compose \
                 stack\")",
                written.api_key
            );
            Ok(())
        }
        Command::Worker { .. } | Command::Receipts { .. } | Command::Producer { .. } => {
            unreachable!("handled above")
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    kafka,
                    partitions,
                    replication_factor,
                    check,
                },
        } => {
            anyhow::ensure!(partitions > 0, "--partitions must be at least 1");
            anyhow::ensure!(
                replication_factor > 0,
                "--replication-factor must be at least 1"
            );
            if check.done("otp topics create") {
                return Ok(());
            }
            let names = kafka.topics().all();
            for (name, outcome) in
                create_topics(&kafka, &names, partitions, replication_factor).await?
            {
                let what = match outcome {
                    TopicOutcome::Created => "created",
                    TopicOutcome::AlreadyExisted => "exists",
                };
                println!("{what}\t{name}");
            }
            Ok(())
        }
    }
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let credentials = Credentials::new(
        otp_kafka::process::phone_hasher(args.dev)?,
        otp_kafka::process::keyring(args.dev)?,
    );
    let config = PublisherConfig {
        topics: args.kafka.topics(),
        rules: Rules::default(),
        ..PublisherConfig::default()
    };
    let publisher = CodeRequestPublisher::new(&args.kafka, config, credentials)?;
    let ttl = chrono::Duration::from_std(args.expires_in).context("--expires-in is too long")?;
    let mut submission = Submission::new(args.phone, args.code, args.channels, ttl);
    submission.request_id = args.request_id;
    submission.locale = args.locale;
    submission.app = args.app;
    let request_id = publisher.publish(submission).await?;
    println!("{request_id}");
    Ok(())
}

async fn outcome(args: OutcomeArgs) -> anyhow::Result<()> {
    // Read the way the HTTP ingress reads a body: one validation, naming the field.
    let body = serde_json::json!({
        "request_id": args.request_id,
        "outcome": args.outcome,
        "app": args.app,
        "attempts": args.attempts,
        "occurred_at": args.occurred_at,
    });
    let outcome = otp_events::decode_outcome(&serde_json::to_vec(&body)?, chrono::Utc::now())
        .map_err(|e| anyhow::anyhow!("invalid verification outcome: {e}"))?;
    // Signed with the app's sealing key, as a login system signs it: workers act only on
    // outcomes that verify. An outcome holds no phone number, so no hash key is needed.
    let unused = otp_events::PhoneHasher::new(&rand::random::<[u8; 32]>());
    let credentials = Credentials::new(unused, otp_kafka::process::keyring(args.dev)?);
    let config = PublisherConfig {
        topics: args.kafka.topics(),
        ..PublisherConfig::default()
    };
    let publisher = CodeRequestPublisher::new(&args.kafka, config, credentials)?;
    publisher.publish_outcome(&outcome).await?;
    println!(
        "{}\t{}\t{}",
        outcome.event_id,
        outcome.request_id,
        outcome.outcome.as_str()
    );
    Ok(())
}
