//! The Kafka consumer, kept off the async runtime.
//!
//! librdkafka's rebalance callback is synchronous and runs inside `poll`. A dedicated thread
//! polls, so the callback may block *that* thread: on revoke it sends an event to the async
//! runtime and waits for its acknowledgement, which comes once the revoked partitions' work has
//! finished (or been abandoned) and their positions are known; it then commits them and lets
//! the partitions go. No tokio worker thread ever blocks on Kafka (the Quickwit pattern).
//!
//! The same thread applies back-pressure through the in-flight bound ([`InFlight`]): it takes
//! a place before it hands a message over, and the place travels with the message. At the
//! bound it waits for a place instead of polling, and librdkafka's own prefetch queue (bounded
//! by `queued.max.messages.kbytes`) stops fetching. Only a wait longer than
//! [`HOLD_BEFORE_PAUSE`] pauses the partitions: pausing drops the prefetched messages, which
//! are fetched again on resume.

use super::holds::Holds;
use super::in_flight::{InFlight, Permit};
use super::letting_go::LettingGo;
use super::{Position, TopicPartition};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the poll thread tells the async runtime.
pub enum ConsumerEvent {
    /// A message of an assigned partition, with its place under the in-flight bound.
    Message(OwnedMessage, Permit),
    Assigned(Vec<TopicPartition>),
    /// These partitions are being taken away. Reply with the positions to commit for them once
    /// their work is finished or abandoned.
    Revoked {
        partitions: Vec<TopicPartition>,
        reply: sync_mpsc::Sender<Vec<Position>>,
    },
}

/// The consumer's context: turns librdkafka's rebalance callbacks into [`ConsumerEvent`]s.
pub struct RebalanceBridge {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    /// How long the callback waits for the runtime's reply.
    reply_within: Duration,
    /// Set once the runtime has committed for good; revokes during close need no reply.
    closing: AtomicBool,
    /// The partitions being given up, for the member to ask at any time.
    letting_go: LettingGo,
    /// The partitions the member keeps from being fetched until it releases them.
    holds: Holds,
}

/// A consumer group member's consumer, polled only by its own thread.
pub type GroupConsumer = BaseConsumer<RebalanceBridge>;

impl RebalanceBridge {
    /// `held_topic`: partitions of it start held on every assignment ([`Holds`]).
    pub fn new(
        events: mpsc::UnboundedSender<ConsumerEvent>,
        reply_within: Duration,
        held_topic: Option<String>,
    ) -> Self {
        Self {
            events,
            reply_within,
            closing: AtomicBool::new(false),
            letting_go: LettingGo::default(),
            holds: Holds::new(held_topic),
        }
    }

    pub fn holds(&self) -> &Holds {
        &self.holds
    }

    pub fn letting_go(&self) -> &LettingGo {
        &self.letting_go
    }
}

impl ClientContext for RebalanceBridge {}

