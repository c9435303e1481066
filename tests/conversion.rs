//! Conversion acted on, end to end on a real broker (tansu) and the simulator over HTTP: the
//! test plays the login system, reporting `verified` (signed, through the library) for the
//! codes its users enter. A pumped number range, whose codes nobody enters, is cut off within
//! a bounded number of requests while real users of the same country keep getting theirs; a
//! provider whose codes say `delivered` but are never entered loses its weight there.

mod common;

use common::*;
use otp::stack::{sms_client_with_vonage, Worker};
use otp_events::Channel::Sms;
use otp_events::{OutcomeKind, PhoneHasher, StatusVersion, Submission, VerificationOutcome};
use otp_worker::{ConversionConfig, ConversionRule};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(90);

/// `n` SMS-only requests, one to each of `number(0..n)`, published `every` apart (as users
/// and a pump arrive over time, not at once); their ids.
async fn publish(
    stack: &Stack,
    n: usize,
    every: Duration,
    number: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut pace = tokio::time::interval(every);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        pace.tick().await;
        let s = Submission::new(number(i), "246813", vec![Sms], chrono::Duration::minutes(5));
        ids.push(stack.publisher.publish(s).await.unwrap());
    }
    ids
}

/// The login system: its users enter the codes of `ids` that ended `sent` and that `entered`
/// picks.
async fn enter_codes(
    stack: &Stack,
    statuses: &[Value],
    ids: &[String],
    entered: impl Fn(&Value) -> bool,
) -> usize {
    let mut n = 0;
    for id in ids {
        let fin = exactly_one_final(statuses, id);
        if fin["status"] == "sent" && entered(&fin) {
            let outcome = VerificationOutcome::new(id, OutcomeKind::Verified, chrono::Utc::now());
            stack.publisher.publish_outcome(&outcome).await.unwrap();
            n += 1;
        }
    }
    n
}

/// Real users, each in a number range of their own (`+1555 RRR 4321`).
fn user(i: usize) -> String {
    format!("+1555{:03}4321", 100 + i)
}

/// Real users of the app, one after another from `user(from)`, until `pumping` ends (at
/// least 5): each code is sent and entered. Returns how many logged in.
async fn real_users(
    publisher: otp_producer::CodeRequestPublisher,
    brokers: String,
    topic: String,
    from: usize,
    pumping: Arc<AtomicBool>,
) -> usize {
    let mut n = 0;
    while pumping.load(Ordering::SeqCst) || n < 5 {
        let s = Submission::new(
            user(from + n),
            "975310",
            vec![Sms],
            chrono::Duration::minutes(5),
        );
        let id = publisher.publish(s).await.unwrap();
        let want = id.clone();
        let done = move |got: &[Value]| {
            got.iter()
                .any(|s| s["request_id"] == want.as_str() && s["final"] == true)
        };
        let statuses = otp_test_support::collect_json_until(&brokers, &topic, WITHIN, done).await;
        assert_eq!(
            exactly_one_final(&statuses, &id)["status"],
            "sent",
            "a real user's code"
        );
        let outcome = VerificationOutcome::new(&id, OutcomeKind::Verified, chrono::Utc::now());
        publisher.publish_outcome(&outcome).await.unwrap();
        n += 1;
    }
    n
}

/// The pumped range: `+1555777 5000` onwards.
fn pumped(i: usize) -> String {
    format!("+1555777{:04}", 5000 + i)
}

