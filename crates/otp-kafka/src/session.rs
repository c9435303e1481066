//! An idempotent producer that starts a new session when its current one is broken.
//!
//! librdkafka recovers an idempotent producer from most broker trouble by itself, but not
//! from all: after a fatal error every send fails at once, and a broker that lost the
//! producer's state (seen with tansu restarted on its store) refuses every batch of the old
//! producer id. Retrying with the same producer then never succeeds, and a worker that retries
//! its status writes until they are acknowledged would stop for good. So a fatal error, or a
//! run of broker refusals, replaces the producer with a new one (a new producer id); the
//! failed write is retried on it by its caller. Timeouts reported by librdkafka never replace
//! it: they are the broker being away, which librdkafka rides out. A send that gets no report
//! at all within its bound does ([`ProducerSession::stuck`]).

use crate::producer::Producer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;
use std::sync::Mutex;

/// Consecutive refusals after which the session counts as broken.
const REFUSALS_BEFORE_NEW_SESSION: u32 = 3;

pub struct ProducerSession {
    config: ClientConfig,
    state: Mutex<State>,
}

struct State {
    producer: Producer,
    generation: u64,
    refusals: u32,
}

/// The producer to send with, and which session it belongs to (for [`ProducerSession::failed`]).
pub struct Lease {
    pub producer: Producer,
    generation: u64,
}

impl ProducerSession {
    pub fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        let producer = Producer::create(&config)?;
        Ok(Self {
            config,
            state: Mutex::new(State {
                producer,
                generation: 0,
                refusals: 0,
            }),
        })
    }

    pub fn lease(&self) -> Lease {
        let s = self.state.lock().expect("producer session lock");
        Lease {
            producer: s.producer.clone(),
            generation: s.generation,
        }
    }

    pub fn succeeded(&self, lease: &Lease) {
        let mut s = self.state.lock().expect("producer session lock");
        if s.generation == lease.generation {
            s.refusals = 0;
        }
    }

    /// Note a failed send; start a new session when this one is broken. Only the session the
    /// send used is replaced, so concurrent failures replace it once.
    pub fn failed(&self, lease: &Lease, error: &KafkaError) {
        let Some(fatal) = session_error(error) else {
            return;
        };
        let mut s = self.state.lock().expect("producer session lock");
        if s.generation != lease.generation {
            return;
        }
        s.refusals += 1;
        if !fatal && s.refusals < REFUSALS_BEFORE_NEW_SESSION {
            return;
        }
        let reason = s
            .producer
            .client()
            .fatal_error()
            .map_or_else(|| error.to_string(), |(_, reason)| reason);
        self.replace(&mut s, &reason);
    }

    /// Note a send whose delivery report never came (past `message.timeout.ms`, which
    /// librdkafka should have kept): seen after a broker restart, with one status write left
    /// waiting for minutes while later ones went through. The session is taken as broken, and
    /// the write is retried on a new one (a report that comes after all makes it a duplicate,
    /// which consumers dedupe by `event_id`).
    pub fn stuck(&self, lease: &Lease) {
        let mut s = self.state.lock().expect("producer session lock");
        if s.generation == lease.generation {
            self.replace(&mut s, "no delivery report within the bound");
        }
    }

    fn replace(&self, s: &mut State, reason: &str) {
        match Producer::create(&self.config) {
            Ok(producer) => {
                tracing::error!(%reason, "Kafka producer session broken; starting a new one");
                metrics::counter!("otp_producer_sessions_restarted_total").increment(1);
                s.producer = producer;
                s.generation += 1;
                s.refusals = 0;
            }
            Err(e) => tracing::error!(error = %e, "could not start a new Kafka producer"),
        }
    }

    pub fn flush(&self, timeout: std::time::Duration) {
        let producer = self.lease().producer;
        let _ = producer.flush(timeout);
    }
}

/// Some(true) for a fatal error, Some(false) for a refusal a new session may cure, None for
/// anything else (timeouts, full queues, oversized messages).
fn session_error(error: &KafkaError) -> Option<bool> {
    use RDKafkaErrorCode as C;
    match error {
        KafkaError::MessageProduction(C::Fatal) => Some(true),
        KafkaError::MessageProduction(
            C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerEpoch
            | C::DuplicateSequenceNumber
            | C::Unknown,
        ) => Some(false),
        _ => None,
    }
}
