//! Receipts end to end, on a real broker (tansu), the simulator over HTTP and the receipts
//! ingress over HTTP: webhooks drive fallbacks, delivered users get one code, forged webhooks
//! emit nothing, and a tracker killed mid-window still fires what was pending.

mod common;

use common::*;
use otp::stack::{sms_client_reporting_to, ReceiptsIngress, Tracker, Worker};
use otp_events::Channel::{Sms, Whatsapp};
use otp_events::PhoneHasher;
use otp_provider_sim::SimConfig;
use otp_receipts::tracker::TrackerConfig;
use otp_test_support::{
    collect_json_until, committed_past, message_count, read_messages, shared_broker, TestTopics,
};
use otp_worker::{ConfirmationConfig, WorkerConfig};
use rdkafka::Message;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(90);

/// The pipeline with receipts: topics, ingress, simulator posting webhooks to it.
struct Loop {
    stack: Stack,
    ingress: ReceiptsIngress,
}

async fn start(tweak: impl FnOnce(&mut SimConfig)) -> Loop {
    let t = TestTopics::create(shared_broker(), 2).await;
    let ingress = ReceiptsIngress::start(&t.kafka, PhoneHasher::new(HASH_KEY))
        .await
        .unwrap();
    let mut config = roomy_sim();
    config.whatsapp_webhook_url = Some(ingress.whatsapp_webhook());
    tweak(&mut config);
    let sim = otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let publisher = t.publisher(PhoneHasher::new(HASH_KEY));
    Loop {
        stack: Stack { t, sim, publisher },
        ingress,
    }
}

fn confirming(window: Duration) -> WorkerConfig {
    let mut c = test_config();
    c.confirmation = Some(ConfirmationConfig {
        window,
        fallback_time: Duration::from_secs(2),
        ..Default::default()
    });
    c
}

impl Loop {
    /// Both workers with confirmation on; the SMS one asks for status callbacks.
    fn workers(&self, window: Duration) -> Vec<Worker> {
        self.workers_with(confirming(window))
    }

    /// Both workers with `config`; the SMS one asks for status callbacks.
    fn workers_with(&self, config: WorkerConfig) -> Vec<Worker> {
        self.workers_each(config.clone(), config)
    }

    /// The WhatsApp worker with `whatsapp`, the SMS one (asking for status callbacks) with
    /// `sms`.
    fn workers_each(&self, whatsapp: WorkerConfig, sms: WorkerConfig) -> Vec<Worker> {
        let s = &self.stack;
        let client = sms_client_reporting_to(&s.sim, Some(self.ingress.sms_status_callback()));
        vec![
            s.worker(Whatsapp, whatsapp),
            Worker::start(
                &s.t.kafka,
                sms,
                open_limits(),
                PhoneHasher::new(HASH_KEY),
                client,
            ),
        ]
    }

    fn tracker(&self) -> Tracker {
        let mut config = tracker_config();
        config.group_id = self.tracker_group();
        Tracker::start(&self.stack.t.kafka, config, PhoneHasher::new(HASH_KEY))
    }

    fn tracker_group(&self) -> String {
        format!("{}tracker", self.stack.t.kafka.topic_prefix)
    }

    /// Statuses until `done` holds.
    async fn statuses_until(&self, done: impl Fn(&[Value]) -> bool + Send + 'static) -> Vec<Value> {
        let t = &self.stack.t;
        collect_json_until(&t.kafka.brokers, &t.topics.delivery_status(), WITHIN, done).await
    }
}

fn tracker_config() -> TrackerConfig {
    TrackerConfig {
        tick: Duration::from_millis(50),
        ..TrackerConfig::default()
    }
}

/// Whether `id` has a status `kind` on `channel`.
fn has(statuses: &[Value], id: &str, kind: &str, channel: &str) -> bool {
    statuses
        .iter()
        .any(|s| s["request_id"] == id && s["status"] == kind && s["channel"] == channel)
}

fn the(statuses: &[Value], id: &str, kind: &str, channel: &str) -> Value {
    let found = distinct_events(statuses, |s| {
        s["request_id"] == id && s["status"] == kind && s["channel"] == channel
    });
    assert_eq!(
        found.len(),
        1,
        "{id}: one {kind} on {channel} in {statuses:#?}"
    );
    found[0].clone()
}

