//! Limits that real senders need, end to end on tansu and the simulator: abuse limits per
//! phone, per number range and per country; the circuit breaker of a broken channel; and the
//! fleet-wide sender budget shared by partitions.

mod common;

use common::*;
use otp::stack::{whatsapp_client, Worker};
use otp_events::Channel::{Sms, Whatsapp};
use otp_events::PhoneHasher;
use otp_provider_sim::SimConfig;
use otp_test_support::collect_json_until;
use otp_worker::{AbuseConfig, LimitsConfig};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

fn with_abuse(abuse: AbuseConfig) -> otp_worker::WorkerConfig {
    let mut c = test_config();
    c.abuse = abuse;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_codes_for_one_phone_in_a_minute_send_five() {
    let stack = Stack::start(1, roomy_sim()).await;
    let sms = stack.worker(Sms, with_abuse(AbuseConfig::default()));
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(stack.publish("+447700900555", "112233", &[Sms]).await);
    }
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    let finals: Vec<_> = ids
        .iter()
        .map(|id| exactly_one_final(&statuses, id))
        .collect();
    assert_eq!(finals.iter().filter(|s| s["status"] == "sent").count(), 5);
    let limited: Vec<_> = finals.iter().filter(|s| s["status"] == "failed").collect();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["error"]["category"], "rate_limited");
    assert_eq!(limited[0]["error"]["code"], "per_phone");
    assert_eq!(stack.sim.messages().len(), 5);
    assert_valid_and_private(&statuses, &["+447700900555", "112233"]);
    sms.stop().await.unwrap();
}

