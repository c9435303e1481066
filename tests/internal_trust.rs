//! Write access to an internal topic is not enough to make a service act: the tracker acts
//! only on pending records a worker (or a tracker) signed, and on receipts the ingress (or a
//! tracker) signed (`otp_events::provenance`). On a real broker, with the simulator, the
//! workers and the tracker: forged records next to a genuine one, which is acted on and tells
//! when the forged ones would have been.

mod common;

use common::*;
use otp::stack::{sms_client, Tracker, Worker};
use otp_events::Channel::{Sms, Whatsapp};
use otp_events::{
    CodeRequest, ConfirmationState, ErrorCategory, PendingConfirmation, PhoneHasher, Receipt,
    ReceiptError, ReceiptStatus, RecordKeys, Role, Rules, Submission, HEADER_RECORD_MAC,
    HEADER_SCHEMA, PENDING_CONFIRMATION_SCHEMA, RECEIPT_SCHEMA,
};
use otp_receipts::tracker::TrackerConfig;
use otp_test_support::{test_record_keys, TestTopics};
use serde_json::Value;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(90);

fn tracker(t: &TestTopics) -> Tracker {
    let config = TrackerConfig {
        tick: Duration::from_millis(50),
        group_id: format!("{}tracker", t.kafka.topic_prefix),
        ..TrackerConfig::default()
    };
    Tracker::start(&t.kafka, config, PhoneHasher::new(HASH_KEY))
}

/// An SMS worker on `kafka`'s topics, sending through the stack's simulator.
fn sms_worker(kafka: &otp_kafka::KafkaArgs, stack: &Stack) -> Worker {
    Worker::start(
        kafka,
        test_config(),
        open_limits(),
        PhoneHasher::new(HASH_KEY),
        sms_client(&stack.sim),
    )
}

fn request(id: &str, phone: &str) -> CodeRequest {
    let mut s = Submission::new(
        phone,
        "424242",
        vec![Whatsapp, Sms],
        chrono::Duration::minutes(5),
    );
    s.request_id = Some(id.into());
    s.complete(chrono::Utc::now())
}

/// A WhatsApp send awaiting its receipt for one more second, as a worker records it.
fn awaiting(id: &str, phone: &str) -> PendingConfirmation {
    let now = chrono::Utc::now();
    PendingConfirmation {
        provider: None,
        schema: PENDING_CONFIRMATION_SCHEMA.into(),
        request: request(id, phone),
        channel: Whatsapp,
        provider_message_id: format!("wamid.{id}"),
        accepted_at: now,
        confirm_by: Some(now + chrono::Duration::seconds(1)),
        timeout_is_final: false,
        state: ConfirmationState::Awaiting,
        reported: Vec::new(),
    }
}

/// `payload` under `key` on `topic`, with the schema header and, when given, a MAC; returns
/// where it landed.
async fn write(
    t: &TestTopics,
    topic: &str,
    key: &str,
    schema: &str,
    payload: &[u8],
    mac: Option<String>,
) -> (i32, i64) {
    let mut headers = vec![(HEADER_SCHEMA, schema)];
    if let Some(mac) = &mac {
        headers.push((HEADER_RECORD_MAC, mac.as_str()));
    }
    t.publish_with_headers(topic, key, payload, &headers).await
}

fn mac(keys: &RecordKeys, role: Role, schema: &str, key: &str, payload: &[u8]) -> Option<String> {
    Some(keys.sign(
        role,
        otp_events::Record {
            schema,
            key: key.as_bytes(),
            payload: Some(payload),
        },
    ))
}

fn statuses_of<'a>(statuses: &'a [Value], id: &str) -> Vec<&'a Value> {
    statuses.iter().filter(|s| s["request_id"] == id).collect()
}

/// A pending record nobody of ours signed (none, or a stranger's key) would make the tracker
/// sign a fallback, and the SMS worker send the code: it is refused. The genuine record
/// beside it falls back at its deadline (`receipt_timeout`) and is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pending_records_make_no_fallback() {
    let stack = Stack::start(1, roomy_sim()).await;
    let t = &stack.t;
    let sms = sms_worker(&t.kafka, &stack);
    let tracker = tracker(t);
    let rules = Rules {
        sealing: t.kafka.sealing.clone(),
        ..Rules::default()
    };
    let topic = t.topics.pending_confirmations();
    let schema = PENDING_CONFIRMATION_SCHEMA;
    let (stranger, _) = RecordKeys::generate();
    let forged = [
        ("forged-unsigned", "+15551230101", None),
        ("forged-stranger", "+15551230102", Some(&stranger)),
    ];
    for (id, phone, keys) in forged {
        let payload = awaiting(id, phone).to_json(&rules).unwrap();
        let mac = keys.and_then(|k| mac(k, Role::Worker, schema, id, &payload));
        write(t, &topic, id, schema, &payload, mac).await;
    }
    let genuine = "genuine-record";
    let payload = awaiting(genuine, "+15551230103").to_json(&rules).unwrap();
    let signed = mac(&test_record_keys(), Role::Worker, schema, genuine, &payload);
    write(t, &topic, genuine, schema, &payload, signed).await;

    let statuses = stack
        .statuses_until_final(&[genuine.to_string()], WITHIN)
        .await;
    let fin = exactly_one_final(&statuses, genuine);
    assert_eq!(
        (fin["status"].as_str(), fin["channel"].as_str()),
        (Some("sent"), Some("sms"))
    );
    for (id, phone, _) in forged {
        assert!(
            statuses_of(&statuses, id).is_empty(),
            "{id}: {:?}",
            statuses_of(&statuses, id)
        );
        assert!(
            stack.sim.messages().iter().all(|m| m.to != phone),
            "{id}: a code went out"
        );
    }
    sms.stop().await.unwrap();
    tracker.stop().await.unwrap();
}

