//! Carrying out the book's decisions: the one place the tracker writes them to Kafka.
//!
//! The writes of one request are made one after another, each acknowledged before the next
//! (a fallback's status before the request it hands on, a status before the record that says
//! it was reported) and in the order the book decided them. The writes of different requests
//! go side by side: a request's writes go to one of [`LANES`] lanes chosen by its key, and
//! each lane works through its queue in order. When every write waited for the one before,
//! a tracker confirmed about 90 requests a second on the embedded broker, whatever its CPU,
//! one Kafka round trip per write (`otp load --embedded --receipts`).
//!
//! A receipt's offset is finished (and may be committed) once every write it led to is
//! acknowledged; a revoke or a shutdown waits for the writes of its partitions
//! ([`Executor::settled`]). A decision about a partition whose revoke is announced stops
//! before its next write that acts, and so does one from an ownership that has ended (a
//! decision still queued when its partition was given up and assigned again): the
//! partition's owner decides again from the topics.

use super::book::{Action, Outcome, Tag};
use futures_util::FutureExt;
use otp_events::Topics;
use otp_kafka::group::{GroupConsumer, OffsetLedger, TopicPartition};
use otp_kafka::writer::KafkaWriter;
use rdkafka::consumer::Consumer;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Requests written side by side, at most. Each lane's request takes two Kafka round trips
/// per receipt (its status, then its record), so the lanes bound a tracker's rate at about
/// LANES / (2 x round trip): with 64, the tracker fell behind 1,000 accepted sends a second on
/// the embedded broker (942 confirmed/s, p99 5.4 s after a 200 ms receipt delay); with 256 it
/// keeps up (1,007/s, p99 214 ms; `scripts/perf e-receipts`, medians of 3).
pub const LANES: usize = 256;
/// Decisions queued per lane before the tracker waits for room (back-pressure on reading).
const LANE_QUEUE: usize = 16;

/// Whether `partition`'s revoke has been announced (of either topic): the new owner acts on
/// it from then on.
pub fn let_go(consumer: &GroupConsumer, topics: &Topics, partition: i32) -> bool {
    let board = consumer.context().letting_go();
    [topics.pending_confirmations(), topics.delivery_receipts()]
        .iter()
        .any(|topic| board.holds_back(&TopicPartition::new(topic, partition)))
}

/// What the lanes share.
struct Shared {
    writer: Arc<KafkaWriter>,
    ledger: Arc<OffsetLedger>,
    /// Weak: the runner closes the consumer when the member is done with it, and must hold
    /// its last handle then (a lane still running must not keep it open).
    consumer: Weak<GroupConsumer>,
    topics: Topics,
    /// Decisions queued or under way, per partition.
    outstanding: watch::Sender<HashMap<i32, usize>>,
    /// Per partition, its current ownership: a decision made in an earlier one is stale.
    epochs: Mutex<HashMap<i32, u64>>,
}

/// One request's writes from one decision of the book. Counted in `outstanding` from the
/// moment it is made until it is dropped, whether it ran, was cancelled or panicked.
struct Job {
    partition: i32,
    /// The partition's ownership it was decided in.
    epoch: u64,
    actions: Vec<Action>,
    receipts: Arc<Receipts>,
    shared: Arc<Shared>,
}

impl Job {
    fn new(
        shared: &Arc<Shared>,
        partition: i32,
        epoch: u64,
        actions: Vec<Action>,
        receipts: Arc<Receipts>,
    ) -> Self {
        shared.outstanding.send_modify(|m| {
            *m.entry(partition).or_default() += 1;
        });
        Self {
            partition,
            epoch,
            actions,
            receipts,
            shared: shared.clone(),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.shared.done(self.partition);
    }
}

/// The receipts a decision applied: finished when the last of its jobs is done, unless one
/// of them left writes undone.
struct Receipts {
    tags: Vec<Tag>,
    jobs_left: AtomicUsize,
    skipped: AtomicBool,
}

impl Receipts {
    fn new(tags: Vec<Tag>, jobs: usize) -> Self {
        Self {
            tags,
            jobs_left: AtomicUsize::new(jobs),
            skipped: AtomicBool::new(false),
        }
    }

