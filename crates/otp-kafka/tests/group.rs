//! The consumer-group runner (`otp_kafka::group::run`) with a member that only records what
//! it is told, on librdkafka's mock cluster (over TCP): assignment, a revoke answered with the
//! positions of what was finished, those positions committed before the partition moves (so
//! its new owner reads nothing twice), and a drain at shutdown that commits what is left, even
//! while another member's leave has the group rebalancing.
//!
//! The worker's and the tracker's own tests run the runner with their logic inside; this one
//! checks the runner's promises alone, so that a regression names the runner.

use otp_kafka::group::{self, Group, GroupMember, GroupSettings, Permit, Position, TopicPartition};
use otp_kafka::{KafkaArgs, KafkaRole};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const TOPIC: &str = "runner-test";
const GROUP: &str = "runner-test-group";
/// Every wait for the cluster, at most: a rebalance on the mock cluster takes a few seconds.
const WITHIN: Duration = Duration::from_secs(60);

/// What a member was told, in order.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Assigned(Vec<i32>),
    Message { partition: i32, offset: i64 },
    Revoked(Vec<i32>),
    Drained,
}

/// Finishes every message at once, and records it.
struct Recorder {
    name: &'static str,
    told: mpsc::UnboundedSender<(&'static str, Told)>,
    /// Next offset to read, per partition: everything before it is finished.
    finished: BTreeMap<i32, i64>,
}

fn partitions(list: &[TopicPartition]) -> Vec<i32> {
    let mut p: Vec<i32> = list.iter().map(|tp| tp.partition).collect();
    p.sort();
    p
}

impl GroupMember for Recorder {
    async fn message(&mut self, message: OwnedMessage, place: Permit) {
        let (partition, offset) = (message.partition(), message.offset());
        self.finished.insert(partition, offset + 1);
        drop(place);
        let _ = self
            .told
            .send((self.name, Told::Message { partition, offset }));
    }

    async fn assigned(&mut self, list: &[TopicPartition], _group: &Group) {
        let _ = self
            .told
            .send((self.name, Told::Assigned(partitions(list))));
    }

    async fn revoked(&mut self, list: &[TopicPartition]) -> Vec<Position> {
        let _ = self.told.send((self.name, Told::Revoked(partitions(list))));
        let answer = list
            .iter()
            .filter_map(|tp| {
                self.finished.remove(&tp.partition).map(|offset| Position {
                    partition: tp.clone(),
                    offset,
                    note: String::new(),
                })
            })
            .collect();
        answer
    }

    fn positions(&self) -> Vec<Position> {
        self.finished
            .iter()
            .map(|(&partition, &offset)| Position {
                partition: TopicPartition::new(TOPIC, partition),
                offset,
                note: String::new(),
            })
            .collect()
    }

