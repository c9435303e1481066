//! Topics that every worker reads whole: news for the whole fleet, not work to share out.
//!
//! `otp.channel-signals` (what the providers said about a channel's health) and
//! `otp.abuse-admissions` (what the abuse rules of every worker admitted) and
//! `otp.verification-outcomes` (which codes users entered) are read this way:
//! every partition, outside any consumer group, nothing committed. A reader starts at the
//! topic's end, or at its beginning (to rebuild state from the recent past a short retention
//! keeps), and runs until its handle is dropped or aborted. A topic it cannot find is retried for a bounded time and
//! then given up with an error log: the worker keeps delivering, only this feedback is lost.

use crate::KafkaArgs;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a reader looks for its topic before giving up.
const FIND_TOPIC_WITHIN: Duration = Duration::from_secs(300);
/// Bound of each metadata or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a reader starts.
#[derive(Debug, Clone, Copy)]
pub enum StartAt {
    /// Only what is written from now on.
    End,
    /// Everything the topic still holds (its retention), then what is written from now on.
    Beginning,
}

/// Who may write a fleet topic: its records are acted on only if one of `roles` wrote them
/// (see [`crate::records`]); `label` names the topic in `otp_records_refused_total`.
#[derive(Debug, Clone, Copy)]
pub struct Writers {
    pub roles: &'static [otp_events::Role],
    pub label: &'static str,
}

/// Read every partition of `topic` from `start`; `on_payload` gets the payload of each message
/// that one of `writers` wrote (the others are refused and counted). `name` tells the reader
/// apart in logs and in the client id. Abort the handle to stop.
pub fn listen(
    kafka: &KafkaArgs,
    topic: String,
    name: &str,
    start: StartAt,
    writers: Writers,
    on_payload: impl Fn(&[u8]) + Send + 'static,
) -> JoinHandle<()> {
    let keys = kafka.record_keys.clone();
    listen_to_messages(
        kafka,
        topic,
        name,
        start,
        || {},
        move |m| {
            if crate::records::verified(keys.as_ref(), m, writers.roles, writers.label) {
                on_payload(m.payload().unwrap_or_default());
            }
        },
    )
}

/// [`listen`] for a topic whose records are authenticated otherwise (verification outcomes,
/// signed by the login system's key): `on_message` gets every message, and checks it.
/// `on_assigned` runs once the reader holds every partition at its start offset.
pub fn listen_to_messages(
    kafka: &KafkaArgs,
    topic: String,
    name: &str,
    start: StartAt,
    on_assigned: impl FnOnce() + Send + 'static,
    on_message: impl Fn(&BorrowedMessage<'_>) + Send + 'static,
) -> JoinHandle<()> {
    let config = kafka.to_rdkafka(crate::KafkaRole::Reader { name });
    let name = name.to_string();
    tokio::spawn(async move {
        let consumer: Arc<StreamConsumer> = match config.create() {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(reader = %name, error = %e, "no consumer; this feedback is off");
                return;
            }
        };
        let Some(assignment) = find(&consumer, &topic, start).await else {
            tracing::error!(reader = %name, %topic, "topic not found; this feedback is off");
            return;
        };
        if let Err(e) = consumer.assign(&assignment) {
            tracing::error!(reader = %name, error = %e, "assign failed; this feedback is off");
            return;
        }
        tracing::info!(reader = %name, %topic, partitions = assignment.count(), ?start, "reading the fleet's topic");
        on_assigned();
        loop {
            match consumer.recv().await {
                Ok(m) => on_message(&m),
                Err(e) => {
                    tracing::warn!(reader = %name, error = %e, "read failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// Every partition of `topic`, each from `start`; `None` if it cannot be found in time.
async fn find(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    start: StartAt,
) -> Option<TopicPartitionList> {
    let deadline = tokio::time::Instant::now() + FIND_TOPIC_WITHIN;
    loop {
        // Blocking calls (each bounded): off the async workers.
        let (c, t) = (consumer.clone(), topic.to_string());
        let found = tokio::task::spawn_blocking(move || {
            let n = c
                .fetch_metadata(Some(&t), LOOKUP_TIMEOUT)
                .ok()?
                .topics()
                .iter()
                .find(|x| x.name() == t && x.error().is_none())
                .map(|x| x.partitions().len() as i32)
                .filter(|n| *n > 0)?;
            let mut list = TopicPartitionList::new();
            let from = match start {
                StartAt::Beginning => Offset::Beginning,
                StartAt::End => Offset::End,
            };
            for p in 0..n {
                list.add_partition_offset(&t, p, from).ok()?;
            }
            Some(list)
        })
        .await
        .ok()
        .flatten();
        if found.is_some() {
            return found;
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