    /// One of the decision's jobs is done (`skipped`: it left writes undone). The receipts
    /// to finish, when it was the last job and none left anything undone.
    fn job_done(&self, skipped: bool) -> Option<&[Tag]> {
        if skipped {
            self.skipped.store(true, Ordering::Release);
        }
        let last = self.jobs_left.fetch_sub(1, Ordering::AcqRel) == 1;
        (last && !self.skipped.load(Ordering::Acquire)).then_some(self.tags.as_slice())
    }
}

pub struct Executor {
    lanes: Vec<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    /// The lanes' tasks; dropping the executor aborts them (what they had not written is
    /// not committed, and is read again by the next owner).
    tasks: JoinSet<()>,
}

impl Executor {
    pub fn new(
        writer: Arc<KafkaWriter>,
        ledger: Arc<OffsetLedger>,
        consumer: Arc<GroupConsumer>,
        topics: Topics,
    ) -> Self {
        let shared = Arc::new(Shared {
            writer,
            ledger,
            consumer: Arc::downgrade(&consumer),
            topics,
            outstanding: watch::channel(HashMap::new()).0,
            epochs: Mutex::new(HashMap::new()),
        });
        let mut tasks = JoinSet::new();
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job>(LANE_QUEUE);
                let shared = shared.clone();
                tasks.spawn(async move {
                    while let Some(job) = rx.recv().await {
                        // A bug in one decision's writes must not stop the lane (and every
                        // later decision of its requests): its receipts stay unfinished, so
                        // they are read again after the next rebalance or restart.
                        if AssertUnwindSafe(shared.run(job))
                            .catch_unwind()
                            .await
                            .is_err()
                        {
                            metrics::counter!("otp_tracker_write_panics_total").increment(1);
                            tracing::error!(
                                "a tracker write panicked; its receipts stay uncommitted"
                            );
                        }
                    }
                });
                tx
            })
            .collect();
        Self {
            lanes,
            shared,
            tasks,
        }
    }

    /// Queue the decisions of `outcome` about `partition`, each request's writes to its lane
    /// (waiting for room when the lane is full).
    pub async fn submit(&self, partition: i32, outcome: Outcome) {
        let by_key = by_request(outcome.actions);
        if by_key.is_empty() {
            self.shared.release(&outcome.released);
            return;
        }
        let receipts = Arc::new(Receipts::new(outcome.released, by_key.len()));
        let epoch = self.shared.epoch(partition);
        for (key, actions) in by_key {
            let job = Job::new(&self.shared, partition, epoch, actions, receipts.clone());
            if self.lanes[lane(&key)].send(job).await.is_err() {
                // Only when the lanes are being dropped with the tracker: nothing is written,
                // nothing released (the job's drop counts it done).
                tracing::error!(partition, "tracker write lanes stopped; decision dropped");
            }
        }
    }

    /// `partition` was given up: decisions made until now belong to an ended ownership.
    pub fn given_up(&self, partition: i32) {
        let mut epochs = self.shared.epochs.lock().expect("epochs lock");
        *epochs.entry(partition).or_default() += 1;
    }

    /// Stop the lanes once their queues are done (stopping: nothing more is submitted).
    pub async fn close(&mut self) {
        self.lanes.clear();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Wait until no decision about `partitions` (all, when None) is queued or under way.
    pub async fn settled(&self, partitions: Option<&[i32]>) {
        let mut rx = self.shared.outstanding.subscribe();
        let _ = rx
            .wait_for(|m| match partitions {
                None => m.values().all(|n| *n == 0),
                Some(ps) => ps.iter().all(|p| m.get(p).copied().unwrap_or(0) == 0),
            })
            .await;
    }
}

