//! The consumer-group runner that the delivery worker and the confirmation tracker share.
//!
//! A member ([`GroupMember`]) says what to do with a message, an assignment and a revoke, and
//! which positions may be committed; the runner does the rest, the same way for both:
//!
//! - the consumer is polled on its own thread ([`bridge`]); its synchronous rebalance
//!   callback becomes an event for the async loop and, on revoke, waits for the member's
//!   answer (the positions of the revoked partitions, once their work is finished or
//!   abandoned) before it commits them and lets go;
//! - every message carries its place under the one in-flight bound ([`InFlight`]), released
//!   when the member drops it; at the bound the poll thread stops polling;
//! - a revoke is known to the member the moment it is announced ([`LettingGo`]), so a member
//!   held up past the reply window acts on nothing that has a new owner;
//! - a member can keep one topic's partitions from being fetched after each assignment until
//!   it is ready for them ([`Holds`]; the tracker's receipts wait for their records);
//! - the member's positions are committed every `commit_interval`;
//! - `/metrics`, `/healthz` and `/readyz` (the broker answers for our first topic) are
//!   served when asked;
//! - shutdown is a signal: stop fetching, let the member drain within `shutdown_grace`,
//!   commit its positions, close the consumer (leaving the group).

mod beyond;
mod bridge;
mod holds;
mod in_flight;
mod ledger;
mod letting_go;

pub use bridge::{CloseError, GroupConsumer};
pub use holds::Holds;
pub use in_flight::{InFlight, Permit};
pub use ledger::{Generation, OffsetLedger};
pub use letting_go::LettingGo;

use crate::observe::Heartbeat;
use crate::{KafkaArgs, KafkaRole};
use anyhow::Context;
use bridge::{ConsumerEvent, RebalanceBridge};
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }

    /// The partition a message came from.
    pub fn of(message: &OwnedMessage) -> Self {
        use rdkafka::Message;
        Self::new(message.topic(), message.partition())
    }
}

/// What is committed for a partition: where consumption resumes (the next offset to read), and
/// a note of the offsets finished beyond it (the commit's metadata; see [`OffsetLedger`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub partition: TopicPartition,
    pub offset: i64,
    /// Empty when nothing beyond `offset` is finished.
    pub note: String,
}

/// How a member takes part in its group.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub group_id: String,
    /// Static membership (`group.instance.id`); see [`KafkaRole::Member`].
    pub instance_id: Option<String>,
    pub topics: Vec<String>,
    /// librdkafka's `partition.assignment.strategy`.
    pub assignment: &'static str,
    /// Messages handed to the member and not yet released, at most.
    pub max_in_flight: usize,
    /// A topic whose partitions are not fetched after an assignment until the member releases
    /// them (the consumer's [`Holds`], `group.consumer().context().holds()`); none when
    /// `None`.
    pub hold_until_released: Option<String>,
    pub commit_interval: Duration,
    /// How long a revoke waits for the member's answer before the partitions go anyway.
    pub revoke_reply_within: Duration,
    /// How long the member may drain on shutdown.
    pub shutdown_grace: Duration,
    /// How often [`GroupMember::tick`] runs; never when `None`.
    pub tick: Option<Duration>,
    pub metrics_listen: Option<SocketAddr>,
    /// Names the poll thread.
    pub name: String,
}

/// What the runner gives a member to ask the cluster about its partitions.
pub struct Group {
    consumer: Arc<GroupConsumer>,
}

impl Group {
    /// The consumer itself, for blocking calls (watermarks, committed offsets). Call it from
    /// `spawn_blocking`, never on a tokio worker.
    pub fn consumer(&self) -> Arc<GroupConsumer> {
        self.consumer.clone()
    }

    /// How many partitions `topic` has, when the broker says within 5 s.
    pub async fn partition_count(&self, topic: &str) -> Option<usize> {
        let (consumer, topic) = (self.consumer.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()
                .and_then(|md| md.topics().first().map(|t| t.partitions().len()))
        })
        .await
        .ok()
        .flatten()
    }
    /// What the group has committed for `partitions` (positions with their notes of what is
    /// finished beyond them), when the broker answers within `within`; partitions with nothing
    /// committed are left out. Read at assignment, so a new owner skips what the last one
    /// finished (see [`OffsetLedger::inherit`]).
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
        within: Duration,
    ) -> Result<Vec<Position>, rdkafka::error::KafkaError> {
        let (consumer, tpl) = (self.consumer.clone(), bridge::partition_list(partitions));
        let asked = tokio::task::spawn_blocking(move || consumer.committed_offsets(tpl, within));
        // The call is bounded by `within`; the blocking thread answers soon after.
        let tpl = match tokio::time::timeout(within + Duration::from_secs(1), asked).await {
            Ok(Ok(answer)) => answer?,
            _ => {
                return Err(rdkafka::error::KafkaError::OffsetFetch(
                    rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
                ))
            }
        };
        Ok(tpl
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(offset) => Some(Position {
                    partition: TopicPartition::new(e.topic(), e.partition()),
                    offset,
                    note: e.metadata().to_string(),
                }),
                _ => None,
            })
            .collect())
    }
}

