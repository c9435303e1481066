//! The confirmation tracker: consumes `otp.pending-confirmations` and `otp.delivery-receipts`
//! co-partitioned (same partition count, same key, `range` assignment, so partition N of
//! both lands on one member), and turns receipts and silence into statuses and fallbacks.
//!
//! Its memory is the [`Book`]; the compacted topic is the book's durable copy. The pending
//! topic is never committed, so every assignment reads it from the start and rebuilds the
//! partition's records; receipts are committed only once applied. A partition's receipts are
//! not fetched until its records are read back (they are held from assignment, see
//! `otp_kafka::group::Holds`), so none waits in memory beside the in-flight bound. No
//! deadline of a partition fires until both of its topics have been read up to where they
//! stood at assignment: a delivered receipt written while the tracker was down is seen before
//! the timer that it cancels.
//!
//! The Kafka side is the consumer-group runner the delivery worker uses too
//! (`otp_kafka::group`); the book decides, and the [`execute::Executor`] is the one place its
//! decisions are written (the writes of different requests side by side).

mod book;
mod catch_up;
pub mod config;
mod execute;
pub mod slowness;

pub use book::{Action, Book, Outcome, Tag};
pub use config::TrackerConfig;

use catch_up::CatchUp;
use chrono::Utc;
use execute::Executor;
use otp_events::{
    MessageIndex, PendingConfirmation, PhoneHasher, Receipt, Role, Rules, Topics,
    MESSAGE_KEY_PREFIX,
};
use otp_kafka::group::{
    self, Group, GroupMember, GroupSettings, OffsetLedger, Permit, Position, TopicPartition,
};
use otp_kafka::records;
use otp_kafka::writer::KafkaWriter;
use otp_kafka::KafkaArgs;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slow-provider signals being written at once, at most.
const MAX_SLOW_WRITES: usize = 16;

/// How long a revoke or a shutdown waits for the writes under way: within the revoke's
/// 15 s reply window, and the tracker's stop grace.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// Run the tracker until `shutdown` resolves; then commit and leave the group.
pub async fn run(
    kafka: KafkaArgs,
    config: TrackerConfig,
    hasher: PhoneHasher,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.commit_interval.is_zero() && !config.tick.is_zero(),
        "--commit-interval and --tick must be above 0"
    );
    let topics = kafka.topics();
    let rules = Rules {
        max_ttl: chrono::Duration::from_std(config.max_ttl)?,
        sealing: kafka.sealing.clone(),
        ..Rules::default()
    };
    let writer = Arc::new(KafkaWriter::for_fallbacks(
        &kafka,
        rules.clone(),
        hasher.clone(),
        otp_events::Role::Tracker,
    )?);
    if config.metrics_listen.is_some() {
        otp_kafka::observe::prometheus();
    }
    otp_kafka::records::register_refusals();
    metrics::gauge!("otp_tracker_partitions_unopenable").set(0.0);
    metrics::counter!("otp_tracker_left_to_new_owner_total").increment(0);
    metrics::counter!("otp_tracker_write_panics_total").increment(0);
    for channel in [otp_events::Channel::Whatsapp, otp_events::Channel::Sms] {
        metrics::counter!("otp_receipts_unmatched_total", "channel" => channel.as_str())
            .increment(0);
    }
    metrics::counter!("otp_tracker_receipts_deferred_total").increment(0);
    for reason in ["receipt_timeout", "receipt_failed"] {
        metrics::counter!("otp_confirmation_fallbacks_total", "reason" => reason).increment(0);
    }
    let settings = GroupSettings {
        group_id: config.group_id.clone(),
        instance_id: config.group_instance_id.clone(),
        topics: vec![topics.pending_confirmations(), topics.delivery_receipts()],
        // Co-partitioning: partition N of both topics goes to the same member.
        assignment: "range",
        // Messages are applied one at a time; this bounds what waits in the queue.
        max_in_flight: config.max_in_flight,
        // A partition's receipts are not fetched until its records are read back: they could
        // not be applied before, and would wait in memory.
        hold_until_released: Some(topics.delivery_receipts()),
        commit_interval: config.commit_interval,
        revoke_reply_within: config.revoke_grace,
        shutdown_grace: config.shutdown_grace,
        tick: Some(config.tick),
        metrics_listen: config.metrics_listen,
        name: "otp-tracker-consumer".into(),
    };
    tracing::info!(group = %config.group_id, window_from = "worker", "confirmation tracker started");
    let tracker = Tracker {
        book: Book::new(
            hasher,
            chrono::Duration::from_std(config.keep_after_expiry)?,
            chrono::Duration::from_std(config.orphan_ttl)?,
        ),
        writer,
        executor: None,
        ledger: Arc::new(OffsetLedger::default()),
        catching_up: HashMap::new(),
        lookups: Vec::new(),
        consumer: None,
        owned: BTreeSet::new(),
        deferred: HashMap::new(),
        topics,
        rules,
        record_keys: kafka.record_keys.clone(),
        unopenable: BTreeSet::new(),
        ready_within: config.ready_within,
        last_gauges: Instant::now(),
        slow_writes: Arc::new(AtomicUsize::new(0)),
        slowness: slowness::Slowness::new(slowness::SlowConfig {
            window: chrono::Duration::from_std(config.slow_window)?,
            min_samples: config.slow_min_samples,
            check_every: chrono::Duration::from_std(config.slow_check_every)?,
        }),
    };
    group::run(&kafka, settings, tracker, shutdown).await?;
    tracing::info!("confirmation tracker stopped");
    Ok(())
}