/// A pump to one US range, at 4 requests a second, none of whose codes is entered; real US
/// users in other ranges, of the same app, log in all along and enter theirs. With a floor of 20 % over 10 judged requests and a
/// grace of 3 s, the pump gets the 10 judged requests and what it sends within the grace of
/// the tenth (about 12 more), then every request to the range is refused `low_conversion`;
/// the real users' codes are all sent before, during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pumped_range_is_cut_off_while_the_country_keeps_converting() {
    let stack = Stack::start(2, roomy_sim()).await;
    let mut config = test_config();
    config.conversion = ConversionConfig {
        per_range: Some(ConversionRule {
            min_requests: 10,
            floor: 0.2,
        }),
        window: Duration::from_secs(300),
        grace: Duration::from_secs(3),
        ..ConversionConfig::default()
    };
    let worker = stack.worker(Sms, config);

    // Real users first: the app is seen to report outcomes.
    let before = publish(&stack, 10, Duration::from_millis(50), user).await;
    let statuses = stack.statuses_until_final(&before, WITHIN).await;
    assert_eq!(enter_codes(&stack, &statuses, &before, |_| true).await, 10);
    metric_reaches(
        "otp_conversion_outcomes_total",
        "result=\"matched\"",
        10.0,
        WITHIN,
    )
    .await;

    // The pump, while real users of the same country keep logging in and entering their
    // codes (so the app is seen to report outcomes all along).
    let pumping = Arc::new(AtomicBool::new(true));
    let users = tokio::spawn(real_users(
        stack.publisher.clone(),
        stack.t.kafka.brokers.clone(),
        stack.t.topics.delivery_status(),
        20,
        pumping.clone(),
    ));
    let pump = publish(&stack, 60, Duration::from_millis(250), pumped).await;
    pumping.store(false, Ordering::SeqCst);
    let during = users.await.unwrap();
    let statuses = stack.statuses_until_final(&pump, WITHIN).await;

    let ends: Vec<Value> = pump
        .iter()
        .map(|id| exactly_one_final(&statuses, id))
        .collect();
    let sent = ends.iter().filter(|s| s["status"] == "sent").count();
    let first_refused = ends
        .iter()
        .position(|s| s["status"] == "failed")
        .expect("the pump was cut off");
    println!("pump: {sent} of 60 sent before the range was refused");
    assert!(
        (10..=30).contains(&sent),
        "at least the volume the rule needs, at most that plus the grace's: {sent} sent"
    );
    for s in &ends[first_refused..] {
        assert_eq!(s["status"], "failed", "refused from then on: {s}");
        assert_eq!(s["error"]["code"], "low_conversion", "{s}");
        assert_eq!(s["error"]["category"], "blocked", "{s}");
    }
    metric_reaches(
        "otp_conversion_refused_total",
        "scope=\"range\",mode=\"enforce\"",
        1.0,
        WITHIN,
    )
    .await;
    assert!(during >= 5, "{during} real users logged in during the pump");

    // After the cut: real users of the country are still served, and the range stays shut.
    let after = publish(&stack, 10, Duration::from_millis(50), |i| user(40 + i)).await;
    let again = publish(&stack, 3, Duration::from_millis(50), |i| pumped(100 + i)).await;
    let mut ids = after.clone();
    ids.extend(again.iter().cloned());
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    for id in &after {
        final_is(&statuses, id, "sent", "sms");
    }
    for id in &again {
        assert_eq!(
            exactly_one_final(&statuses, id)["error"]["code"],
            "low_conversion"
        );
    }
    worker.stop().await.unwrap();
}

/// German codes go half through Twilio, half through Vonage. Both accept every code and
/// report it delivered, but the users whose code came through Twilio never get it (a grey
/// route): only Vonage's codes are entered. Twilio loses its weight in Germany, and the next
/// German codes go mostly through Vonage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_whose_codes_are_never_entered_loses_its_weight_there() {
    let mut stack = Stack::start(2, roomy_sim()).await;
    stack.t.kafka.status_schema = StatusVersion::V2; // statuses name the provider
    stack.publisher = stack.t.publisher(PhoneHasher::new(HASH_KEY));
    let mut config = test_config();
    config.conversion = ConversionConfig {
        per_range: None,
        window: Duration::from_secs(300),
        // Longer than the test's loop from a `sent` status to an outcome read back.
        grace: Duration::from_secs(10),
        ..ConversionConfig::default()
    };
    config.routes.conversion_min_sends = 15;
    config.routes.demote_every = Duration::from_millis(200);
    let sim = &stack.sim;
    let client = sms_client_with_vonage(sim, &sim.base_url(), None);
    let worker = Worker::start(
        &stack.t.kafka,
        config,
        open_limits(),
        PhoneHasher::new(HASH_KEY),
        client,
    );
    let de = |i: usize| format!("+49151{:08}", 30_000_000 + i);
    let through = |statuses: &[Value], ids: &[String], provider: &str| {
        ids.iter()
            .filter(|id| exactly_one_final(statuses, id)["provider"] == provider)
            .count()
    };

    let first = publish(&stack, 60, Duration::from_millis(40), de).await;
    let statuses = stack.statuses_until_final(&first, WITHIN).await;
    let twilio = through(&statuses, &first, "twilio");
    assert!(
        (15..=45).contains(&twilio),
        "weight 1:1 at first: Twilio took {twilio} of 60"
    );
    let entered = enter_codes(&stack, &statuses, &first, |s| s["provider"] == "vonage").await;
    assert_eq!(entered, 60 - twilio);
    metric_reaches(
        "otp_route_demotions_total",
        "provider=\"twilio\",country=\"DE\",reason=\"conversion\"",
        3.0,
        WITHIN,
    )
    .await;

    let next = publish(&stack, 60, Duration::from_millis(20), |i| de(1000 + i)).await;
    let statuses = stack.statuses_until_final(&next, WITHIN).await;
    let twilio = through(&statuses, &next, "twilio");
    println!("grey route: Twilio took {twilio} of 60 German codes after its demotion");
    assert!(twilio <= 15, "Twilio took {twilio} of 60 German codes");
    worker.stop().await.unwrap();
}