impl ConsumerContext for RebalanceBridge {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = match rebalance {
            Rebalance::Revoke(tpl) => partitions_of(tpl),
            // librdkafka unassigns after a rebalance error: give up what we hold, like a revoke.
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error; giving up the assignment");
                match consumer.assignment() {
                    Ok(tpl) => partitions_of(&tpl),
                    Err(_) => return,
                }
            }
            Rebalance::Assign(_) => return,
        };
        // Known to the member at once, whether or not it answers in time.
        self.letting_go.revoking(&partitions);
        self.holds.on_revoke(&partitions);
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
            Ok(positions) if !positions.is_empty() => {
                if let Err(e) = consumer.commit(&position_list(&positions), CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit on revoke failed; the new owner may redeliver");
                }
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("runtime did not answer the revoke in time; letting go"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            // Held ones are paused here, inside the poll that assigned them: nothing of them
            // is fetched. The others are resumed: librdkafka keeps an application's pause
            // across an unassign, so a partition paused by back-pressure before it was
            // revoked would come back paused for good; the poll loop pauses it again while
            // back-pressure lasts.
            let held = self.holds.on_assign(&partitions);
            if !held.is_empty() {
                if let Err(e) = consumer.pause(&partition_list(&held)) {
                    tracing::warn!(error = %e, "could not hold newly assigned partitions");
                }
            }
            if let Err(e) = resume_unless_held(consumer, &partitions) {
                tracing::warn!(error = %e, "could not resume newly assigned partitions");
            }
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

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

pub(super) fn partition_list(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

fn position_list(positions: &[Position]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in positions {
        let (topic, partition) = (&p.partition.topic, p.partition.partition);
        tpl.add_partition_offset(topic, partition, Offset::Offset(p.offset))
            .expect("valid offset");
        if let Some(mut element) = tpl.find_partition(topic, partition) {
            element.set_metadata(&p.note);
        }
    }
    tpl
}

/// How long the poll thread waits for a place under the in-flight bound before it pauses
/// fetching. Waiting keeps librdkafka's prefetched messages; pausing throws them away, to be
/// fetched again on resume, which under steady saturation made the broker read everything
/// twice. Pausing is for a long stall (a slow provider), where it bounds memory. Rebalance
/// callbacks, which run inside `poll`, wait at most this long.
pub const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(1);

/// Poll until `stop`, handing each message to the runtime with its place under `in_flight`.
/// Paused partitions resume once at least half the places are free. Runs on its own thread.
pub fn poll_loop(
    consumer: Arc<GroupConsumer>,
    events: mpsc::UnboundedSender<ConsumerEvent>,
    in_flight: InFlight,
    stop: Arc<AtomicBool>,
    heartbeat: crate::observe::Heartbeat,
) {
    let mut paused = false;
    let mut place: Option<Permit> = None;
    let holds = consumer.context().holds();
    while !stop.load(Ordering::SeqCst) {
        heartbeat.beat();
        // Released by the member: fetched again now, or with the rest once back-pressure ends.
        let released = holds.take_released();
        if !released.is_empty() && !paused {
            if let Err(e) = consumer.resume(&partition_list(&released)) {
                tracing::warn!(error = %e, "could not resume released partitions");
            }
        }
        if place.is_none() {
            // While paused, poll on (rebalances are served inside `poll`) and look again.
            let within = if paused {
                Duration::ZERO
            } else {
                HOLD_BEFORE_PAUSE
            };
            place = in_flight.acquire(within);
        }
        match (&place, paused) {
            (None, false) => {
                set_paused(&consumer, true);
                paused = true;
            }
            (Some(_), true) if in_flight.held() <= in_flight.max().div_ceil(2) => {
                set_paused(&consumer, false);
                paused = false;
            }
            // Re-applied while paused, so partitions assigned meanwhile are paused too.
            (_, true) => set_paused(&consumer, true),
            (Some(_), false) => {}
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => {
                // A partition assigned since the last pause can deliver while we hold no place:
                // the message waits for one.
                let Some(permit) = place
                    .take()
                    .or_else(|| wait_for_place(&in_flight, &stop, &heartbeat))
                else {
                    break;
                };
                if events
                    .send(ConsumerEvent::Message(message.detach(), permit))
                    .is_err()
                {
                    break;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
    }
    // Messages fetched but not handed over are simply not committed: they are read again.
    set_paused(&consumer, true);
}

/// A place under the bound, or `None` once `stop` is set.
fn wait_for_place(
    in_flight: &InFlight,
    stop: &AtomicBool,
    heartbeat: &crate::observe::Heartbeat,
) -> Option<Permit> {
    while !stop.load(Ordering::SeqCst) {
        // Waiting for a place is back-pressure, not a stuck loop.
        heartbeat.beat();
        if let Some(permit) = in_flight.acquire(Duration::from_millis(100)) {
            return Some(permit);
        }
    }
    None
}

/// Resume `partitions`, but for those the member holds.
fn resume_unless_held(
    consumer: &GroupConsumer,
    partitions: &[TopicPartition],
) -> rdkafka::error::KafkaResult<()> {
    let holds = consumer.context().holds();
    let free: Vec<TopicPartition> = partitions
        .iter()
        .filter(|tp| !holds.is_held(tp))
        .cloned()
        .collect();
    if free.is_empty() {
        return Ok(());
    }
    consumer.resume(&partition_list(&free))
}

/// Pause the whole assignment, or resume all of it but what the member holds.
fn set_paused(consumer: &GroupConsumer, pause: bool) {
    if let Ok(assignment) = consumer.assignment() {
        let result = if pause {
            consumer.pause(&assignment)
        } else {
            resume_unless_held(consumer, &partitions_of(&assignment))
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }
}

/// Commit `positions` without waiting; a commit that fails at the broker is simply offered
/// again by the caller's next tick.
pub fn commit_async(consumer: &GroupConsumer, positions: &[Position]) {
    if positions.is_empty() {
        return;
    }
    if let Err(e) = consumer.commit(&position_list(positions), CommitMode::Async) {
        tracing::warn!(error = %e, "commit failed; repeated on the next tick");
    }
}

/// Why the end of a consumer's life could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("the final commit failed: {0}")]
    Commit(#[source] rdkafka::error::KafkaError),
    #[error("the final commit and close did not finish within {0:?} (is the broker down?)")]
    TimedOut(Duration),
}

/// Commit `positions`, riding out a rebalance that another member's join or leave started (a
/// rolling restart stops members one after another): until it ends the broker refuses commits
/// (`RebalanceInProgress`), and this member must poll to take part in it. What is fetched
/// meanwhile is dropped: offsets are stored by hand, so the next owner reads it again. Tried
/// until `deadline`.
fn commit_through_rebalance(
    consumer: &GroupConsumer,
    positions: &[Position],
    deadline: std::time::Instant,
) -> rdkafka::error::KafkaResult<()> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    let list = position_list(positions);
    loop {
        match consumer.commit(&list, CommitMode::Sync) {
            Err(KafkaError::ConsumerCommit(
                Code::RebalanceInProgress | Code::IllegalGeneration,
            )) if std::time::Instant::now() < deadline => {
                let _ = consumer.poll(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The end of a consumer's life, once the poll thread was told to stop and the caller
/// dropped its other handles: answer a revoke still waiting on the poll thread, join it,
/// commit `positions` for good, and close the consumer (leaving the group). Messages the poll
/// thread handed over but nobody finished are simply read again by the next owner.
///
/// librdkafka's synchronous commit and its close have no bound of their own and wait for a
/// broker that is gone, so they run on a thread of their own and are waited for at most
/// `within`; past that the thread is left behind (the process is exiting) and the caller is
/// told the last commit was not confirmed.
pub async fn close(
    consumer: Arc<GroupConsumer>,
    poller: std::thread::JoinHandle<()>,
    positions: Vec<Position>,
    events: &mut mpsc::UnboundedReceiver<ConsumerEvent>,
    within: Duration,
) -> Result<(), CloseError> {
    consumer.context().closing.store(true, Ordering::SeqCst);
    while let Ok(event) = events.try_recv() {
        if let ConsumerEvent::Revoked { reply, .. } = event {
            let _ = reply.send(Vec::new());
        }
    }
    let (done, finished) = tokio::sync::oneshot::channel();
    let deadline = std::time::Instant::now() + within;
    let closer = std::thread::Builder::new()
        .name("otp-consumer-close".into())
        .spawn(move || {
            let _ = poller.join();
            let committed = if positions.is_empty() {
                Ok(())
            } else {
                commit_through_rebalance(&consumer, &positions, deadline)
            };
            drop(consumer); // the last handle: closes the consumer and leaves the group
            let _ = done.send(committed);
        });
    if closer.is_err() {
        return Err(CloseError::TimedOut(Duration::ZERO));
    }
    let outcome = tokio::time::timeout(within, finished).await;
    events.close();
    match outcome {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(CloseError::Commit(e)),
        Ok(Err(_)) | Err(_) => Err(CloseError::TimedOut(within)),
    }
}