/// A decision's actions split by the request they are about, each request's in the book's
/// order (requests in the order of their first action).
fn by_request(actions: Vec<Action>) -> Vec<(String, Vec<Action>)> {
    let mut by_key: Vec<(String, Vec<Action>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for action in actions {
        let key = action.key();
        match index.get(&key) {
            Some(&i) => by_key[i].1.push(action),
            None => {
                index.insert(key.clone(), by_key.len());
                by_key.push((key, vec![action]));
            }
        }
    }
    by_key
}

fn lane(key: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

impl Shared {
    /// Whether `partition`'s revoke is announced; with the consumer gone, everything is.
    fn let_go(&self, partition: i32) -> bool {
        self.consumer
            .upgrade()
            .is_none_or(|c| let_go(&c, &self.topics, partition))
    }

    fn epoch(&self, partition: i32) -> u64 {
        let epochs = self.epochs.lock().expect("epochs lock");
        epochs.get(&partition).copied().unwrap_or(0)
    }

    /// Carry out one request's writes in order; each is acknowledged before the next. Once
    /// the partition's revoke is announced (a write Kafka held up can outlast the revoke's
    /// reply window, after which the partition has a new owner that rebuilds the same
    /// deadlines), or once the ownership the decision was made in has ended, nothing more
    /// that acts is carried out, and the decision's receipts are not released: the owner
    /// decides again from the topics.
    ///
    /// A job that starts once that is so writes nothing at all, not even a record's new state:
    /// an earlier job of the same request may have left its act undone, and the record must
    /// not say it was done.
    async fn run(&self, mut job: Job) {
        let partition = job.partition;
        let mut skipped = false;
        let mut started = false;
        for action in std::mem::take(&mut job.actions) {
            // A job's first write, and each write that acts, checks the partition is still ours.
            let check = action.acts() || !started;
            if check && (self.let_go(partition) || self.epoch(partition) != job.epoch) {
                metrics::counter!("otp_tracker_left_to_new_owner_total").increment(1);
                tracing::warn!(
                    partition,
                    "partition being let go; its remaining decisions are left to its new owner"
                );
                skipped = true;
                break;
            }
            started = true;
            self.write(action).await;
        }
        if let Some(tags) = job.receipts.job_done(skipped) {
            self.release(tags);
        }
    }

    async fn write(&self, action: Action) {
        match action {
            Action::FallBack { next, status } => {
                let reason = status
                    .error
                    .as_ref()
                    .map_or("", |e| e.code.as_str())
                    .to_string();
                // The fallback status before the request it hands on (cause before
                // effect); one that cannot be handed on ends `failed`.
                match self.writer.fall_back(&next, &status).await {
                    Ok(()) => {
                        metrics::counter!("otp_confirmation_fallbacks_total", "reason" => reason.clone()).increment(1);
                        tracing::info!(request_id = %status.request_id, reason, "fallback after receipt");
                    }
                    Err(e) => {
                        let failed = status.fallback_refused(&e.to_string());
                        tracing::warn!(request_id = %status.request_id, error = %e, "fallback could not be handed on; the request ends failed");
                        self.writer.status(&failed).await;
                    }
                }
            }
            Action::Status(status) => self.writer.status(&status).await,
            Action::Save(record) => self.writer.pending(&record).await,
            Action::Forget(key) => self.writer.forget_pending(&key).await,
            Action::Reroute(receipt) => {
                metrics::counter!("otp_receipts_resolved_by_message_total", "channel" => receipt.channel.as_str())
                    .increment(1);
                self.writer.receipt(&receipt).await;
            }
            Action::Signal { signal, .. } => self.writer.signal(&signal).await,
        }
    }

    /// The receipts of a decision carried out: their offsets may be committed (one of an
    /// ownership that has ended is told apart by the ledger's generation).
    fn release(&self, tags: &[Tag]) {
        let topic = self.topics.delivery_receipts();
        for tag in tags {
            let tp = TopicPartition::new(&topic, tag.partition);
            self.ledger.finished(&tp, tag.offset, tag.generation);
        }
    }

    fn done(&self, partition: i32) {
        self.outstanding.send_modify(|m| {
            if let Some(n) = m.get_mut(&partition) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&partition);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Forget(k) => format!("forget {k}"),
                Action::Reroute(_) => "reroute".into(),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn a_decisions_writes_are_split_by_request_in_the_books_order() {
        let actions = vec![
            Action::Forget("a".into()),
            Action::Forget("b".into()),
            Action::Forget("a".into()),
            Action::Forget("msg:c".into()),
            Action::Forget("b".into()),
        ];
        let split = by_request(actions);
        let keys: Vec<&str> = split.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "msg:c"]);
        assert_eq!(names(&split[0].1), ["forget a", "forget a"]);
        assert_eq!(names(&split[1].1), ["forget b", "forget b"]);
        assert_eq!(split[2].1.len(), 1);
    }

    fn tag(offset: i64) -> Tag {
        Tag {
            partition: 0,
            offset,
            generation: 1,
        }
    }

    #[test]
    fn a_decisions_receipts_are_finished_by_its_last_job_unless_one_left_writes_undone() {
        let r = Receipts::new(vec![tag(7), tag(8)], 3);
        assert!(r.job_done(false).is_none(), "two jobs left");
        assert!(r.job_done(false).is_none(), "one job left");
        let tags = r.job_done(false).expect("the last job releases");
        assert_eq!(tags.iter().map(|t| t.offset).collect::<Vec<_>>(), [7, 8]);

        let r = Receipts::new(vec![tag(9)], 2);
        assert!(r.job_done(true).is_none(), "writes left undone");
        assert!(
            r.job_done(false).is_none(),
            "the last job does not release what another left undone"
        );

        let r = Receipts::new(vec![tag(10)], 2);
        assert!(r.job_done(false).is_none());
        assert!(
            r.job_done(true).is_none(),
            "the last job left writes undone"
        );
    }

    #[test]
    fn one_request_always_takes_the_same_lane_and_requests_spread_over_them() {
        assert_eq!(lane("req-1"), lane("req-1"));
        let used: std::collections::HashSet<usize> =
            (0..1000).map(|i| lane(&format!("req-{i}"))).collect();
        assert!(
            used.len() > LANES * 3 / 4,
            "{} of {LANES} lanes",
            used.len()
        );
        assert!(used.iter().all(|l| *l < LANES));
    }
}
