//! The pipeline in one process: both workers, built exactly as their binaries build them, and
//! the provider simulator on loopback, against any broker.

use otp_channel_sms::{SmsArgs, SmsClient};
use otp_channel_whatsapp::{WhatsappArgs, WhatsappClient};
use otp_events::PhoneHasher;
use otp_producer::kafka::KafkaArgs;
use otp_provider_sim::SimHandle;
use otp_worker::{ChannelClient, LimitsConfig, WorkerConfig, WorkerSetup};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The WhatsApp client as `otp-whatsapp-worker` builds it, pointed at `sim`.
pub fn whatsapp_client(sim: &SimHandle) -> WhatsappClient {
    let args = WhatsappArgs {
        api_base_url: sim.base_url(),
        api_version: "v21.0".into(),
        phone_number_id: "1055500000".into(),
        template: "otp_login".into(),
        default_language: "en_US".into(),
        request_timeout: Duration::from_secs(5),
        per_message_ttl: false,
    };
    WhatsappClient::new(args, "sim-token".into()).expect("whatsapp client")
}

/// The SMS client as `otp-sms-worker` builds it, pointed at `sim`.
pub fn sms_client(sim: &SimHandle) -> SmsClient {
    let args = SmsArgs {
        api_base_url: sim.base_url(),
        account_sid: "ACsim".into(),
        from: Some("+15557654321".into()),
        messaging_service_sid: None,
        status_callback_url: None,
        body_templates: Vec::new(),
        default_locale: "en".into(),
        request_timeout: Duration::from_secs(5),
    };
    SmsClient::new(args, "sim-auth-token".into()).expect("sms client")
}

/// A running in-process worker; [`Worker::stop`] is what SIGTERM does to a binary.
pub struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    pub fn start<C: ChannelClient>(
        kafka: &KafkaArgs,
        config: WorkerConfig,
        default_limits: LimitsConfig,
        hasher: PhoneHasher,
        client: C,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let setup = WorkerSetup {
            kafka: kafka.clone(),
            config,
            default_limits,
            hasher,
        };
        let task = tokio::spawn(otp_worker::run(setup, client, async move {
            let _ = stopped.changed().await;
        }));
        Self { stop, task }
    }

    /// Stop fetching, drain, commit, leave the group; returns the worker's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}