struct Tracker {
    book: Book,
    /// Delivery times per provider and country, and who is slow against its peers.
    slowness: slowness::Slowness,
    /// Slow-provider signals being written.
    slow_writes: Arc<AtomicUsize>,
    writer: Arc<KafkaWriter>,
    /// Writes the book's decisions; made with the consumer, at the first assignment.
    executor: Option<Executor>,
    /// Receipts' offsets: committed up to the lowest one not yet applied (and its writes
    /// acknowledged).
    ledger: Arc<OffsetLedger>,
    /// Per partition number: where each topic stood at assignment, until read up to there.
    catching_up: HashMap<i32, CatchUp>,
    /// The broker's answers on where the topics stand, asked in the background on assignment:
    /// (partition, the catch-up it is for, the lookup).
    lookups: Vec<(i32, Instant, tokio::task::JoinHandle<Vec<catch_up::Found>>)>,
    /// The tracker's consumer, for those lookups, for the partitions whose revoke has been
    /// announced (no act on them from then on), and for the receipts partitions held from
    /// assignment until their records are read back.
    consumer: Option<std::sync::Arc<otp_kafka::group::GroupConsumer>>,
    /// The partitions (numbers, of both topics) assigned to this member.
    owned: BTreeSet<i32>,
    /// Receipts read before their partition's records were: applied once those are in.
    deferred: HashMap<i32, Vec<OwnedMessage>>,
    topics: Topics,
    /// How pending records' requests are read (their phone and code are sealed).
    rules: Rules,
    /// Checks that pending records come from a worker or this tracker, and receipts from the
    /// ingress or this tracker.
    record_keys: Option<otp_events::RecordKeys>,
    /// Partitions holding a record of ours that cannot be read: their deadlines wait until
    /// they are assigned again.
    unopenable: BTreeSet<i32>,
    ready_within: Duration,
    /// When the gauges were last set: counting walks everything held, so once a second.
    last_gauges: Instant,
}

impl GroupMember for Tracker {
    /// Applied at once (or deferred until the partition's records are in), so its place is
    /// released at once: a deferred receipt must not hold back the records it waits for.
    async fn message(&mut self, message: OwnedMessage, place: Permit) {
        drop(place);
        self.read(message).await;
    }

    async fn assigned(&mut self, partitions: &[TopicPartition], group: &Group) {
        self.start_read_back(partitions, group).await;
    }

    /// The writes under way for `partitions` finish first (their revoke is announced, so
    /// they stop before anything that acts), then their receipts' positions are returned.
    async fn revoked(&mut self, partitions: &[TopicPartition]) -> Vec<Position> {
        let numbers: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        self.settle(Some(&numbers)).await;
        self.give_up(partitions)
    }

    /// Stopping: the writes under way finish (bounded by the runner's grace), then the lanes
    /// stop, so that the consumer's last handle is the runner's when it closes it.
    async fn drain(&mut self) {
        self.settle(None).await;
        if let Some(executor) = &mut self.executor {
            executor.close().await;
        }
    }

