//! The writer: everything a worker or the confirmation tracker writes to Kafka, delivery
//! statuses, dead letters, fallback requests, pending confirmations and abuse admissions.
//! Their decisions are made elsewhere, as values; this is the one place that writes them.
//!
//! Every write is acknowledged by the broker (`acks=all`, idempotent producer) before the
//! message that caused it counts as finished, and is retried until it is: a status that was
//! never written would leave a request without its final word. Only a record too large for
//! the broker is given up (counted in `otp_kafka_writes_abandoned_total{what}`), so that one
//! poison pill cannot stop its partition for good; a dead letter too large for the broker is
//! written as a reference instead (digest, size and source coordinates of the original).
//! Every other refusal, an ACL mistake or a missing topic among them, is retried while it
//! lasts and stalls the partition (`otp_kafka_writes_stalled{what}`, alerted on): it must stop
//! progress, not lose codes.

use crate::session::ProducerSession;
use crate::{CodeRequestPublisher, KafkaArgs, PublishError, PublisherConfig};
use otp_events::{
    AbuseAdmissions, CodeRequest, DeliveryStatus, MessageIndex, PendingConfirmation, Receipt,
    Topics, ABUSE_ADMISSION_SCHEMA, HEADER_REQUEST_ID, HEADER_SCHEMA, MESSAGE_INDEX_SCHEMA,
    PENDING_CONFIRMATION_SCHEMA, RECEIPT_SCHEMA,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use std::future::Future;
use std::time::Duration;

/// Headers added to a dead letter, beside the original message's own.
pub const DLQ_REASON: &str = "otp-dlq-reason";
pub const DLQ_SOURCE_TOPIC: &str = "otp-dlq-source-topic";
pub const DLQ_SOURCE_PARTITION: &str = "otp-dlq-source-partition";
pub const DLQ_SOURCE_OFFSET: &str = "otp-dlq-source-offset";
/// On a dead letter written as a reference: `true`, and the original payload's SHA-256.
pub const DLQ_TRUNCATED: &str = "otp-dlq-truncated";
pub const DLQ_PAYLOAD_SHA256: &str = "otp-dlq-payload-sha256";

/// How long a send may wait for room in librdkafka's queue.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

pub struct KafkaWriter {
    producer: ProducerSession,
    /// The queue wait, plus `message.timeout.ms` as configured, plus a margin: librdkafka
    /// reports every message by then, so a send still unreported is stuck, and is retried on a
    /// new producer session.
    delivery_bound: Duration,
    topics: Topics,
    /// Hands requests on to their next channel; `None` for a writer that hands nothing on
    /// (the receipts ingress).
    fallback: Option<CodeRequestPublisher>,
    /// Seals what pending confirmations carry of a request.
    rules: otp_events::Rules,
    /// Signs the internal records (pending confirmations, the message index, receipts,
    /// admissions) as the role of the service that writes them.
    signer: Option<crate::records::Signer>,
    /// The delivery-status contract written.
    status_version: otp_events::StatusVersion,
}

impl KafkaWriter {
    /// A writer for a service of `role`: its internal records are signed with that role's
    /// key from `kafka.record_keys` (without one they go unsigned, and no reader acts on them;
    /// services check their keys at start).
    ///
    /// `message_timeout` bounds each message's delivery in librdkafka: past it, the message is
    /// reported failed and never stored later. A service that retries until acknowledged gives
    /// 30 s; the receipts ingress gives the wait after which it answers 503, so that a receipt
    /// or signal is not stored after the provider was told to send it again.
    pub fn new(
        kafka: &KafkaArgs,
        fallback: Option<CodeRequestPublisher>,
        role: otp_events::Role,
        message_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let config = kafka.to_rdkafka(crate::KafkaRole::Producer { message_timeout });
        let message_timeout = config
            .get("message.timeout.ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(Duration::from_secs(300), Duration::from_millis);
        let delivery_bound = QUEUE_WAIT + message_timeout + Duration::from_secs(5);
        // Every series from the start, so dashboards and `increase()` alerts see zero, not
        // nothing, until the first event.
        metrics::counter!("otp_dead_letters_total").increment(0);
        for what in [
            "status",
            "pending",
            "receipt",
            "admission",
            "signal",
            "dead letter",
            "fallback",
        ] {
            metrics::counter!("otp_kafka_write_retries_total", "what" => what).increment(0);
            metrics::counter!("otp_kafka_writes_abandoned_total", "what" => what).increment(0);
            metrics::gauge!("otp_kafka_writes_stalled", "what" => what).set(0.0);
        }
        let rules = fallback.as_ref().map_or_else(
            || otp_events::Rules {
                sealing: kafka.sealing.clone(),
                ..otp_events::Rules::default()
            },
            |f| f.config().rules.clone(),
        );
        Ok(Self {
            producer: ProducerSession::new(config)?,
            delivery_bound,
            topics: kafka.topics(),
            fallback,
            rules,
            signer: crate::records::Signer::of(kafka, role),
            status_version: kafka.status_schema,
        })
    }

    /// A writer whose fallbacks go to the next channel's topic under `rules` (a request the
    /// contract refuses is not handed on), keyed by `hasher` like a login system's publish.
    pub fn for_fallbacks(
        kafka: &KafkaArgs,
        rules: otp_events::Rules,
        hasher: otp_events::PhoneHasher,
        role: otp_events::Role,
    ) -> anyhow::Result<Self> {
        let config = PublisherConfig {
            topics: kafka.topics(),
            rules,
            ack_timeout: Duration::from_secs(10),
        };
        let mut publisher = CodeRequestPublisher::new(kafka, config, kafka.credentials(hasher)?)?;
        if let Some(key) = &kafka.fallback_key {
            publisher = publisher.proving_fallbacks(key.clone());
        }
        Ok(Self::new(
            kafka,
            Some(publisher),
            role,
            Duration::from_secs(30),
        )?)
    }

    /// Write a status, keyed by request_id.
    pub async fn status(&self, status: &DeliveryStatus) {
        let topic = self.topics.delivery_status();
        let (payload, schema) = status.encode(self.status_version);
        let channels = status
            .enabled_channels
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut headers = Vec::with_capacity(2);
        if let Some(p) = status.provider {
            headers.push((otp_events::HEADER_PROVIDER, p.as_str()));
        }
        if !channels.is_empty() {
            headers.push((otp_events::HEADER_CHANNELS, channels.as_str()));
        }
        let key = &status.request_id;
        self.keyed_with("status", &topic, key, Some(&payload), schema, &headers)
            .await;
        let provider = status.provider.map_or("none", |p| p.as_str());
        metrics::counter!(
            "otp_statuses_total",
            "channel" => status.channel.as_str(),
            "provider" => provider,
            "status" => status.status.as_str()
        )
        .increment(1);
        // Every final status, the worker's and the tracker's (a confirmed `delivered`, a
        // fallback's end): the outcome users feel, and how long it took.
        if status.is_final {
            metrics::histogram!(
                "otp_delivery_latency_seconds",
                "channel" => status.channel.as_str(),
                "provider" => provider,
                "status" => status.status.as_str()
            )
            .record(status.latency_ms.unwrap_or(0) as f64 / 1000.0);
        }
    }

    /// Write (or overwrite: the topic is compacted) a send's pending confirmation.
    pub async fn pending(&self, record: &PendingConfirmation) {
        let topic = self.topics.pending_confirmations();
        let payload = match record.to_json(&self.rules) {
            Ok(payload) => payload,
            Err(e) => {
                let failure = WriteFailure {
                    message: e.to_string(),
                    too_large: false,
                    stalling: false,
                };
                return abandoned("pending", &failure);
            }
        };
        self.keyed(
            "pending",
            &topic,
            &record.key(),
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
        self.outgoing(&self.receipt_record(receipt)).await;
    }

    /// Tell the workers of a channel what a provider said about its health, keyed by channel.
    pub async fn signal(&self, signal: &otp_events::ChannelSignal) {
        self.outgoing(&self.signal_record(signal)).await;
        let channel = signal.channel.as_str();
        metrics::counter!("otp_channel_signals_total", "channel" => channel, "kind" => signal.kind.as_str(), "source" => signal.source.as_str())
            .increment(1);
    }

    /// Write every receipt, then every signal, and wait for all acknowledgements, within
    /// `within`; nothing is retried. The receipts ingress answers a provider's call only once
    /// its receipts are stored, and 503 otherwise, so that the provider retries the call (a
    /// receipt stored twice is harmless: the tracker applies each status once).
    pub async fn receipts_within(
        &self,
        receipts: &[Receipt],
        signals: &[otp_events::ChannelSignal],
        within: Duration,
    ) -> Result<(), BoundedWriteError> {
        let records: Vec<Outgoing> = receipts
            .iter()
            .map(|r| self.receipt_record(r))
            .chain(signals.iter().map(|s| self.signal_record(s)))
            .collect();
        let lease = self.producer.lease();
        let sends = records.iter().map(|r| {
            let extra = r.extra();
            let headers = self.headers(r.schema, &r.key, Some(&r.payload), &extra);
            let record = FutureRecord::to(&r.topic)
                .key(r.key.as_bytes())
                .payload(r.payload.as_slice())
                .headers(headers);
            lease.producer.send(record, QUEUE_WAIT)
        });
        let all = futures_util::future::join_all(sends);
        let Ok(results) = tokio::time::timeout(within, all).await else {
            return Err(BoundedWriteError::TimedOut(within));
        };
        for result in results {
            if let Err((e, _)) = result {
                self.producer.failed(&lease, &e);
                return Err(BoundedWriteError::Refused(e));
            }
        }
        self.producer.succeeded(&lease);
        Ok(())
    }

    /// [`KafkaWriter::keyed_with`] for a receipt or a signal.
    async fn outgoing(&self, r: &Outgoing) {
        let extra = r.extra();
        self.keyed_with(r.what, &r.topic, &r.key, Some(&r.payload), r.schema, &extra)
            .await;
    }

    fn receipt_record(&self, receipt: &Receipt) -> Outgoing {
        Outgoing {
            what: "receipt",
            topic: self.topics.delivery_receipts(),
            key: receipt.key(),
            payload: receipt.to_json(),
            schema: RECEIPT_SCHEMA,
            request_id: receipt.request_id.clone(),
        }
    }

    fn signal_record(&self, signal: &otp_events::ChannelSignal) -> Outgoing {
        Outgoing {
            what: "signal",
            topic: self.topics.channel_signals(),
            key: signal.channel.as_str().to_string(),
            payload: signal.to_json(),
            schema: otp_events::CHANNEL_SIGNAL_SCHEMA,
            request_id: None,
        }
    }

    /// Share a batch of abuse admissions with the fleet, keyed by the worker that made them.
    pub async fn admissions(&self, batch: &AbuseAdmissions) {
        let topic = self.topics.abuse_admissions();
        let payload = batch.to_json();
        self.keyed(
            "admission",
            &topic,
            &batch.origin,
            Some(&payload),
            ABUSE_ADMISSION_SCHEMA,
        )
        .await;
    }

    /// Delete a pending confirmation (or a message index): a tombstone for its key.
    pub async fn forget_pending(&self, key: &str) {
        let topic = self.topics.pending_confirmations();
        self.keyed("pending", &topic, key, None, PENDING_CONFIRMATION_SCHEMA)
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
        self.keyed_with(what, topic, key, payload, schema, &[])
            .await
    }

    /// [`KafkaWriter::keyed`] with one more header. Statuses are for analysts and carry no
    /// record MAC.
    async fn keyed_with(
        &self,
        what: &'static str,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        schema: &str,
        extra: &[(&str, &str)],
    ) {
        let written = retry_until_acked(what, || {
            let headers = self.headers(schema, key, payload, extra);
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).key(key.as_bytes()).headers(headers);
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            self.send(record)
        })
        .await;
        if let Err(e) = written {
            abandoned(what, &e);
        }
    }

    /// A record's headers: its schema, the MAC of the role that writes it (statuses are for
    /// analysts and carry none), and `extra`.
    fn headers(
        &self,
        schema: &str,
        key: &str,
        payload: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> OwnedHeaders {
        let is_status = schema == otp_events::DELIVERY_STATUS_SCHEMA
            || schema == otp_events::DELIVERY_STATUS_SCHEMA_V2;
        let mut headers = OwnedHeaders::new().insert(Header {
            key: HEADER_SCHEMA,
            value: Some(schema),
        });
        if let Some(signer) = self.signer.as_ref().filter(|_| !is_status) {
            let mac = signer.header(schema, key.as_bytes(), payload);
            headers = headers.insert(Header {
                key: otp_events::HEADER_RECORD_MAC,
                value: Some(mac.as_str()),
            });
        }
        for &(key, value) in extra {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        headers
    }

    /// Write the original message to the dead-letter topic: same key, payload and headers,
    /// plus headers naming the reason and where it came from. A message the broker refuses
    /// as too large once our headers are added goes as a reference: its SHA-256, its size and
    /// its coordinates, with `otp-dlq-truncated: true`, so that it cannot wedge its partition.
    pub async fn dead_letter(&self, original: &OwnedMessage, reason: &str) {
        let written = self.dead_letter_as(original, reason, false).await;
        let written = match written {
            Err(e) if e.too_large => {
                tracing::warn!(
                    topic = original.topic(),
                    partition = original.partition(),
                    offset = original.offset(),
                    bytes = original.payload().map_or(0, <[u8]>::len),
                    "dead letter too large for the broker; writing a reference instead"
                );
                self.dead_letter_as(original, reason, true).await
            }
            other => other,
        };
        match written {
            Ok(()) => metrics::counter!("otp_dead_letters_total").increment(1),
            Err(e) => abandoned("dead letter", &e),
        }
    }

    async fn dead_letter_as(
        &self,
        original: &OwnedMessage,
        reason: &str,
        as_reference: bool,
    ) -> Result<(), WriteFailure> {
        use sha2::Digest;
        let topic = self.topics.dead_letter();
        let partition = original.partition().to_string();
        let offset = original.offset().to_string();
        // The payload of a reference, and the original's digest (only a reference needs it).
        let reference = as_reference.then(|| {
            let bytes = original.payload().unwrap_or_default();
            let digest = hex::encode(sha2::Sha256::digest(bytes));
            let payload = serde_json::to_vec(&serde_json::json!({
                "truncated": true,
                "original_bytes": bytes.len(),
                "original_sha256": digest,
                "source": {"topic": original.topic(), "partition": original.partition(),
                           "offset": original.offset()},
            }))
            .expect("a JSON value serialises");
            (payload, digest)
        });
        retry_until_acked("dead letter", || {
            let mut headers = OwnedHeaders::new();
            // A reference keeps none of the original's headers: they may be what is too large.
            if let (None, Some(h)) = (&reference, original.headers()) {
                for header in h.iter() {
                    headers = headers.insert(Header {
                        key: header.key,
                        value: header.value,
                    });
                }
            }
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
            if let Some((_, digest)) = &reference {
                headers = headers
                    .insert(Header {
                        key: DLQ_TRUNCATED,
                        value: Some("true"),
                    })
                    .insert(Header {
                        key: DLQ_PAYLOAD_SHA256,
                        value: Some(digest.as_str()),
                    });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers);
            if let Some(key) = original.key() {
                record = record.key(key);
            }
            match (&reference, original.payload()) {
                (Some((r, _)), _) => record = record.payload(r.as_slice()),
                (None, Some(p)) => record = record.payload(p),
                (None, None) => {}
            }
            self.send(record)
        })
        .await
    }

    /// One send on the current producer session; a broken session is replaced for the retry.
    async fn send(&self, record: FutureRecord<'_, [u8], [u8]>) -> Result<(), WriteFailure> {
        let lease = self.producer.lease();
        let sent =
            tokio::time::timeout(self.delivery_bound, lease.producer.send(record, QUEUE_WAIT))
                .await;
        match sent {
            Ok(Ok(_)) => {
                self.producer.succeeded(&lease);
                Ok(())
            }
            Ok(Err((e, _))) => {
                self.producer.failed(&lease, &e);
                Err(WriteFailure::of(&e))
            }
            Err(_) => {
                self.producer.stuck(&lease);
                Err(WriteFailure::transient(format!(
                    "no delivery report within {:?}",
                    self.delivery_bound
                )))
            }
        }
    }

    /// Fall back: write `status` (the `fallback` that says why), then hand `next` on to its
    /// channel's topic, in that order, so analysts never see the next channel's statuses
    /// before the fallback that caused them. A request the contract refuses (or a write given
    /// up) cannot be handed on: the caller then ends it with
    /// [`DeliveryStatus::fallback_refused`].
    pub async fn fall_back(
        &self,
        next: &CodeRequest,
        status: &DeliveryStatus,
    ) -> Result<(), HandOnError> {
        self.status(status).await;
        self.fallback(next).await
    }

    /// Hand a request on to its next channel's topic. A request the contract refuses cannot be
    /// handed on; the caller reports that as an error instead.
    pub async fn fallback(&self, next: &CodeRequest) -> Result<(), HandOnError> {
        let Some(fallback) = &self.fallback else {
            return Err(HandOnError::Abandoned {
                request_id: next.request_id.clone(),
                reason: "this writer hands nothing on".into(),
            });
        };
        let written = retry_until_acked("fallback", || async {
            match fallback.publish_request(next).await {
                Ok(()) => Ok(Ok(())),
                Err(PublishError::Invalid(e)) => Ok(Err(HandOnError::Invalid(e))),
                Err(PublishError::Kafka { source, .. }) | Err(PublishError::Setup(source)) => {
                    Err(WriteFailure::of(&source))
                }
                Err(e) => Err(WriteFailure::transient(e.to_string())),
            }
        })
        .await;
        match written {
            Ok(result) => result,
            Err(e) => {
                abandoned("fallback", &e);
                Err(HandOnError::Abandoned {
                    request_id: next.request_id.clone(),
                    reason: e.message,
                })
            }
        }
    }
}

/// One receipt or signal to write.
struct Outgoing {
    what: &'static str,
    topic: String,
    key: String,
    payload: Vec<u8>,
    schema: &'static str,
    /// Named in a header too, for readers that look before they parse.
    request_id: Option<String>,
}

impl Outgoing {
    fn extra(&self) -> Vec<(&str, &str)> {
        self.request_id
            .iter()
            .map(|id| (HEADER_REQUEST_ID, id.as_str()))
            .collect()
    }
}

/// Why a bounded write ([`KafkaWriter::receipts_within`]) did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BoundedWriteError {
    #[error("not acknowledged within {0:?}")]
    TimedOut(Duration),
    #[error("refused: {0}")]
    Refused(#[source] KafkaError),
}

/// Why a request could not be handed on to its next channel: the caller ends it `failed`
/// ([`DeliveryStatus::fallback_refused`]).
#[derive(Debug, thiserror::Error)]
pub enum HandOnError {
    /// The next channel's request breaks a rule of the contract.
    #[error("invalid code request: {0}")]
    Invalid(otp_events::ValidationError),
    /// A write that can never succeed (too large for the broker) was given up.
    #[error("the fallback of request {request_id} was given up: {reason}")]
    Abandoned { request_id: String, reason: String },
}

/// Why a write failed, and whether trying again can help.
#[derive(Debug, Clone)]
struct WriteFailure {
    message: String,
    /// Refused for its size: the one failure given up (at once), as trying again cannot help.
    too_large: bool,
    /// Refused in a way that trying again does not fix by itself (not authorised, no such
    /// topic, invalid): retried while it lasts, and reported as a stall that needs an
    /// operator (`otp_kafka_writes_stalled{what}`).
    stalling: bool,
}

impl WriteFailure {
    fn of(e: &KafkaError) -> Self {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let code = e.rdkafka_error_code();
        let too_large = matches!(
            code,
            Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::MessageBatchTooLarge)
        );
        // Only a record too large for the broker is a poison pill: given up at once (a dead
        // letter then goes as a reference). Every other refusal (an ACL mistake, a topic
        // deleted or not yet created, a broker that is away) is retried for as long as it
        // lasts, and stalls its partition: nothing is committed past a write that was lost,
        // so a request is never finished without its status, its fallback or its record.
        let stalling = matches!(
            code,
            Some(
                Code::TopicAuthorizationFailed
                    | Code::ClusterAuthorizationFailed
                    | Code::InvalidRecord
                    | Code::InvalidTopic
                    | Code::UnknownTopic
                    | Code::UnknownTopicOrPartition
            )
        );
        Self {
            message: e.to_string(),
            too_large,
            stalling,
        }
    }

    fn transient(message: String) -> Self {
        Self {
            message,
            too_large: false,
            stalling: false,
        }
    }
}

fn abandoned(what: &'static str, e: &WriteFailure) {
    metrics::counter!("otp_kafka_writes_abandoned_total", "what" => what).increment(1);
    tracing::error!(what, error = %e.message, "Kafka write abandoned: it can never succeed");
}

/// Keep trying a write until the broker acknowledges it. Kafka being down stops progress
/// (nothing is committed meanwhile) rather than losing the write; shutdown abandons the task,
/// and its message is redelivered. Only a record too large for the broker
/// ([`WriteFailure::too_large`]) is returned as a failure, at its first refusal.
async fn retry_until_acked<T, F, Fut>(what: &'static str, mut write: F) -> Result<T, WriteFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WriteFailure>>,
{
    let mut delay = Duration::from_millis(100);
    let mut stall: Option<Stall> = None;
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                if e.too_large {
                    return Err(e);
                }
                if e.stalling && stall.is_none() {
                    stall = Some(Stall::begin(what));
                }
                tracing::warn!(what, error = %e.message, ?delay, stalled = e.stalling, "Kafka write failed; retrying");
                metrics::counter!("otp_kafka_write_retries_total", "what" => what).increment(1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A write refused in a way that needs an operator, while it keeps being retried: counted in
/// the gauge `otp_kafka_writes_stalled{what}` until it succeeds or its task ends.
struct Stall {
    what: &'static str,
}

impl Stall {
    fn begin(what: &'static str) -> Self {
        metrics::gauge!("otp_kafka_writes_stalled", "what" => what).increment(1.0);
        tracing::error!(
            what,
            "Kafka refuses a write (not authorised, or no such topic): retrying without \
             committing past it, so its partition stalls until the cause is fixed"
        );
        Self { what }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        metrics::gauge!("otp_kafka_writes_stalled", "what" => self.what).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode as Code;

    fn refused(code: Code) -> WriteFailure {
        WriteFailure::of(&KafkaError::MessageProduction(code))
    }

    /// An ACL mistake or a missing topic must stop progress, not lose codes: the write is
    /// retried for as long as the refusal lasts (here 40 tries, minutes of backoff; it was
    /// given up after 12), and reported as a stall meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_retried_while_the_refusal_lasts() {
        for code in [
            Code::TopicAuthorizationFailed,
            Code::UnknownTopicOrPartition,
            Code::InvalidRecord,
        ] {
            let mut tries = 0;
            let written = retry_until_acked("status", || {
                tries += 1;
                let answer = if tries <= 40 {
                    Err(refused(code))
                } else {
                    Ok(tries)
                };
                async move { answer }
            })
            .await;
            assert_eq!(written.ok(), Some(41), "{code:?}");
        }
    }

    /// Only a record too large for the broker is a poison pill: given up at once.
    #[tokio::test(start_paused = true)]
    async fn only_a_record_too_large_is_given_up() {
        let mut tries = 0;
        let written: Result<(), _> = retry_until_acked("dead letter", || {
            tries += 1;
            async { Err(refused(Code::MessageSizeTooLarge)) }
        })
        .await;
        assert!(written.unwrap_err().too_large);
        assert_eq!(tries, 1);
    }
}
