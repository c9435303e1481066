//! [`CodeRequestPublisher`]: validate, key by phone hash, produce with `acks=all`, and return
//! only once the broker acknowledged. The same publisher reports what became of a code
//! ([`CodeRequestPublisher::publish_outcome`]), keyed by the request's confirmation key.

use crate::session::ProducerSession;
use crate::{KafkaArgs, KafkaRole};
use chrono::Utc;
use otp_events::{
    CodeRequest, PhoneHasher, Rules, Submission, Topics, ValidationError, VerificationOutcome,
    CODE_REQUEST_SCHEMA, HEADER_REQUEST_ID, HEADER_SCHEMA, VERIFICATION_OUTCOME_SCHEMA,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The request broke a rule of the contract; nothing was sent.
    #[error("invalid code request: {0}")]
    Invalid(#[from] ValidationError),
    /// The verification outcome broke a rule of its contract; nothing was sent.
    #[error("invalid verification outcome: {0}")]
    InvalidOutcome(ValidationError),
    /// The broker did not acknowledge in time. Nothing is known to be stored: retry with the
    /// same request_id (workers drop the second copy if both arrive).
    #[error("the broker did not acknowledge request {request_id} within {timeout:?}")]
    Timeout {
        request_id: String,
        timeout: Duration,
    },
    #[error("Kafka refused request {request_id}: {source}")]
    Kafka {
        request_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("could not create the Kafka producer: {0}")]
    Setup(#[source] KafkaError),
}

/// What a publisher protects a request with, and what it cannot be built without: the key
/// that hashes phone numbers (the partition key, and what the workers count by), and the keys
/// that seal phone and code on the topic (`otp_events::Keyring`, the deployment's
/// `OTP_SEAL_KEYS`). Both are secrets of the deployment; only [`Credentials::development`]
/// goes without sealing keys, for a local run against the development stack.
#[derive(Clone)]
pub struct Credentials {
    hasher: PhoneHasher,
    sealing: Option<otp_events::Keyring>,
}

impl Credentials {
    pub fn new(hasher: PhoneHasher, sealing: otp_events::Keyring) -> Self {
        Self {
            hasher,
            sealing: Some(sealing),
        }
    }

    /// A development run's: requests go with phone and code in plaintext, and outcomes
    /// unsigned (counted by the workers, never acted on). Never in production.
    pub fn development(hasher: PhoneHasher) -> Self {
        Self {
            hasher,
            sealing: None,
        }
    }
}

#[cfg(feature = "service")]
impl KafkaArgs {
    /// A service's publisher credentials: `hasher`, and the sealing keys it started with
    /// (`OTP_SEAL_KEYS`, or the development ones under `--dev`: see
    /// [`crate::process::keyring`]).
    pub fn credentials(&self, hasher: PhoneHasher) -> anyhow::Result<Credentials> {
        let sealing = self
            .sealing
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no sealing keys (OTP_SEAL_KEYS) to publish with"))?;
        Ok(Credentials::new(hasher, sealing))
    }
}

/// How long a publish waits for the broker's acknowledgement, unless configured: the login
/// system's user is waiting, and a broker slower than this is better answered with an error
/// the caller can retry (the HTTP ingress answers 503).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How a publisher behaves; the defaults suit a login system.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub topics: Topics,
    pub rules: Rules,
    /// How long `publish` waits for the broker's acknowledgement (and librdkafka's
    /// `message.timeout.ms`, so a message is not delivered after we said it failed).
    pub ack_timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            topics: Topics::default(),
            rules: Rules::default(),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
        }
    }
}

/// Header naming the key that sealed a request's phone and code.
pub const HEADER_KEY_ID: &str = "otp-key-id";

