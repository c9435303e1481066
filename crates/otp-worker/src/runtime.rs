//! The delivery worker as a consumer-group member (`otp_kafka::group`): each message its own
//! task through the [`Pipeline`]; positions follow what has finished; a revoke lets the
//! partitions' work finish within `revoke_grace` before they go; shutdown drains.

use crate::channel::ChannelClient;
use crate::circuit::Health;
use crate::config::WorkerConfig;
use crate::conversion::{About, Conversion, ConversionMode};
use crate::dedup::Dedup;
use crate::fleet_counts::FleetCounts;
use crate::guards::Guards;
use crate::letting_go::{Handled, LetGo};
use crate::limits::{Limiter, LimitsConfig};
use crate::pipeline::Pipeline;
use crate::progress::{Progress, Reached};
use crate::routes::Routes;
use futures_util::FutureExt;
use otp_events::{PhoneHasher, Provider, Rules, SignalKind};
use otp_kafka::group::{
    self, Group, GroupMember, GroupSettings, OffsetLedger, Permit, Position, TopicPartition,
};
use otp_kafka::writer::KafkaWriter;
use otp_kafka::KafkaArgs;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long an assignment waits for the group's committed offsets (its messages wait with it).
const INHERIT_WITHIN: Duration = Duration::from_secs(5);

/// Everything a worker needs besides its channel client.
pub struct WorkerSetup {
    pub kafka: KafkaArgs,
    pub config: WorkerConfig,
    /// Each provider's documented limits, which the config's limits patch field by field.
    pub default_limits: Vec<(Provider, LimitsConfig)>,
    pub hasher: PhoneHasher,
}

/// Run a worker for `client`'s channel until `shutdown` resolves; then drain and commit.
pub async fn run<C: ChannelClient>(
    setup: WorkerSetup,
    client: C,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let channel = client.channel();
    otp_events::load_numbering_plan();
    let pipeline = Arc::new(pipeline(&setup, client)?);
    let WorkerSetup { kafka, config, .. } = setup;
    let listeners = Listeners::start(&kafka, &config, &pipeline);
    let topic = kafka.topics().requests(channel);
    register_metrics(channel);
    let settings = group_settings(&kafka, &config, channel, &topic);
    tracing::info!(%channel, %topic, group = %settings.group_id, max_in_flight = config.max_in_flight, "worker started");
    let worker = Worker {
        pipeline: pipeline.clone(),
        ledger: Arc::new(OffsetLedger::default()),
        tasks: HashMap::new(),
        let_go: HashMap::new(),
        assigned: HashSet::new(),
        revoke_grace: config.revoke_grace,
        topic,
    };
    let ran = group::run(&kafka, settings, worker, shutdown).await;
    // The listeners' consumers are closed before the worker returns (not some time after).
    listeners.stop().await;
    if let Some(fleet) = &pipeline.fleet_counts {
        fleet.stop().await;
    }
    ran?;
    tracing::info!("worker stopped");
    Ok(())
}

/// The pipeline of a worker: its providers' limits and routes, its guards, its writer.
fn pipeline<C: ChannelClient>(setup: &WorkerSetup, client: C) -> anyhow::Result<Pipeline<C>> {
    let WorkerSetup {
        kafka,
        config,
        default_limits,
        hasher,
    } = setup;
    let channel = client.channel();
    let providers = client.providers();
    anyhow::ensure!(
        !providers.is_empty(),
        "the {channel} worker has no provider configured"
    );
    let routes = Routes::new(&config.routes, &providers)?;
    let limits = provider_limits(config, default_limits, &providers)?;
    let rules = Rules {
        max_ttl: chrono::Duration::from_std(config.max_ttl)?,
        max_clock_skew: chrono::Duration::from_std(config.max_clock_skew)?,
        sealing: kafka.sealing.clone(),
        allow_plaintext: config.allow_plaintext_requests,
    };
    if config.allow_plaintext_requests {
        tracing::warn!("allow_plaintext_requests: requests with phone and code in plaintext are taken (a migration setting)");
    }
    let writer = Arc::new(KafkaWriter::for_fallbacks(
        kafka,
        rules.clone(),
        hasher.clone(),
        otp_events::Role::Worker,
    )?);
    let fleet_counts = config
        .abuse
        .fleet_counts
        .then(|| FleetCounts::new(writer.clone(), channel));
    config
        .conversion
        .check()
        .map_err(|rule| anyhow::anyhow!("{rule}"))?;
    let conversion = {
        let allowed = config.conversion.allow_ranges.iter();
        Arc::new(Conversion::new(
            &config.conversion,
            channel,
            allowed.map(|range| hasher.hash(range)).collect(),
        ))
    };
    Ok(Pipeline {
        client,
        guards: Guards {
            limiter: Limiter::new(&limits, &config.abuse),
            routes,
            health: Health::new(channel.as_str(), &providers, config.circuit.clone()),
            dedup: Dedup::new(config.dedup_capacity),
            rules,
            hasher: hasher.clone(),
            conversion,
        },
        retry: config.retry.clone(),
        writer,
        fallback_key: kafka.fallback_key.clone(),
        confirmation: config.confirmation.clone(),
        fleet_counts,
    })
}

