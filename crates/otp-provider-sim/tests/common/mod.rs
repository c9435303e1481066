//! What the simulator's integration tests share: a tiny webhook receiver whose calls the test
//! awaits through a channel, and the two sends as our channel clients make them.

#![allow(dead_code)] // each test file uses part of it

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use otp_provider_sim::{SimConfig, SimHandle};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Long enough for anything the tests wait for; a failing test fails instead of hanging.
pub const WITHIN: Duration = Duration::from_secs(10);

/// One webhook call the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Hook {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON webhook")
    }

    pub fn form(&self) -> HashMap<String, String> {
        serde_urlencoded::from_bytes(&self.body).expect("a form webhook")
    }

    pub fn form_pairs(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(&self.body).expect("a form webhook")
    }
}

/// A webhook receiver on loopback: answers its first calls with the given statuses, then 200,
/// and hands every call to the test.
pub struct Receiver {
    pub base: String,
    pub rx: mpsc::UnboundedReceiver<Hook>,
    task: tokio::task::JoinHandle<()>,
}

type ReceiverState = Arc<(Mutex<VecDeque<u16>>, mpsc::UnboundedSender<Hook>)>;

async fn receive(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = state.0.lock().unwrap().pop_front().unwrap_or(200);
    let _ = state.1.send(Hook {
        uri: uri.to_string(),
        headers,
        body,
    });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start(first_answers: &[u16]) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state: ReceiverState =
            Arc::new((Mutex::new(first_answers.iter().copied().collect()), tx));
        let app = Router::new().fallback(any(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, rx, task }
    }

    /// The next call, or a panic after [`WITHIN`].
    pub async fn next(&mut self) -> Hook {
        tokio::time::timeout(WITHIN, self.rx.recv())
            .await
            .expect("a webhook within the time limit")
            .expect("the receiver is running")
    }

    /// Whether another call comes within `d` (for "nothing more arrives" checks, used only
    /// after the simulator's own stats say it has stopped sending).
    pub async fn another_within(&mut self, d: Duration) -> Option<Hook> {
        tokio::time::timeout(d, self.rx.recv()).await.ok().flatten()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A simulator with fast receipts and roomy limits, tweaked by the test.
pub async fn sim(tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut config = SimConfig {
        whatsapp_rate: 10_000,
        whatsapp_burst: 10_000,
        sms_rate: 10_000,
        sms_burst: 10_000,
        receipt_delay: Duration::from_millis(50),
        receipt_failure_delay: Duration::from_millis(50),
        ..SimConfig::default()
    };
    tweak(&mut config);
    otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// An authentication-template send as the WhatsApp client makes it: (HTTP status, body).
pub async fn whatsapp_send(sim: &SimHandle, to_digits: &str, request_id: &str) -> (u16, Value) {
    let body = json!({
        "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": to_digits, "type": "template",
        "biz_opaque_callback_data": request_id,
        "template": { "name": "otp", "language": { "code": "en_US" },
            "components": [
                { "type": "body", "parameters": [ { "type": "text", "text": "123456" } ] },
                { "type": "button", "sub_type": "url", "index": "0",
                  "parameters": [ { "type": "text", "text": "123456" } ] } ] }
    });
    let r = client()
        .post(format!("{}/v21.0/1055500000/messages", sim.base_url()))
        .bearer_auth("sim-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// How the SMS names its sender.
#[derive(Clone, Copy)]
pub enum Sender {
    From,
    MessagingService,
}

/// A Twilio Messages API send: (HTTP status, body).
pub async fn sms_send(
    sim: &SimHandle,
    to: &str,
    sender: Sender,
    callback: Option<&str>,
) -> (u16, Value) {
    sms_send_valid_for(sim, to, sender, callback, 300).await
}

/// [`sms_send`] with this `ValidityPeriod` (seconds).
pub async fn sms_send_valid_for(
    sim: &SimHandle,
    to: &str,
    sender: Sender,
    callback: Option<&str>,
    validity: u32,
) -> (u16, Value) {
    let mut form = vec![
        ("To", to.to_string()),
        ("Body", "123456 is your code".to_string()),
        ("ValidityPeriod", validity.to_string()),
    ];
    match sender {
        Sender::From => form.push(("From", "+15557654321".to_string())),
        Sender::MessagingService => form.push(("MessagingServiceSid", "MGsim".to_string())),
    }
    if let Some(cb) = callback {
        form.push(("StatusCallback", cb.to_string()));
    }
    let auth = base64::engine::general_purpose::STANDARD.encode("ACsim:sim-auth-token");
    let r = client()
        .post(format!(
            "{}/2010-04-01/Accounts/ACsim/Messages.json",
            sim.base_url()
        ))
        .header("authorization", format!("Basic {auth}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Poll the simulator's stats until `ready` holds (the stats are a counter, not an event).
pub async fn stats_until(
    sim: &SimHandle,
    ready: impl Fn(&otp_provider_sim::Stats) -> bool,
) -> otp_provider_sim::Stats {
    tokio::time::timeout(WITHIN, async {
        loop {
            let stats = sim.stats();
            if ready(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stats never got there: {:?}", sim.stats()))
}

/// A provider's webhook outcome count.
pub fn hooks(stats: &otp_provider_sim::Stats, api: &str, outcome: &str) -> u64 {
    stats
        .webhooks_by_api
        .get(api)
        .and_then(|m| m.get(outcome))
        .copied()
        .unwrap_or(0)
}
