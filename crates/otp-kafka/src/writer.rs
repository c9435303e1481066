//! The writer: everything a worker or the confirmation tracker writes to Kafka, delivery
//! statuses, dead letters, fallback requests and pending confirmations. Their decisions are
//! made elsewhere, as values; this is the one place that writes them.
//!
//! Every write is acknowledged by the broker (`acks=all`, idempotent producer) before the
//! message that caused it counts as finished, and is retried until it is: a status that was
//! never written would leave a request without its final word.

use crate::session::ProducerSession;
use crate::{CodeRequestPublisher, KafkaArgs, PublishError, PublisherConfig};
use otp_events::{
    CodeRequest, DeliveryStatus, MessageIndex, PendingConfirmation, Receipt, Topics, HEADER_SCHEMA,
    MESSAGE_INDEX_SCHEMA, PENDING_CONFIRMATION_SCHEMA, RECEIPT_SCHEMA,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use std::future::Future;
use std::time::Duration;

/// Headers added to a dead letter, beside the original message's own.
pub const DLQ_REASON: &str = "otp-dlq-reason";
pub const DLQ_SOURCE_TOPIC: &str = "otp-dlq-source-topic";
pub const DLQ_SOURCE_PARTITION: &str = "otp-dlq-source-partition";
pub const DLQ_SOURCE_OFFSET: &str = "otp-dlq-source-offset";

pub struct KafkaWriter {
    producer: ProducerSession,
    topics: Topics,
    fallback: CodeRequestPublisher,
}

impl KafkaWriter {
    pub fn new(kafka: &KafkaArgs, fallback: CodeRequestPublisher) -> Result<Self, KafkaError> {
        let mut config: ClientConfig = kafka.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000");
        kafka.apply_overrides(&mut config);
        Ok(Self {
            producer: ProducerSession::new(config)?,
            topics: kafka.topics(),
            fallback,
        })
    }

    /// A writer whose fallbacks go to the next channel's topic under `rules` (a request the
    /// contract refuses is not handed on), keyed by `hasher` like a login system's publish.
    pub fn for_fallbacks(
        kafka: &KafkaArgs,
        rules: otp_events::Rules,
        hasher: otp_events::PhoneHasher,
    ) -> anyhow::Result<Self> {
        let config = PublisherConfig {
            topics: kafka.topics(),
            rules,
            ack_timeout: Duration::from_secs(10),
        };
        let publisher = CodeRequestPublisher::new(kafka, config, hasher)?;
        Ok(Self::new(kafka, publisher)?)
    }

    /// Write a status, keyed by request_id.
    pub async fn status(&self, status: &DeliveryStatus) {
        let topic = self.topics.delivery_status();
        let payload = status.to_json();
        let schema = otp_events::DELIVERY_STATUS_SCHEMA;
        self.keyed("status", &topic, &status.request_id, Some(&payload), schema)
            .await;
        metrics::counter!(
            "otp_statuses_total",
            "channel" => status.channel.as_str(),
            "status" => status.status.as_str()
        )
        .increment(1);
    }

    /// Write (or overwrite: the topic is compacted) a send's pending confirmation.
    pub async fn pending(&self, record: &PendingConfirmation) {
        let topic = self.topics.pending_confirmations();
        let payload = record.to_json(&self.fallback.config().rules);
        let id = &record.request.request_id;
        self.keyed(
            "pending",
            &topic,
            id,
            Some(&payload),
            PENDING_CONFIRMATION_SCHEMA,
        )
        .await;
    }

    /// Write which request a provider message belongs to, on the pending topic under the
    /// message's key, so a receipt without correlation can be resolved.
    pub async fn message_index(&self, public_message_id: &str, index: &MessageIndex) {
        let topic = self.topics.pending_confirmations();
        let key = otp_events::message_key(public_message_id);
        let payload = index.to_json();
        self.keyed(
            "pending",
            &topic,
            &key,
            Some(&payload),
            MESSAGE_INDEX_SCHEMA,
        )
        .await;
    }

    /// Write a receipt under its key: the tracker hands on a receipt it resolved to the
    /// partition of its request.
    pub async fn receipt(&self, receipt: &Receipt) {
        let topic = self.topics.delivery_receipts();
        let payload = receipt.to_json();
        let key = receipt.key();
        self.keyed("receipt", &topic, &key, Some(&payload), RECEIPT_SCHEMA)
            .await;
    }

    /// Delete a pending confirmation (or a message index): a tombstone for its key.
    pub async fn forget_pending(&self, request_id: &str) {
        let topic = self.topics.pending_confirmations();
        self.keyed(
            "pending",
            &topic,
            request_id,
            None,
            PENDING_CONFIRMATION_SCHEMA,
        )
        .await;
    }

    /// One keyed write with the schema header, retried until acknowledged. `None` is a
    /// tombstone.
    async fn keyed(
        &self,
        what: &'static str,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        schema: &str,
    ) {
        retry_until_acked(what, || {
            let headers = OwnedHeaders::new().insert(Header {
                key: HEADER_SCHEMA,
                value: Some(schema),
            });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).key(key.as_bytes()).headers(headers);
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            self.send(record)
        })
        .await;
    }

    /// Write the original message to the dead-letter topic: same key, payload and headers,
    /// plus headers naming the reason and where it came from.
    pub async fn dead_letter(&self, original: &OwnedMessage, reason: &str) {
        let topic = self.topics.dead_letter();
        retry_until_acked("dead letter", || {
            let mut headers = OwnedHeaders::new();
            if let Some(h) = original.headers() {
                for header in h.iter() {
                    headers = headers.insert(Header {
                        key: header.key,
                        value: header.value,
                    });
                }
            }
            let partition = original.partition().to_string();
            let offset = original.offset().to_string();
            headers = headers
                .insert(Header {
                    key: DLQ_REASON,
                    value: Some(reason),
                })
                .insert(Header {
                    key: DLQ_SOURCE_TOPIC,
                    value: Some(original.topic()),
                })
                .insert(Header {
                    key: DLQ_SOURCE_PARTITION,
                    value: Some(&partition),
                })
                .insert(Header {
                    key: DLQ_SOURCE_OFFSET,
                    value: Some(&offset),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers);
            if let Some(key) = original.key() {
                record = record.key(key);
            }
            if let Some(payload) = original.payload() {
                record = record.payload(payload);
            }
            self.send(record)
        })
        .await;
        metrics::counter!("otp_dead_letters_total").increment(1);
    }

    /// One send on the current producer session; a broken session is replaced for the retry.
    async fn send(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<(), String> {
        let lease = self.producer.lease();
        let sent = lease
            .producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await;
        match sent {
            Ok(_) => {
                self.producer.succeeded(&lease);
                Ok(())
            }
            Err((e, _)) => {
                self.producer.failed(&lease, &e);
                Err(e.to_string())
            }
        }
    }

    /// Hand a request on to its next channel's topic. A request the contract refuses cannot be
    /// handed on; the caller reports that as an error instead.
    pub async fn fallback(&self, next: &CodeRequest) -> Result<(), PublishError> {
        retry_until_acked("fallback", || async {
            match self.fallback.publish_request(next).await {
                Ok(()) => Ok(Ok(())),
                Err(PublishError::Invalid(e)) => Ok(Err(PublishError::Invalid(e))),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }
}

/// Keep trying a write until the broker acknowledges it. Kafka being down stops progress
/// (nothing is committed meanwhile) rather than losing the write; shutdown abandons the task,
/// and its message is redelivered.
async fn retry_until_acked<T, F, Fut>(what: &'static str, mut write: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(value) => return value,
            Err(e) => {
                tracing::warn!(what, error = %e, ?delay, "Kafka write failed; retrying");
                metrics::counter!("otp_kafka_write_retries_total", "what" => what).increment(1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