/// A consumer group member: the delivery worker, the confirmation tracker.
pub trait GroupMember: Send {
    /// A message of an assigned partition. Drop `place` when the message is finished (its
    /// position may pass it) or abandoned: it is the message's place under the in-flight bound.
    fn message(&mut self, message: OwnedMessage, place: Permit) -> impl Future<Output = ()> + Send;

    /// Partitions were assigned.
    fn assigned(
        &mut self,
        partitions: &[TopicPartition],
        group: &Group,
    ) -> impl Future<Output = ()> + Send;

    /// Partitions are being taken away: finish or abandon their work and return their
    /// positions, to be committed before they go.
    fn revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = Vec<Position>> + Send;

    /// After an assignment or a revoke was handled (and answered).
    fn rebalanced(&mut self, _group: &Group) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Every position that may be committed now.
    fn positions(&self) -> Vec<Position>;

    /// How long the oldest message not yet finished has been in the member's hands (exported
    /// as `otp_oldest_unfinished_seconds{group}` with every commit).
    fn oldest_unfinished(&self) -> Option<Duration> {
        None
    }

    /// Periodic work, every [`GroupSettings::tick`], after the events already fetched.
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Finish the work in flight; the runner bounds this by `shutdown_grace`.
    fn drain(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Events applied before each tick, at most, so a tick is not starved under load.
const TICK_DRAIN: usize = 4096;

/// Run `member` in its group until `shutdown` resolves; then drain, commit and leave.
pub async fn run<M: GroupMember>(
    kafka: &KafkaArgs,
    settings: GroupSettings,
    member: M,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let consumer = join(kafka, &settings, events_tx.clone())?;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_watching, watching) = tokio::sync::watch::channel(false);
    let readiness = tokio::spawn(watch_broker(
        consumer.clone(),
        settings.topics.first().cloned().unwrap_or_default(),
        settings.group_id.clone(),
        ready.clone(),
        watching,
    ));
    // Liveness: the poll thread beats on every turn (at most every 100 ms, paused or not,
    // whatever the broker does); `/healthz` fails when it stops, so that the orchestrator
    // restarts a worker whose poll is wedged. Not the loop: it may rightly wait on Kafka for
    // minutes in an outage, when a restart would only lose what is in flight.
    let polling = Heartbeat::default();
    if let Some(listen) = settings.metrics_listen {
        serve_health(listen, ready, polling.clone());
    }
    let in_flight = InFlight::new(settings.max_in_flight, &settings.group_id);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (consumer, in_flight, stop) = (consumer.clone(), in_flight.clone(), stop.clone());
        std::thread::Builder::new()
            .name(settings.name.clone())
            .spawn(move || bridge::poll_loop(consumer, events_tx, in_flight, stop, polling))?
    };
    let group = Group {
        consumer: consumer.clone(),
    };
    let mut member = member;
    serve_member(&settings, &mut member, &group, &mut events, shutdown).await;

    tracing::info!(in_flight = in_flight.held(), "draining");
    stop.store(true, Ordering::SeqCst);
    // The readiness and lag check holds a handle of the consumer while it asks the broker
    // (about 5 s at most): let it finish, so that the close below holds the last one.
    let _ = stop_watching.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(6), readiness).await;
    if tokio::time::timeout(settings.shutdown_grace, member.drain())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; abandoning unfinished work (it will be redelivered)");
    }
    let positions = member.positions();
    drop(member); // aborts what is left; its offsets were not finished, so they are read again
    drop(group); // the close below must hold the last handle
    if let Err(e) = bridge::close(consumer, poller, positions, &mut events, CLOSE_WITHIN).await {
        tracing::error!(error = %e, "the last commit could not be confirmed; unfinished work will be redelivered");
        return Err(e.into());
    }
    Ok(())
}

/// A consumer of the group, subscribed to its topics; its rebalances become `events`.
fn join(
    kafka: &KafkaArgs,
    settings: &GroupSettings,
    events: mpsc::UnboundedSender<ConsumerEvent>,
) -> anyhow::Result<Arc<GroupConsumer>> {
    let config = kafka.to_rdkafka(KafkaRole::Member {
        group: &settings.group_id,
        instance_id: settings.instance_id.as_deref(),
        assignment: settings.assignment,
    });
    let bridge = RebalanceBridge::new(
        events,
        settings.revoke_reply_within,
        settings.hold_until_released.clone(),
    );
    let consumer: Arc<GroupConsumer> = Arc::new(
        config
            .create_with_context(bridge)
            .context("create the Kafka consumer")?,
    );
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).context("subscribe")?;
    Ok(consumer)
}

/// `/metrics`, `/healthz` (the poll thread beats) and `/readyz` (the broker answers).
fn serve_health(listen: SocketAddr, ready: Arc<AtomicBool>, polling: Heartbeat) {
    tokio::spawn(async move {
        let ready = move || ready.load(Ordering::SeqCst);
        let live = move || polling.alive();
        if let Err(e) = crate::observe::serve(listen, ready, live).await {
            tracing::error!(error = %e, %listen, "metrics endpoint failed");
        }
    });
}

