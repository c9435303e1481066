//! A simulator of the provider APIs the workers call: WhatsApp Cloud API messages, Twilio's
//! Messages API and Vonage's Messages API (SMS), on one port.
//!
//! It checks each request against the documented shape and answers in the provider's own
//! error format, with the HTTP status the provider documents for each code (see [`errors`]);
//! it enforces the providers' rate limits itself the way each does it (Meta refuses, Twilio
//! queues: see [`queue`]) and counts every violation, which our workers should never cause;
//! it adds latency and random errors on demand; and it behaves deterministically by phone
//! number so tests can stage recipients (see [`behaviour`]). `GET /sim/messages` and
//! `GET /sim/stats` show what it received; `POST /sim/whatsapp/system-errors` makes it send a
//! system-level WhatsApp error webhook; `POST /sim/outages` stages an SMS provider's outage,
//! everywhere or for one destination country (`DELETE /sim/outages` heals them all). It stands in for the user's handset, so it does record
//! phone numbers and codes (and never logs them).

mod apis;
pub mod behaviour;
mod config;
pub mod errors;
mod queue;
mod vonage;
mod webhooks;

/// `Bearer <JWT>` over a webhook body as Vonage signs it (HS256, `payload_hash`, `iat`),
/// written by hand: tests sign with it independently of the ingress's JWT library.
pub use vonage::bearer as vonage_bearer;

/// The Vonage credentials the simulator accepts and signs with, unless configured otherwise.
pub const VONAGE_API_KEY: &str = "sim-vonage-key";
pub const VONAGE_API_SECRET: &str = "sim-vonage-secret";
pub const VONAGE_SIGNATURE_SECRET: &str = "sim-vonage-signature-secret";

/// How a staged outage answers every call it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outage {
    /// The provider's error with this code, in its format and with its HTTP status.
    Code(i64),
    /// A bare HTTP status (503: the service is down).
    Http(u16),
}

/// `POST /sim/outages`: `{"provider":"twilio","country":"US","outage":{"code":21408}}`;
/// without `country`, every destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedOutage {
    /// `twilio` or `vonage`.
    pub provider: String,
    #[serde(default)]
    pub country: Option<String>,
    pub outage: Outage,
}

pub use config::SimConfig;

use axum::routing::{get, post};
use axum::{Json, Router};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One request the simulator received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Received {
    pub api: String,
    pub to: String,
    pub code: String,
    pub request_id: Option<String>,
    /// When the request arrived (before the simulated latency), ms since the Unix epoch.
    pub received_at_ms: i64,
    /// `accepted`, or the provider error code it answered. Decided, and recorded, when the
    /// request arrives: the simulated latency only delays the answer, so a client that gives
    /// up during it still finds its call here, with the outcome the provider acted on (an
    /// accepted message is sent and reported even if its answer was never read, as with a
    /// real provider). Answers the client never took are counted in [`Stats::abandoned`].
    pub outcome: String,
    pub provider_message_id: Option<String>,
    /// The WhatsApp template language asked for.
    #[serde(default)]
    pub language: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub received: u64,
    pub accepted: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Requests that broke a provider limit: `whatsapp_sender` (130429), `whatsapp_pair`
    /// (131056), `sms_sender` (over the sender's rate: queued, or refused with 21611 when the
    /// queue was full), `sms_concurrent` (429 / 20429, too many requests in progress).
    pub rate_limit_violations: BTreeMap<String, u64>,
    /// Most provider requests ever in progress at once (back-pressure checks).
    pub max_concurrent_requests: u64,
    /// Webhooks of both providers by outcome: `attempts` (HTTP calls made), `delivered`
    /// (accepted by the receiver), `retried`, `given_up` (the provider stopped trying),
    /// `lost`.
    pub webhooks: BTreeMap<String, u64>,
    /// The same outcomes per provider: `whatsapp` and `sms`.
    #[serde(default)]
    pub webhooks_by_api: BTreeMap<String, BTreeMap<String, u64>>,
    /// API calls whose answer was never taken: the client went away during the latency.
    #[serde(default)]
    pub abandoned: u64,
    /// How long the receivers took to answer the webhook calls (both providers, every try
    /// that got an answer), µs: the receipts ingress's answer times as a provider sees them.
    #[serde(default)]
    pub webhook_answer_us: Option<Quantiles>,
}

