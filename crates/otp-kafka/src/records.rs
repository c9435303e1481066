//! Internal records on their way to and from Kafka: signed by the role that writes them,
//! checked by the service that reads them (the scheme: [`otp_events::provenance`]).
//!
//! Writers ([`crate::writer::KafkaWriter`], the receipts ingress) add the
//! [`otp_events::HEADER_RECORD_MAC`] header through [`Signer`]; readers call [`verified`]
//! before they decode a record, and act only on what it lets through. A refusal is counted
//! (`otp_records_refused_total{topic, reason}`, alerted on) and logged with its reason and
//! coordinates, never its content.

use otp_events::{Record, RecordKeys, Role, HEADER_RECORD_MAC, HEADER_SCHEMA};
use rdkafka::message::Headers;
use rdkafka::Message;

/// Signs records as one role.
#[derive(Debug, Clone)]
pub struct Signer {
    keys: RecordKeys,
    role: Role,
}

impl Signer {
    /// A signer for `role`, if `keys` hold one of its keys.
    pub fn new(keys: &RecordKeys, role: Role) -> Option<Self> {
        keys.require(&[role]).ok().map(|()| Self {
            keys: keys.clone(),
            role,
        })
    }

    /// The signer of a service of `role`, from the keys in its settings (none without them:
    /// what it writes goes unsigned, and no reader acts on it).
    pub fn of(kafka: &crate::KafkaArgs, role: Role) -> Option<Self> {
        Self::new(kafka.record_keys.as_ref()?, role)
    }

    /// The MAC header's value for a record of `schema` under `key`; `None` payload: a
    /// tombstone.
    pub fn header(&self, schema: &str, key: &[u8], payload: Option<&[u8]>) -> String {
        self.keys.sign(
            self.role,
            Record {
                schema,
                key,
                payload,
            },
        )
    }
}

/// The label of each internal topic in `otp_records_refused_total`.
pub const TOPICS: [&str; 4] = ["pending", "receipts", "admissions", "signals"];

/// Whether `m`, read from the internal topic labelled `topic`, was written by one of
/// `accepted` (by its MAC over the schema header, key and payload). Without keys nothing
/// verifies. A refusal is counted and logged.
pub fn verified<M: Message>(
    keys: Option<&RecordKeys>,
    m: &M,
    accepted: &[Role],
    topic: &'static str,
) -> bool {
    let header = |name: &str| {
        m.headers()
            .and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value))
    };
    let result = match keys {
        None => Err(otp_events::ProvenanceError::Keys("no keys".into())),
        Some(keys) => {
            let schema = header(HEADER_SCHEMA)
                .and_then(|s| std::str::from_utf8(s).ok())
                .unwrap_or("");
            keys.verify(
                header(HEADER_RECORD_MAC),
                accepted,
                Record {
                    schema,
                    key: m.key().unwrap_or_default(),
                    payload: m.payload(),
                },
            )
        }
    };
    match result {
        Ok(_) => true,
        Err(e) => {
            metrics::counter!("otp_records_refused_total", "topic" => topic, "reason" => e.kind())
                .increment(1);
            tracing::error!(
                topic = m.topic(),
                partition = m.partition(),
                offset = m.offset(),
                error = %e,
                "internal record refused: not written by a role that writes this topic; not acted on"
            );
            false
        }
    }
}

/// Every series of `otp_records_refused_total` from the start, so an alert on its increase
/// sees zero, not nothing.
pub fn register_refusals() {
    for topic in TOPICS {
        for reason in otp_events::ProvenanceError::KINDS {
            metrics::counter!("otp_records_refused_total", "topic" => topic, "reason" => reason)
                .increment(0);
        }
    }
}