/// Hand the member its events, commit its positions and run its ticks, until `shutdown`.
async fn serve_member<M: GroupMember>(
    settings: &GroupSettings,
    member: &mut M,
    group: &Group,
    events: &mut mpsc::UnboundedReceiver<ConsumerEvent>,
    shutdown: impl Future<Output = ()>,
) {
    let mut commit_tick = tokio::time::interval(settings.commit_interval);
    let mut tick = settings.tick.map(tokio::time::interval);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = commit_tick.tick() => {
                bridge::commit_async(&group.consumer, &member.positions());
                let oldest = member.oldest_unfinished().unwrap_or_default();
                metrics::gauge!("otp_oldest_unfinished_seconds", "group" => settings.group_id.clone())
                    .set(oldest.as_secs_f64());
            }
            _ = next_tick(&mut tick) => {
                let work = async {
                    // What was already fetched may change what is due (a receipt cancels a
                    // deadline): apply it first.
                    for _ in 0..TICK_DRAIN {
                        match events.try_recv() {
                            Ok(event) => dispatch(member, group, event).await,
                            Err(_) => break,
                        }
                    }
                    member.tick().await;
                };
                // A member's work can wait on Kafka (a write retried until acknowledged):
                // the signal must not wait for it. What it leaves unfinished is not committed.
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = work => {}
                }
            }
            event = events.recv() => match event {
                Some(event) => tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = dispatch(member, group, event) => {}
                },
                None => break,
            },
        }
    }
}

/// How long the final commit and the consumer's close may take after the drain: a shutdown
/// ends at most `shutdown_grace` plus this after the signal, broker or not. Without trouble
/// they take milliseconds; the bound is for a rebalance under way (another member left just
/// before, as in a rolling restart), which refuses commits until it ends: a heartbeat
/// interval (3 s) and a join, 9 s on librdkafka's mock cluster
/// (`cargo test -p otp-kafka --test group`).
pub const CLOSE_WITHIN: Duration = Duration::from_secs(15);

async fn dispatch<M: GroupMember>(member: &mut M, group: &Group, event: ConsumerEvent) {
    match event {
        ConsumerEvent::Message(message, place) => member.message(message, place).await,
        ConsumerEvent::Assigned(partitions) => {
            // After the revoke before it (events come in order): the member has dropped what
            // it knew of these partitions and may act on them again.
            group.consumer.context().letting_go().assigned(&partitions);
            member.assigned(&partitions, group).await;
            member.rebalanced(group).await;
        }
        ConsumerEvent::Revoked { partitions, reply } => {
            let positions = member.revoked(&partitions).await;
            let _ = reply.send(positions);
            member.rebalanced(group).await;
        }
    }
}

async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Keep `ready` true while the broker answers metadata requests for `topic`, until `stop`.
async fn watch_broker(
    consumer: Arc<GroupConsumer>,
    topic: String,
    group: String,
    ready: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut exported: std::collections::HashSet<(String, i32)> = Default::default();
    while !*stop.borrow() {
        let (c, t) = (consumer.clone(), topic.clone());
        let lag = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(2))
                .ok()
                .map(|_| consumer_lag(&c))
        })
        .await
        .unwrap_or(None);
        ready.store(lag.is_some(), Ordering::SeqCst);
        if let Some(lag) = lag {
            // Partitions given up since the last look read 0: their lag is another member's.
            let now: std::collections::HashSet<(String, i32)> =
                lag.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
            for (t, p) in exported.difference(&now) {
                metrics::gauge!("otp_consumer_lag_messages", "group" => group.clone(), "topic" => t.clone(), "partition" => p.to_string())
                    .set(0.0);
            }
            for (t, p, n) in &lag {
                metrics::gauge!("otp_consumer_lag_messages", "group" => group.clone(), "topic" => t.clone(), "partition" => p.to_string())
                    .set(*n as f64);
            }
            metrics::gauge!("otp_consumer_lag_total", "group" => group.clone())
                .set(lag.iter().map(|(_, _, n)| *n as f64).sum::<f64>());
            exported = now;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// Per assigned partition: messages after the group's committed offset (from its low
/// watermark when nothing is committed), which is what a restart would have to read again and
/// what an autoscaler scales on. Each broker call is bounded (2 s), and the whole look too:
/// partitions not reached within 3 s wait for the next look.
fn consumer_lag(consumer: &GroupConsumer) -> Vec<(String, i32, i64)> {
    let started = std::time::Instant::now();
    let Ok(assignment) = consumer.assignment() else {
        return Vec::new();
    };
    let committed = consumer
        .committed_offsets(assignment.clone(), Duration::from_secs(2))
        .ok();
    let mut out = Vec::new();
    for e in assignment.elements() {
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        let Ok((low, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
        else {
            continue;
        };
        let done = committed
            .as_ref()
            .and_then(|c| c.find_partition(e.topic(), e.partition()))
            .and_then(|c| c.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(low);
        out.push((e.topic().to_string(), e.partition(), (high - done).max(0)));
    }
    out
}
