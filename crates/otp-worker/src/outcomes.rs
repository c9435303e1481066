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
    let mac = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == HEADER_REPORT_MAC)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    });
    let payload = m.payload().unwrap_or_default();
    let key = m.key().unwrap_or_default();
    let result = act(keys, key, payload, mac, conversion);
    if result == "forged" {
        tracing::warn!(
            partition = m.partition(),
            offset = m.offset(),
            "verification outcome refused: not signed by a key of its app; not acted on"
        );
    }
    result
}

/// The decision on one outcome record (its Kafka key, payload and `otp-report-mac` header),
/// and the act: a verified outcome that verifies goes to `conversion`.
fn act(
    keys: Option<&otp_events::Keyring>,
    key: &[u8],
    payload: &[u8],
    mac: Option<&str>,
    conversion: &Conversion,
) -> &'static str {
    let Ok(outcome) = decode_outcome(payload, chrono::Utc::now()) else {
        return "invalid";
    };
    let (Some(keys), Some(mac)) = (keys, mac) else {
        return "unsigned";
    };
    let app = outcome.app.as_deref();
    if !keys.verify_report(VERIFICATION_OUTCOME_SCHEMA, app, key, payload, mac) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversion::{About, ConversionConfig};
    use otp_events::{Channel, Keyring, VerificationOutcome};

    #[test]
    fn only_a_verified_outcome_signed_for_its_app_counts() {
        let conversion = Conversion::new(&ConversionConfig::default(), Channel::Sms, vec![]);
        conversion.listening(Instant::now());
        let about = About {
            request: "shop/r1",
            app: Some("shop"),
            range: "range",
            country: Some("GB"),
        };
        conversion.admitted(&about, Instant::now());
        let (_, text) = Keyring::generate("k1");
        let (_, other) = Keyring::generate("k2");
        let shop = Keyring::parse(&text.replacen('=', "@shop=", 1)).unwrap();
        let bank = Keyring::parse(&other.replacen('=', "@bank=", 1)).unwrap();
        let workers = Keyring::parse(&format!(
            "{},{}",
            text.replacen('=', "@shop=", 1),
            other.replacen('=', "@bank=", 1)
        ))
        .unwrap();
        let record = |kind, id: &str| {
            let mut o = VerificationOutcome::new(id, kind, chrono::Utc::now());
            o.app = Some("shop".into());
            (o.key(), o.to_json())
        };
        let sign = |ring: &Keyring, key: &str, payload: &[u8]| {
            ring.sign_report(
                VERIFICATION_OUTCOME_SCHEMA,
                Some("shop"),
                key.as_bytes(),
                payload,
            )
            .ok()
        };
        let run = |key: &str, payload: &[u8], mac: Option<String>| {
            act(
                Some(&workers),
                key.as_bytes(),
                payload,
                mac.as_deref(),
                &conversion,
            )
        };

        let (key, payload) = record(OutcomeKind::Verified, "r1");
        assert_eq!(run(&key, &payload, None), "unsigned");
        // Signed by another app's producer: it holds no key of `shop`.
        assert_eq!(sign(&bank, &key, &payload), None);
        let bank_any = Keyring::parse(&other).unwrap();
        assert_eq!(
            run(&key, &payload, sign(&bank_any, &key, &payload)),
            "forged"
        );
        // Altered after signing.
        let mac = sign(&shop, &key, &payload);
        let altered = String::from_utf8(payload.clone())
            .unwrap()
            .replace("r1", "r2");
        assert_eq!(run("shop/r2", altered.as_bytes(), mac.clone()), "forged");
        assert_eq!(run(&key, b"{\"schema\":1}", mac.clone()), "invalid");
        assert_eq!(run(&key, &payload, mac.clone()), "matched");
        let (key, payload) = record(OutcomeKind::Abandoned, "r1");
        assert_eq!(
            run(&key, &payload, sign(&shop, &key, &payload)),
            "not_verified"
        );
        let (key, payload) = record(OutcomeKind::Verified, "never-seen");
        assert_eq!(
            run(&key, &payload, sign(&shop, &key, &payload)),
            "unmatched"
        );
        // A worker without keys acts on nothing.
        let (key, payload) = record(OutcomeKind::Verified, "r1");
        let mac = sign(&shop, &key, &payload);
        assert_eq!(
            act(None, key.as_bytes(), &payload, mac.as_deref(), &conversion),
            "unsigned"
        );
    }
}