    async fn drain(&mut self) {
        let _ = self.told.send((self.name, Told::Drained));
    }
}

fn settings(name: &str) -> GroupSettings {
    GroupSettings {
        group_id: GROUP.into(),
        instance_id: None,
        topics: vec![TOPIC.into()],
        assignment: "cooperative-sticky",
        max_in_flight: 16,
        hold_until_released: None,
        // Long: what is committed by the time a partition moves is the revoke's answer.
        commit_interval: Duration::from_secs(3600),
        revoke_reply_within: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
        tick: None,
        metrics_listen: None,
        name: name.into(),
    }
}

/// Start a member; it runs until its sender is used or dropped.
fn start(
    kafka: &KafkaArgs,
    name: &'static str,
    told: &mpsc::UnboundedSender<(&'static str, Told)>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let member = Recorder {
        name,
        told: told.clone(),
        finished: BTreeMap::new(),
    };
    let kafka = kafka.clone();
    let run = tokio::spawn(async move {
        group::run(&kafka, settings(name), member, async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, run)
}

/// Signal a member to stop; it must drain, commit and leave without an error.
async fn stop(
    name: &str,
    signal: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let _ = signal.send(());
    match tokio::time::timeout(WITHIN, run).await {
        Ok(Ok(Ok(()))) => {}
        other => panic!("{name} did not stop cleanly within {WITHIN:?}: {other:?}"),
    }
}

async fn produce(producer: &FutureProducer, partition: i32, n: usize) {
    for i in 0..n {
        let payload = format!("p{partition} m{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(TOPIC)
                    .partition(partition)
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .expect("the mock cluster acknowledges");
    }
}

/// Wait until `until` holds for what was told so far (kept in `seen`).
async fn wait_for(
    told: &mut mpsc::UnboundedReceiver<(&'static str, Told)>,
    seen: &mut Vec<(&'static str, Told)>,
    what: &str,
    until: impl Fn(&[(&'static str, Told)]) -> bool,
) {
    let waited = tokio::time::timeout(WITHIN, async {
        while !until(seen) {
            seen.push(told.recv().await.expect("members alive"));
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} within {WITHIN:?}; told: {seen:?}");
}

fn messages_of(seen: &[(&'static str, Told)], name: &str, partition: i32) -> Vec<i64> {
    seen.iter()
        .filter_map(|(who, t)| match t {
            Told::Message {
                partition: p,
                offset,
            } if *who == name && *p == partition => Some(*offset),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_assigns_commits_what_was_finished_on_revoke_and_drains() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, 2, 1).expect("topic");
    let kafka = KafkaArgs::new(mock.bootstrap_servers());
    let producer: FutureProducer = kafka
        .to_rdkafka(KafkaRole::Producer {
            message_timeout: Duration::from_secs(5),
        })
        .create()
        .expect("producer");
    produce(&producer, 0, 5).await;
    produce(&producer, 1, 5).await;

    let (told_tx, mut told) = mpsc::unbounded_channel();
    let mut seen = Vec::new();
    let (stop_a, run_a) = start(&kafka, "a", &told_tx);
    wait_for(
        &mut told,
        &mut seen,
        "a is assigned both partitions and reads all 10",
        |s| {
            s.contains(&("a", Told::Assigned(vec![0, 1])))
                && messages_of(s, "a", 0).len() == 5
                && messages_of(s, "a", 1).len() == 5
        },
    )
    .await;
    assert_eq!(messages_of(&seen, "a", 0), vec![0, 1, 2, 3, 4]);

    // A second member joins: one partition moves, after a's answer to the revoke.
    let (stop_b, run_b) = start(&kafka, "b", &told_tx);
    wait_for(
        &mut told,
        &mut seen,
        "one partition moves from a to b",
        |s| {
            s.iter()
                .any(|(w, t)| *w == "a" && matches!(t, Told::Revoked(p) if p.len() == 1))
                && s.iter()
                    .any(|(w, t)| *w == "b" && matches!(t, Told::Assigned(p) if p.len() == 1))
        },
    )
    .await;
    let moved = seen
        .iter()
        .find_map(|(w, t)| match t {
            Told::Revoked(p) if *w == "a" => Some(p[0]),
            _ => None,
        })
        .unwrap();
    let kept = 1 - moved;
    assert!(
        seen.contains(&("b", Told::Assigned(vec![moved]))),
        "b took the partition a let go: {seen:?}"
    );

    // New messages go to each partition's owner; b starts after what a finished and
    // committed with its answer, so it reads none of the first five again.
    produce(&producer, moved, 2).await;
    produce(&producer, kept, 2).await;
    wait_for(
        &mut told,
        &mut seen,
        "the two new messages of each partition",
        |s| messages_of(s, "b", moved).len() == 2 && messages_of(s, "a", kept).len() == 7,
    )
    .await;
    assert_eq!(
        messages_of(&seen, "b", moved),
        vec![5, 6],
        "read again: {seen:?}"
    );
    assert!(messages_of(&seen, "b", kept).is_empty());

    // Shutdown: each drains, commits and leaves.
    stop("b", stop_b, run_b).await;
    // a stops while the rebalance b's leave started is under way, as in a rolling restart:
    // its final commit waits for the rebalance to end rather than fail.
    stop("a", stop_a, run_a).await;
    while let Ok(t) = told.try_recv() {
        seen.push(t);
    }
    assert!(seen.contains(&("a", Told::Drained)) && seen.contains(&("b", Told::Drained)));

    // What the group committed is what was finished: 7 messages on each partition.
    let reader: BaseConsumer = kafka
        .to_rdkafka(KafkaRole::Member {
            group: GROUP,
            instance_id: None,
            assignment: "range",
        })
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition(TOPIC, 0);
    list.add_partition(TOPIC, 1);
    let committed = tokio::task::spawn_blocking(move || {
        reader
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets")
    })
    .await
    .unwrap();
    let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    assert_eq!(offsets, vec![Offset::Offset(7), Offset::Offset(7)]);
}
