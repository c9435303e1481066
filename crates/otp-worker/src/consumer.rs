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
//! round trip; when both are full the thread stops polling until there is room, and
//! librdkafka's own prefetch queue (bounded by `queued.max.messages.kbytes`) stops fetching.
//! Only a stall longer than a second pauses the partitions: pausing drops the prefetched
//! messages, which are fetched again on resume.

use crate::offsets::PartitionKey;
use otp_producer::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext, Message};
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

/// How long a full hand-over may hold the poll thread before fetching is paused. Waiting
/// keeps librdkafka's prefetched messages; pausing throws them away, to be fetched again on
/// resume, which under steady saturation made the broker read everything twice. Pausing is
/// for a long stall (a slow provider), where it bounds memory. Rebalance callbacks, which run
/// inside `poll`, wait at most this long.
const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// Poll until `stop`, forwarding messages to the runtime. When `handed_over` (messages
/// forwarded and not finished) reaches twice `max_in_flight`, stop polling until there is
/// room; if there is none within [`HOLD_BEFORE_PAUSE`], pause fetching until fewer than
/// `max_in_flight` are handed over. Runs on its own thread.
pub fn poll_loop(
    consumer: Arc<WorkerConsumer>,
    events: mpsc::UnboundedSender<ConsumerEvent>,
    handed_over: Arc<AtomicUsize>,
    max_in_flight: usize,
    stop: Arc<AtomicBool>,
) {
    let full = || handed_over.load(Ordering::SeqCst) >= 2 * max_in_flight;
    let mut paused = false;
    while !stop.load(Ordering::SeqCst) {
        if paused && handed_over.load(Ordering::SeqCst) < max_in_flight {
            set_paused(&consumer, false);
            paused = false;
        } else if paused {
            // Re-applied while paused, so partitions assigned meanwhile are paused too.
            set_paused(&consumer, true);
        } else if full() {
            let since = std::time::Instant::now();
            while full() && since.elapsed() < HOLD_BEFORE_PAUSE && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            if full() {
                set_paused(&consumer, true);
                paused = true;
            }
            continue;
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
    set_paused(&consumer, true);
}

fn set_paused(consumer: &WorkerConsumer, pause: bool) {
    if let Ok(assignment) = consumer.assignment() {
        let result = if pause {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }
}

pub fn message_key(message: &OwnedMessage) -> PartitionKey {
    (message.topic().to_string(), message.partition())
}

/// Commit `offsets` without waiting; a commit that fails at the broker is simply offered again
/// by the caller's next tick.
pub fn commit_async(consumer: &WorkerConsumer, offsets: &[(PartitionKey, i64)]) {
    if offsets.is_empty() {
        return;
    }
    if let Err(e) = consumer.commit(&offset_list(offsets), CommitMode::Async) {
        tracing::warn!(error = %e, "commit failed; repeated on the next tick");
    }
}

/// The end of a consumer's life, once the poll thread was told to stop and the caller
/// dropped its other handles: answer a revoke still waiting on the poll thread, join it,
/// commit `offsets` for good, and close the consumer (leaving the group). Messages the poll
/// thread forwarded but nobody handled are simply read again by the next owner.
pub async fn close(
    consumer: Arc<WorkerConsumer>,
    poller: std::thread::JoinHandle<()>,
    offsets: Vec<(PartitionKey, i64)>,
    events: &mut mpsc::UnboundedReceiver<ConsumerEvent>,
) -> std::io::Result<()> {
    consumer.context().closing.store(true, Ordering::SeqCst);
    while let Ok(event) = events.try_recv() {
        if let ConsumerEvent::Revoked { reply, .. } = event {
            let _ = reply.send(Vec::new());
        }
    }
    tokio::task::spawn_blocking(move || {
        let _ = poller.join();
        if !offsets.is_empty() {
            if let Err(e) = consumer.commit(&offset_list(&offsets), CommitMode::Sync) {
                tracing::warn!(error = %e, "final commit failed");
            }
        }
        drop(consumer); // the last handle: closes the consumer and leaves the group
    })
    .await
    .map_err(std::io::Error::other)?;
    events.close();
    Ok(())
}

/// What every consumer group member of ours shares: offsets stored and committed by hand (only
/// what is finished), a new group reads from the start, and a crashed member's partitions
/// move after 10 s rather than Kafka's default 45 s (a code lives minutes and its user is
/// waiting). The caller adds its assignment strategy and then `kafka.apply_overrides`, so an
/// operator's `--kafka-opt` has the last word.
pub fn group_config(kafka: &KafkaArgs, group: &str) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000");
    config
}