/// Publishes code requests for login systems (and fallbacks for workers).
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use otp_events::{Channel, Keyring, PhoneHasher, Submission};
/// use otp_kafka::{CodeRequestPublisher, Credentials, KafkaArgs, PublisherConfig};
///
/// let kafka = KafkaArgs::new("127.0.0.1:9092");
/// // The deployment's secrets: no publisher is built without them.
/// let credentials = Credentials::new(
///     PhoneHasher::new(std::env::var("OTP_PHONE_HASH_KEY")?.as_bytes()),
///     Keyring::parse(&std::env::var("OTP_SEAL_KEYS")?)?,
/// );
/// let publisher = CodeRequestPublisher::new(&kafka, PublisherConfig::default(), credentials)?;
/// let submission = Submission::new("+15551234567", "123456",
///     vec![Channel::Whatsapp, Channel::Sms], chrono::Duration::minutes(5));
/// let request_id = publisher.publish(submission).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CodeRequestPublisher {
    producer: Arc<ProducerSession>,
    config: PublisherConfig,
    hasher: PhoneHasher,
    /// Signs the fallback state of requests handed on (workers and the tracker only).
    fallback_key: Option<otp_events::FallbackKey>,
}

impl CodeRequestPublisher {
    /// A publisher to the brokers of `kafka`, sealing with the keys of `credentials` (they
    /// replace any in `config.rules`).
    pub fn new(
        kafka: &KafkaArgs,
        mut config: PublisherConfig,
        credentials: Credentials,
    ) -> Result<Self, PublishError> {
        config.rules.sealing = credentials.sealing;
        let client = kafka.to_rdkafka(KafkaRole::Producer {
            message_timeout: config.ack_timeout,
        });
        let producer = Arc::new(ProducerSession::new(client).map_err(PublishError::Setup)?);
        Ok(Self {
            producer,
            config,
            hasher: credentials.hasher,
            fallback_key: None,
        })
    }

    /// Sign the fallback state of the requests this publisher hands on (the workers' and the
    /// tracker's publisher, with `OTP_FALLBACK_KEY`): a worker trusts a fallback only with it.
    pub fn proving_fallbacks(mut self, key: otp_events::FallbackKey) -> Self {
        self.fallback_key = Some(key);
        self
    }

    /// Complete a submission (request_id, created_at), validate it, and publish it to its first
    /// channel's topic. Returns the request_id once the broker acknowledged.
    pub async fn publish(&self, submission: Submission) -> Result<String, PublishError> {
        let request = submission.complete(Utc::now());
        self.publish_request(&request).await?;
        Ok(request.request_id)
    }