/// Two spellings of one Mexican mobile number (with and without the old "1" mobile token) are
/// one subscriber: one key, one partition, one count. Three codes under a limit of two: the
/// third is refused whichever spelling it uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_one_subscriber_share_one_count() {
    let stack = Stack::start(2, roomy_sim()).await;
    let abuse = AbuseConfig {
        per_phone: Some(otp_worker::WindowRule {
            count: 2,
            window: Duration::from_secs(600),
        }),
        ..AbuseConfig::default()
    };
    let sms = stack.worker(Sms, with_abuse(abuse));
    let mut ids = Vec::new();
    for phone in ["+525512345678", "+5215512345678", "+525512345678"] {
        ids.push(stack.publish(phone, "131313", &[Sms]).await);
    }
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    let kinds: Vec<(String, String)> = ids
        .iter()
        .map(|id| {
            let s = exactly_one_final(&statuses, id);
            (
                s["status"].as_str().unwrap().to_string(),
                s["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|(s, _)| s == "sent").count(),
        2,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("failed".to_string(), "per_phone".to_string())),
        "{kinds:?}"
    );
    let hashes: std::collections::BTreeSet<&str> = statuses
        .iter()
        .filter_map(|s| s["phone_hash"].as_str())
        .collect();
    assert_eq!(
        hashes.len(),
        1,
        "one subscriber, one phone_hash: {hashes:?}"
    );
    sms.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_range_is_limited_across_its_numbers() {
    let stack = Stack::start(1, roomy_sim()).await;
    let sms = stack.worker(Sms, with_abuse(AbuseConfig::default()));
    let mut ids = Vec::new();
    for i in 0..21 {
        ids.push(
            stack
                .publish(&format!("+44770091{:04}", 1000 + i), "445566", &[Sms])
                .await,
        );
    }
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    let codes: Vec<String> = ids
        .iter()
        .map(|id| exactly_one_final(&statuses, id))
        .filter(|s| s["status"] == "failed")
        .map(|s| s["error"]["code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes, vec!["per_prefix"], "20 per range, then refused");
    assert_eq!(stack.sim.messages().len(), 20);
    sms.stop().await.unwrap();
}

/// A producer that writes fallback state itself (`attempt: 2`, `tried_channels`) without the
/// workers' proof is a first try: the rules a real fallback skips (counted on its first
/// channel) apply to it. A real fallback carries the proof and goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_fallback_is_a_first_try_and_meets_every_rule() {
    let stack = Stack::start(1, roomy_sim()).await;
    let abuse = AbuseConfig {
        deny_countries: vec!["GB".into()],
        ..AbuseConfig::default()
    };
    let workers = vec![stack.worker(Sms, with_abuse(abuse))];
    let t = &stack.t;
    let mut s = otp_events::Submission::new(
        "+447700900778",
        "667788",
        vec![Whatsapp, Sms],
        chrono::Duration::minutes(5),
    );
    s.request_id = Some("forged-fallback-1".into());
    let forged = s
        .complete(chrono::Utc::now())
        .for_next_channel()
        .expect("SMS is next");
    t.publish_request_raw(&forged).await;
    let statuses = stack
        .statuses_until_final(&["forged-fallback-1".to_string()], WITHIN)
        .await;
    let s = exactly_one_final(&statuses, "forged-fallback-1");
    assert_eq!(
        (s["status"].as_str(), s["error"]["code"].as_str()),
        (Some("failed"), Some("destination")),
        "the destination rule applied: {s}"
    );
    assert!(
        stack.sim.messages().iter().all(|m| m.to != "+447700900778"),
        "nothing was sent"
    );
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// A number's codes split between the WhatsApp and the SMS topics meet one count, and a worker
/// that starts later reads the fleet's last window of admissions back: two WhatsApp codes
/// under a limit of two, then an SMS worker starts, and the SMS code is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_split_between_channels_share_one_count_across_the_fleet() {
    let stack = Stack::start(2, roomy_sim()).await;
    let abuse = AbuseConfig {
        per_phone: Some(otp_worker::WindowRule {
            count: 2,
            window: Duration::from_secs(600),
        }),
        ..AbuseConfig::default()
    };
    let whatsapp = stack.worker(Whatsapp, with_abuse(abuse.clone()));
    let phone = "+447700900991";
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(stack.publish(phone, "990011", &[Whatsapp]).await);
    }
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    for id in &ids {
        assert_eq!(exactly_one_final(&statuses, id)["status"], "sent");
    }
    // Started after both admissions: it reads them back from the shared topic.
    let sms = stack.worker(Sms, with_abuse(abuse));
    let topic = format!("topic=\"{}\"", stack.t.topics.abuse_admissions());
    let sms_label = format!("channel=\"sms\",{topic}");
    let counted = metric_reaches(
        "otp_abuse_admissions_counted_total",
        &sms_label,
        2.0,
        WITHIN,
    )
    .await;
    assert_eq!(
        counted, 2.0,
        "the SMS worker counted both WhatsApp admissions"
    );
    let third = stack.publish(phone, "990011", &[Sms]).await;
    let statuses = stack
        .statuses_until_final(std::slice::from_ref(&third), WITHIN)
        .await;
    let s = exactly_one_final(&statuses, &third);
    assert_eq!(
        (s["status"].as_str(), s["error"]["code"].as_str()),
        (Some("failed"), Some("per_phone")),
        "the third code of the window, on another channel: {s}"
    );
    // (The simulator holds WhatsApp's pair rate: the second code was refused once, 131056,
    // and sent on the retry.)
    let accepted = accepted(&stack.sim);
    assert_eq!(
        accepted.len(),
        2,
        "two codes went out, not three: {accepted:?}"
    );
    assert_valid_and_private(&statuses, &[phone, "990011"]);
    whatsapp.stop().await.unwrap();
    sms.stop().await.unwrap();
}

/// A request id is claimed only once the abuse rules admit the request: an attacker who
/// publishes a guessed id first, to a destination the rules refuse, holds nothing, and the
/// login system's real request with that id is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_run_id_that_a_rule_refuses_does_not_suppress_the_real_request() {
    let stack = Stack::start(1, roomy_sim()).await;
    let abuse = AbuseConfig {
        deny_countries: vec!["GB".into()],
        ..AbuseConfig::default()
    };
    let sms = stack.worker(Sms, with_abuse(abuse));
    let id = "login-7781".to_string();
    let submit = |phone: &str| {
        let mut s =
            otp_events::Submission::new(phone, "334455", vec![Sms], chrono::Duration::minutes(5));
        s.request_id = Some(id.clone());
        s
    };
    stack
        .publisher
        .publish(submit("+447700900661"))
        .await
        .unwrap();
    let statuses = stack
        .statuses_until_final(std::slice::from_ref(&id), WITHIN)
        .await;
    let attacker = exactly_one_final(&statuses, &id);
    assert_eq!(attacker["error"]["code"], "destination", "{attacker}");
    stack
        .publisher
        .publish(submit("+15551236611"))
        .await
        .unwrap();
    let wanted = id.clone();
    let statuses = stack
        .statuses_until(WITHIN, move |got| {
            got.iter()
                .filter(|s| s["request_id"] == wanted.as_str() && s["final"] == true)
                .count()
                >= 2
        })
        .await;
    let finals: Vec<_> = statuses
        .iter()
        .filter(|s| s["request_id"] == id.as_str() && s["final"] == true)
        .map(|s| (s["status"].as_str().unwrap(), s["error"]["code"].as_str()))
        .collect();
    assert_eq!(
        finals,
        vec![("failed", Some("destination")), ("sent", None)],
        "the real request was delivered, not refused as a conflict"
    );
    let sent: Vec<_> = stack.sim.messages().iter().map(|m| m.to.clone()).collect();
    assert_eq!(sent, vec!["+15551236611".to_string()]);
    sms.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_country_is_never_sent() {
    let stack = Stack::start(1, roomy_sim()).await;
    let abuse = AbuseConfig {
        deny_countries: vec!["GB".into()],
        ..AbuseConfig::default()
    };
    let workers = vec![
        stack.worker(Whatsapp, with_abuse(abuse.clone())),
        stack.worker(Sms, with_abuse(abuse)),
    ];
    let denied = stack
        .publish("+447700900777", "778899", &[Whatsapp, Sms])
        .await;
    let allowed = stack
        .publish("+15551237777", "778899", &[Whatsapp, Sms])
        .await;
    let statuses = stack
        .statuses_until_final(&[denied.clone(), allowed.clone()], WITHIN)
        .await;
    let s = exactly_one_final(&statuses, &denied);
    assert_eq!(
        (s["status"].as_str(), s["error"]["category"].as_str()),
        (Some("failed"), Some("blocked"))
    );
    assert_eq!(s["error"]["code"], "destination");
    assert_eq!(
        story(&statuses, &denied).len(),
        1,
        "no fallback: no channel may send it"
    );
    assert_eq!(exactly_one_final(&statuses, &allowed)["status"], "sent");
    assert!(stack.sim.messages().iter().all(|m| m.to != "+447700900777"));
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_channel_opens_its_circuit_and_recovers_after_the_cool_down() {
    let stack = Stack::start(1, roomy_sim()).await;
    let mut config = test_config();
    config.circuit.min_volume = 3;
    config.circuit.cool_down = Duration::from_secs(4);
    let workers = vec![
        stack.worker(Whatsapp, config),
        stack.worker(Sms, test_config()),
    ];
    stack.sim.set_whatsapp_outage(Some((401, 190))); // the token expired

    let publish_batch = |n: usize, from: usize| {
        let stack = &stack;
        async move {
            let mut ids = Vec::new();
            for i in from..from + n {
                ids.push(
                    stack
                        .publish(
                            &format!("+1555{:03}{:04}", 600 + i, 3000 + i),
                            "600600",
                            &[Whatsapp, Sms],
                        )
                        .await,
                );
            }
            let statuses = stack.statuses_until_final(&ids, WITHIN).await;
            (ids, statuses)
        }
    };
    // Three channel-broken answers (all of the window, at least its volume) open the circuit...
    let (ids, statuses) = publish_batch(3, 0).await;
    for id in &ids {
        assert_eq!(
            story(&statuses, id),
            vec![
                ("fallback".into(), "whatsapp".into()),
                ("sent".into(), "sms".into())
            ]
        );
    }
    // ...after which requests fall back at once, WhatsApp untouched. (On a slow machine the
    // cool-down may end during the batch: then one half-open probe meets the 190 again.)
    let (ids, statuses) = publish_batch(7, 3).await;
    let mut probes = 0;
    for id in &ids {
        let fallback = statuses
            .iter()
            .find(|s| s["request_id"] == id.as_str() && s["status"] == "fallback")
            .unwrap();
        match fallback["error"]["code"].as_str() {
            Some("circuit_open") => {}
            Some("190") => probes += 1,
            other => panic!("unexpected fallback reason {other:?}"),
        }
        assert_eq!(exactly_one_final(&statuses, id)["channel"], "sms");
    }
    assert!(probes <= 1, "{probes} probes within one cool-down");
    let whatsapp_sends = |stack: &Stack| {
        stack
            .sim
            .messages()
            .iter()
            .filter(|m| m.api == "whatsapp")
            .count()
    };
    assert_eq!(
        whatsapp_sends(&stack),
        3 + probes,
        "an open circuit sends nothing"
    );

    stack.sim.set_whatsapp_outage(None); // the operator renewed the token
    tokio::time::sleep(Duration::from_secs(4)).await; // the cool-down is what is under test
                                                      // One at a time: while the half-open probe is in flight, a second request is (rightly)
                                                      // refused and falls back.
    for (n, what) in [(10, "the probe closes the circuit"), (11, "closed again")] {
        let (ids, statuses) = publish_batch(1, n).await;
        let s = exactly_one_final(&statuses, &ids[0]);
        assert_eq!(
            (s["status"].as_str(), s["channel"].as_str()),
            (Some("sent"), Some("whatsapp")),
            "{what}"
        );
    }
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// The sends the simulator accepted, in the order they arrived.
fn accepted(sim: &otp_provider_sim::SimHandle) -> Vec<otp_provider_sim::Received> {
    sim.messages()
        .into_iter()
        .filter(|m| m.outcome == "accepted")
        .collect()
}

/// When the simulator accepted each WhatsApp send (ms), in order.
fn accepted_at(stack: &Stack) -> Vec<i64> {
    let mut times: Vec<i64> = accepted(&stack.sim)
        .iter()
        .map(|m| m.received_at_ms)
        .collect();
    times.sort_unstable();
    times
}

/// Accepted sends per second over the span of the run: a stall anywhere can only lower it.
fn observed_rate(times: &[i64]) -> f64 {
    let span = (times[times.len() - 1] - times[0]) as f64 / 1000.0;
    (times.len() - 1) as f64 / span
}

/// Sends per second between stalls: gaps of over `stall_ms` between accepted sends (a stall
/// on a noisy machine) are left out of the span.
fn paced_rate(times: &[i64], stall_ms: i64) -> f64 {
    let gaps: Vec<i64> = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|gap| *gap <= stall_ms)
        .collect();
    gaps.len() as f64 * 1000.0 / gaps.iter().sum::<i64>().max(1) as f64
}

fn fleet_worker(stack: &Stack) -> Worker {
    let mut config = test_config();
    config.limits = Some(otp_worker::LimitsPatch::all_of(&LimitsConfig {
        sender_per_second: 20,
        sender_burst: 2,
        recipient_period: None,
    }));
    Worker::start(
        &stack.t.kafka,
        config,
        open_limits(),
        PhoneHasher::new(HASH_KEY),
        whatsapp_client(&stack.sim),
    )
}

/// The i-th recipient of a load: each distinct, clear of the simulator's staged digits.
fn load_phone(i: usize) -> String {
    format!("+1555{:03}{:04}", i, 4000 + i)
}

async fn publish_load(stack: &Stack, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(stack.publish(&load_phone(i), "700700", &[Whatsapp]).await);
    }
    ids
}

/// The provider allows 20/s (with a small burst for network jitter); the fleet is configured
/// with 20/s in all. With 1, 2 and 4 workers sharing the topic's 4 partitions, the provider
/// never sees more than that (0 violations of its limiter, and at most the rate over the run),
/// and one worker alone uses the whole budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_budget_is_the_fleets_shared_by_partitions() {
    // Two CI runs in about ten saw `whatsapp_pair` violations here with 4 workers (the same
    // recipient sent twice across the group's rebalances). The likely cause, since fixed: a
    // partition's messages took their slots out of offset order (tokio starts the newest task
    // first), so at a revoke the messages before one already sending waited for slots seconds
    // away, past the grace, and the next owner sent the later ones again. Should it recur, the
    // workers' warnings (a revoke past its grace, a failed commit on revoke, a rebalance
    // error) are printed with the failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("otp_worker=warn,otp_kafka=warn")
        .with_test_writer()
        .try_init();
    let sim = SimConfig {
        whatsapp_rate: 20,
        whatsapp_burst: 4,
        ..SimConfig::default()
    };
    for workers in [1, 2, 4] {
        let stack = Stack::start(4, sim.clone()).await;
        let ids = publish_load(&stack, 100).await;
        let fleet: Vec<Worker> = (0..workers).map(|_| fleet_worker(&stack)).collect();
        let statuses = stack
            .statuses_until_final(&ids, Duration::from_secs(60))
            .await;
        // Every request sent. tansu 0.6 lets two members own a partition for a moment while
        // the next worker joins (docs/guarantees.md, "A move needs the broker's rebalance
        // barrier"): a message at the hand-off may be sent by both, at most one per partition
        // per join.
        let mut repeats = 0;
        for id in &ids {
            let finals = distinct_events(&statuses, |s| {
                s["request_id"] == id.as_str() && s["final"] == true
            });
            assert!(!finals.is_empty(), "{id} has no final status");
            assert!(
                finals.iter().all(|s| s["status"] == "sent"),
                "{id}: {finals:?}"
            );
            repeats += finals.len() - 1;
        }
        println!("{workers} workers: {repeats} requests sent again at a hand-off");
        assert!(
            repeats <= 4 * (workers - 1),
            "{repeats} repeats with {workers} workers"
        );
        let stats = stack.sim.stats();
        assert!(
            stats.rate_limit_violations.is_empty(),
            "{workers} workers broke the fleet's limit: {stats:?}"
        );
        let times = accepted_at(&stack);
        let rate = observed_rate(&times);
        assert!(rate <= 20.5, "{workers} workers sent {rate:.1}/s together");
        if workers == 1 {
            // Slots are 50 ms apart, woken on a 50 ms grid: a gap over 150 ms is a stall. Stalls
            // are rare (or the pace between them says little), and between them the worker
            // kept the budget's pace.
            let gaps = times.windows(2).count();
            let stalls = times.windows(2).filter(|w| w[1] - w[0] > 150).count();
            assert!(stalls * 5 <= gaps, "{stalls} of {gaps} gaps were stalls");
            let paced = paced_rate(&times, 150);
            assert!(
                paced >= 18.0,
                "one worker alone kept a pace of {paced:.1}/s of 20/s"
            );
        }
        for w in fleet {
            w.stop().await.unwrap();
        }
    }
}

/// A partition's messages take their sender slots in offset order, whatever order their tasks
/// start in (tokio starts the newest first): so a revoke can always finish the messages before
/// one already sending, within its grace. Without that, the last message of each batch took
/// the batch's first slot, and at a revoke its predecessors' slots were seconds away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_messages_are_sent_in_offset_order_under_the_limit() {
    let stack = Stack::start(1, SimConfig::default()).await;
    let ids = publish_load(&stack, 30).await;
    let worker = fleet_worker(&stack);
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    for id in &ids {
        assert_eq!(exactly_one_final(&statuses, id)["status"], "sent");
    }
    let sent: Vec<String> = accepted(&stack.sim).into_iter().map(|m| m.to).collect();
    let published: Vec<String> = (0..30).map(load_phone).collect();
    let mut in_order = sent.clone();
    in_order.sort_by_key(|to| published.iter().position(|p| p == to));
    assert_eq!(in_order, published, "each sent once");
    // In order, give or take neighbours: after a stall, pacing lets a burst and a timer's
    // slack leave together, and their HTTP calls may reach the simulator in either order.
    // (Without turns the last message of each batch went first, many places early.)
    for (place, to) in sent.iter().enumerate() {
        let published_at = published.iter().position(|p| p == to).unwrap();
        assert!(
            place.abs_diff(published_at) <= 2,
            "{to} sent {place}th, published {published_at}th: {sent:?}"
        );
    }
    worker.stop().await.unwrap();
}

