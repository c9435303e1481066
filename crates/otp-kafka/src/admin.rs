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
pub async fn create_topics(
    kafka: &KafkaArgs,
    names: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Vec<(String, TopicOutcome)>> {
    let mut config = kafka.client_config();
    kafka.apply_overrides(&mut config);
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            let topic = NewTopic::new(n, partitions, TopicReplication::Fixed(replication));
            // The pending confirmations are the tracker's state: only the latest record per
            // request_id matters, and a tombstone removes it. (Segment and cleaning settings
            // are left to the operator: see docs/design-notes.md.)
            if n.ends_with("otp.pending-confirmations") {
                topic.set("cleanup.policy", "compact")
            } else if n.ends_with("otp.channel-signals") {
                // Read from its end by workers that are running: an hour is plenty.
                topic.set("retention.ms", "3600000")
            } else {
                topic
            }
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
