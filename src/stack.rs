//! The pipeline in one process: both workers, built exactly as their binaries build them, and
//! the provider simulator on loopback, against any broker.

use otp_channel_sms::{SmsArgs, SmsClient, TwilioArgs, VonageArgs};
use otp_channel_whatsapp::{WhatsappArgs, WhatsappClient};
use otp_events::PhoneHasher;
use otp_kafka::KafkaArgs;
use otp_provider_sim::SimHandle;
use otp_worker::{ChannelClient, LimitsConfig, WorkerConfig, WorkerSetup};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The phone hash key of a demo or load run: the deployment's `OTP_PHONE_HASH_KEY` when set
/// (a load run against a real cluster shares it with the deployment), else a random key for
/// this run only, which its worker processes are given too. These commands are development
/// tools; the services themselves refuse to start without a key (see `--dev`).
pub fn run_hash_key() -> String {
    match std::env::var(PhoneHasher::KEY_ENV) {
        Ok(key) if !key.is_empty() => key,
        _ => hex::encode(rand::random::<[u8; 32]>()),
    }
}

/// The sealing keys of a demo or load run: the deployment's `OTP_SEAL_KEYS` when set, else a
/// random key for this run only, which its worker processes are given too.
pub fn run_seal_keys() -> String {
    match otp_kafka::process::secret(otp_events::Keyring::ENV) {
        Ok(keys) => keys,
        Err(_) => otp_events::Keyring::generate("run").1,
    }
}

/// The WhatsApp client as `otp-whatsapp-worker` builds it, pointed at `sim`, its template
/// approved in the simulator's languages.
pub fn whatsapp_client(sim: &SimHandle) -> WhatsappClient {
    whatsapp_client_with(sim, sim.template_languages().to_vec())
}

/// [`whatsapp_client`] believing its template approved in `languages`.
pub fn whatsapp_client_with(sim: &SimHandle, languages: Vec<String>) -> WhatsappClient {
    let mut args = WhatsappArgs::new(&sim.base_url(), "1055500000");
    args.template_languages = languages;
    WhatsappClient::new(args, "sim-token".into()).expect("whatsapp client")
}

/// The SMS client as `otp-sms-worker` builds it, pointed at `sim`.
pub fn sms_client(sim: &SimHandle) -> SmsClient {
    sms_client_reporting_to(sim, None)
}

/// [`sms_client`] asking for status callbacks at `status_callback_url`.
pub fn sms_client_reporting_to(sim: &SimHandle, status_callback_url: Option<String>) -> SmsClient {
    let args = sms_args(&sim.base_url(), status_callback_url, None);
    SmsClient::new(args, Some("sim-auth-token".into()), None).expect("sms client")
}

/// The SMS client with both providers, Twilio's API at `twilio_base` (the simulator's, or
/// somewhere that refuses connections) and Vonage's at the simulator.
pub fn sms_client_with_vonage(
    sim: &SimHandle,
    twilio_base: &str,
    status_callback_url: Option<String>,
) -> SmsClient {
    let args = sms_args(twilio_base, status_callback_url, Some(sim.base_url()));
    SmsClient::new(
        args,
        Some("sim-auth-token".into()),
        Some(otp_provider_sim::VONAGE_API_SECRET.into()),
    )
    .expect("sms client")
}

fn sms_args(twilio_base: &str, callback: Option<String>, vonage_base: Option<String>) -> SmsArgs {
    SmsArgs {
        twilio: TwilioArgs {
            api_base_url: twilio_base.to_string(),
            account_sid: Some("ACsim".into()),
            from: Some("+15557654321".into()),
            messaging_service_sid: None,
            status_callback_url: callback,
            request_timeout: Duration::from_secs(5),
            twilio_senders: Vec::new(),
        },
        vonage: match vonage_base {
            Some(base) => VonageArgs {
                vonage_api_base_url: base,
                vonage_api_key: Some(otp_provider_sim::VONAGE_API_KEY.into()),
                vonage_from: Some("Acme".into()),
                vonage_request_timeout: Duration::from_secs(5),
                ..VonageArgs::default()
            },
            None => VonageArgs::default(),
        },
        body_templates: Vec::new(),
        default_locale: "en".into(),
    }
}

/// A running in-process worker; [`Worker::stop`] is what SIGTERM does to a binary.
pub struct Worker {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// A worker whose every provider has `default_limits` (the config patches them).
    pub fn start<C: ChannelClient>(
        kafka: &KafkaArgs,
        config: WorkerConfig,
        default_limits: LimitsConfig,
        hasher: PhoneHasher,
        client: C,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let default_limits = client
            .providers()
            .into_iter()
            .map(|p| (p, default_limits.clone()))
            .collect();
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

/// The receipts ingress in this process, on a free loopback port, with the simulator's
/// secrets; its public URL is its own address.
pub struct ReceiptsIngress {
    pub addr: std::net::SocketAddr,
    task: JoinHandle<()>,
}

/// The secrets the simulator signs with, as the ingress must know them.
pub fn sim_webhook_secrets() -> otp_receipts::config::WebhookSecrets {
    otp_receipts::config::WebhookSecrets {
        whatsapp_app_secret: Some("sim-app-secret".into()),
        whatsapp_verify_token: Some("sim-verify-token".into()),
        sms_auth_token: Some("sim-auth-token".into()),
        vonage_signature_secret: Some(otp_provider_sim::VONAGE_SIGNATURE_SECRET.into()),
        vonage_api_key: Some(otp_provider_sim::VONAGE_API_KEY.into()),
    }
}

impl ReceiptsIngress {
    pub async fn start(kafka: &KafkaArgs, hasher: PhoneHasher) -> anyhow::Result<Self> {
        Self::start_at(kafka, "127.0.0.1:0".parse()?, hasher).await
    }

    /// [`ReceiptsIngress::start`] on a given address (to bring one back where it was).
    pub async fn start_at(
        kafka: &KafkaArgs,
        listen: std::net::SocketAddr,
        hasher: PhoneHasher,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let ingress = otp_receipts::ingress::Ingress::new(
            kafka,
            sim_webhook_secrets(),
            &format!("http://{addr}"),
            Duration::from_secs(10),
            hasher,
        )?;
        let app = otp_receipts::ingress::router(std::sync::Arc::new(ingress));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving and let go of the Kafka producer.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Where the simulator sends WhatsApp statuses.
    pub fn whatsapp_webhook(&self) -> String {
        format!("{}/webhooks/whatsapp", self.url())
    }

    /// Where the simulator sends Vonage's statuses (the Vonage application's status URL).
    pub fn vonage_webhook(&self) -> String {
        format!("{}/webhooks/vonage/status", self.url())
    }

    /// What the SMS worker puts in `StatusCallback`.
    pub fn sms_status_callback(&self) -> String {
        format!("{}/webhooks/sms/status", self.url())
    }
}

impl Drop for ReceiptsIngress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The confirmation tracker in this process; [`Tracker::stop`] is what SIGTERM does.
pub struct Tracker {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Tracker {
    pub fn start(
        kafka: &KafkaArgs,
        config: otp_receipts::tracker::TrackerConfig,
        hasher: PhoneHasher,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(otp_receipts::tracker::run(
            kafka.clone(),
            config,
            hasher,
            async move {
                let _ = stopped.changed().await;
            },
        ));
        Self { stop, task }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}
