//! The Kafka consumer, kept off the async runtime.
//!
//! librdkafka's rebalance callback is synchronous and runs inside `poll`. A dedicated thread
//! polls, so the callback may block *that* thread: on revoke it sends an event to the async
//! runtime and waits for its acknowledgement, which comes once the revoked partitions' work has
//! finished (or been abandoned) and their offsets are known; it then commits them and lets the
//! partitions go. No tokio worker thread ever blocks on Kafka (the Quickwit pattern).
//!
//! The same thread applies back-pressure. The runtime runs at most `max_in_flight` messages
//! at once and keeps as many again waiting, so a finished send is replaced without a fetch
//! round trip; when both are full the thread pauses fetching on every assigned partition, and
//! resumes once fewer than `max_in_flight` are handed over. (Pausing drops librdkafka's
//! prefetched messages, so pausing and resuming on every message would cost a broker round
//! trip per message.)

use crate::offsets::PartitionKey;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc};
use std::time::Duration;
use tokio::sync::mpsc;

pub enum ConsumerEvent {
    Message(OwnedMessage),
    Assigned(Vec<PartitionKey>),
    /// These partitions are being taken away. Reply with the offsets to commit for them once
    /// their work is finished or abandoned.
    Revoked {
        partitions: Vec<PartitionKey>,
        reply: sync_mpsc::Sender<Vec<(PartitionKey, i64)>>,
    },
}

pub struct BridgeContext {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    /// How long the callback waits for the runtime's reply.
    reply_within: Duration,
    /// Set once the runtime has committed for good; revokes during close need no reply.
    pub closing: AtomicBool,
}

impl ClientContext for BridgeContext {}

impl ConsumerContext for BridgeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = match rebalance {
            Rebalance::Revoke(tpl) => keys_of(tpl),
            // librdkafka unassigns after a rebalance error: give up what we hold, like a revoke.
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error; giving up the assignment");
                match consumer.assignment() {
                    Ok(tpl) => keys_of(&tpl),
                    Err(_) => return,
                }
            }
            Rebalance::Assign(_) => return,
        };
        if self.closing.load(Ordering::SeqCst) || partitions.is_empty() {
            return;
        }
        tracing::info!(?partitions, "partitions revoked; finishing their work");
        let (reply, replied) = sync_mpsc::channel();
        if self
            .events
            .send(ConsumerEvent::Revoked { partitions, reply })
            .is_err()
        {
            return; // the runtime is gone; nothing to wait for
        }
        // Blocking is fine here: this is the consumer's own thread, not a tokio worker.
        match replied.recv_timeout(self.reply_within) {
            Ok(offsets) if !offsets.is_empty() => {
                if let Err(e) = consumer.commit(&offset_list(&offsets), CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit on revoke failed; the new owner may redeliver");
                }
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("runtime did not answer the revoke in time; letting go"),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = keys_of(tpl);
            tracing::info!(?partitions, "partitions assigned");
            let _ = self.events.send(ConsumerEvent::Assigned(partitions));
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            metrics::counter!("otp_commit_errors_total").increment(1);
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

pub type WorkerConsumer = BaseConsumer<BridgeContext>;

pub fn context(
    events: mpsc::UnboundedSender<ConsumerEvent>,
    reply_within: Duration,
) -> BridgeContext {
    BridgeContext {
        events,
        reply_within,
        closing: AtomicBool::new(false),
    }
}

fn keys_of(tpl: &TopicPartitionList) -> Vec<PartitionKey> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

pub fn offset_list(offsets: &[(PartitionKey, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .expect("valid offset");
    }
    tpl
}

/// Poll until `stop`, forwarding messages to the runtime; pause when `handed_over` (messages
/// forwarded and not finished) reaches twice `max_in_flight`, resume below `max_in_flight`.
/// Runs on its own thread.
pub fn poll_loop(
    consumer: Arc<WorkerConsumer>,
    events: mpsc::UnboundedSender<ConsumerEvent>,
    handed_over: Arc<AtomicUsize>,
    max_in_flight: usize,
    stop: Arc<AtomicBool>,
) {
    let mut paused = false;
    while !stop.load(Ordering::SeqCst) {
        let n = handed_over.load(Ordering::SeqCst);
        let busy = if paused {
            n >= max_in_flight
        } else {
            n >= 2 * max_in_flight
        };
        if busy || paused {
            // Re-applied while busy, so partitions assigned meanwhile are paused too.
            if let Ok(assignment) = consumer.assignment() {
                let result = if busy {
                    consumer.pause(&assignment)
                } else {
                    consumer.resume(&assignment)
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, busy, "pause/resume failed");
                }
            }
            paused = busy;
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => {
                handed_over.fetch_add(1, Ordering::SeqCst);
                if events
                    .send(ConsumerEvent::Message(message.detach()))
                    .is_err()
                {
                    break;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
    }
    // Messages fetched but not forwarded are simply not committed: they are read again.
    if let Ok(assignment) = consumer.assignment() {
        let _ = consumer.pause(&assignment);
    }
}

pub fn message_key(message: &OwnedMessage) -> PartitionKey {
    (message.topic().to_string(), message.partition())
}
