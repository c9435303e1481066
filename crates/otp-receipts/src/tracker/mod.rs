//! The confirmation tracker: consumes `otp.pending-confirmations` and `otp.delivery-receipts`
//! co-partitioned (same partition count, same key, `range` assignment, so partition N of
//! both lands on one member), and turns receipts and silence into statuses and fallbacks.
//!
//! Its memory is the [`Book`]; the compacted topic is the book's durable copy. The pending
//! topic is never committed, so every assignment reads it from the start and rebuilds the
//! partition's records; receipts are committed only once applied. No deadline of a partition
//! fires until both of its topics have been read up to where they stood at assignment: a
//! delivered receipt written while the tracker was down is seen before the timer that it
//! cancels.
//!
//! The Kafka side reuses the worker's consumer bridge (`otp_worker::consumer`): polling on
//! its own thread, revokes answered by this loop before the partitions go.

mod book;
pub mod config;

pub use book::{Action, Book, Outcome, Tag};
pub use config::TrackerConfig;

use anyhow::Context;
use chrono::Utc;
use otp_events::{PendingConfirmation, PhoneHasher, Receipt, Rules, Topics};
use otp_producer::kafka::KafkaArgs;
use otp_worker::consumer::{self, ConsumerEvent, WorkerConsumer};
use otp_worker::offsets::{OffsetTracker, PartitionKey};
use otp_worker::report::Reporter;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Run the tracker until `shutdown` resolves; then commit and leave the group.
pub async fn run(
    kafka: KafkaArgs,
    config: TrackerConfig,
    hasher: PhoneHasher,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let topics = kafka.topics();
    let rules = Rules {
        max_ttl: chrono::Duration::from_std(config.max_ttl)?,
    };
    let reporter = Reporter::for_fallbacks(&kafka, rules, hasher.clone())?;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Co-partitioning: partition N of both topics goes to the same member.
    let mut client_config = consumer::group_config(&kafka, &config.group_id);
    client_config.set("partition.assignment.strategy", "range");
    kafka.apply_overrides(&mut client_config);
    let consumer: Arc<WorkerConsumer> = Arc::new(
        client_config
            .create_with_context(consumer::context(
                events_tx.clone(),
                Duration::from_secs(15),
            ))
            .context("create the Kafka consumer")?,
    );
    let (pending_topic, receipts_topic) =
        (topics.pending_confirmations(), topics.delivery_receipts());
    consumer
        .subscribe(&[&pending_topic, &receipts_topic])
        .context("subscribe")?;
    tracing::info!(group = %config.group_id, window_from = "worker", "confirmation tracker started");
    if let Some(listen) = config.metrics_listen {
        otp_worker::observe::prometheus();
        tokio::spawn(async move {
            if let Err(e) = otp_worker::observe::serve(listen, || true).await {
                tracing::error!(error = %e, %listen, "metrics endpoint failed");
            }
        });
    }

    let handed_over = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (consumer, handed_over, stop) = (consumer.clone(), handed_over.clone(), stop.clone());
        std::thread::Builder::new()
            .name("otp-tracker-consumer".into())
            .spawn(move || consumer::poll_loop(consumer, events_tx, handed_over, 1024, stop))?
    };

    let mut state = Tracker {
        book: Book::new(
            hasher,
            chrono::Duration::from_std(config.keep_after_expiry)?,
            chrono::Duration::from_std(config.orphan_ttl)?,
        ),
        reporter,
        offsets: OffsetTracker::default(),
        catching_up: HashMap::new(),
        deferred: HashMap::new(),
        consumer: consumer.clone(),
        topics,
        ready_within: config.ready_within,
    };
    let mut tick = tokio::time::interval(config.tick);
    let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                // A receipt already fetched may cancel a deadline: apply what is queued
                // first (a bounded batch, so deadlines are not starved under load).
                for _ in 0..TICK_DRAIN {
                    match events.try_recv() {
                        Ok(event) => state.event(event, &handed_over).await,
                        Err(_) => break,
                    }
                }
                let waiting = state.not_ready();
                let outcome = state.book.due(Utc::now(), |p| !waiting.contains(&p));
                state.execute(outcome).await;
            }
            _ = commit_tick.tick() => {
                state.commit();
                // Counting walks everything held: once a second, not every tick.
                metrics::gauge!("otp_confirmations_awaiting").set(state.book.awaiting() as f64);
                metrics::gauge!("otp_confirmations_held").set(state.book.len() as f64);
            }
            event = events.recv() => match event {
                Some(event) => state.event(event, &handed_over).await,
                None => break,
            },
        }
    }

    tracing::info!("confirmation tracker stopping");
    stop.store(true, Ordering::SeqCst);
    let offsets = state.offsets.committable(None);
    drop(state);
    consumer::close(consumer, poller, offsets, &mut events).await?;
    tracing::info!("confirmation tracker stopped");
    Ok(())
}

