//! Creating the pipeline's topics (`otp topics create`). Running it twice is fine: a topic that
//! already exists is reported, not an error.

use crate::KafkaArgs;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExisted,
}

/// Create `names` with `partitions` partitions each; returns what happened to each.
/// Replication a production cluster needs so that "acknowledged is never lost" holds with
/// `acks=all`: three copies, two of them in sync before a write is acknowledged.
pub const DEFAULT_REPLICATION: i32 = 3;

/// How long code requests are kept: a code lives at most 30 minutes, so an hour covers every
/// live request and a consumer catching up, and keeps codes out of the log after that.
pub const REQUEST_RETENTION_MS: &str = "3600000";
/// How long dead letters are kept for someone to look at them: a week.
pub const DEAD_LETTER_RETENTION_MS: &str = "604800000";

/// The settings each topic is created with (see the README's "Topics" section).
pub fn topic_config(name: &str, replication: i32) -> Vec<(&'static str, &'static str)> {
    let mut config = Vec::new();
    // With acks=all, a write is acknowledged once this many replicas have it: two of three
    // survive the loss of any one broker. With fewer replicas, all of them.
    if replication >= 2 {
        config.push(("min.insync.replicas", "2"));
    }
    if name.contains("otp.code-requests.") {
        config.push(("retention.ms", REQUEST_RETENTION_MS));
    } else if name.ends_with("otp.dead-letter") {
        config.push(("retention.ms", DEAD_LETTER_RETENTION_MS));
    } else if name.ends_with("otp.pending-confirmations") {
        // The tracker's state: only the latest record per key matters, and a tombstone removes
        // it. (Segment and cleaning settings are left to the operator: docs/design-notes.md.)
        config.push(("cleanup.policy", "compact"));
    } else if name.ends_with("otp.channel-signals") || name.ends_with("otp.abuse-admissions") {
        // Read from its end (signals) or whole (admissions, counted for one abuse window) by workers
        // that are running: an hour is plenty.
        config.push(("retention.ms", "3600000"));
    }
    config
}

pub async fn create_topics(
    kafka: &KafkaArgs,
    names: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Vec<(String, TopicOutcome)>> {
    let config = kafka.to_rdkafka(crate::KafkaRole::Admin);
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            let mut topic = NewTopic::new(n, partitions, TopicReplication::Fixed(replication));
            for (name, value) in topic_config(n, replication) {
                topic = topic.set(name, value);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut out = Vec::new();
    for result in results {
        match result {
            Ok(name) => out.push((name, TopicOutcome::Created)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                out.push((name, TopicOutcome::AlreadyExisted))
            }
            Err((name, code)) => anyhow::bail!("creating topic {name} failed: {code}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_durable_and_codes_do_not_outlive_their_use() {
        let of = |name: &str, rf| topic_config(name, rf);
        assert!(of("otp.delivery-status", 3).contains(&("min.insync.replicas", "2")));
        assert!(
            !of("otp.delivery-status", 1)
                .iter()
                .any(|(k, _)| *k == "min.insync.replicas"),
            "one copy cannot wait for two"
        );
        assert!(of("p.otp.code-requests.sms", 3).contains(&("retention.ms", REQUEST_RETENTION_MS)));
        assert!(of("otp.dead-letter", 3).contains(&("retention.ms", DEAD_LETTER_RETENTION_MS)));
        assert!(of("otp.pending-confirmations", 3).contains(&("cleanup.policy", "compact")));
    }
}
