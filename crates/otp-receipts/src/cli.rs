//! `otp-receipts serve` (the webhook ingress) and `otp-receipts track` (the confirmation
//! tracker): two deployments, scaled apart: the ingress behind a load balancer, the tracker
//! as a consumer group.

use crate::config::{ServeArgs, WebhookSecrets};
use crate::tracker::TrackerConfig;
use otp_events::Role;
use otp_kafka::process::{init_logging, phone_hasher, shutdown_signal};
use otp_kafka::KafkaArgs;
use std::sync::Arc;

#[derive(Debug, clap::Subcommand)]
pub enum ReceiptsCommand {
    /// Receive the providers' status webhooks and write them to otp.delivery-receipts.
    Serve(ServeArgs),
    /// Turn receipts (and their absence) into delivered/read statuses and fallbacks.
    Track {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        config: TrackerConfig,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "OTP_LOG_JSON")]
        log_json: bool,
        #[command(flatten)]
        dev: otp_kafka::process::DevMode,
        #[command(flatten)]
        check: otp_kafka::process::CheckConfig,
    },
}

impl ReceiptsCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            ReceiptsCommand::Serve(args) => {
                if let Some(callback) = &args.sms_status_callback_url {
                    crate::config::check_callback_pairing(&args.public_url, callback)
                        .map_err(anyhow::Error::msg)?;
                }
                if args.check.done("otp-receipts serve") {
                    return Ok(());
                }
                init_logging(args.log_json);
                let secrets = WebhookSecrets::from_env();
                tracing::info!(?secrets, "webhook secrets");
                let hasher = phone_hasher(args.dev)?;
                let mut kafka = args.kafka.clone();
                kafka.record_keys =
                    Some(otp_kafka::process::record_keys(args.dev, &[Role::Ingress])?);
                let ingress = crate::ingress::Ingress::new(
                    &kafka,
                    secrets,
                    &args.public_url,
                    args.kafka_timeout,
                    hasher,
                )?
                .with_body_budget(args.body_budget_mib.saturating_mul(1024 * 1024));
                if let Some(listen) = args.metrics_listen {
                    otp_kafka::observe::prometheus();
                    tokio::spawn(async move {
                        if let Err(e) = otp_kafka::observe::serve(listen, || true, || true).await {
                            tracing::error!(error = %e, "metrics listener failed");
                        }
                    });
                }
                let listener = tokio::net::TcpListener::bind(args.listen).await?;
                tracing::info!(listen = %listener.local_addr()?, public_url = %args.public_url, "receipts ingress listening");
                axum::serve(listener, crate::ingress::router(Arc::new(ingress)))
                    .with_graceful_shutdown(shutdown_signal())
                    .await?;
                Ok(())
            }
            ReceiptsCommand::Track {
                kafka,
                config,
                log_json,
                dev,
                check,
            } => {
                if check.done("otp-receipts track") {
                    return Ok(());
                }
                init_logging(log_json);
                let hasher = phone_hasher(dev)?;
                let mut kafka = kafka;
                kafka.sealing = Some(otp_kafka::process::keyring(dev)?);
                kafka.fallback_key = Some(otp_kafka::process::fallback_key(dev)?);
                kafka.record_keys = Some(otp_kafka::process::record_keys(
                    dev,
                    &[Role::Worker, Role::Tracker, Role::Ingress],
                )?);
                crate::tracker::run(kafka, config, hasher, shutdown_signal()).await
            }
        }
    }
}