struct Tracker {
    book: Book,
    reporter: Reporter,
    /// Receipts' offsets: committed up to the lowest one not yet applied.
    offsets: OffsetTracker,
    /// Per partition number: where each topic stood at assignment, until read up to there.
    catching_up: HashMap<i32, CatchUp>,
    /// Receipts read before their partition's records were: applied once those are in.
    deferred: HashMap<i32, Vec<OwnedMessage>>,
    consumer: Arc<WorkerConsumer>,
    topics: Topics,
    ready_within: Duration,
}

/// Events applied before each deadline check, at most.
const TICK_DRAIN: usize = 4096;

struct CatchUp {
    /// Topic → the offset that must be read before the partition is ready.
    targets: HashMap<String, i64>,
    since: Instant,
    warned: bool,
}

impl Tracker {
    async fn event(&mut self, event: ConsumerEvent, handed_over: &AtomicUsize) {
        match event {
            ConsumerEvent::Message(m) => {
                self.message(m).await;
                handed_over.fetch_sub(1, Ordering::SeqCst);
            }
            ConsumerEvent::Assigned(parts) => self.assigned(&parts).await,
            ConsumerEvent::Revoked { partitions, reply } => {
                let _ = reply.send(self.give_up(&partitions));
            }
        }
    }

    /// Partitions whose deadlines must wait: still being read back after assignment. They
    /// wait however long that takes (a decision on a half-read partition could fall back
    /// for a user already confirmed); past `ready_within` it is logged, once.
    fn not_ready(&mut self) -> HashSet<i32> {
        let limit = self.ready_within;
        for (partition, c) in &mut self.catching_up {
            if !c.warned && c.since.elapsed() >= limit {
                c.warned = true;
                tracing::warn!(
                    partition,
                    targets = ?c.targets,
                    "partition still reading back its records; its deadlines wait"
                );
            }
        }
        metrics::gauge!("otp_tracker_partitions_catching_up").set(self.catching_up.len() as f64);
        self.catching_up.keys().copied().collect()
    }

    fn seen(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(c) = self.catching_up.get_mut(&partition) {
            if c.targets.get(topic).is_some_and(|t| offset + 1 >= *t) {
                c.targets.remove(topic);
            }
            if c.targets.is_empty() {
                self.catching_up.remove(&partition);
                tracing::info!(partition, "partition caught up; its deadlines are live");
            }
        }
    }

    /// Whether the partition's records are still being read back after assignment.
    fn records_behind(&self, partition: i32) -> bool {
        let topic = self.topics.pending_confirmations();
        self.catching_up
            .get(&partition)
            .is_some_and(|c| c.targets.contains_key(&topic))
    }

    async fn message(&mut self, m: OwnedMessage) {
        // A receipt applied to a record older than the one still unread would be reported
        // (or acted on) twice: receipts wait until the partition's records are all in.
        let receipts = m.topic() == self.topics.delivery_receipts();
        if receipts && self.records_behind(m.partition()) {
            self.deferred.entry(m.partition()).or_default().push(m);
            return;
        }
        self.apply(&m).await;
        self.apply_deferred().await;
    }

    /// Apply the deferred receipts of partitions whose records are all in.
    async fn apply_deferred(&mut self) {
        let ready: Vec<i32> = self
            .deferred
            .keys()
            .copied()
            .filter(|p| !self.records_behind(*p))
            .collect();
        for p in ready {
            for m in self.deferred.remove(&p).unwrap_or_default() {
                self.apply(&m).await;
            }
        }
    }

    async fn apply(&mut self, m: &OwnedMessage) {
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        let now = Utc::now();
        let outcome = if topic == self.topics.pending_confirmations() {
            let key = m
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .to_string();
            match m
                .payload()
                .map(serde_json::from_slice::<PendingConfirmation>)
            {
                None => self.book.record(&key, None, partition, now),
                Some(Ok(record)) => self.book.record(&key, Some(record), partition, now),
                Some(Err(e)) => {
                    // serde's message can quote a value (a phone, a code): log its kind only.
                    let kind = format!("{:?}", e.classify());
                    tracing::error!(partition, offset, kind, "unreadable pending record skipped");
                    metrics::counter!("otp_tracker_unreadable_total", "topic" => "pending")
                        .increment(1);
                    Outcome::default()
                }
            }
        } else {
            let generation = self.offsets.started(&topic, partition, offset);
            let tag = Tag {
                partition,
                offset,
                generation,
            };
            match m.payload().map(serde_json::from_slice::<Receipt>) {
                Some(Ok(receipt)) => self.book.receipt(receipt, tag, now),
                _ => {
                    tracing::error!(partition, offset, "unreadable receipt skipped");
                    metrics::counter!("otp_tracker_unreadable_total", "topic" => "receipts")
                        .increment(1);
                    Outcome {
                        actions: Vec::new(),
                        released: vec![tag],
                    }
                }
            }
        };
        self.execute(outcome).await;
        self.seen(&topic, partition, offset);
    }

