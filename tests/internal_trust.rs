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

/// `payload` under `key` on `topic`, with the schema header and, when given, a MAC.
async fn write(
    t: &TestTopics,
    topic: &str,
    key: &str,
    schema: &str,
    payload: &[u8],
    mac: Option<String>,
) {
    let mut headers = vec![(HEADER_SCHEMA, schema)];
    if let Some(mac) = &mac {
        headers.push((HEADER_RECORD_MAC, mac.as_str()));
    }
    t.publish_with_headers(topic, key, payload, &headers).await;
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
    let sms = Worker::start(
        &t.kafka,
        test_config(),
        open_limits(),
        PhoneHasher::new(HASH_KEY),
        sms_client(&stack.sim),
    );
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
        let payload = awaiting(id, phone).to_json(&rules);
        let mac = keys.and_then(|k| mac(k, Role::Worker, schema, id, &payload));
        write(t, &topic, id, schema, &payload, mac).await;
    }
    let genuine = "genuine-record";
    let payload = awaiting(genuine, "+15551230103").to_json(&rules);
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
