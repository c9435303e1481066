//! The consumer runtime shared by every channel: many messages in flight, each its own task;
//! commits driven by what has finished; revokes and shutdown that finish work before letting
//! go.

use crate::channel::ChannelClient;
use crate::circuit::Circuit;
use crate::config::WorkerConfig;
use crate::consumer::{self, ConsumerEvent, WorkerConsumer};
use crate::dedup::Dedup;
use crate::limits::{Limiter, LimitsConfig};
use crate::offsets::{OffsetTracker, PartitionKey};
use crate::pipeline::Pipeline;
use crate::report::Reporter;
use anyhow::Context;
use futures_util::FutureExt;
use otp_events::{PhoneHasher, Rules};
use otp_producer::kafka::KafkaArgs;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// Everything a worker needs besides its channel client.
pub struct WorkerSetup {
    pub kafka: KafkaArgs,
    pub config: WorkerConfig,
    /// The channel's default provider limits, used when `config.limits` is absent.
    pub default_limits: LimitsConfig,
    pub hasher: PhoneHasher,
}

/// Run a worker for `client`'s channel until `shutdown` resolves; then drain and commit.
pub async fn run<C: ChannelClient>(
    setup: WorkerSetup,
    client: C,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let WorkerSetup {
        kafka,
        config,
        default_limits,
        hasher,
    } = setup;
    let channel = client.channel();
    let topics = kafka.topics();
    let rules = Rules {
        max_ttl: chrono::Duration::from_std(config.max_ttl)?,
    };
    let pipeline = Arc::new(Pipeline {
        client,
        limiter: Limiter::new(
            config.limits.as_ref().unwrap_or(&default_limits),
            &config.abuse,
        ),
        circuit: Circuit::new(channel.as_str(), config.circuit.clone()),
        dedup: Dedup::new(config.dedup_capacity),
        retry: config.retry.clone(),
        reporter: Reporter::for_fallbacks(&kafka, rules.clone(), hasher.clone())?,
        rules,
        hasher,
        confirmation: config.confirmation.clone(),
    });

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let group = config
        .group_id
        .clone()
        .unwrap_or_else(|| format!("otp-{channel}-workers"));
    let mut client_config = consumer::group_config(&kafka, &group);
    client_config
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Fetched-but-unhandled messages are what pausing cannot stop; keep that buffer small.
        .set("queued.max.messages.kbytes", "8192");
    kafka.apply_overrides(&mut client_config);
    let reply_within = config.revoke_grace + Duration::from_secs(5);
    let consumer: Arc<WorkerConsumer> = Arc::new(
        client_config
            .create_with_context(consumer::context(events_tx.clone(), reply_within))
            .context("create the Kafka consumer")?,
    );
    let topic = topics.requests(channel);
    consumer.subscribe(&[&topic]).context("subscribe")?;
    tracing::info!(%channel, %topic, %group, max_in_flight = config.max_in_flight, "worker started");

    let ready = Arc::new(AtomicBool::new(false));
    let readiness = tokio::spawn(watch_broker(consumer.clone(), topic.clone(), ready.clone()));
    if let Some(listen) = config.metrics_listen {
        let ready = ready.clone();
        tokio::spawn(async move {
            if let Err(e) =
                crate::observe::serve(listen, move || ready.load(Ordering::SeqCst)).await
            {
                tracing::error!(error = %e, %listen, "metrics endpoint failed");
            }
        });
    }

    let in_flight = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (consumer, in_flight, stop) = (consumer.clone(), in_flight.clone(), stop.clone());
        let max = config.max_in_flight;
        std::thread::Builder::new()
            .name(format!("otp-{channel}-consumer"))
            .spawn(move || consumer::poll_loop(consumer, events_tx, in_flight, max, stop))?
    };

    let mut state = State {
        pipeline,
        tracker: Arc::new(OffsetTracker::default()),
        tasks: HashMap::new(),
        assigned: HashSet::new(),
        permits: Arc::new(Semaphore::new(config.max_in_flight)),
        in_flight,
        consumer: consumer.clone(),
        revoke_grace: config.revoke_grace,
    };
    let mut commit_tick = tokio::time::interval(config.commit_interval);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = commit_tick.tick() => state.commit_async(),
            event = events.recv() => match event {
                Some(ConsumerEvent::Message(m)) => state.start(m),
                Some(ConsumerEvent::Assigned(parts)) => {
                    state.assigned.extend(parts);
                    state.share_sender_budget(&topic).await;
                }
                Some(ConsumerEvent::Revoked { partitions, reply }) => {
                    let offsets = state.give_up(&partitions).await;
                    let _ = reply.send(offsets);
                    state.share_sender_budget(&topic).await;
                }
                None => break,
            },
        }
    }

    // Shutdown: stop fetching, drain within the grace period, commit, close.
    tracing::info!(
        in_flight = state.in_flight.load(Ordering::SeqCst),
        "draining"
    );
    stop.store(true, Ordering::SeqCst);
    readiness.abort();
    let drained = tokio::time::timeout(config.shutdown_grace, state.drain_all())
        .await
        .is_ok();
    if !drained {
        tracing::warn!("grace period over; abandoning unfinished work (it will be redelivered)");
    }
    state.tasks.clear(); // aborts what is left
    let offsets = state.tracker.committable(None);
    drop(state); // its consumer handle too, so the close is the last one
    consumer::close(consumer, poller, offsets, &mut events).await?;
    tracing::info!("worker stopped");
    Ok(())
}