/// A message still waiting for its rate-limit slot when its partition goes (here a retry,
/// queued behind every slot the later messages reserved) is left to the next owner, and the
/// later messages this worker already sent are not sent again: the commit names the offsets
/// finished beyond its position, and the next owner skips them.
///
/// On librdkafka's mock cluster: tansu 0.6 keeps a commit's metadata but answers every offset
/// fetch with an empty one (`tansu-broker`, `coordinator/group/administrator.rs`), so there the
/// next owner hands those messages to the provider again, as it did before commits carried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_left_waiting_past_the_grace_does_not_make_the_next_owner_repeat_later_sends() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let kafka = otp_test_support::test_kafka(mock.bootstrap_servers());
    let topics = kafka.topics();
    for topic in topics.all() {
        mock.create_topic(&topic, 1, 1).unwrap();
    }
    let sim = otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), SimConfig::default())
        .await
        .unwrap();
    let publisher = otp_producer::CodeRequestPublisher::new(
        &kafka,
        otp_producer::PublisherConfig {
            topics: topics.clone(),
            ..otp_producer::PublisherConfig::default()
        },
        kafka.credentials(PhoneHasher::new(HASH_KEY)).unwrap(),
    )
    .unwrap();
    let publish = |phone: String| {
        let s = otp_events::Submission::new(
            phone,
            "700700",
            vec![Whatsapp],
            chrono::Duration::minutes(5),
        );
        let publisher = &publisher;
        async move { publisher.publish(s).await.unwrap() }
    };
    // `0500` is answered 500 / 131000 twice: its retry waits behind the others' slots.
    let mut ids = vec![publish("+15550010500".into()).await];
    for i in 0..20 {
        ids.push(publish(load_phone(i)).await);
    }
    let worker = || {
        let mut c = test_config();
        c.limits = Some(otp_worker::LimitsPatch::all_of(&LimitsConfig {
            sender_per_second: 5,
            sender_burst: 1,
            recipient_period: None,
        }));
        c.shutdown_grace = Duration::from_secs(1);
        Worker::start(
            &kafka,
            c,
            open_limits(),
            PhoneHasher::new(HASH_KEY),
            whatsapp_client(&sim),
        )
    };
    let status_topic = topics.delivery_status();
    let first = worker();
    collect_json_until(&kafka.brokers, &status_topic, WITHIN, |got| {
        got.iter().filter(|s| s["status"] == "sent").count() >= 4
    })
    .await;
    first.stop().await.unwrap();
    let before = sim.messages().len();
    let second = worker();
    let wanted = ids.clone();
    let got = collect_json_until(&kafka.brokers, &status_topic, WITHIN, move |got| {
        wanted.iter().all(|id| {
            got.iter()
                .any(|s| s["request_id"] == id.as_str() && s["final"] == true)
        })
    })
    .await;
    let mut sends: std::collections::HashMap<String, usize> = Default::default();
    for m in accepted(&sim) {
        *sends.entry(m.to).or_default() += 1;
    }
    let twice = sends.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, 0,
        "{twice} recipients were sent twice ({before} calls before the first worker stopped)"
    );
    assert_eq!(sends.len(), ids.len(), "every recipient was sent to");
    for id in &ids {
        assert_eq!(exactly_one_final(&got, id)["status"], "sent");
    }
    assert!(
        sim.stats().rate_limit_violations.is_empty(),
        "{:?}",
        sim.stats()
    );
    second.stop().await.unwrap();
}
