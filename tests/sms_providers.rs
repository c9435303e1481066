//! SMS through two providers, end to end on a real broker (tansu), the simulator over HTTP
//! and the receipts ingress over HTTP: a provider down or refusing a country is absorbed by
//! the other inside the channel, nothing lost and nothing sent twice; one country's trouble
//! closes nothing elsewhere; Vonage's signed webhooks become receipts and forged ones do not.

mod common;

use common::*;
use otp::stack::{sms_client_with_vonage, ReceiptsIngress, Tracker, Worker};
use otp_events::Channel::Sms;
use otp_events::{PhoneHasher, StatusVersion, Submission};
use otp_provider_sim::{Outage, SimConfig, VONAGE_API_KEY, VONAGE_SIGNATURE_SECRET};
use otp_receipts::tracker::TrackerConfig;
use otp_test_support::{shared_broker, TestTopics};
use otp_worker::{ConfirmationConfig, WorkerConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(90);

/// Topics (statuses written as v2, which names the provider), the simulator, and the
/// receipts ingress it posts Vonage's webhooks (and, when asked, Twilio's callbacks) to.
struct Two {
    stack: Stack,
    ingress: ReceiptsIngress,
}

async fn start() -> Two {
    let mut t = TestTopics::create(shared_broker(), 2).await;
    t.kafka.status_schema = StatusVersion::V2;
    let ingress = ReceiptsIngress::start(&t.kafka, PhoneHasher::new(HASH_KEY))
        .await
        .unwrap();
    let config = SimConfig {
        vonage_webhook_url: Some(ingress.vonage_webhook()),
        vonage_rate: 10_000,
        ..roomy_sim()
    };
    let sim = otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let publisher = t.publisher(PhoneHasher::new(HASH_KEY));
    Two {
        stack: Stack { t, sim, publisher },
        ingress,
    }
}

impl Two {
    /// An SMS worker with Twilio at `twilio_base` and Vonage at the simulator.
    fn worker(&self, twilio_base: &str, config: WorkerConfig) -> Worker {
        let s = &self.stack;
        let client = sms_client_with_vonage(&s.sim, twilio_base, None);
        Worker::start(
            &s.t.kafka,
            config,
            open_limits(),
            PhoneHasher::new(HASH_KEY),
            client,
        )
    }

    /// A tracker with this test's group, comparing delivery times over `slow_window`.
    fn tracker(&self, slow_window: Duration) -> Tracker {
        let config = TrackerConfig {
            tick: Duration::from_millis(50),
            group_id: format!("{}tracker", self.stack.t.kafka.topic_prefix),
            slow_window,
            slow_min_samples: 5,
            slow_check_every: Duration::from_millis(500),
            ..TrackerConfig::default()
        };
        Tracker::start(&self.stack.t.kafka, config, PhoneHasher::new(HASH_KEY))
    }

    /// `n` SMS-only requests to numbers of `country_code` (`+1` US, `+49` DE), their ids.
    async fn publish(&self, n: usize, number: impl Fn(usize) -> String) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let s = Submission::new(number(i), "135790", vec![Sms], chrono::Duration::minutes(5));
            ids.push(self.stack.publisher.publish(s).await.unwrap());
        }
        ids
    }

    /// The provider each request was accepted by, from the simulator; every request at most
    /// once (none sent twice).
    fn accepted_by(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for m in self.stack.sim.messages() {
            if m.outcome != "accepted" {
                continue;
            }
            // Twilio's correlation is in the callback URL, Vonage's in client_ref; neither
            // callback is asked for by Twilio here, so its sends are told by number.
            let key = m
                .request_id
                .clone()
                .unwrap_or_else(|| format!("twilio:{}", m.to));
            let before = out.insert(key.clone(), m.api.clone());
            assert!(
                before.is_none(),
                "{key} was accepted twice ({before:?}, {})",
                m.api
            );
        }
        out
    }
}

fn us(i: usize) -> String {
    format!("+1555{:07}", 3_000_000 + i)
}

fn de(i: usize) -> String {
    format!("+49151{:08}", 20_000_000 + i)
}

/// Every request ended `sent` on SMS, within its life, through `provider`.
fn all_sent_by(statuses: &[Value], ids: &[String], provider: &str) {
    for id in ids {
        let fin = final_is(statuses, id, "sent", "sms");
        assert_eq!(fin["provider"], provider, "{fin}");
        assert_eq!(fin["schema"], "otp.delivery_status.v2");
        assert!(
            fin["latency_ms"].as_u64().unwrap() < 5 * 60 * 1000,
            "within its life"
        );
    }
}