/// Keep `ready` true while the broker answers metadata requests for our topic.
async fn watch_broker(consumer: Arc<WorkerConsumer>, topic: String, ready: Arc<AtomicBool>) {
    loop {
        let (c, t) = (consumer.clone(), topic.clone());
        let ok = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(2)).is_ok()
        })
        .await
        .unwrap_or(false);
        ready.store(ok, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

struct State<C> {
    pipeline: Arc<Pipeline<C>>,
    tracker: Arc<OffsetTracker>,
    tasks: HashMap<PartitionKey, JoinSet<()>>,
    assigned: HashSet<PartitionKey>,
    permits: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    consumer: Arc<WorkerConsumer>,
    revoke_grace: Duration,
}

/// Decrements the in-flight count however the task ends (finished or aborted).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<C: ChannelClient> State<C> {
    fn start(&mut self, message: OwnedMessage) {
        let guard = InFlight(self.in_flight.clone());
        let key = consumer::message_key(&message);
        if !self.assigned.contains(&key) {
            return; // fetched before its partition was revoked; the new owner reads it
        }
        let offset = message.offset();
        let generation = self.tracker.started(&key.0, key.1, offset);
        let (pipeline, tracker, permits) = (
            self.pipeline.clone(),
            self.tracker.clone(),
            self.permits.clone(),
        );
        let set = self.tasks.entry(key.clone()).or_default();
        // Reap finished tasks so a long-lived partition's set stays small.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let _guard = guard;
            // The slot is taken here, not in the event loop, so that a full house never
            // delays a revoke, a commit or a shutdown.
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let handled = AssertUnwindSafe(pipeline.handle(&message))
                .catch_unwind()
                .await;
            if handled.is_err() {
                // A bug must not wedge the partition's commits or lose the request.
                tracing::error!(offset, "handling panicked; dead-lettering the event");
                pipeline
                    .reject(
                        &message,
                        None,
                        "internal error: the worker failed on this event",
                    )
                    .await;
            }
            tracker.finished(&key.0, key.1, offset, generation);
        });
        metrics::gauge!("otp_in_flight").set(self.in_flight.load(Ordering::SeqCst) as f64);
    }

    /// Commit every partition's position, moved or not: an async commit that failed at the
    /// broker is then repeated on the next tick.
    fn commit_async(&mut self) {
        consumer::commit_async(&self.consumer, &self.tracker.committable(None));
    }

    /// Let in-flight work of `partitions` finish within the grace period, abandon the rest,
    /// and return the offsets to commit before they go.
    async fn give_up(&mut self, partitions: &[PartitionKey]) -> Vec<(PartitionKey, i64)> {
        let mut sets: Vec<JoinSet<()>> = partitions
            .iter()
            .filter_map(|p| self.tasks.remove(p))
            .collect();
        let finish = async {
            for set in &mut sets {
                while set.join_next().await.is_some() {}
            }
        };
        if tokio::time::timeout(self.revoke_grace, finish)
            .await
            .is_err()
        {
            let left: usize = sets.iter().map(JoinSet::len).sum();
            tracing::warn!(
                left,
                "revoke grace over; abandoning work (redelivered to the new owner)"
            );
        }
        drop(sets); // aborts whatever is left
        let offsets = self.tracker.committable(Some(partitions));
        for p in partitions {
            self.assigned.remove(p);
            self.tracker.remove(p);
        }
        offsets
    }

    /// The provider's sender limit is the fleet's: take the share of the partitions owned.
    async fn share_sender_budget(&self, topic: &str) {
        let (consumer, t) = (self.consumer.clone(), topic.to_string());
        let total = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&t), Duration::from_secs(5))
                .ok()
                .and_then(|md| md.topics().first().map(|t| t.partitions().len()))
        })
        .await
        .ok()
        .flatten();
        let owned = self.assigned.iter().filter(|(t, _)| t == topic).count();
        metrics::gauge!("otp_assigned_partitions").set(owned as f64);
        match total {
            Some(total) => self.pipeline.limiter.set_sender_share(owned, total),
            None => tracing::warn!("topic metadata unavailable; keeping the sender share"),
        }
    }

    async fn drain_all(&mut self) {
        for set in self.tasks.values_mut() {
            while set.join_next().await.is_some() {}
        }
    }
}