/// Percentiles of a set of values (durations here; `otp load` reports its own with it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Quantiles {
    /// None when `h` is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        })
    }
}

/// The longest webhook answer time recorded (an hour, in µs); longer ones count as this.
const LONGEST_ANSWER_US: u64 = 3_600_000_000;

pub(crate) struct Sim {
    pub config: SimConfig,
    pub messages: Mutex<Vec<Received>>,
    pub stats: Mutex<Stats>,
    pub wa_sender: DefaultDirectRateLimiter,
    pub wa_pair: DefaultKeyedRateLimiter<String>,
    pub sms_queue: queue::SenderQueue,
    /// SMS API requests in progress (Twilio's concurrency limit, 20429).
    pub sms_in_progress: AtomicU64,
    /// Calls seen per (api, phone), for behaviours like "fail twice, then succeed".
    pub calls: Mutex<HashMap<(&'static str, String), u32>>,
    pub next_id: AtomicU64,
    pub in_progress: AtomicU64,
    /// When set, every WhatsApp send gets this code: a broken channel.
    pub whatsapp_outage: Mutex<Option<i64>>,
    /// SMS providers' outages by (provider, country; `None` for every destination).
    pub outages: Mutex<HashMap<(String, Option<String>), Outage>>,
    /// How long after acceptance a provider reports `delivered`, by (provider, country;
    /// `None` for every destination), instead of `receipt_delay`: a slow route.
    pub receipt_delays: Mutex<HashMap<(String, Option<String>), std::time::Duration>>,
    /// Vonage's throughput (429, 1000 over it).
    pub vonage_sender: DefaultDirectRateLimiter,
    pub webhook_client: reqwest::Client,
    /// Webhook answer times, µs (bounded: a histogram, not a list).
    pub webhook_answers: Mutex<Histogram<u64>>,
    /// Messages (and system errors) whose webhooks are not all sent yet.
    pub webhooks_pending: tokio::sync::watch::Sender<u64>,
}

/// Counts a provider request in progress for as long as it lives.
pub(crate) struct InProgress<'a>(&'a Sim);

impl<'a> InProgress<'a> {
    pub(crate) fn new(sim: &'a Sim) -> Self {
        let now = sim.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
        let mut stats = sim.stats.lock().expect("stats lock");
        stats.max_concurrent_requests = stats.max_concurrent_requests.max(now);
        Self(sim)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}

impl Sim {
    fn new(config: SimConfig) -> Self {
        let wa = Quota::per_second(nonzero(config.whatsapp_rate))
            .allow_burst(nonzero(config.whatsapp_burst));
        // A second's worth at once: Vonage documents a rate per second, not a burst.
        let vonage =
            Quota::per_second(nonzero(config.vonage_rate)).allow_burst(nonzero(config.vonage_rate));
        let pair = Quota::with_period(config.whatsapp_pair_period)
            .expect("pair period is non-zero")
            .allow_burst(nonzero(1));
        Self {
            wa_sender: governor::RateLimiter::direct(wa),
            wa_pair: governor::RateLimiter::keyed(pair),
            sms_queue: queue::SenderQueue::new(
                config.sms_rate,
                config.sms_burst,
                config.effective_sms_queue_capacity(),
            ),
            sms_in_progress: AtomicU64::new(0),
            config,
            messages: Mutex::default(),
            stats: Mutex::default(),
            calls: Mutex::default(),
            next_id: AtomicU64::new(1),
            in_progress: AtomicU64::new(0),
            whatsapp_outage: Mutex::new(None),
            outages: Mutex::default(),
            receipt_delays: Mutex::default(),
            vonage_sender: governor::RateLimiter::direct(vonage),
            // Each webhook call sets its own total timeout (see `webhooks`).
            webhook_client: reqwest::Client::builder()
                .connect_timeout(webhooks::CONNECT_TIMEOUT)
                .build()
                .expect("an HTTP client"),
            webhooks_pending: tokio::sync::watch::channel(0).0,
            // 1 µs to an hour, three significant digits: a fixed size (about 190 KB).
            webhook_answers: Mutex::new(
                Histogram::new_with_bounds(1, LONGEST_ANSWER_US, 3).expect("valid bounds"),
            ),
        }
    }