/// Each provider's limits: its documented defaults, patched field by field by the config.
fn provider_limits(
    config: &WorkerConfig,
    default_limits: &[(Provider, LimitsConfig)],
    providers: &[Provider],
) -> anyhow::Result<Vec<(Provider, LimitsConfig)>> {
    let limits = providers
        .iter()
        .map(|&p| {
            let defaults = default_limits
                .iter()
                .find(|(d, _)| *d == p)
                .map(|(_, l)| l.clone())
                .ok_or_else(|| anyhow::anyhow!("no default limits for provider {p}"))?;
            Ok((p, config.limits_of(p, &defaults)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (provider, limits) in &limits {
        tracing::info!(
            %provider,
            sender_per_second = limits.sender_per_second,
            sender_burst = limits.sender_burst,
            "provider configured"
        );
    }
    Ok(limits)
}

/// The worker's readers of what the rest of the system says, and its judge of conversion;
/// each stopped when the worker stops.
struct Listeners {
    signals: AbortOnDrop,
    admissions: AbortOnDrop,
    outcomes: AbortOnDrop,
    judging: AbortOnDrop,
}

impl Listeners {
    fn start<C: ChannelClient>(
        kafka: &KafkaArgs,
        config: &WorkerConfig,
        pipeline: &Arc<Pipeline<C>>,
    ) -> Self {
        let converting = config.conversion.mode != ConversionMode::Off;
        let (outcomes, judging) = if converting {
            let (outcomes, judging) = judge_conversion(kafka, pipeline);
            (Some(outcomes), Some(judging))
        } else {
            (None, None)
        };
        Self {
            signals: AbortOnDrop(Some(listen_to_signals(kafka, pipeline))),
            admissions: AbortOnDrop(listen_to_admissions(kafka, config, pipeline, converting)),
            outcomes: AbortOnDrop(outcomes),
            judging: AbortOnDrop(judging),
        }
    }

    async fn stop(self) {
        self.signals.stop().await;
        self.admissions.stop().await;
        self.outcomes.stop().await;
        self.judging.stop().await;
    }
}

/// What the providers say outside a send's answer (failed receipts, system errors) feeds the
/// worker's circuits, sender limits and routes.
fn listen_to_signals<C: ChannelClient>(
    kafka: &KafkaArgs,
    pipeline: &Arc<Pipeline<C>>,
) -> tokio::task::JoinHandle<()> {
    let pipeline = pipeline.clone();
    let channel = pipeline.client.channel();
    let providers = pipeline.client.providers();
    otp_kafka::signals::listen(kafka, channel, move |signal| {
        // A signal written before providers were named is about the channel's first.
        let provider = signal.provider.unwrap_or(providers[0]);
        let health = &pipeline.guards.health;
        match (signal.kind, signal.country.as_deref()) {
            (SignalKind::ChannelBroken, _) => health.signal(provider, None),
            (SignalKind::RouteBroken, Some(country)) => health.signal(provider, Some(country)),
            // A route signal that names no country closes nothing: a country's trouble
            // must not close the provider everywhere.
            (SignalKind::RouteBroken, None) => {}
            (SignalKind::Throttled, _) => pipeline.guards.limiter.throttled(Some(provider)),
            (SignalKind::Slow, Some(country)) => {
                let now = std::time::Instant::now();
                pipeline.guards.routes.demote(provider, country, now)
            }
            (SignalKind::Slow, None) => {}
        }
    })
}

/// The rest of the fleet's abuse admissions of the last window join this worker's counts,
/// and (those made once it reads outcomes) its conversion counts.
fn listen_to_admissions<C: ChannelClient>(
    kafka: &KafkaArgs,
    config: &WorkerConfig,
    pipeline: &Arc<Pipeline<C>>,
    converting: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    let lookback = match (pipeline.guards.limiter.abuse_lookback(), converting) {
        (abuse, true) => Some(abuse.unwrap_or_default().max(config.conversion.window)),
        (abuse, false) => abuse,
    };
    let (fleet, lookback) = (pipeline.fleet_counts.as_ref()?, lookback?);
    let p = pipeline.clone();
    let count = move |subject: &crate::limits::Subject, request: Option<&str>, at| {
        p.guards.limiter.admitted_elsewhere(subject, at);
        let Some((app, _)) = request.and_then(otp_events::split_confirmation_key) else {
            return;
        };
        let about = About {
            request: request.unwrap_or_default(),
            app,
            range: &subject.prefix_key,
            country: subject.country.as_deref(),
        };
        p.guards.conversion.admitted(&about, at);
    };
    Some(fleet.listen(kafka, lookback, count))
}

/// The outcomes login systems report, and the judging of what reached its grace (which also
/// tells the routes whose codes were entered), once a second.
fn judge_conversion<C: ChannelClient>(
    kafka: &KafkaArgs,
    pipeline: &Arc<Pipeline<C>>,
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    let channel = pipeline.client.channel();
    let conversion = pipeline.guards.conversion.clone();
    let outcomes = crate::outcomes::listen(kafka, channel.as_str(), conversion);
    let p = pipeline.clone();
    let judging = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let now = std::time::Instant::now();
            for j in p.guards.conversion.tick(now) {
                // At the instant each was judged: `demote_every` counts from those.
                p.guards
                    .routes
                    .judged(j.provider, &j.country, j.verified, j.at);
            }
        }
    });
    (outcomes, judging)
}

/// Every series a worker exports from its start, so dashboards see zero, not nothing.
fn register_metrics(channel: otp_events::Channel) {
    metrics::counter!("otp_fallback_unproven_total", "channel" => channel.as_str()).increment(0);
    metrics::counter!("otp_commit_errors_total").increment(0);
    for reached in [Reached::Nothing, Reached::SendStarted, Reached::Ended] {
        metrics::counter!("otp_handling_panics_total", "after" => reached.as_str()).increment(0);
    }
    otp_kafka::records::register_refusals();
}

/// How a worker takes part in its channel's group.
fn group_settings(
    kafka: &KafkaArgs,
    config: &WorkerConfig,
    channel: otp_events::Channel,
    topic: &str,
) -> GroupSettings {
    GroupSettings {
        group_id: config
            .group_id
            .clone()
            // Behind the topic prefix too, so deployments that share a cluster by prefix do
            // not share (and rebalance) each other's groups.
            .unwrap_or_else(|| format!("{}otp-{channel}-workers", kafka.topic_prefix)),
        instance_id: config.group_instance_id.clone(),
        topics: vec![topic.to_string()],
        assignment: "cooperative-sticky",
        // Fetched-but-unhandled messages are what pausing cannot stop; keep that buffer small.
        max_in_flight: config.max_in_flight,
        hold_until_released: None,
        commit_interval: config.commit_interval,
        // A revoke may wait in line behind an assignment's committed-offset read (at most
        // INHERIT_WITHIN and a second) and the sender share's metadata look-up (5 s).
        revoke_reply_within: config.revoke_grace
            + Duration::from_secs(5)
            + INHERIT_WITHIN
            + Duration::from_secs(6),
        shutdown_grace: config.shutdown_grace,
        tick: None,
        metrics_listen: config.metrics_listen,
        name: format!("otp-{channel}-consumer"),
    }
}

/// Aborts a background task when dropped, however the worker's run ends; [`Self::stop`] also
/// waits until the task is gone.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// A bug must not wedge the partition's commits, lose the request, or give it two endings:
/// a request that has no ending yet gets one (its event dead-lettered, a `rejected` status),
/// one that has gets nothing more; the partition moves on even if this panics too.
async fn after_panic<C: ChannelClient>(
    pipeline: &Pipeline<C>,
    message: &OwnedMessage,
    reached: Reached,
) {
    let offset = message.offset();
    metrics::counter!("otp_handling_panics_total", "after" => reached.as_str()).increment(1);
    let reason = match reached {
        Reached::Ended => {
            tracing::error!(
                offset,
                "handling panicked after the request's ending was written; nothing more is written"
            );
            return;
        }
        Reached::SendStarted => {
            "internal error: the worker failed on this event after a send started (the code may have been delivered)"
        }
        Reached::Nothing => "internal error: the worker failed on this event",
    };
    tracing::error!(offset, "handling panicked; dead-lettering the event");
    let rejected = AssertUnwindSafe(pipeline.reject_undecodable(message, reason))
        .catch_unwind()
        .await;
    if rejected.is_err() {
        metrics::counter!("otp_events_skipped_total").increment(1);
        tracing::error!(offset, "dead-lettering panicked too; the event is skipped");
    }
}

struct Worker<C> {
    pipeline: Arc<Pipeline<C>>,
    ledger: Arc<OffsetLedger>,
    tasks: HashMap<TopicPartition, JoinSet<()>>,
    /// Per assigned partition: tells its messages when it is let go.
    let_go: HashMap<TopicPartition, LetGo>,
    assigned: HashSet<TopicPartition>,
    revoke_grace: Duration,
    /// The request topic, whose partitions share the provider's sender budget.
    topic: String,
}

impl<C: ChannelClient> GroupMember for Worker<C> {
    /// Each message its own task, holding its place under the in-flight bound until its
    /// offset is finished.
    async fn message(&mut self, message: OwnedMessage, place: Permit) {
        let tp = TopicPartition::of(&message);
        if !self.assigned.contains(&tp) {
            return; // fetched before its partition was revoked; the new owner reads it
        }
        let offset = message.offset();
        if self.ledger.already_finished(&tp, offset) {
            // A previous owner sent it and committed that (beyond its position): not again.
            let channel = self.pipeline.client.channel().as_str();
            metrics::counter!("otp_skipped_finished_total", "channel" => channel).increment(1);
            return;
        }
        let generation = self.ledger.started(&tp, offset);
        let (pipeline, ledger) = (self.pipeline.clone(), self.ledger.clone());
        let stop = self.let_go.entry(tp.clone()).or_default().subscribe(offset);
        let set = self.tasks.entry(tp.clone()).or_default();
        // Reap finished tasks so a long-lived partition's set stays small.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let progress = Progress::default();
            let handled = AssertUnwindSafe(pipeline.handle(&message, &stop, &progress))
                .catch_unwind()
                .await;
            stop.pass(); // had its turn already, unless it panicked before: then now
            match handled {
                Ok(Handled::Finished) => ledger.finished(&tp, offset, generation),
                // Not finished: its offset stays uncommitted, and the next owner delivers it.
                Ok(Handled::Abandoned) => {}
                Err(_) => {
                    after_panic(&pipeline, &message, progress.reached()).await;
                    ledger.finished(&tp, offset, generation);
                }
            }
            drop(place);
        });
    }

    /// Before any message of `partitions` is handled: what the group committed for them, so
    /// that what a previous owner finished beyond its position is skipped, not sent again.
    /// Without an answer (a broker away for 5 s) those messages are handled again, as they
    /// were before commits carried the note.
    async fn assigned(&mut self, partitions: &[TopicPartition], group: &Group) {
        match group.committed(partitions, INHERIT_WITHIN).await {
            Ok(committed) => {
                for c in committed {
                    self.ledger.inherit(&c.partition, c.offset, &c.note);
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "committed offsets unavailable; what a previous owner finished beyond them is handled again"
            ),
        }
        for p in partitions {
            self.let_go.insert(p.clone(), LetGo::new());
        }
        self.assigned.extend(partitions.iter().cloned());
    }

    /// Start no new send for `partitions` (their messages not yet at their send are abandoned
    /// to the next owner), let the sends under way finish within the grace period, abandon
    /// what is left, and return their positions.
    async fn revoked(&mut self, partitions: &[TopicPartition]) -> Vec<Position> {
        for p in partitions {
            if let Some(switch) = self.let_go.remove(p) {
                switch.now();
            }
        }
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
        let positions = self.ledger.committable(Some(partitions));
        for p in partitions {
            self.assigned.remove(p);
            self.ledger.remove(p);
        }
        positions
    }

    /// The provider's sender limit is the fleet's: take the share of the partitions owned.
    async fn rebalanced(&mut self, group: &Group) {
        let owned = self
            .assigned
            .iter()
            .filter(|p| p.topic == self.topic)
            .count();
        // By topic: a job that runs both channels' workers (annotation-based scraping names
        // jobs by pod, not by channel) still tells them apart.
        metrics::gauge!("otp_assigned_partitions", "topic" => self.topic.clone()).set(owned as f64);
        match group.partition_count(&self.topic).await {
            Some(total) => self.pipeline.guards.limiter.set_sender_share(owned, total),
            None => tracing::warn!("topic metadata unavailable; keeping the sender share"),
        }
    }

    fn oldest_unfinished(&self) -> Option<Duration> {
        self.ledger.oldest_unfinished()
    }

    fn positions(&self) -> Vec<Position> {
        self.ledger.committable(None)
    }

    /// Stopping: start no new send (what has not reached its send is left to the next run or
    /// another member), and let the sends under way finish.
    async fn drain(&mut self) {
        for switch in self.let_go.values() {
            switch.now();
        }
        for set in self.tasks.values_mut() {
            while set.join_next().await.is_some() {}
        }
    }
}