/// A `failed` receipt nobody of ours signed, for a real WhatsApp send awaiting its receipt,
/// would send the code again by SMS: it is refused. The genuine one beside it falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_failed_receipt_sends_nothing_again() {
    let stack = Stack::start(1, roomy_sim()).await;
    let t = &stack.t;
    let mut confirming = test_config();
    confirming.confirmation = Some(otp_worker::ConfirmationConfig {
        window: Duration::from_secs(60),
        fallback_time: Duration::from_secs(2),
        ..Default::default()
    });
    let workers = vec![
        stack.worker(Whatsapp, confirming),
        stack.worker(Sms, test_config()),
    ];
    let tracker = tracker(t);
    let victim = stack
        .publish("+15551230104", "104104", &[Whatsapp, Sms])
        .await;
    let control = stack
        .publish("+15551230105", "105105", &[Whatsapp, Sms])
        .await;
    let wait = [victim.clone(), control.clone()];
    let statuses = stack
        .statuses_until(WITHIN, move |got| {
            wait.iter().all(|id| {
                got.iter()
                    .any(|s| s["request_id"] == id.as_str() && s["status"] == "accepted")
            })
        })
        .await;
    let message_of = |id: &str| {
        statuses
            .iter()
            .find(|s| s["request_id"] == id && s["status"] == "accepted")
            .and_then(|s| s["provider_message_id"].as_str())
            .unwrap()
            .to_string()
    };
    let failed = |id: &str| Receipt {
        schema: RECEIPT_SCHEMA.into(),
        request_id: Some(id.into()),
        app: None,
        channel: Whatsapp,
        provider: Some(otp_events::Provider::WhatsappCloud),
        provider_message_id: message_of(id),
        status: ReceiptStatus::Failed,
        error: Some(ReceiptError {
            code: "131026".into(),
            category: ErrorCategory::Recipient,
            message: "Message undeliverable".into(),
        }),
        provider_timestamp: None,
        received_at: chrono::Utc::now(),
    };
    let topic = t.topics.delivery_receipts();
    // The forged one first: applied (or refused) before the genuine one.
    write(
        t,
        &topic,
        &victim,
        RECEIPT_SCHEMA,
        &failed(&victim).to_json(),
        None,
    )
    .await;
    let payload = failed(&control).to_json();
    let signed = mac(
        &test_record_keys(),
        Role::Ingress,
        RECEIPT_SCHEMA,
        &control,
        &payload,
    );
    write(t, &topic, &control, RECEIPT_SCHEMA, &payload, signed).await;

    let statuses = stack
        .statuses_until_final(std::slice::from_ref(&control), WITHIN)
        .await;
    final_is(&statuses, &control, "sent", "sms");
    let victim_story = story(&statuses, &victim);
    assert_eq!(
        victim_story,
        vec![("accepted".to_string(), "whatsapp".to_string())],
        "the forged receipt changed nothing"
    );
    assert_eq!(
        stack
            .sim
            .messages()
            .iter()
            .filter(|m| m.to == "+15551230104")
            .count(),
        1,
        "one code (the WhatsApp one) to the victim"
    );
    for w in workers {
        w.stop().await.unwrap();
    }
    tracker.stop().await.unwrap();
}