    /// Validate a complete request and publish it to the topic of its current channel (the
    /// first one not yet tried). Workers use this to hand a request on to its next channel.
    pub async fn publish_request(&self, request: &CodeRequest) -> Result<(), PublishError> {
        request.validate(&self.config.rules)?;
        let channel = request
            .current_channel()
            .expect("validate() guarantees an untried channel");
        let topic = self.config.topics.requests(channel);
        // The canonical spelling: one subscriber, one key, one partition.
        let key = self.hasher.hash_phone(&request.phone);
        let value = self.config.rules.request_value(request)?;
        // The key that sealed it: the first one serving the request's app.
        let key_id = value["sealed"]
            .as_str()
            .and_then(otp_events::sealed_key_id)
            .map(str::to_owned);
        let payload = serde_json::to_vec(&value).expect("a JSON value serialises");
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_SCHEMA,
                value: Some(CODE_REQUEST_SCHEMA),
            })
            .insert(Header {
                key: HEADER_REQUEST_ID,
                value: Some(request.request_id.as_str()),
            });
        let proof = self
            .fallback_key
            .as_ref()
            .filter(|_| otp_events::FallbackKey::claims_fallback(request))
            .map(|key| key.prove(request));
        if let Some(proof) = &proof {
            headers = headers.insert(Header {
                key: otp_events::HEADER_FALLBACK_PROOF,
                value: Some(proof.as_str()),
            });
        }
        if let Some(key_id) = &key_id {
            headers = headers.insert(Header {
                key: HEADER_KEY_ID,
                value: Some(key_id.as_str()),
            });
        }
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        self.send_acked(record, &request.request_id).await
    }

    /// Report what became of a code: the user entered it, left, entered wrong codes too many
    /// times, or let it expire. Validated against this publisher's clock (the error names the
    /// field), then written to `otp.verification-outcomes` under the request's confirmation
    /// key; returns once the broker acknowledged. A report about a request we never saw, or
    /// another app's, is ignored and counted where outcomes are read (`otp report`).
    pub async fn publish_outcome(&self, outcome: &VerificationOutcome) -> Result<(), PublishError> {
        outcome
            .validate(Utc::now())
            .map_err(PublishError::InvalidOutcome)?;
        let topic = self.config.topics.verification_outcomes();
        let key = outcome.key();
        let payload = outcome.to_json();
        // Signed with the app's sealing key: the workers act on outcomes (the conversion
        // defence, the routes' weights) only when they verify. A development run without keys
        // writes them unsigned, and they are counted, never acted on.
        let mac = match &self.config.rules.sealing {
            Some(ring) => Some(
                ring.sign_report(
                    VERIFICATION_OUTCOME_SCHEMA,
                    outcome.app.as_deref(),
                    key.as_bytes(),
                    &payload,
                )
                .map_err(|_| {
                    PublishError::InvalidOutcome(ValidationError::new(
                        "app",
                        "no sealing key of this publisher serves this app",
                    ))
                })?,
            ),
            None => None,
        };
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_SCHEMA,
                value: Some(VERIFICATION_OUTCOME_SCHEMA),
            })
            .insert(Header {
                key: HEADER_REQUEST_ID,
                value: Some(outcome.request_id.as_str()),
            });
        if let Some(mac) = &mac {
            headers = headers.insert(Header {
                key: otp_events::HEADER_REPORT_MAC,
                value: Some(mac.as_str()),
            });
        }
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        self.send_acked(record, &outcome.request_id).await
    }

    /// Produce `record` and wait for the broker's acknowledgement, within the ack timeout.
    async fn send_acked(
        &self,
        record: FutureRecord<'_, String, Vec<u8>>,
        request_id: &str,
    ) -> Result<(), PublishError> {
        let timeout = self.config.ack_timeout;
        // librdkafka gives up at message.timeout.ms; the outer bound only guards against a
        // delivery report that never comes.
        let lease = self.producer.lease();
        let delivery = lease.producer.send(record, timeout);
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(1), delivery).await;
        match &outcome {
            Ok(Ok(_)) => self.producer.succeeded(&lease),
            Ok(Err((e, _))) => self.producer.failed(&lease, e),
            Err(_) => {}
        }
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                Err(PublishError::Timeout {
                    request_id: request_id.to_string(),
                    timeout,
                })
            }
            Ok(Err((source, _))) => Err(PublishError::Kafka {
                request_id: request_id.to_string(),
                source,
            }),
            Err(_) => Err(PublishError::Timeout {
                request_id: request_id.to_string(),
                timeout,
            }),
        }
    }

    /// True when the broker answers a metadata request within `timeout` (for `/readyz`).
    pub async fn broker_reachable(&self, timeout: Duration) -> bool {
        let producer = self.producer.lease().producer;
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    pub fn config(&self) -> &PublisherConfig {
        &self.config
    }

    /// Wait for queued messages to be delivered (call before exit).
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealing keys replace the rules' own; development credentials seal nothing. Nothing
    /// connects to a broker here.
    #[test]
    fn credentials_decide_what_seals_a_request() {
        let kafka = KafkaArgs::new("127.0.0.1:1");
        let hasher = PhoneHasher::new(b"k");
        let (ring, _) = otp_events::Keyring::generate("k1");
        let mut config = PublisherConfig::default();
        config.rules.sealing = Some(otp_events::Keyring::generate("other").0);
        let sealed = CodeRequestPublisher::new(
            &kafka,
            config.clone(),
            Credentials::new(hasher.clone(), ring),
        )
        .unwrap();
        let request = Submission::new(
            "+15551234567",
            "123456",
            vec![otp_events::Channel::Sms],
            chrono::Duration::minutes(5),
        )
        .complete(Utc::now());
        let key_id = |p: &CodeRequestPublisher| {
            let value = p.config().rules.request_value(&request).unwrap();
            value["sealed"]
                .as_str()
                .and_then(otp_events::sealed_key_id)
                .map(str::to_owned)
        };
        assert_eq!(key_id(&sealed).as_deref(), Some("k1"));
        let dev =
            CodeRequestPublisher::new(&kafka, config, Credentials::development(hasher)).unwrap();
        assert_eq!(key_id(&dev), None);
        assert_eq!(
            dev.config().rules.request_value(&request).unwrap()["code"],
            "123456"
        );
    }
}