fn sends_to(l: &Loop, phone: &str) -> Vec<otp_provider_sim::Received> {
    l.stack
        .sim
        .messages()
        .into_iter()
        .filter(|m| m.to == phone && m.outcome == "accepted")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reported_only_by_webhook_sends_the_code_by_sms() {
    let l = start(|_| {}).await;
    let workers = l.workers(Duration::from_secs(30));
    let tracker = l.tracker();
    // Accepted, then `failed` 131026 by webhook after 2 s, without biz_opaque_callback_data
    // (Meta documents it only on sent, delivered and read): the tracker finds the request by
    // the message id, and falls back at once rather than after the 30 s window.
    let phone = "+15551232026";
    let id = l.stack.publish(phone, "640213", &[Whatsapp, Sms]).await;

    let wait = id.clone();
    let statuses = l
        .statuses_until(move |got| has(got, &wait, "delivered", "sms"))
        .await;
    let accepted = the(&statuses, &id, "accepted", "whatsapp");
    assert_eq!(accepted["final"], false, "a fallback is still possible");
    let fallback = the(&statuses, &id, "fallback", "whatsapp");
    assert_eq!(fallback["error"]["code"], "receipt_failed");
    assert_eq!(fallback["error"]["category"], "recipient");
    assert!(fallback["error"]["message"]
        .as_str()
        .unwrap()
        .contains("131026"));
    assert_eq!(fallback["next_channel"], "sms");
    let sent = exactly_one_final(&statuses, &id);
    assert_eq!(
        (sent["status"].as_str(), sent["channel"].as_str()),
        (Some("sent"), Some("sms"))
    );
    assert_eq!(sent["attempt"], 2);
    assert_eq!(the(&statuses, &id, "delivered", "sms")["final"], false);

    let sends = sends_to(&l, phone);
    let apis: Vec<&str> = sends.iter().map(|m| m.api.as_str()).collect();
    assert_eq!(apis, ["whatsapp", "sms"], "one WhatsApp send, then one SMS");
    let expires = chrono::Utc::now().timestamp_millis() + 4 * 60 * 1000;
    assert!(
        sends[1].received_at_ms < expires,
        "the SMS went before the code expired"
    );
    let wa_at = sends[0].received_at_ms;
    println!(
        "failure by webhook (reported 2 s after acceptance): SMS sent {} ms after the WhatsApp send",
        sends[1].received_at_ms - wa_at
    );
    assert!(
        sends[1].received_at_ms - wa_at >= 1_900,
        "the fallback waited for the webhook (2 s), not for the window (30 s): {} ms",
        sends[1].received_at_ms - wa_at
    );
    assert!(sends[1].received_at_ms - wa_at < 20_000);
    assert_valid_and_private(&statuses, &[phone, "640213"]);
    assert_receipts_private(&l, &[phone]).await;
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_whatsapp_user_gets_the_code_by_sms_after_the_window() {
    let l = start(|_| {}).await;
    let workers = l.workers(Duration::from_secs(3));
    let tracker = l.tracker();
    let phone = "+15551230404"; // accepted, `sent`, never delivered
    let id = l.stack.publish(phone, "118822", &[Whatsapp, Sms]).await;

    let wait = id.clone();
    let statuses = l
        .statuses_until(move |got| {
            got.iter()
                .any(|s| s["request_id"] == wait && s["final"] == true)
        })
        .await;
    let fallback = the(&statuses, &id, "fallback", "whatsapp");
    assert_eq!(fallback["error"]["code"], "receipt_timeout");
    let accepted = the(&statuses, &id, "accepted", "whatsapp");
    let waited =
        fallback["latency_ms"].as_u64().unwrap() - accepted["latency_ms"].as_u64().unwrap();
    assert!(
        (2_900..15_000).contains(&waited),
        "fell back {waited} ms after acceptance (window 3 s)"
    );
    let sent = exactly_one_final(&statuses, &id);
    assert_eq!(
        (sent["status"].as_str(), sent["channel"].as_str()),
        (Some("sent"), Some("sms"))
    );
    assert_eq!(sends_to(&l, phone).len(), 2);
    assert_valid_and_private(&statuses, &[phone, "118822"]);
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// Every metric the Grafana dashboard queries is on a running pipeline's `/metrics`, read over
/// HTTP: the workers (one serving the endpoint), the receipts ingress and the tracker of a run
/// with a delivery, a fallback by receipt timeout, a fallback by a failed receipt that also
/// signals a broken channel, a fallback on a send error, and a dead letter. (All in one process, so one recorder holds
/// them all, as Prometheus would across the services it scrapes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_on_a_live_metrics_endpoint() {
    // Served by the HTTP ingress, which this pipeline does not run (its test renders them:
    // crates/otp-producer/tests/ingress_auth.rs), and a series per provider code that appears
    // when a code not in the tables is first met.
    const NOT_HERE: [&str; 2] = [
        "otp_ingress_requests_total",
        "otp_unknown_provider_codes_total",
    ];
    let l = start(|_| {}).await;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let config = confirming(Duration::from_secs(3));
    let mut serving = config.clone();
    serving.metrics_listen = Some(listen);
    let s = &l.stack;
    let workers = l.workers_each(serving, config);
    let tracker = l.tracker();
    let delivered = s.publish("+15551250777", "410001", &[Whatsapp, Sms]).await;
    let silent = s.publish("+15551250404", "410002", &[Whatsapp, Sms]).await;
    let locked = s.publish("+15551251031", "410003", &[Whatsapp, Sms]).await;
    let not_on_whatsapp = s.publish("+15551250026", "410004", &[Whatsapp, Sms]).await;
    let topic = s.t.topics.requests(Whatsapp);
    s.t.publish_raw(&topic, "k", b"{not a code request").await;
    let (a, b, c, d) = (delivered, silent, locked, not_on_whatsapp);
    l.statuses_until(move |got| {
        has(got, &a, "delivered", "whatsapp")
            && [&b, &c, &d].iter().all(|id| has(got, id, "sent", "sms"))
    })
    .await;
    let wanted = common::dashboard::dashboard_metric_names();
    let url = format!("http://{listen}/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let live: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !live.contains(n.as_str()) && !NOT_HERE.contains(&n.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        // Lag and the oldest message's age are exported every few seconds, not at once.
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard queries metrics that a running pipeline does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_user_gets_exactly_one_code() {
    let l = start(|_| {}).await;
    let workers = l.workers(Duration::from_secs(4));
    let tracker = l.tracker();
    let delivered = "+15551230777"; // delivered after 1 s, read after 2 s
    let silent = "+15551240404";
    let id = l.stack.publish(delivered, "300111", &[Whatsapp, Sms]).await;
    // Published after it with the same window, its fallback proves the first's window passed.
    let later = l.stack.publish(silent, "300222", &[Whatsapp, Sms]).await;

    let (a, b) = (id.clone(), later.clone());
    let statuses = l
        .statuses_until(move |got| has(got, &b, "sent", "sms") && has(got, &a, "read", "whatsapp"))
        .await;
    let story: Vec<(String, bool)> = statuses
        .iter()
        .filter(|s| s["request_id"] == id.as_str())
        .map(|s| {
            (
                s["status"].as_str().unwrap().to_string(),
                s["final"] == true,
            )
        })
        .collect();
    assert!(
        story.contains(&("delivered".to_string(), true)),
        "{story:?}"
    );
    assert!(story.contains(&("read".to_string(), false)), "{story:?}");
    assert!(!story.iter().any(|(s, _)| s == "fallback"), "{story:?}");
    exactly_one_final(&statuses, &id);
    let sends = sends_to(&l, delivered);
    assert_eq!(sends.len(), 1, "one code only: {sends:?}");
    assert_valid_and_private(&statuses, &[delivered, "300111", silent, "300222"]);
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_receipts_are_reported_once() {
    let l = start(|c| {
        c.receipt_duplication = 1.0;
        c.receipt_reorder = 1.0;
    })
    .await;
    let workers = l.workers(Duration::from_secs(20));
    let tracker = l.tracker();
    let phone = "+15551250777"; // sent, delivered, read: all in one call, newest first, twice
    let id = l.stack.publish(phone, "424242", &[Whatsapp, Sms]).await;

    let wait = id.clone();
    let statuses = l
        .statuses_until(move |got| {
            has(got, &wait, "read", "whatsapp") && has(got, &wait, "delivered", "whatsapp")
        })
        .await;
    // The duplicate call follows the first at once: the ingress answers it `replayed` and
    // writes nothing (it remembers the calls it took), so each receipt is written once,
    // unless the first call was not acknowledged in time and was sent again. Wait until the
    // tracker has committed past them: it commits a receipt only once applied, so the
    // statuses read after that include whatever the copies caused.
    let t = &l.stack.t;
    let receipts_topic = t.topics.delivery_receipts();
    let copies: Vec<(i32, i64)> = read_messages(&t.kafka.brokers, &receipts_topic, 3, WITHIN)
        .await
        .iter()
        .filter(|m| otp_test_support::payload_json(m)["request_id"] == id.as_str())
        .map(|m| (m.partition(), m.offset()))
        .collect();
    assert!(
        copies.len() >= 3,
        "sent, delivered and read, each at least once: {copies:?}"
    );
    let (partition, last) = *copies.iter().max_by_key(|(_, o)| *o).unwrap();
    assert!(
        committed_past(
            &t.kafka.brokers,
            &l.tracker_group(),
            &receipts_topic,
            partition,
            last,
            WITHIN
        )
        .await,
        "the tracker applied every copy"
    );
    let wait = id.clone();
    let statuses_after = l
        .statuses_until(move |got| {
            ["read", "delivered", "sent"]
                .iter()
                .all(|kind| has(got, &wait, kind, "whatsapp"))
        })
        .await;
    for kind in ["read", "delivered", "sent"] {
        the(&statuses_after, &id, kind, "whatsapp");
    }
    let fin = exactly_one_final(&statuses_after, &id);
    assert_eq!(
        fin["status"], "read",
        "read came first and confirmed delivery"
    );
    assert!(!has(&statuses, &id, "fallback", "whatsapp"));
    assert_eq!(sends_to(&l, phone).len(), 1);
    assert!(
        l.stack
            .sim
            .stats()
            .webhooks
            .get("delivered")
            .copied()
            .unwrap_or(0)
            >= 2
    );
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}

async fn assert_receipts_private(l: &Loop, phones: &[&str]) {
    let t = &l.stack.t;
    let receipts = otp_test_support::read_messages(
        &t.kafka.brokers,
        &t.topics.delivery_receipts(),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert!(!receipts.is_empty(), "receipts were written");
    for m in &receipts {
        let text = otp_test_support::payload_json(m).to_string();
        for p in phones {
            assert!(
                !text.contains(p.trim_start_matches('+')),
                "receipt leaks a number: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_sent_while_the_ingress_is_down_arrive_by_the_providers_retries() {
    let t = TestTopics::create(shared_broker(), 2).await;
    // Where the ingress will be; nothing listens there yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = roomy_sim();
    config.whatsapp_webhook_url = Some(format!("http://{addr}/webhooks/whatsapp"));
    let sim = otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let publisher = t.publisher(PhoneHasher::new(HASH_KEY));
    let stack = Stack { t, sim, publisher };
    let worker = stack.worker(Whatsapp, confirming(Duration::from_secs(30)));
    let mut tracker_config = tracker_config();
    tracker_config.group_id = format!("{}tracker", stack.t.kafka.topic_prefix);
    let tracker = Tracker::start(&stack.t.kafka, tracker_config, PhoneHasher::new(HASH_KEY));
    let phone = "+15551270001";
    let id = stack.publish(phone, "737373", &[Whatsapp, Sms]).await;

    // The provider's first webhook finds no one, and is retried.
    while stack
        .sim
        .stats()
        .webhooks
        .get("retried")
        .copied()
        .unwrap_or(0)
        == 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ingress = ReceiptsIngress::start_at(&stack.t.kafka, addr, PhoneHasher::new(HASH_KEY))
        .await
        .unwrap();
    let wait = id.clone();
    let statuses = collect_json_until(
        &stack.t.kafka.brokers,
        &stack.t.topics.delivery_status(),
        WITHIN,
        move |got| has(got, &wait, "delivered", "whatsapp"),
    )
    .await;
    let fin = exactly_one_final(&statuses, &id);
    assert_eq!(fin["status"], "delivered");
    the(&statuses, &id, "sent", "whatsapp");
    assert!(!has(&statuses, &id, "fallback", "whatsapp"));
    let webhooks = stack.sim.stats().webhooks;
    assert_eq!(webhooks.get("given_up"), None, "{webhooks:?}");
    drop(ingress);
    tracker.stop().await.unwrap();
    worker.stop().await.unwrap();
}

// ------------------------------------------------------------------ signatures, over HTTP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_missing_and_altered_signatures_are_refused_and_emit_nothing() {
    use otp_events::signature::{meta_signature, twilio_signature};
    let t = TestTopics::create(shared_broker(), 1).await;
    let ingress = ReceiptsIngress::start(&t.kafka, PhoneHasher::new(HASH_KEY))
        .await
        .unwrap();
    let http = reqwest::Client::new();

    // Meta's handshake.
    let hub = |mode: &str, token: &str| {
        http.get(ingress.whatsapp_webhook()).query(&[
            ("hub.mode", mode),
            ("hub.verify_token", token),
            ("hub.challenge", "1158201444"),
        ])
    };
    let ok = hub("subscribe", "sim-verify-token").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_eq!(
        hub("subscribe", "guess").send().await.unwrap().status(),
        403
    );
    assert_eq!(
        hub("unsubscribe", "sim-verify-token")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // WhatsApp statuses.
    let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"W","changes":[{"field":"messages","value":{"statuses":[{"id":"wamid.X","status":"delivered","timestamp":"1750857384","recipient_id":"15551230001","biz_opaque_callback_data":"req-sig-1"}]}}]}]}"#;
    let altered = body.replace("delivered", "failed\",\"x\":\"");
    let wa = |body: String, signature: Option<String>| {
        let mut r = http.post(ingress.whatsapp_webhook()).body(body);
        if let Some(s) = signature {
            r = r.header("X-Hub-Signature-256", s);
        }
        r.send()
    };
    let good = meta_signature(b"sim-app-secret", body.as_bytes());
    let cases = [
        (body.to_string(), None, 401, "missing"),
        (
            body.to_string(),
            Some(meta_signature(b"not-the-secret", body.as_bytes())),
            403,
            "forged",
        ),
        (
            altered.clone(),
            Some(good.clone()),
            403,
            "replayed with an altered body",
        ),
        (
            body.to_string(),
            Some("sha256=zz".to_string()),
            403,
            "not hex",
        ),
        (body.to_string(), Some(good.clone()), 200, "authentic"),
    ];
    for (body, signature, expected, what) in cases {
        assert_eq!(
            wa(body, signature).await.unwrap().status(),
            expected,
            "{what}"
        );
    }
    let malformed = r#"{"object":"whatsapp_business_account","entry":"x"}"#;
    let signed = meta_signature(b"sim-app-secret", malformed.as_bytes());
    let answer = wa(malformed.to_string(), Some(signed)).await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer
        .text()
        .await
        .unwrap()
        .contains("entry: must be an array"));

    // Twilio status callbacks: the URL (with its request_id) and every parameter are signed.
    let url = format!("{}?request_id=req-sig-2", ingress.sms_status_callback());
    let form = vec![
        ("MessageSid".to_string(), "SM0001".to_string()),
        ("MessageStatus".to_string(), "delivered".to_string()),
        ("To".to_string(), "+15551230001".to_string()),
    ];
    let good = twilio_signature(b"sim-auth-token", &url, &form);
    let sms = |url: String, form: Vec<(String, String)>, signature: Option<String>| {
        let mut r = http.post(url).form(&form);
        if let Some(s) = signature {
            r = r.header("X-Twilio-Signature", s);
        }
        r.send()
    };
    let mut altered = form.clone();
    altered[1].1 = "undelivered".into();
    let other_request = format!("{}?request_id=req-sig-3", ingress.sms_status_callback());
    let cases = [
        (url.clone(), form.clone(), None, 401, "missing"),
        (
            url.clone(),
            form.clone(),
            Some(twilio_signature(b"guess", &url, &form)),
            403,
            "forged",
        ),
        (
            url.clone(),
            altered,
            Some(good.clone()),
            403,
            "altered parameter",
        ),
        (
            other_request,
            form.clone(),
            Some(good.clone()),
            403,
            "altered request_id",
        ),
        (
            url.clone(),
            form.clone(),
            Some(good.clone()),
            200,
            "authentic",
        ),
    ];
    for (url, form, signature, expected, what) in cases {
        assert_eq!(
            sms(url, form, signature).await.unwrap().status(),
            expected,
            "{what}"
        );
    }

    // Only the two authentic calls reached Kafka.
    let receipts = otp_test_support::read_messages(
        &t.kafka.brokers,
        &t.topics.delivery_receipts(),
        2,
        Duration::from_secs(10),
    )
    .await;
    let ids: Vec<String> = receipts
        .iter()
        .map(|m| {
            otp_test_support::payload_json(m)["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"req-sig-1".to_string()) && ids.contains(&"req-sig-2".to_string()));
    assert_eq!(
        message_count(&t.kafka.brokers, &t.topics.delivery_receipts()),
        2
    );
    // Metrics are not on the public listener (they have their own, --metrics-listen).
    let public = http
        .get(format!("{}/metrics", ingress.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let metrics = otp_kafka::observe::prometheus().render();
    assert!(metrics.contains("outcome=\"bad_signature\""), "{metrics}");
    assert!(metrics.contains("outcome=\"missing_signature\""));
}

// ------------------------------------------------------------------ a tracker crash

fn spawn_tracker(t: &TestTopics, log: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp"));
    cmd.args(["receipts", "track", "--tick", "50ms"])
        .args(["--brokers", &t.kafka.brokers])
        .args(["--topic-prefix", &t.kafka.topic_prefix])
        .args(["--group-id", &format!("{}tracker", t.kafka.topic_prefix)])
        // Static membership: the restarted tracker comes back under the killed one's name and
        // takes its partitions at once.
        .args(["--group-instance-id", "tracker-0"])
        .env("OTP_PHONE_HASH_KEY", std::str::from_utf8(HASH_KEY).unwrap())
        .env("OTP_SEAL_KEYS", otp_test_support::TEST_SEAL_KEYS)
        .env("OTP_FALLBACK_KEY", otp_test_support::TEST_FALLBACK_KEY)
        .env("OTP_RECORD_KEYS", otp_test_support::TEST_RECORD_KEYS)
        .env("RUST_LOG", "info")
        // tansu 0.6 refreshes a member's last contact only on a heartbeat, and holds a static
        // member's join and its sync 3 s each: the restarted tracker's first heartbeat comes
        // about 6 s after the killed one's last, which must be inside the session timeout.
        .env("OTP_KAFKA__SESSION_TIMEOUT_MS", "10000")
        .env("OTP_KAFKA__HEARTBEAT_INTERVAL_MS", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    otp_test_support::spawn_kept(cmd).expect("start otp receipts track")
}

/// A request's outcome when a process was killed: the contract lets a crash write a final
/// status again, as a new event (the tracker acted, and was killed before its record of it was
/// durable). Every final must then say the same outcome; the first is the one analysts keep.
fn one_outcome_across_a_crash<'a>(statuses: &'a [Value], id: &str) -> &'a Value {
    let finals: Vec<&Value> = statuses
        .iter()
        .filter(|s| s["request_id"] == id && s["final"] == true)
        .collect();
    let first = finals
        .iter()
        .min_by_key(|s| s["occurred_at"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("request {id} has no final status"));
    for f in &finals {
        assert_eq!(
            (&f["status"], &f["channel"], &f["attempt"]),
            (&first["status"], &first["channel"], &first["attempt"]),
            "request {id}: finals that disagree: {finals:?}"
        );
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_mid_window_still_fires_the_pending_fallbacks() {
    let l = start(|_| {}).await;
    // Long enough for the first tracker to join (tansu holds a static member's join and
    // sync 3 s each) and be killed before any window ends.
    let workers = l.workers(Duration::from_secs(15));
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path();
    let tracker = spawn_tracker(&l.stack.t, &dir.join("tracker-1.log"));
    const N: usize = 20;
    let mut silent = Vec::new();
    let mut delivered = Vec::new();
    for i in 0..N {
        let s = format!("+1555{:03}0404", 100 + i);
        let d = format!("+1555{:03}0001", 100 + i);
        silent.push((l.stack.publish(&s, "515151", &[Whatsapp, Sms]).await, s));
        delivered.push((l.stack.publish(&d, "626262", &[Whatsapp, Sms]).await, d));
    }
    let ids: Vec<String> = silent
        .iter()
        .chain(&delivered)
        .map(|(id, _)| id.clone())
        .collect();
    let all = ids.clone();
    let confirmed: Vec<String> = delivered.iter().map(|(id, _)| id.clone()).collect();
    // Killed while at work: every send accepted, and the tracker already reporting receipts.
    let before = l
        .statuses_until(move |got| {
            all.iter().all(|id| has(got, id, "accepted", "whatsapp"))
                && confirmed
                    .iter()
                    .any(|id| has(got, id, "delivered", "whatsapp"))
        })
        .await;
    let mut tracker = tracker;
    tracker.kill().unwrap(); // SIGKILL
    tracker.wait().unwrap();
    assert!(
        !before.iter().any(|s| s["status"] == "fallback"),
        "killed mid-window: no fallback had fired yet"
    );
    let mut restarted = spawn_tracker(&l.stack.t, &dir.join("tracker-2.log"));

    let all = ids.clone();
    let statuses = l
        .statuses_until(move |got| {
            all.iter().all(|id| {
                got.iter()
                    .any(|s| s["request_id"] == id.as_str() && s["final"] == true)
            })
        })
        .await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    let unfinished = ids
        .iter()
        .filter(|id| {
            !statuses
                .iter()
                .any(|s| s["request_id"] == id.as_str() && s["final"] == true)
        })
        .count();
    if unfinished > 0 {
        // The logs go with the test's directory: show what the trackers said of the group.
        for name in ["tracker-1.log", "tracker-2.log"] {
            let log = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            println!("--- {name}: {unfinished} requests without a final status ---");
            for line in log.lines().filter(|l| !l.contains(" DEBUG ")).take(80) {
                println!("{line}");
            }
        }
    }
    // The restarted tracker read each partition's records back before its receipts: none of
    // them waited in memory (the receipts partitions are held until then).
    let log = std::fs::read_to_string(dir.join("tracker-2.log")).unwrap();
    assert!(log.contains("partition caught up"), "the restart read back");
    assert!(
        !log.contains("receipt deferred"),
        "a receipt was read before its partition's records"
    );
    let mut second_codes = 0;
    for (id, phone) in &silent {
        let fin = one_outcome_across_a_crash(&statuses, id);
        assert_eq!(
            (fin["status"].as_str(), fin["channel"].as_str()),
            (Some("sent"), Some("sms")),
            "{id}"
        );
        assert_eq!(
            the(&statuses, id, "fallback", "whatsapp")["error"]["code"],
            "receipt_timeout"
        );
        assert!(sends_to(&l, phone).iter().any(|m| m.api == "sms"));
    }
    for (id, phone) in &delivered {
        let fin = one_outcome_across_a_crash(&statuses, id);
        assert_eq!(
            (fin["status"].as_str(), fin["channel"].as_str()),
            (Some("delivered"), Some("whatsapp")),
            "{id}"
        );
        second_codes += sends_to(&l, phone).len() - 1;
    }
    println!("tracker SIGKILL mid-window: {N} pending fallbacks fired, {second_codes} second codes to {N} delivered users");
    assert_eq!(second_codes, 0, "a delivered user got a second code");
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_receipts_and_system_errors_saying_the_account_is_locked_open_the_circuit() {
    let l = start(|_| {}).await;
    let mut config = confirming(Duration::from_secs(30));
    config.circuit.min_volume = 3;
    config.circuit.cool_down = Duration::from_secs(300);
    let workers = l.workers_with(config);
    let tracker = l.tracker();
    // The API accepts these; their webhooks then say `failed` 131031 (account locked). Each
    // send was accepted, so the API alone would keep the circuit closed.
    let mut ids = Vec::new();
    for phone in ["+15551231031", "+15551241031"] {
        ids.push(l.stack.publish(phone, "551031", &[Whatsapp, Sms]).await);
    }
    let wait = ids.clone();
    let statuses = l
        .statuses_until(move |got| wait.iter().all(|id| has(got, id, "fallback", "whatsapp")))
        .await;
    for id in &ids {
        let fallback = the(&statuses, id, "fallback", "whatsapp");
        assert_eq!(
            fallback["error"]["category"], "channel_broken",
            "{fallback}"
        );
    }
    // Meta's system-level error (`value.errors`): the third signal within the window.
    assert!(
        l.stack.sim.whatsapp_system_error(131031),
        "a webhook URL is set"
    );

    // From now on WhatsApp is refused: a request goes to SMS without a WhatsApp send. The
    // signal travels through Kafka, so ask until a request finds the circuit open.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the circuit never opened"
        );
        let id = l
            .stack
            .publish("+15551230001", "551032", &[Whatsapp, Sms])
            .await;
        let wait = id.clone();
        let statuses = l
            .statuses_until(move |got| {
                has(got, &wait, "sent", "sms") || has(got, &wait, "accepted", "whatsapp")
            })
            .await;
        if has(&statuses, &id, "sent", "sms") {
            break (id, statuses);
        }
    };
    let (id, statuses) = refused;
    let fallback = the(&statuses, &id, "fallback", "whatsapp");
    assert_eq!(fallback["error"]["code"], "circuit_open", "{fallback}");
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// Every message of every topic of the run (keys, payloads, header values), as text.
async fn everything_written(t: &otp_test_support::TestTopics) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for topic in t.topics.all() {
        let n = message_count(&t.kafka.brokers, &topic) as usize;
        if n == 0 {
            continue;
        }
        let messages = read_messages(&t.kafka.brokers, &topic, n, Duration::from_secs(20)).await;
        assert_eq!(messages.len(), n, "{topic}: every message read");
        for m in &messages {
            let mut text = String::new();
            text.push_str(&String::from_utf8_lossy(m.key().unwrap_or_default()));
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(m.payload().unwrap_or_default()));
            if let Some(headers) = m.headers() {
                use rdkafka::message::Headers;
                for h in headers.iter() {
                    text.push('\n');
                    text.push_str(&String::from_utf8_lossy(h.value.unwrap_or_default()));
                }
            }
            all.push((topic.clone(), text));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_topic_holds_a_plaintext_code_or_number_and_an_unknown_key_is_dead_lettered() {
    let l = start(|_| {}).await;
    let workers = l.workers(Duration::from_secs(30));
    let tracker = l.tracker();
    let t = &l.stack.t;
    // A fallback by webhook (requests on both topics, pending records, a message index,
    // receipts, statuses), a delivered-and-read user, and an event sealed with a key the
    // workers do not hold.
    let failed_on_whatsapp = ("+15551232026", "902817");
    let read_it = ("+15551230777", "773104");
    let stranger = ("+15551230999", "551199");
    let a = l
        .stack
        .publish(failed_on_whatsapp.0, failed_on_whatsapp.1, &[Whatsapp, Sms])
        .await;
    let b = l
        .stack
        .publish(read_it.0, read_it.1, &[Whatsapp, Sms])
        .await;
    let (foreign, _) = otp_events::Keyring::generate("rotated-out");
    let sealed_elsewhere = otp_events::Rules {
        sealing: Some(foreign),
        ..otp_events::Rules::default()
    };
    let mut s = otp_events::Submission::new(
        stranger.0,
        stranger.1,
        vec![Whatsapp, Sms],
        chrono::Duration::minutes(5),
    );
    s.request_id = Some("sealed-elsewhere-1".into());
    let request = s.complete(chrono::Utc::now());
    t.publish_raw(
        &t.topics.requests(Whatsapp),
        "k",
        &sealed_elsewhere.encode_request(&request).unwrap(),
    )
    .await;

    let (wa, wb) = (a.clone(), b.clone());
    let statuses = l
        .statuses_until(move |got| {
            has(got, &wa, "delivered", "sms")
                && has(got, &wb, "read", "whatsapp")
                && got
                    .iter()
                    .any(|s| s["request_id"] == "sealed-elsewhere-1" && s["final"] == true)
        })
        .await;
    let rejected = exactly_one_final(&statuses, "sealed-elsewhere-1");
    assert_eq!(rejected["status"], "rejected");
    let reason = rejected["error"]["message"].as_str().unwrap();
    assert!(
        reason.contains("sealed") && reason.contains("rotated-out"),
        "the reason names the field and the key id: {reason}"
    );
    let dead = read_messages(&t.kafka.brokers, &t.topics.dead_letter(), 1, WITHIN).await;
    assert_eq!(dead.len(), 1, "dead-lettered with its bytes");

    let written = everything_written(t).await;
    let topics_seen: std::collections::BTreeSet<&str> =
        written.iter().map(|(topic, _)| topic.as_str()).collect();
    for topic in [
        t.topics.requests(Whatsapp),
        t.topics.requests(Sms),
        t.topics.pending_confirmations(),
        t.topics.delivery_receipts(),
        t.topics.delivery_status(),
        t.topics.dead_letter(),
    ] {
        assert!(
            topics_seen.contains(topic.as_str()),
            "{topic} was written to"
        );
    }
    let secrets = [
        failed_on_whatsapp.0.trim_start_matches('+'),
        failed_on_whatsapp.1,
        read_it.0.trim_start_matches('+'),
        read_it.1,
        stranger.0.trim_start_matches('+'),
        stranger.1,
    ];
    let mut hits = Vec::new();
    for (topic, text) in &written {
        for secret in secrets {
            if text.contains(secret) {
                hits.push(format!("{topic}: {secret}"));
            }
        }
    }
    println!(
        "scanned {} messages on {} topics: {} plaintext hits",
        written.len(),
        topics_seen.len(),
        hits.len()
    );
    assert!(hits.is_empty(), "plaintext on Kafka: {hits:?}");
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// One captured signed callback, replayed, must not stop a channel for everyone. A genuine
/// Twilio callback for one of our SMS sends (`undelivered` 30034: US A2P registration, a
/// broken channel), POSTed 8 times with its valid signature, and a genuine Meta system error
/// (131031, account locked), POSTed 8 times: each makes one signal (the tracker signals a
/// send's failure once; the ingress takes a call once), so no circuit opens (it needs 5
/// outcomes in the window, half of them broken), and the next user's code is sent. Before,
/// every copy was a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_signed_callbacks_make_one_signal_each_and_open_no_circuit() {
    let l = start(|_| {}).await;
    let config = confirming(Duration::from_secs(30));
    assert_eq!(config.circuit.min_volume, 5);
    let workers = l.workers_with(config);
    let tracker = l.tracker();
    let id = l.stack.publish("+15551230077", "770077", &[Sms]).await;
    let wait = id.clone();
    let statuses = l
        .statuses_until(move |got| has(got, &wait, "sent", "sms"))
        .await;
    let sid = the(&statuses, &id, "sent", "sms")["provider_message_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The callback as Twilio signs it, for our send.
    let url = format!("{}?request_id={id}", l.ingress.sms_status_callback());
    let form: Vec<(String, String)> = [
        ("AccountSid", "ACsim"),
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30034"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let signature = otp_events::signature::twilio_signature(b"sim-auth-token", &url, &form);
    // Plain ASCII values: nothing to escape.
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    // Meta's system-level error, as Meta signs it.
    let system_error = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1055500000"},
            "errors": [{"code": 131031, "title": "Business account locked"}]}}]}]
    })
    .to_string();
    let meta_signature =
        otp_events::signature::meta_signature(b"sim-app-secret", system_error.as_bytes());
    let http = reqwest::Client::new();
    let mut answers = Vec::new();
    for _ in 0..8 {
        let twilio = http
            .post(&url)
            .header("x-twilio-signature", &signature)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let meta = http
            .post(l.ingress.whatsapp_webhook())
            .header("x-hub-signature-256", &meta_signature)
            .header("content-type", "application/json")
            .body(system_error.clone())
            .send()
            .await
            .unwrap();
        answers.push((
            twilio.status().as_u16(),
            twilio.text().await.unwrap(),
            meta.status().as_u16(),
            meta.text().await.unwrap(),
        ));
    }
    assert!(
        answers.iter().all(|(t, _, m, _)| (*t, *m) == (200, 200)),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.1 == "replayed").count(),
        7,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.3 == "replayed").count(),
        7,
        "{answers:?}"
    );

    // Every receipt the ingress wrote has been applied once the tracker committed past the
    // last of them; then the signals topic holds what there is to hold.
    let t = &l.stack.t;
    let receipts = read_messages(&t.kafka.brokers, &t.topics.delivery_receipts(), 1, WITHIN).await;
    for m in &receipts {
        assert!(
            committed_past(
                &t.kafka.brokers,
                &l.tracker_group(),
                m.topic(),
                m.partition(),
                m.offset(),
                WITHIN
            )
            .await,
            "the tracker applied every receipt"
        );
    }
    // Written before the ingress answered, or before the tracker committed: all there is.
    let written = message_count(&t.kafka.brokers, &t.topics.channel_signals());
    let signals = collect_json_until(
        &t.kafka.brokers,
        &t.topics.channel_signals(),
        WITHIN,
        move |got| got.len() as i64 >= written,
    )
    .await;
    let kinds: Vec<(String, String, String)> = signals
        .iter()
        .map(|s| {
            (
                s["channel"].as_str().unwrap().to_string(),
                s["source"].as_str().unwrap().to_string(),
                s["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 2, "one signal per genuine event: {kinds:?}");
    assert!(
        kinds.contains(&("sms".into(), "receipt".into(), "30034".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("whatsapp".into(), "system_error".into(), "131031".into())),
        "{kinds:?}"
    );

    // The next user's code goes out on both channels.
    let next = l.stack.publish("+15551230078", "780078", &[Sms]).await;
    let wait = next.clone();
    let statuses = l
        .statuses_until(move |got| {
            got.iter()
                .any(|s| s["request_id"] == wait.as_str() && s["final"] == true)
        })
        .await;
    assert_eq!(exactly_one_final(&statuses, &next)["status"], "sent");
    for w in workers {
        w.stop().await.unwrap();
    }
    tracker.stop().await.unwrap();
}

/// Request ids are unique per app only. Two login systems that both publish `login-42`, one
/// for a user whose WhatsApp delivers and one for a silent one: each request gets its own
/// pending record, receipts and deadline, so the first user gets one code and the second the
/// SMS fallback. Keyed by the bare request_id, the second's record replaced the first's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_requests_of_one_id_each_get_their_own_outcome() {
    let l = start(|_| {}).await;
    let workers = l.workers(Duration::from_secs(4));
    let tracker = l.tracker();
    let id = format!("login-42-{}", rand::random::<u32>());
    let (delivered, silent) = ("+15551260001", "+15551260404");
    for (app, phone) in [("shop", delivered), ("bank", silent)] {
        let mut s = otp_events::Submission::new(
            phone,
            "424242",
            vec![Whatsapp, Sms],
            chrono::Duration::minutes(5),
        );
        s.request_id = Some(id.clone());
        s.app = Some(app.into());
        l.stack.publisher.publish(s).await.unwrap();
    }
    let wait = id.clone();
    let statuses = l
        .statuses_until(move |got| {
            let finals = |app| {
                got.iter()
                    .filter(|s| s["request_id"] == wait.as_str())
                    .any(|s| s["app"] == app && s["final"] == true)
            };
            finals("shop") && finals("bank")
        })
        .await;
    let mine: Vec<&Value> = statuses
        .iter()
        .filter(|s| s["request_id"] == id.as_str())
        .collect();
    let final_of = |app: &str| {
        *mine
            .iter()
            .find(|s| s["app"] == app && s["final"] == true)
            .unwrap()
    };
    let shop = final_of("shop");
    assert_eq!(
        (shop["status"].as_str(), shop["channel"].as_str()),
        (Some("delivered"), Some("whatsapp")),
        "{mine:#?}"
    );
    let bank = final_of("bank");
    assert_eq!(
        (bank["status"].as_str(), bank["channel"].as_str()),
        (Some("sent"), Some("sms")),
        "{mine:#?}"
    );
    assert!(
        mine.iter().any(|s| s["app"] == "bank"
            && s["status"] == "fallback"
            && s["error"]["code"] == "receipt_timeout"),
        "{mine:#?}"
    );
    assert_eq!(
        sends_to(&l, delivered).len(),
        1,
        "the delivered user got one code"
    );
    assert!(sends_to(&l, silent).iter().any(|m| m.api == "sms"));
    tracker.stop().await.unwrap();
    for w in workers {
        w.stop().await.unwrap();
    }
}