/// Each login system's producer holds its own app's sealing key only (`id@app`), while the
/// workers hold every app's. On a real broker: shop's producer delivers shop's codes, cannot
/// seal a request for another app (the error names `app`), and a request for bank sealed with
/// shop's key (written straight to the topic, as a producer holding it could) is refused by
/// the worker with its bytes dead-lettered: the key belongs to another app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_holding_one_apps_key_cannot_seal_or_forge_another_apps_codes() {
    let stack = Stack::start(1, roomy_sim()).await;
    let t = &stack.t;
    let shop_hex = "5b".repeat(32);
    let mut workers_kafka = t.kafka.clone();
    workers_kafka.sealing = Some(
        otp_events::Keyring::parse(&format!(
            "{},s1@shop={shop_hex}",
            otp_test_support::TEST_SEAL_KEYS
        ))
        .unwrap(),
    );
    let worker = sms_worker(&workers_kafka, &stack);
    let shop_keys = otp_events::Keyring::parse(&format!("s1@shop={shop_hex}")).unwrap();
    let shop = otp_kafka::CodeRequestPublisher::new(
        &t.kafka,
        otp_kafka::PublisherConfig {
            topics: t.topics.clone(),
            ..otp_kafka::PublisherConfig::default()
        },
        otp_kafka::Credentials::new(PhoneHasher::new(HASH_KEY), shop_keys),
    )
    .unwrap();
    let submission = |app: &str, id: &str, phone: &str| {
        let mut s = Submission::new(phone, "424242", vec![Sms], chrono::Duration::minutes(5));
        s.request_id = Some(id.into());
        s.app = Some(app.into());
        s
    };
    shop.publish(submission("shop", "own-1", "+15551270001"))
        .await
        .unwrap();
    let refused = shop
        .publish(submission("bank", "other-1", "+15551270002"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("app") && refused.contains("no key"),
        "{refused}"
    );
    // The forgery: bank's request, sealed with shop's key bytes under shop's key id.
    let forger = Rules {
        sealing: Some(otp_events::Keyring::parse(&format!("s1={shop_hex}")).unwrap()),
        ..Rules::default()
    };
    let mut forged = request("forged-1", "+15551270003");
    forged.app = Some("bank".into());
    forged.channels = vec![Sms];
    t.publish_raw(
        &t.topics.requests(Sms),
        "k",
        &forger.encode_request(&forged).unwrap(),
    )
    .await;

    let ids = ["own-1".to_string(), "forged-1".to_string()];
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    let own = exactly_one_final(&statuses, "own-1");
    assert_eq!(
        (own["status"].as_str(), own["app"].as_str()),
        (Some("sent"), Some("shop"))
    );
    let rejected = exactly_one_final(&statuses, "forged-1");
    assert_eq!(rejected["status"], "rejected");
    let reason = rejected["error"]["message"].as_str().unwrap();
    assert!(
        reason.contains("sealed") && reason.contains("another app"),
        "{reason}"
    );
    let dead =
        otp_test_support::read_messages(&t.kafka.brokers, &t.topics.dead_letter(), 1, WITHIN).await;
    assert_eq!(dead.len(), 1, "dead-lettered with its bytes");
    let sent_to: Vec<String> = stack.sim.messages().into_iter().map(|m| m.to).collect();
    assert!(sent_to.contains(&"+15551270001".to_string()));
    assert!(!sent_to
        .iter()
        .any(|to| to == "+15551270002" || to == "+15551270003"));
    worker.stop().await.unwrap();
}

/// A pending record signed by a worker that the tracker cannot open (sealed under a key it
/// does not hold: a key rotation done in the wrong order) holds its partition's deadlines:
/// acting on the rest of that partition could settle a request wrongly, and skipping the
/// record would leave its request without a fallback or a final word. The other partition's
/// records, due at the same instant, fall back and are sent meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_pending_record_holds_its_partitions_deadlines() {
    let stack = Stack::start(2, roomy_sim()).await;
    let t = &stack.t;
    let sms = sms_worker(&t.kafka, &stack);
    let tracker = tracker(t);
    let topic = t.topics.pending_confirmations();
    let schema = PENDING_CONFIRMATION_SCHEMA;
    let keys = test_record_keys();

    let (foreign_ring, _) = otp_events::Keyring::generate("rotated-too-early");
    let foreign = Rules {
        sealing: Some(foreign_ring),
        ..Rules::default()
    };
    let id = "unopenable-record";
    let payload = awaiting(id, "+15551239999").to_json(&foreign).unwrap();
    let signed = mac(&keys, Role::Worker, schema, id, &payload);
    let (held, _) = write(t, &topic, id, schema, &payload, signed).await;

    let rules = Rules {
        sealing: t.kafka.sealing.clone(),
        ..Rules::default()
    };
    let (mut on_held, mut elsewhere) = (Vec::new(), Vec::new());
    for i in 0..12 {
        let id = format!("due-{i}");
        let payload = awaiting(&id, &format!("+155512302{i:02}"))
            .to_json(&rules)
            .unwrap();
        let signed = mac(&keys, Role::Worker, schema, &id, &payload);
        let (partition, _) = write(t, &topic, &id, schema, &payload, signed).await;
        if partition == held {
            on_held.push(id);
        } else {
            elsewhere.push(id);
        }
    }
    assert!(
        !on_held.is_empty() && !elsewhere.is_empty(),
        "records on both partitions: {on_held:?} {elsewhere:?}"
    );

    // The other partition's records fall back and are sent: the tick that made those
    // fallbacks would have made the held partition's too.
    let statuses = stack.statuses_until_final(&elsewhere, WITHIN).await;
    for id in &elsewhere {
        assert_eq!(exactly_one_final(&statuses, id)["status"], "sent", "{id}");
    }
    for id in on_held.iter().map(String::as_str).chain([id]) {
        assert!(
            statuses_of(&statuses, id).is_empty(),
            "{id} was acted on: {:?}",
            statuses_of(&statuses, id)
        );
    }
    assert!(stack.sim.messages().iter().all(|m| m.to != "+15551239999"));
    sms.stop().await.unwrap();
    tracker.stop().await.unwrap();
}
