//! The verification outcomes login systems report, read by every worker: the codes users
//! entered feed the conversion counts (`crate::conversion`).
//!
//! An outcome is acted on only when it verifies: signed (the `otp-report-mac` header) by a
//! sealing key that serves the outcome's app, as the login system's publisher signs it. An
//! unsigned or forged outcome could otherwise keep a pumped range open, or move the routes'
//! weights. Read from the topic's end: a worker that starts judges only the requests admitted
//! after it began to read (see `Conversion::listening`).

use crate::conversion::Conversion;
use otp_events::{decode_outcome, OutcomeKind, HEADER_REPORT_MAC, VERIFICATION_OUTCOME_SCHEMA};
use otp_kafka::broadcast::{self, StartAt};
use otp_kafka::KafkaArgs;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;

/// What became of an outcome read: the `result` label of `otp_conversion_outcomes_total`.
const RESULTS: [&str; 6] = [
    "matched",
    "unmatched",
    "not_verified",
    "invalid",
    "unsigned",
    "forged",
];

/// Read every outcome from now on, and hand the verified ones to `conversion`. Runs until
/// the handle is aborted.
pub fn listen(kafka: &KafkaArgs, channel: &str, conversion: Arc<Conversion>) -> JoinHandle<()> {
    for result in RESULTS {
        metrics::counter!("otp_conversion_outcomes_total", "result" => result).increment(0);
    }
    let keys = kafka.sealing.clone();
    let topic = kafka.topics().verification_outcomes();
    let ready = conversion.clone();
    broadcast::listen_to_messages(
        kafka,
        topic,
        &format!("otp-{channel}-outcomes"),
        StartAt::End,
        move || ready.listening(Instant::now()),
        move |m| {
            let result = read(keys.as_ref(), m, &conversion);
            metrics::counter!("otp_conversion_outcomes_total", "result" => result).increment(1);
        },
    )
}

/// Check one message and act on it; what became of it.
fn read(
    keys: Option<&otp_events::Keyring>,
    m: &BorrowedMessage<'_>,
    conversion: &Conversion,
) -> &'static str {
    let payload = m.payload().unwrap_or_default();
    let Ok(outcome) = decode_outcome(payload, chrono::Utc::now()) else {
        return "invalid";
    };
    let mac = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == HEADER_REPORT_MAC)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    });
    let (Some(keys), Some(mac)) = (keys, mac) else {
        return "unsigned";
    };
    let key = m.key().unwrap_or_default();
    let app = outcome.app.as_deref();
    if !keys.verify_report(VERIFICATION_OUTCOME_SCHEMA, app, key, payload, mac) {
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            "verification outcome refused: not signed by a key of its app; not acted on"
        );
        return "forged";
    }
    if outcome.outcome != OutcomeKind::Verified {
        return "not_verified";
    }
    if conversion.verified(&outcome.key(), app, Instant::now()) {
        "matched"
    } else {
        "unmatched"
    }
}
