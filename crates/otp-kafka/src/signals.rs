//! A listener on `otp.channel-signals`: what the providers said about a channel's health
//! outside a send's answer (see `otp_events::ChannelSignal`).
//!
//! Every worker reads every partition of the topic, from its end, outside any consumer group:
//! a signal is news for the whole fleet, and a signal older than the worker's start describes
//! a past it did not see. Nothing is committed. The listener runs until its handle is dropped
//! or aborted; a topic it cannot find is retried for a bounded time and then given up with an
//! error log (the worker keeps delivering; only this feedback is lost).

use crate::KafkaArgs;
use otp_events::{Channel, ChannelSignal, CHANNEL_SIGNAL_SCHEMA};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long the listener looks for its topic before giving up.
const FIND_TOPIC_WITHIN: Duration = Duration::from_secs(300);

/// Start listening; `on_signal` gets each signal about `channel`. Abort the handle to stop.
pub fn listen(
    kafka: &KafkaArgs,
    channel: Channel,
    on_signal: impl Fn(&ChannelSignal) + Send + 'static,
) -> JoinHandle<()> {
    let topic = kafka.topics().channel_signals();
    let mut config: ClientConfig = kafka.client_config();
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        .set("client.id", format!("otp-{channel}-signals"))
        // librdkafka wants a group for assign() too; it is never joined (no subscribe) and
        // nothing is committed under it.
        .set(
            "group.id",
            format!("{}otp-{channel}-signals", kafka.topic_prefix),
        );
    kafka.apply_overrides(&mut config);
    tokio::spawn(async move {
        let consumer: Arc<StreamConsumer> = match config.create() {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "channel signals: no consumer; circuit feedback from receipts is off");
                return;
            }
        };
        let Some(assignment) = find(&consumer, &topic).await else {
            tracing::error!(%topic, "channel signals: topic not found; circuit feedback from receipts is off");
            return;
        };
        if let Err(e) = consumer.assign(&assignment) {
            tracing::error!(error = %e, "channel signals: assign failed; circuit feedback from receipts is off");
            return;
        }
        tracing::info!(%topic, partitions = assignment.count(), "listening to channel signals");
        loop {
            let message = match consumer.recv().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "channel signals: read failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let signal = message
                .payload()
                .and_then(|p| serde_json::from_slice::<ChannelSignal>(p).ok())
                .filter(|s| s.schema == CHANNEL_SIGNAL_SCHEMA);
            match signal {
                Some(s) if s.channel == channel => {
                    metrics::counter!("otp_channel_signals_received_total", "channel" => channel.as_str(), "kind" => s.kind.as_str())
                        .increment(1);
                    tracing::warn!(%channel, kind = s.kind.as_str(), code = %s.code, "the provider signalled trouble on the channel");
                    on_signal(&s);
                }
                Some(_) => {}
                None => {
                    metrics::counter!("otp_channel_signals_unreadable_total").increment(1);
                }
            }
        }
    })
}

/// Every partition of `topic`, from its end; `None` if it cannot be found in time.
async fn find(consumer: &Arc<StreamConsumer>, topic: &str) -> Option<TopicPartitionList> {
    let deadline = tokio::time::Instant::now() + FIND_TOPIC_WITHIN;
    loop {
        // A blocking call (up to 5 s): off the async workers.
        let (c, t) = (consumer.clone(), topic.to_string());
        let partitions = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|x| x.name() == t && x.error().is_none())
                        .map(|x| x.partitions().len() as i32)
                })
        })
        .await
        .ok()
        .flatten()
        .filter(|n| *n > 0);
        if let Some(n) = partitions {
            let mut list = TopicPartitionList::new();
            for p in 0..n {
                list.add_partition_offset(topic, p, Offset::End).ok()?;
            }
            return Some(list);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