async fn twilio_down(twilio_base: Option<&str>, outage: Option<Outage>) {
    let two = start().await;
    let refused = "http://127.0.0.1:1".to_string();
    let base = twilio_base.map_or(two.stack.sim.base_url(), |_| refused);
    if let Some(outage) = outage {
        two.stack.sim.set_outage("twilio", None, outage);
    }
    let worker = two.worker(&base, test_config());
    let ids = two.publish(40, us).await;
    let statuses = two.stack.statuses_until_final(&ids, WITHIN).await;
    all_sent_by(&statuses, &ids, "vonage");
    let v2 = include_str!("../schemas/delivery-status.v2.json");
    assert_valid_against_and_private(v2, &statuses, &["135790", "+1555300"]);
    let accepted = two.accepted_by();
    for id in &ids {
        assert_eq!(accepted.get(id).map(String::as_str), Some("vonage"), "{id}");
    }
    assert_eq!(accepted.len(), ids.len(), "none lost, none sent twice");
    assert!(
        !statuses.iter().any(|s| s["status"] == "fallback"),
        "a provider's outage does not spend the user's fallback"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_refusing_connections_every_code_goes_by_vonage() {
    twilio_down(Some("refused"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_answering_503_every_code_goes_by_vonage() {
    twilio_down(None, Some(Outage::Http(503))).await;
}

/// Twilio refuses US destinations (21408, geo permission): US codes go by Vonage at once,
/// while German codes keep Twilio's share: the US route error opened the US circuit only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_us_route_error_moves_us_codes_to_vonage_and_closes_nothing_elsewhere() {
    let two = start().await;
    two.stack
        .sim
        .set_outage("twilio", Some("US"), Outage::Code(21408));
    let mut config = test_config();
    // No probe of the US route during the test.
    config.circuit.cool_down = Duration::from_secs(600);
    let worker = two.worker(&two.stack.sim.base_url(), config);
    let us_ids = two.publish(40, us).await;
    let statuses = two.stack.statuses_until_final(&us_ids, WITHIN).await;
    all_sent_by(&statuses, &us_ids, "vonage");
    let de_ids = two.publish(40, de).await;
    let statuses = two.stack.statuses_until_final(&de_ids, WITHIN).await;
    let mut by_provider: HashMap<String, usize> = HashMap::new();
    for id in &de_ids {
        let fin = final_is(&statuses, id, "sent", "sms");
        *by_provider
            .entry(fin["provider"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Weights 1:1: 40 draws, Twilio's share 8 to 32 is 5 standard deviations wide.
    let twilio = by_provider.get("twilio").copied().unwrap_or(0);
    println!("US route error: German codes by provider {by_provider:?}");
    assert!(
        (8..=32).contains(&twilio),
        "German codes by provider: {by_provider:?}"
    );
    let twilio_us_tries = || {
        let sends = two.stack.sim.messages();
        sends
            .iter()
            .filter(|m| m.api == "sms" && m.to.starts_with("+1"))
            .count()
    };
    // The first batch's tries at Twilio are those in flight before its first 21408 came
    // back (how many depends on the machine's load); once that answer opened the US circuit,
    // no US code goes to Twilio.
    let first_batch = twilio_us_tries();
    let later = two.publish(20, |i| us(100 + i)).await;
    let later_statuses = two.stack.statuses_until_final(&later, WITHIN).await;
    all_sent_by(&later_statuses, &later, "vonage");
    let after = twilio_us_tries() - first_batch;
    println!("US route error: {first_batch} US tries at Twilio of the first 40 US codes, {after} of the next 20");
    assert_eq!(after, 0, "the open US circuit keeps US codes from Twilio");
    assert!(
        !statuses.iter().any(|s| s["status"] == "fallback"),
        "no user's fallback was spent"
    );
    worker.stop().await.unwrap();
}

/// Vonage's signed status webhooks, posted by the simulator (JWT written by hand) to the
/// ingress: the tracker reports their deliveries, naming Vonage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_receipts_are_reported_naming_vonage() {
    let two = start().await;
    two.stack.sim.set_outage("twilio", None, Outage::Http(503));
    let mut config = test_config();
    config.confirmation = Some(ConfirmationConfig {
        window: Duration::from_secs(30),
        fallback_time: Duration::from_secs(2),
        ..Default::default()
    });
    let worker = two.worker(&two.stack.sim.base_url(), config);
    let tracker = two.tracker(Duration::from_secs(300));
    let ids = two.publish(5, de).await;
    let wait = ids.clone();
    let delivered = |got: &[Value], id: &str| {
        got.iter()
            .find(|s| s["request_id"] == id && s["status"] == "delivered")
            .cloned()
    };
    let statuses = two
        .stack
        .statuses_until(WITHIN, move |got| {
            wait.iter().all(|id| delivered(got, id).is_some())
        })
        .await;
    for id in &ids {
        // SMS is these users' last channel: `sent` was final, the receipt follows it.
        final_is(&statuses, id, "sent", "sms");
        let receipt = delivered(&statuses, id).expect("a delivered receipt");
        assert_eq!(receipt["provider"], "vonage", "{receipt}");
        assert_eq!(receipt["final"], false, "{receipt}");
    }
    tracker.stop().await.unwrap();
    worker.stop().await.unwrap();
}

/// With confirmation off (the default) no tracker turns receipts into statuses, but the
/// receipts still reach `otp.delivery-receipts`, and they join the statuses as
/// schemas/README.md says: by `request_id` and `app`, or by `provider_message_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_confirmation_receipts_join_the_statuses_for_analysts() {
    let two = start().await;
    two.stack.sim.set_outage("twilio", None, Outage::Http(503));
    let worker = two.worker(&two.stack.sim.base_url(), test_config());
    let ids = two.publish(3, |i| de(500 + i)).await;
    let statuses = two.stack.statuses_until_final(&ids, WITHIN).await;
    let topic = two.stack.t.topics.delivery_receipts();
    let wanted = ids.clone();
    let receipts = otp_test_support::collect_json_until(
        &two.stack.t.kafka.brokers,
        &topic,
        WITHIN,
        move |got| {
            wanted.iter().all(|id| {
                got.iter()
                    .any(|r| r["request_id"] == id.as_str() && r["status"] == "delivered")
            })
        },
    )
    .await;
    for id in &ids {
        let status = final_is(&statuses, id, "sent", "sms");
        let receipt = receipts
            .iter()
            .find(|r| r["request_id"] == id.as_str() && r["status"] == "delivered")
            .unwrap_or_else(|| panic!("no delivered receipt for {id}: {receipts:?}"));
        assert_eq!(receipt["app"], status["app"], "{receipt}");
        assert_eq!(
            receipt["provider_message_id"], status["provider_message_id"],
            "the other join key: {receipt} {status}"
        );
        assert_eq!(receipt["provider"], "vonage", "{receipt}");
    }
    worker.stop().await.unwrap();
}

/// Twilio delivers German codes 6 s after acceptance, Vonage 1 s: the tracker finds Twilio
/// slow there against its peer, and the worker moves German first tries away from it; once
/// Twilio delivers fast again and the signals stop, its weight drifts back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slow_to_deliver_in_a_country_loses_weight_there_and_gets_it_back() {
    let two = start().await;
    let sim = &two.stack.sim;
    sim.set_receipt_delay("twilio", Some("DE"), Some(Duration::from_secs(6)));
    let mut config = test_config();
    config.confirmation = Some(ConfirmationConfig::default());
    config.routes.demote_every = Duration::from_millis(500);
    config.routes.recover_every = Duration::from_secs(3);
    let client = sms_client_with_vonage(
        sim,
        &sim.base_url(),
        Some(two.ingress.sms_status_callback()),
    );
    let worker = Worker::start(
        &two.stack.t.kafka,
        config,
        open_limits(),
        PhoneHasher::new(HASH_KEY),
        client,
    );
    let tracker = two.tracker(Duration::from_secs(8));
    let brokers = two.stack.t.kafka.brokers.clone();
    let topic = two.stack.t.topics.channel_signals();
    let signals = |n: usize| {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        async move {
            let slow = move |got: &[Value]| got.iter().filter(|s| s["kind"] == "slow").count() >= n;
            otp_test_support::collect_json_until(&brokers, &topic, WITHIN, slow).await
        }
    };
    // Both providers deliver German codes at weight 1:1; Twilio's come 6 s late.
    let first = two.publish(30, de).await;
    two.stack.statuses_until_final(&first, WITHIN).await;
    let slow: Vec<Value> = signals(4)
        .await
        .into_iter()
        .filter(|s| s["kind"] == "slow")
        .collect();
    assert!(
        slow.len() >= 4,
        "the tracker said Twilio is slow in DE: {slow:?}"
    );
    assert!(
        slow.iter()
            .all(|s| s["provider"] == "twilio" && s["country"] == "DE"),
        "{slow:?}"
    );
    let share = |statuses: &[Value], ids: &[String]| {
        ids.iter()
            .filter(|id| final_is(statuses, id, "sent", "sms")["provider"] == "twilio")
            .count()
    };
    let demoted = two.publish(40, |i| de(100 + i)).await;
    let statuses = two.stack.statuses_until_final(&demoted, WITHIN).await;
    let twilio = share(&statuses, &demoted);
    println!("slow: Twilio took {twilio} of 40 German codes");
    assert!(
        twilio <= 8,
        "Twilio took {twilio} of 40 German codes while slow"
    );

    // Twilio recovers; the slow samples leave the tracker's window, the signals stop, and the
    // weight doubles back every 3 s.
    sim.set_receipt_delay("twilio", Some("DE"), None);
    let every_signal = || {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        async move {
            let written = otp_test_support::message_count(&brokers, &topic) as usize;
            let all = move |got: &[Value]| got.len() >= written;
            otp_test_support::collect_json_until(&brokers, &topic, WITHIN, all).await
        }
    };
    let quiet_since = loop {
        let last = every_signal()
            .await
            .iter()
            .filter(|s| s["kind"] == "slow")
            .filter_map(|s| {
                s["received_at"]
                    .as_str()?
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .ok()
            })
            .max()
            .expect("slow signals were seen");
        let quiet = chrono::Utc::now() - last;
        if quiet > chrono::Duration::seconds(14) {
            break quiet;
        }
        tokio::time::sleep(Duration::from_secs(1)).await; // polling the topic, not a sync point
    };
    let recovered = two.publish(40, |i| de(200 + i)).await;
    let statuses = two.stack.statuses_until_final(&recovered, WITHIN).await;
    let twilio = share(&statuses, &recovered);
    println!("recovered: Twilio took {twilio} of 40 German codes, {quiet_since} after the last slow signal");
    assert!(
        (8..=32).contains(&twilio),
        "Twilio took {twilio} of 40 German codes {quiet_since} after the last slow signal"
    );
    tracker.stop().await.unwrap();
    worker.stop().await.unwrap();
}

/// Signed by an independent implementation (the simulator's, by hand), a webhook is taken;
/// altered, unsigned, signed with another secret, or stale, it is refused before anything is
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_webhooks_are_taken_only_when_signed_fresh_and_unaltered() {
    let t = TestTopics::create(shared_broker(), 1).await;
    let ingress = ReceiptsIngress::start(&t.kafka, PhoneHasher::new(HASH_KEY))
        .await
        .unwrap();
    let url = ingress.vonage_webhook();
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "message_uuid": "aaaaaaaa-0000-4000-8000-000000000001",
        "to": "4915120000001", "from": "Acme",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "status": "delivered", "channel": "sms", "client_ref": "req-vonage-1"
    })
    .to_string();
    let now = chrono::Utc::now().timestamp();
    let sign = |secret: &str, body: &str, iat: i64| {
        otp_provider_sim::vonage_bearer(secret, VONAGE_API_KEY, body.as_bytes(), iat)
    };
    let post = |authorization: Option<String>, body: String| {
        let mut request = http.post(&url).header("content-type", "application/json");
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        async move { request.body(body).send().await.unwrap().status().as_u16() }
    };
    let altered = body.replace("delivered", "rejected");
    let cases = [
        ("unsigned", None, body.clone(), 401),
        (
            "other secret",
            Some(sign("not-the-secret", &body, now)),
            body.clone(),
            403,
        ),
        (
            "altered",
            Some(sign(VONAGE_SIGNATURE_SECRET, &body, now)),
            altered,
            403,
        ),
        (
            "stale",
            Some(sign(VONAGE_SIGNATURE_SECRET, &body, now - 3600)),
            body.clone(),
            403,
        ),
        (
            "signed",
            Some(sign(VONAGE_SIGNATURE_SECRET, &body, now)),
            body.clone(),
            200,
        ),
    ];
    for (what, authorization, body, expected) in cases {
        assert_eq!(post(authorization, body).await, expected, "{what}");
    }
    let receipts = otp_test_support::collect_json_until(
        &t.kafka.brokers,
        &t.topics.delivery_receipts(),
        Duration::from_secs(30),
        |got| !got.is_empty(),
    )
    .await;
    assert_eq!(receipts.len(), 1, "only the signed call: {receipts:#?}");
    assert_eq!(receipts[0]["status"], "delivered");
    assert_eq!(receipts[0]["request_id"], "req-vonage-1");
    let text = serde_json::to_string(&receipts).unwrap();
    assert!(!text.contains("4915120000001"), "the number is never read");
    ingress.stop().await;
}