    fn positions(&self) -> Vec<Position> {
        self.ledger.committable(None)
    }

    fn oldest_unfinished(&self) -> Option<Duration> {
        self.ledger.oldest_unfinished()
    }

    /// Fire what is due, on partitions whose records are all read back; partition by
    /// partition, so that one being let go meanwhile stops only its own.
    async fn tick(&mut self) {
        self.take_lookups().await;
        let waiting = self.not_ready();
        let now = Utc::now();
        for partition in self.owned.clone() {
            let outcome = self
                .book
                .due(now, |p| p == partition && !waiting.contains(&p));
            self.execute(partition, outcome).await;
        }
        for slow in self.slowness.check(now) {
            self.signal_slow(slow);
        }
        if self.last_gauges.elapsed() >= Duration::from_secs(1) {
            self.last_gauges = Instant::now();
            metrics::gauge!("otp_confirmations_awaiting").set(self.book.awaiting() as f64);
            metrics::gauge!("otp_confirmations_held").set(self.book.len() as f64);
        }
    }
}

impl Tracker {
    /// Tell the workers that a provider delivers slowly to a country, so that they move
    /// weight away from it there. Written in the background: a tick does not wait for Kafka.
    fn signal_slow(&self, slow: slowness::Slow) {
        tracing::warn!(
            provider = %slow.provider,
            country = %slow.country,
            p95_ms = slow.p95_ms,
            best_p95_ms = slow.best_p95_ms,
            "provider slow to deliver here, against its peers; the workers move weight away"
        );
        metrics::counter!("otp_provider_slow_total", "provider" => slow.provider.as_str(), "country" => slow.country.clone())
            .increment(1);
        let signal = otp_events::ChannelSignal::new(
            slow.channel,
            otp_events::SignalKind::Slow,
            otp_events::SignalSource::Receipt,
            "slow_delivery",
            Utc::now(),
        )
        .about(slow.provider, Some(slow.country));
        // A write retries until Kafka takes it; while Kafka is away, newer comparisons are
        // dropped rather than queued without bound (the next check says the same again).
        if self.slow_writes.load(Ordering::Relaxed) >= MAX_SLOW_WRITES {
            metrics::counter!("otp_provider_slow_signals_dropped_total").increment(1);
            return;
        }
        self.slow_writes.fetch_add(1, Ordering::Relaxed);
        let (writer, writes) = (self.writer.clone(), self.slow_writes.clone());
        tokio::spawn(async move {
            writer.signal(&signal).await;
            writes.fetch_sub(1, Ordering::Relaxed);
        });
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
                    state = %c.describe(),
                    "partition still reading back its records; its deadlines wait"
                );
            }
        }
        self.export_partitions();
        self.catching_up
            .keys()
            .chain(&self.unopenable)
            .copied()
            .collect()
    }

    fn seen(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(c) = self.catching_up.get_mut(&partition) {
            if c.seen(topic, offset) {
                self.caught_up(partition);
            }
            self.release_receipts_once_records_are_in(partition);
        }
    }

    fn caught_up(&mut self, partition: i32) {
        self.catching_up.remove(&partition);
        tracing::info!(partition, "partition caught up; its deadlines are live");
    }

    /// The partition's receipts are fetched from when its records are all read back. Not for
    /// a partition being let go: its read-back belongs to an ownership that is ending, and a
    /// release would lift the hold of its next assignment.
    fn release_receipts_once_records_are_in(&self, partition: i32) {
        if let Some(consumer) = &self.consumer {
            if !self.records_behind(partition) && !self.let_go(partition) {
                let receipts = TopicPartition::new(self.topics.delivery_receipts(), partition);
                consumer.context().holds().release(&receipts);
            }
        }
    }

    /// Whether the partition's records are still being read back after assignment.
    fn records_behind(&self, partition: i32) -> bool {
        let topic = self.topics.pending_confirmations();
        self.catching_up
            .get(&partition)
            .is_some_and(|c| c.behind_on(&topic))
    }

    /// Apply the broker's answers that have come (never waiting for one).
    async fn take_lookups(&mut self) {
        let mut i = 0;
        while i < self.lookups.len() {
            if !self.lookups[i].2.is_finished() {
                i += 1;
                continue;
            }
            let (partition, since, lookup) = self.lookups.swap_remove(i);
            let found = lookup.await.unwrap_or_default();
            // Only for the catch-up it was asked for (not one of a later assignment).
            let ready = match self.catching_up.get_mut(&partition) {
                Some(c) if c.since == since => c.found(found),
                _ => false,
            };
            if ready {
                self.caught_up(partition);
            }
            self.release_receipts_once_records_are_in(partition);
        }
    }

    async fn read(&mut self, m: OwnedMessage) {
        // A receipt applied to a record older than the one still unread would be reported
        // (or acted on) twice: receipts wait until the partition's records are all in.
        let receipts = m.topic() == self.topics.delivery_receipts();
        if receipts && self.records_behind(m.partition()) {
            // Not expected: a partition's receipts are held until its records are in. Kept
            // (and bounded by what was fetched) should the hold not have taken effect.
            metrics::counter!("otp_tracker_receipts_deferred_total").increment(1);
            tracing::warn!(
                partition = m.partition(),
                offset = m.offset(),
                "receipt deferred: read before its partition's records were"
            );
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
            self.apply_pending(m, now)
        } else {
            let generation = self
                .ledger
                .started(&TopicPartition::new(&topic, partition), offset);
            let tag = Tag {
                partition,
                offset,
                generation,
            };
            // Receipts come from the ingress, or from this tracker handing one on; any other
            // is refused before it is decoded, and its offset passes.
            let accepted = [Role::Ingress, Role::Tracker];
            let authentic = records::verified(self.record_keys.as_ref(), m, &accepted, "receipts");
            match m
                .payload()
                .filter(|_| authentic)
                .map(serde_json::from_slice::<Receipt>)
            {
                Some(Ok(receipt)) => self.book.receipt(receipt, tag, now),
                _ if !authentic => Outcome {
                    released: vec![tag],
                    ..Outcome::default()
                },
                _ => {
                    tracing::error!(partition, offset, "unreadable receipt skipped");
                    metrics::counter!("otp_tracker_unreadable_total", "topic" => "receipts")
                        .increment(1);
                    Outcome {
                        released: vec![tag],
                        ..Outcome::default()
                    }
                }
            }
        };
        self.execute(partition, outcome).await;
        self.seen(&topic, partition, offset);
    }

    /// A record of the pending topic (a send's record, a message's index entry, or a
    /// tombstone of either), applied to the book only if a worker or this tracker wrote it. A
    /// record that is ours but cannot be read (sealed with a key this tracker does not hold,
    /// say: a rotation done in the wrong order) holds its partition's deadlines: acting on
    /// the rest could settle its request wrongly, and skipping it would leave its request
    /// without a fallback or a final status. It is counted and alerted on
    /// (`otp_tracker_partitions_unopenable`) until the partition is assigned again.
    fn apply_pending(&mut self, m: &OwnedMessage, now: chrono::DateTime<Utc>) -> Outcome {
        let (partition, offset) = (m.partition(), m.offset());
        let accepted = [Role::Worker, Role::Tracker];
        if !records::verified(self.record_keys.as_ref(), m, &accepted, "pending") {
            return Outcome::default();
        }
        let key = m
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .to_string();
        let payload = m.payload();
        let decoded = if key.starts_with(MESSAGE_KEY_PREFIX) {
            payload
                .map(|p| {
                    serde_json::from_slice::<MessageIndex>(p)
                        .map_err(|e| format!("{:?}", e.classify()))
                })
                .transpose()
                .map(|index| self.book.index(&key, index, partition, now))
        } else {
            payload
                .map(|p| PendingConfirmation::from_json(p, &self.rules))
                .transpose()
                .map(|record| self.book.record(&key, record, partition, now))
        };
        decoded.unwrap_or_else(|kind| {
            // The error names a kind or a field and rule, never a value.
            tracing::error!(
                partition,
                offset,
                kind,
                "a pending record written by our services cannot be read; the partition's \
                 deadlines wait until it is assigned again (check OTP_SEAL_KEYS)"
            );
            metrics::counter!("otp_tracker_unreadable_total", "topic" => "pending").increment(1);
            self.unopenable.insert(partition);
            Outcome::default()
        })
    }

    /// The partitions owned (as the workers report theirs) and those still reading back.
    fn export_partitions(&self) {
        let topic = self.topics.pending_confirmations();
        metrics::gauge!("otp_assigned_partitions", "topic" => topic).set(self.owned.len() as f64);
        metrics::gauge!("otp_tracker_partitions_catching_up").set(self.catching_up.len() as f64);
        metrics::gauge!("otp_tracker_partitions_unopenable").set(self.unopenable.len() as f64);
    }

    /// Whether `partition`'s revoke has been announced: it is the new owner's to act on.
    fn let_go(&self, partition: i32) -> bool {
        self.consumer
            .as_ref()
            .is_some_and(|c| execute::let_go(c, &self.topics, partition))
    }

    /// Hand the book's decisions about `partition` to the executor (waiting only for room in
    /// its queues).
    async fn execute(&mut self, partition: i32, mut outcome: Outcome) {
        let now = Utc::now();
        for d in outcome.deliveries.drain(..) {
            if let Some(country) = d.country {
                self.slowness
                    .observe(d.channel, d.provider, country, d.latency_ms, now);
            }
        }
        if outcome.actions.is_empty() && outcome.released.is_empty() {
            return;
        }
        match &self.executor {
            Some(executor) => executor.submit(partition, outcome).await,
            // Decisions come only from assigned partitions, after the executor is made.
            None => tracing::error!(partition, "decision before any assignment; dropped"),
        }
    }

    /// Wait for the decisions under way about `partitions` (all, when None), at most
    /// [`SETTLE_WITHIN`]: what is left is not committed, and the next owner reads it again.
    async fn settle(&self, partitions: Option<&[i32]>) {
        let Some(executor) = &self.executor else {
            return;
        };
        if tokio::time::timeout(SETTLE_WITHIN, executor.settled(partitions))
            .await
            .is_err()
        {
            tracing::warn!(
                ?partitions,
                "tracker writes still under way; their receipts are left to be read again"
            );
        }
    }

    /// Note where both topics stand for each new partition, asking the broker in the
    /// background: its deadlines wait until the tracker has read that far.
    async fn start_read_back(&mut self, partitions: &[TopicPartition], group: &Group) {
        let consumer = self
            .consumer
            .get_or_insert_with(|| group.consumer())
            .clone();
        if self.executor.is_none() {
            self.executor = Some(Executor::new(
                self.writer.clone(),
                self.ledger.clone(),
                consumer.clone(),
                self.topics.clone(),
            ));
        }
        let topics = vec![
            self.topics.pending_confirmations(),
            self.topics.delivery_receipts(),
        ];
        let now = Instant::now();
        let mut new: Vec<i32> = partitions.iter().map(|tp| tp.partition).collect();
        new.sort_unstable();
        new.dedup();
        self.owned.extend(new.iter().copied());
        for partition in new {
            if self.catching_up.contains_key(&partition) {
                // Held again by the assignment: released at once if its records are in.
                self.release_receipts_once_records_are_in(partition);
                continue;
            }
            self.catching_up.insert(partition, CatchUp::new(now));
            let (consumer, topics) = (consumer.clone(), topics.clone());
            let lookup =
                tokio::task::spawn_blocking(move || catch_up::look_up(consumer, topics, partition));
            self.lookups.push((partition, now, lookup));
        }
        self.export_partitions();
        tracing::info!(
            ?partitions,
            catching_up = self.catching_up.len(),
            "partitions assigned"
        );
    }

    /// A revoke: forget the partitions' records (the new owner rebuilds them) and return the
    /// receipts' offsets to commit.
    fn give_up(&mut self, partitions: &[TopicPartition]) -> Vec<Position> {
        let receipts = self.topics.delivery_receipts();
        let mine: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| tp.topic == receipts)
            .cloned()
            .collect();
        let positions = self.ledger.committable(Some(&mine));
        for tp in partitions {
            if let Some(executor) = &self.executor {
                executor.given_up(tp.partition);
            }
            self.owned.remove(&tp.partition);
            self.book.drop_partition(tp.partition);
            self.catching_up.remove(&tp.partition);
            self.unopenable.remove(&tp.partition);
            self.lookups.retain(|(p, _, _)| *p != tp.partition);
            self.deferred.remove(&tp.partition);
            self.ledger.remove(tp);
        }
        self.export_partitions();
        positions
    }
}