    /// One webhook call answered after `took`.
    pub(crate) fn webhook_answered(&self, took: std::time::Duration) {
        let us = (took.as_micros() as u64).clamp(1, LONGEST_ANSWER_US);
        let _ = self
            .webhook_answers
            .lock()
            .expect("answers lock")
            .record(us);
    }

    /// The stats so far, with the answer times' percentiles.
    fn stats(&self) -> Stats {
        let mut stats = self.stats.lock().expect("stats lock").clone();
        stats.webhook_answer_us =
            Quantiles::of(&self.webhook_answers.lock().expect("answers lock"));
        stats
    }

    pub(crate) fn record(&self, received: Received) {
        let mut stats = self.stats.lock().expect("stats lock");
        stats.received += 1;
        if received.outcome == "accepted" {
            stats.accepted += 1;
        } else {
            *stats
                .errors_by_code
                .entry(received.outcome.clone())
                .or_default() += 1;
        }
        drop(stats);
        self.messages.lock().expect("messages lock").push(received);
    }

    pub(crate) fn webhook_outcome(&self, api: &str, outcome: &str) {
        let mut stats = self.stats.lock().expect("stats lock");
        *stats.webhooks.entry(outcome.to_string()).or_default() += 1;
        *stats
            .webhooks_by_api
            .entry(api.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    pub(crate) fn abandoned(&self) {
        self.stats.lock().expect("stats lock").abandoned += 1;
    }

    pub(crate) fn violation(&self, limit: &str) {
        let mut stats = self.stats.lock().expect("stats lock");
        *stats
            .rate_limit_violations
            .entry(limit.to_string())
            .or_default() += 1;
    }

    /// How many times (api, phone) was called, this call included.
    pub(crate) fn call_number(&self, api: &'static str, phone: &str) -> u32 {
        let mut calls = self.calls.lock().expect("calls lock");
        let n = calls.entry((api, phone.to_string())).or_default();
        *n += 1;
        *n
    }

    /// The outage that answers a call of `provider` to `to` (E.164 digits), if one is staged:
    /// the destination country's, else the provider's everywhere.
    pub(crate) fn outage(&self, provider: &str, to_digits: &str) -> Option<Outage> {
        let outages = self.outages.lock().expect("outages lock");
        if outages.is_empty() {
            return None;
        }
        let country = otp_events::country_of(&format!("+{to_digits}"));
        outages
            .get(&(provider.to_string(), country))
            .or_else(|| outages.get(&(provider.to_string(), None)))
            .copied()
    }

    /// The `delivered` delay staged for `provider` to `to` (E.164 digits), if any: the
    /// destination country's, else the provider's everywhere.
    pub(crate) fn receipt_delay_for(
        &self,
        provider: &str,
        to_digits: &str,
    ) -> Option<std::time::Duration> {
        let delays = self.receipt_delays.lock().expect("delays lock");
        if delays.is_empty() {
            return None;
        }
        let country = otp_events::country_of(&format!("+{to_digits}"));
        delays
            .get(&(provider.to_string(), country))
            .or_else(|| delays.get(&(provider.to_string(), None)))
            .copied()
    }

    pub(crate) fn message_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The simulator's routes.
pub fn router(config: SimConfig) -> Router {
    routes(Arc::new(Sim::new(config)))
}

fn routes(sim: Arc<Sim>) -> Router {
    Router::new()
        .route(
            "/{version}/{phone_number_id}/messages",
            post(apis::whatsapp),
        )
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(apis::sms))
        .route("/v1/messages", post(vonage::messages))
        .route("/sim/outages", post(stage_outage).delete(heal_outages))
        .route("/sim/receipt-delays", post(stage_receipt_delay))
        .route("/sim/messages", get(messages))
        .route("/sim/stats", get(stats))
        .route("/sim/whatsapp/system-errors", post(system_error))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(sim)
}

async fn messages(
    axum::extract::State(sim): axum::extract::State<Arc<Sim>>,
) -> Json<Vec<Received>> {
    Json(sim.messages.lock().expect("messages lock").clone())
}

async fn stats(axum::extract::State(sim): axum::extract::State<Arc<Sim>>) -> Json<Stats> {
    Json(sim.stats())
}

/// Outages, or receipt delays, staged at once at most (507 past it).
const MAX_STAGED: usize = 1_000;

/// `POST /sim/outages`: stage one outage (see [`StagedOutage`]).
async fn stage_outage(
    axum::extract::State(sim): axum::extract::State<Arc<Sim>>,
    Json(staged): Json<StagedOutage>,
) -> axum::http::StatusCode {
    let mut outages = sim.outages.lock().expect("outages lock");
    let key = (staged.provider, staged.country);
    if outages.len() >= MAX_STAGED && !outages.contains_key(&key) {
        return axum::http::StatusCode::INSUFFICIENT_STORAGE;
    }
    outages.insert(key, staged.outage);
    axum::http::StatusCode::NO_CONTENT
}

/// `POST /sim/receipt-delays`: `{"provider":"twilio","country":"DE","delay_ms":20000}` makes
/// that provider's `delivered` come that long after acceptance there (every country without
/// `country`); `"delay_ms":null` ends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedReceiptDelay {
    /// `twilio`, `vonage` or `whatsapp_cloud`.
    pub provider: String,
    #[serde(default)]
    pub country: Option<String>,
    pub delay_ms: Option<u64>,
}

async fn stage_receipt_delay(
    axum::extract::State(sim): axum::extract::State<Arc<Sim>>,
    Json(staged): Json<StagedReceiptDelay>,
) -> axum::http::StatusCode {
    let key = (staged.provider, staged.country);
    let mut delays = sim.receipt_delays.lock().expect("delays lock");
    match staged.delay_ms {
        Some(_) if delays.len() >= MAX_STAGED && !delays.contains_key(&key) => {
            return axum::http::StatusCode::INSUFFICIENT_STORAGE;
        }
        Some(ms) => {
            delays.insert(key, std::time::Duration::from_millis(ms));
        }
        None => {
            delays.remove(&key);
        }
    }
    axum::http::StatusCode::NO_CONTENT
}

/// `DELETE /sim/outages`: heal every staged SMS outage.
async fn heal_outages(
    axum::extract::State(sim): axum::extract::State<Arc<Sim>>,
) -> axum::http::StatusCode {
    sim.outages.lock().expect("outages lock").clear();
    axum::http::StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct SystemError {
    code: i64,
}

/// `POST /sim/whatsapp/system-errors` `{"code":131031}`: send one system-level error webhook.
async fn system_error(
    axum::extract::State(sim): axum::extract::State<Arc<Sim>>,
    Json(body): Json<SystemError>,
) -> axum::http::StatusCode {
    if webhooks::system_error(&sim, body.code) {
        axum::http::StatusCode::ACCEPTED
    } else {
        // Nowhere to send it: no --whatsapp-webhook-url.
        axum::http::StatusCode::CONFLICT
    }
}

/// A simulator running in this process (tests, demo); stops when dropped.
///
/// It runs on a runtime and thread of its own, as a provider runs on machines of its own: a
/// stall in the code under test (a blocked runtime thread, a slow poll) must not stall the
/// provider's clock too, or its rate limits would count as a burst what the stall held back.
pub struct SimHandle {
    pub addr: SocketAddr,
    sim: Arc<Sim>,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.sim.messages.lock().expect("messages lock").clone()
    }

    /// Break (`Some((401, 190))`: token expired) or heal (`None`) the WhatsApp API. Every send
    /// is answered with the code and the HTTP status Meta documents for it
    /// ([`errors::whatsapp_http_status`]); the status given here is only checked against it.
    pub fn set_whatsapp_outage(&self, outage: Option<(u16, i64)>) {
        if let Some((http, code)) = outage {
            let documented = errors::whatsapp_http_status(code);
            if http != documented {
                tracing::warn!(
                    code,
                    asked = http,
                    documented,
                    "outage status differs from Meta's for the code; answering with Meta's"
                );
            }
        }
        *self.sim.whatsapp_outage.lock().expect("outage lock") = outage.map(|(_, code)| code);
    }

    /// Send one system-level error webhook (`entry[].changes[].value.errors[]`, Meta, "Errors
    /// messages webhooks reference") with this code to the WhatsApp webhook URL, signed like
    /// the others. False when no `whatsapp_webhook_url` is configured.
    pub fn whatsapp_system_error(&self, code: i64) -> bool {
        // The webhook is posted from the simulator's runtime.
        let _on_sim = self.runtime.enter();
        webhooks::system_error(&self.sim, code)
    }

    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    /// Stage an SMS provider's outage (`provider` `twilio` or `vonage`), for one destination
    /// country or (`None`) every one; [`SimHandle::heal_outages`] ends them.
    pub fn set_outage(&self, provider: &str, country: Option<&str>, outage: Outage) {
        self.sim
            .outages
            .lock()
            .expect("outages lock")
            .insert((provider.to_string(), country.map(str::to_owned)), outage);
    }

    /// Make `provider`'s (`twilio`, `vonage`, `whatsapp_cloud`) `delivered` status come
    /// `delay` after acceptance, for one destination country or (`None`) every one; `None`
    /// delay ends it.
    pub fn set_receipt_delay(
        &self,
        provider: &str,
        country: Option<&str>,
        delay: Option<std::time::Duration>,
    ) {
        let key = (provider.to_string(), country.map(str::to_owned));
        let mut delays = self.sim.receipt_delays.lock().expect("delays lock");
        match delay {
            Some(d) => {
                delays.insert(key, d);
            }
            None => {
                delays.remove(&key);
            }
        }
    }

    /// End every staged SMS outage.
    pub fn heal_outages(&self) {
        self.sim.outages.lock().expect("outages lock").clear();
    }

    /// Wait until every webhook planned so far has been sent, given up or lost (at most
    /// `within`); false when some are still pending then.
    pub async fn webhooks_sent(&self, within: std::time::Duration) -> bool {
        let mut pending = self.sim.webhooks_pending.subscribe();
        let sent = tokio::time::timeout(within, pending.wait_for(|n| *n == 0))
            .await
            .is_ok();
        sent
    }

    /// The languages the simulated authentication template is approved in.
    pub fn template_languages(&self) -> &[String] {
        &self.sim.config.whatsapp_template_languages
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // Its thread then drops the runtime, which cancels every request and webhook in flight;
        // waiting for it means the port is closed when the handle is gone.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Start a simulator on `listen` (use port 0 for a free one), on a thread of its own.
pub async fn start(listen: SocketAddr, config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim::new(config));
    let app = routes(sim.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("provider-sim")
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::select! {
            served = axum::serve(listener, app) => served,
            _ = stopped => Ok(()),
        }
    };
    let thread = std::thread::Builder::new()
        .name("provider-sim".into())
        .spawn(move || {
            if let Err(e) = runtime.block_on(serve) {
                tracing::error!(error = %e, "provider simulator stopped");
            }
        })?;
    Ok(SimHandle {
        addr,
        sim,
        runtime: handle,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The `otp-provider-sim` command (also `otp sim`): serve the APIs until Ctrl-C (SIGINT).
#[derive(Debug, clap::Args)]
pub struct SimCli {
    #[command(flatten)]
    pub config: SimConfig,
    /// Check the settings and exit, without listening.
    #[arg(long)]
    pub check_config: bool,
}

impl SimCli {
    pub async fn run(self) -> anyhow::Result<()> {
        if self.check_config {
            println!("otp-provider-sim: configuration ok");
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.config.listen).await?;
        tracing::info!(listen = %listener.local_addr()?, "provider simulator listening");
        axum::serve(listener, router(self.config))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    }
}