    /// Carry out the book's decisions in order; each write is acknowledged before the next.
    async fn execute(&mut self, outcome: Outcome) {
        for action in outcome.actions {
            match action {
                Action::FallBack { next, status } => {
                    let reason = status
                        .error
                        .as_ref()
                        .map_or("", |e| e.code.as_str())
                        .to_string();
                    match self.reporter.fallback(&next).await {
                        Ok(()) => {
                            metrics::counter!("otp_confirmation_fallbacks_total", "reason" => reason.clone()).increment(1);
                            tracing::info!(request_id = %status.request_id, reason, "fallback after receipt");
                            self.reporter.status(&status).await;
                        }
                        Err(e) => {
                            let mut failed = status.clone();
                            failed.status = otp_events::StatusKind::Failed;
                            failed.is_final = true;
                            failed.next_channel = None;
                            failed.error = Some(otp_events::StatusError {
                                category: otp_events::ErrorCategory::Internal,
                                code: "fallback_refused".into(),
                                message: e.to_string(),
                            });
                            self.reporter.status(&failed).await;
                        }
                    }
                }
                Action::Status(status) => self.reporter.status(&status).await,
                Action::Save(record) => self.reporter.pending(&record).await,
                Action::Forget(request_id) => self.reporter.forget_pending(&request_id).await,
            }
        }
        let topic = self.topics.delivery_receipts();
        for tag in outcome.released {
            self.offsets
                .finished(&topic, tag.partition, tag.offset, tag.generation);
        }
    }

    fn commit(&self) {
        consumer::commit_async(&self.consumer, &self.offsets.committable(None));
    }

    /// Note where both topics stand for each new partition: its deadlines wait until the
    /// tracker has read that far.
    async fn assigned(&mut self, partitions: &[PartitionKey]) {
        let consumer = self.consumer.clone();
        let parts = partitions.to_vec();
        let targets = tokio::task::spawn_blocking(move || {
            parts
                .into_iter()
                .filter_map(|(topic, p)| {
                    // Where the partition stands; without it, no read-back can be trusted
                    // complete, so keep asking (the broker is needed for anything anyway).
                    let (low, high) = loop {
                        match consumer.fetch_watermarks(&topic, p, Duration::from_secs(5)) {
                            Ok(w) => break w,
                            Err(e) => {
                                tracing::warn!(%topic, partition = p, error = %e, "watermarks unavailable; retrying");
                                std::thread::sleep(Duration::from_millis(500));
                            }
                        }
                    };
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    tpl.add_partition(&topic, p);
                    let committed = consumer
                        .committed_offsets(tpl, Duration::from_secs(5))
                        .ok()
                        .and_then(|c| c.elements().first().and_then(|e| e.offset().to_raw()))
                        .filter(|o| *o >= 0)
                        .unwrap_or(low);
                    (high > committed.max(low)).then_some((topic, p, high))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (topic, p) in partitions {
            self.catching_up.entry(*p).or_insert_with(|| CatchUp {
                targets: HashMap::new(),
                since: Instant::now(),
                warned: false,
            });
            let _ = topic;
        }
        for (topic, p, high) in targets {
            if let Some(c) = self.catching_up.get_mut(&p) {
                c.targets.insert(topic, high);
            }
        }
        self.catching_up.retain(|_, c| !c.targets.is_empty());
        tracing::info!(
            ?partitions,
            catching_up = self.catching_up.len(),
            "partitions assigned"
        );
    }

    /// A revoke: forget the partitions' records (the new owner rebuilds them) and return the
    /// receipts' offsets to commit.
    fn give_up(&mut self, partitions: &[PartitionKey]) -> Vec<(PartitionKey, i64)> {
        let receipts = self.topics.delivery_receipts();
        let mine: Vec<PartitionKey> = partitions
            .iter()
            .filter(|(t, _)| *t == receipts)
            .cloned()
            .collect();
        let offsets = self.offsets.committable(Some(&mine));
        for (topic, p) in partitions {
            self.book.drop_partition(*p);
            self.catching_up.remove(p);
            self.deferred.remove(p);
            self.offsets.remove(&(topic.clone(), *p));
        }
        offsets
    }
}
