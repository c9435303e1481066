//! Faults production brings, each under a steady load against tansu and the provider
//! simulator, each ending with the invariant checker (`otp_test_support::invariants`): no
//! acknowledged request lost, every fallback followed, no code sent after it expired, and the
//! duplicates counted and bounded. Workers are real processes (`otp worker <channel>`), so a
//! SIGKILL is a real crash. The figures printed here are the table in docs/guarantees.md.

mod common;

use otp_events::{Channel, CodeRequest, PhoneHasher, Submission};
use otp_producer::CodeRequestPublisher;
use otp_provider_sim::{SimConfig, SimHandle};
use otp_test_support::invariants::trail;
use otp_test_support::{
    check_invariants, collect_json_until, locate_requests, read_messages, Storage, TansuBroker,
    TestTopics, Verdict,
};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const HASH_KEY: &str = "faults-test-key";
/// One scenario at a time: each loads the broker near what tansu serves on two cores, and two
/// at once would measure tansu's queueing rather than the pipeline.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Messages a worker handles at once in these scenarios; it bounds what a crash can repeat.
const MAX_IN_FLIGHT: usize = 32;

/// The i-th recipient, each distinct, clear of the simulator's staged last digits.
fn phone(i: usize) -> String {
    format!("+1555{:03}{:04}", (i / 8000) % 1000, 2000 + i % 8000)
}

/// Ten digits: no timestamp, offset or counter in a log line is that long a digit run. No
/// run of zeros either: a float in `/metrics` (0.9700000000000001) would hold one.
fn code(i: usize) -> String {
    format!("97{:08}", 31_415_926 + i * 7)
}

/// The workers' settings in these scenarios: small batches of work, quick retries, and limits
/// far above the load (the limits have their own tests in `tests/limits.rs`); the abuse
/// counts are shared across the fleet, as in production.
fn worker_config(dir: &Path) -> PathBuf {
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        format!(
            "max_in_flight = {MAX_IN_FLIGHT}\n\
             commit_interval = \"200ms\"\n\
             revoke_grace = \"5s\"\n\
             shutdown_grace = \"10s\"\n\
             [retry]\ninitial_delay = \"20ms\"\nmax_delay = \"200ms\"\nsafety_margin = \"1s\"\n\
             [limits]\nsender_per_second = 5000\nsender_burst = 500\n\
             [abuse]\nper_prefix = {{ count = 1000000, window = \"10m\" }}\n"
        ),
    )
    .unwrap();
    path
}

/// A worker process: `otp worker <channel>` with debug logs to `log`, and `env` on top.
fn spawn_worker(
    t: &TestTopics,
    channel: Channel,
    sim: &SimHandle,
    config: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp"));
    cmd.envs(env.iter().copied());
    cmd.args(["worker", channel.as_str()])
        .args(["--brokers", &t.kafka.brokers])
        .args(["--topic-prefix", &t.kafka.topic_prefix])
        .arg("--config")
        .arg(config)
        .args(["--api-base-url", &sim.base_url()])
        .env("OTP_PHONE_HASH_KEY", HASH_KEY)
        .env("OTP_SEAL_KEYS", otp_test_support::TEST_SEAL_KEYS)
        .env("OTP_FALLBACK_KEY", otp_test_support::TEST_FALLBACK_KEY)
        .env("OTP_RECORD_KEYS", otp_test_support::TEST_RECORD_KEYS)
        .env("OTP_WHATSAPP_TOKEN", "sim-token")
        .env("OTP_SMS_AUTH_TOKEN", "sim-auth-token")
        .env("RUST_LOG", "debug")
        // A crashed member is noticed by the group coordinator after this (Kafka's default is
        // 45 s). Not shorter: tansu 0.6 refreshes a member's contact only on heartbeats, and
        // holds each rejoin of a non-leader 3 s, so a member mid-rebalance can expire itself.
        .env("OTP_KAFKA__SESSION_TIMEOUT_MS", "10000")
        .env("OTP_KAFKA__HEARTBEAT_INTERVAL_MS", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    match channel {
        Channel::Whatsapp => cmd.args(["--phone-number-id", "1055500000"]),
        Channel::Sms => cmd.args(["--account-sid", "ACsim", "--from", "+15557654321"]),
    };
    // The test topics' client settings (one record per batch on an in-memory broker).
    for (name, value) in &t.kafka.kafka_opts {
        cmd.args(["--kafka-opt", &format!("{name}={value}")]);
    }
    otp_test_support::spawn_kept(cmd).expect("start otp worker")
}

/// A worker process that is killed if the scenario ends without stopping it (a failed
/// assertion must not leave it running into the next scenario).
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Proc, signal: i32) {
    let child = child.0.as_ref().expect("running");
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, signal) };
}

async fn wait(mut proc: Proc) -> std::process::ExitStatus {
    let mut child = proc.0.take().expect("running");
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

/// How long the i-th code lives: one in ten only 4 s, so that some expire during each fault
/// and "no send after expiry" is tested where it can fail; the rest 10 minutes.
fn life(i: usize) -> chrono::Duration {
    if i % 10 == 9 {
        chrono::Duration::seconds(4)
    } else {
        chrono::Duration::minutes(10)
    }
}

/// Publish `n` requests at about `per_second`, from `first` on; returns them as published.
async fn publish_steady(
    publisher: Arc<CodeRequestPublisher>,
    first: usize,
    n: usize,
    per_second: u64,
    channels: Vec<Channel>,
) -> Vec<CodeRequest> {
    let mut out = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (per_second / 10).max(1) as usize;
    for chunk_start in (first..first + n).step_by(per_tick) {
        tick.tick().await;
        let chunk: Vec<CodeRequest> = (chunk_start..(chunk_start + per_tick).min(first + n))
            .map(|i| {
                Submission::new(phone(i), code(i), channels.clone(), life(i))
                    .complete(chrono::Utc::now())
            })
            .collect();
        let acks =
            futures_util::future::join_all(chunk.iter().map(|r| publish_retrying(&publisher, r)))
                .await;
        for (r, ack) in chunk.into_iter().zip(acks) {
            ack.expect("publish");
            out.push(r);
        }
    }
    out
}

/// What a login system does on a timeout: publish again with the same request_id (workers
/// report the second copy `duplicate` if both arrive).
async fn publish_retrying(
    publisher: &CodeRequestPublisher,
    request: &CodeRequest,
) -> Result<(), otp_producer::PublishError> {
    let mut tries = 0;
    loop {
        // As a login system does: a publish that was not acknowledged is retried with the
        // same request_id, for up to a minute (the workers' duplicate memory absorbs a retry
        // that did land).
        match publisher.publish_request(request).await {
            Err(
                otp_producer::PublishError::Timeout { .. }
                | otp_producer::PublishError::Kafka { .. },
            ) if tries < 12 => {
                tries += 1;
                println!(
                    "publish of {} not acknowledged; retry {tries}",
                    request.request_id
                );
            }
            other => return other,
        }
    }
}

/// The status topic read back until `n` distinct requests have a final status.
async fn finals(t: &TestTopics, n: usize, within: Duration) -> Vec<Value> {
    collect_json_until(
        &t.kafka.brokers,
        &t.topics.delivery_status(),
        within,
        move |got| distinct_finals(got) >= n,
    )
    .await
}

fn distinct_finals(statuses: &[Value]) -> usize {
    statuses
        .iter()
        .filter(|s| s["final"] == true)
        .filter_map(|s| s["request_id"].as_str())
        .collect::<HashSet<_>>()
        .len()
}

async fn sim(config: SimConfig) -> SimHandle {
    otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn roomy(latency_ms: u64) -> SimConfig {
    SimConfig {
        latency: Duration::from_millis(latency_ms),
        ..common::roomy_sim()
    }
}

/// What every worker scenario starts from: its topics, a simulator, a directory for worker
/// configs and logs, and a publisher.
struct Scenario {
    /// Dropped last (fields drop in order): the workers and topics go first.
    t: TestTopics,
    sim: SimHandle,
    dir: tempfile::TempDir,
    config: PathBuf,
    publisher: Arc<CodeRequestPublisher>,
    _broker: TansuBroker,
}

impl Scenario {
    /// Each scenario gets a broker of its own, in memory. On SQLite, tansu answered a produce
    /// now and then with "Unknown broker error" under these scenarios' load (a SIGKILL drops
    /// the worker's connections mid-request) and then acknowledged nothing for over a minute:
    /// 4 of 6 CI runs of the SIGKILL scenario failed on it. None of these scenarios restarts
    /// the broker (`broker_down_then_up` stages that on the mock cluster), so the store need
    /// not outlive it.
    async fn start(sim_config: SimConfig) -> Self {
        let broker = TansuBroker::start(Storage::Memory);
        let t = TestTopics::create(&broker, 4).await;
        let dir = tempfile::tempdir().unwrap();
        let config = worker_config(dir.path());
        let publisher = Arc::new(t.publisher(PhoneHasher::new(HASH_KEY.as_bytes())));
        Self {
            sim: sim(sim_config).await,
            t,
            dir,
            config,
            publisher,
            _broker: broker,
        }
    }

    /// A worker process logging to `<name>.log` in the scenario's directory.
    fn worker(&self, channel: Channel, name: &str) -> Proc {
        self.worker_with(channel, name, &[])
    }

    fn worker_with(&self, channel: Channel, name: &str, env: &[(&str, &str)]) -> Proc {
        Proc(Some(spawn_worker(
            &self.t,
            channel,
            &self.sim,
            &self.config,
            &self.log(name),
            env,
        )))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The promises hold; when they do not, the failure carries what the named workers said
    /// about the group and about trouble, and each lost request's trail (its provider calls,
    /// its statuses, the status topic read again, and the log lines naming it). Their logs
    /// hold no phone or code (the SIGKILL scenario scans them), and the scenario's directory
    /// goes with the test, so this is all that is left of a failed run.
    async fn assert_nothing_lost(
        &self,
        v: &Verdict,
        requests: &[CodeRequest],
        statuses: &[Value],
        workers: &[&str],
    ) {
        if !v.promises_hold() {
            // Plain text: a worker colours its logs only on a terminal.
            let logs: Vec<(&str, String)> = workers
                .iter()
                .map(|name| {
                    let log = std::fs::read_to_string(self.log(name)).unwrap_or_default();
                    (*name, log)
                })
                .collect();
            for (name, log) in &logs {
                let notable: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("partitions")
                    })
                    .collect();
                println!("--- worker {name}: last notable log lines ---");
                for line in &notable[notable.len().saturating_sub(40)..] {
                    println!("{line}");
                }
            }
            let again = read_statuses(&self.t.kafka.brokers, &self.t.topics).await;
            let trail = trail(v, requests, statuses, &again, &self.sim.messages(), &logs);
            println!("--- lost requests ---\n{trail}");
            for channel in [Channel::Sms, Channel::Whatsapp] {
                let group = format!("{}otp-{channel}-workers", self.t.kafka.topic_prefix);
                let topic = self.t.topics.requests(channel);
                let lost = &v.lost[..v.lost.len().min(5)];
                for line in locate_requests(&self.t.kafka.brokers, &topic, &group, lost).await {
                    println!("{line}");
                }
            }
        }
        v.assert_nothing_lost();
    }

    /// `n` SMS requests at `per_second`, published in the background.
    fn load(&self, n: usize, per_second: u64) -> tokio::task::JoinHandle<Vec<CodeRequest>> {
        tokio::spawn(publish_steady(
            self.publisher.clone(),
            0,
            n,
            per_second,
            vec![Channel::Sms],
        ))
    }
}

/// The whole status topic, read once more (for 5 s): what landed after a scenario's wait.
async fn read_statuses(brokers: &str, topics: &otp_events::Topics) -> Vec<Value> {
    collect_json_until(
        brokers,
        &topics.delivery_status(),
        Duration::from_secs(5),
        |_| false,
    )
    .await
}

/// When a worker's log first says it was assigned partitions (a non-empty list).
fn first_assignment(log: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let line = log
        .lines()
        .find(|l| l.contains("partitions assigned") && l.contains("TopicPartition {"))?;
    // Lines start with the timestamp (plain text: no colours off a terminal).
    let stamp = line.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn report(scenario: &str, v: &Verdict) {
    println!("[{scenario}] {v}");
}

/// No phone number and no code in the workers' debug logs, their metrics, the status topic
/// or the dead-letter topic.
async fn assert_private(t: &TestTopics, requests: &[CodeRequest], texts: &[String]) {
    let dead = read_messages(
        &t.kafka.brokers,
        &t.topics.dead_letter(),
        0,
        Duration::from_secs(2),
    )
    .await;
    let statuses = read_messages(
        &t.kafka.brokers,
        &t.topics.delivery_status(),
        0,
        Duration::from_secs(2),
    )
    .await;
    let mut haystacks: Vec<String> = texts.to_vec();
    for m in dead.iter().chain(&statuses) {
        use rdkafka::Message;
        haystacks.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    for r in requests {
        let digits = r.phone.trim_start_matches('+');
        for h in &haystacks {
            assert!(!h.contains(digits), "a phone number leaked: {digits}");
            assert!(!h.contains(&r.code), "a code leaked: {}", r.code);
        }
    }
}

/// A worker killed with SIGKILL mid-load, then restarted: nothing lost; what the crash can
/// repeat is bounded by what was in flight or finished but not yet committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkill_mid_load_then_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sc = Scenario::start(roomy(20)).await;
    // Static membership, as a StatefulSet runs it: the restarted process comes back under the
    // crashed one's name and takes its partitions at once (no wait for the session timeout).
    let slot = [("OTP_GROUP_INSTANCE_ID", "sms-worker-0")];
    let first = sc.worker_with(Channel::Sms, "first", &slot);
    let load = sc.load(3000, 300);

    finals(&sc.t, 800, Duration::from_secs(120)).await;
    let killed_at = chrono::Utc::now();
    signal(&first, libc::SIGKILL);
    wait(first).await;
    let second = sc.worker_with(Channel::Sms, "second", &slot);
    let requests = load.await.unwrap();
    let statuses = finals(&sc.t, requests.len(), Duration::from_secs(180)).await;

    let v = check_invariants(&requests, &statuses, &sc.sim.messages());
    report("worker SIGKILL + restart", &v);
    // One code in ten lives 4 s: those in the crashed worker's hands expired before the
    // restart took their partitions, so "no send after expiry" was tested where it can fail.
    let expired = statuses.iter().filter(|s| s["status"] == "expired").count();
    println!("[worker SIGKILL + restart] {expired} short-lived codes expired during the fault");
    assert!(
        expired > 0,
        "some short-lived codes expired during the fault"
    );
    let log = std::fs::read_to_string(sc.log("second")).unwrap_or_default();
    let owned_at = first_assignment(&log).expect("the restarted worker was given partitions");
    println!(
        "[worker SIGKILL + restart] the restarted worker owned partitions {:.1} s after the kill",
        (owned_at - killed_at).num_milliseconds() as f64 / 1000.0
    );
    sc.assert_nothing_lost(&v, &requests, &statuses, &["first", "second"])
        .await;
    // Redone after the crash: the messages in flight (at most `max_in_flight` are handed
    // over), plus what finished since the last commit took effect (the 200 ms interval plus
    // the broker's answer; a second of load at 300/s is the bound).
    let bound = MAX_IN_FLIGHT + 300;
    assert!(v.duplicate_sends <= bound, "{v}; bound {bound}");
    // A repeat send whose first status was never written (the crash came between) leaves
    // one final status, so repeats of statuses are at most the repeat sends, plus the
    // messages finished but not committed whose short codes had expired when the restarted
    // worker read them again: those are reported `expired` again, without a send.
    assert!(
        v.extra_finals <= v.duplicate_sends + v.extra_expired,
        "{v}; {} of the extra finals said expired",
        v.extra_expired
    );

    signal(&second, libc::SIGTERM);
    assert!(wait(second).await.success(), "SIGTERM drains and exits 0");
    let logs: Vec<String> = ["first", "second"]
        .iter()
        .map(|f| std::fs::read_to_string(sc.log(f)).unwrap())
        .collect();
    assert!(logs[1].contains("DEBUG"), "the scan must cover debug logs");
    assert_private(&sc.t, &requests, &logs).await;
}

/// A second worker joins the group under load, then leaves it (SIGTERM): two rebalances,
/// nothing lost, nothing sent twice, and the revoked partitions' work is finished before they
/// move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_joins_and_leaves_under_load() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sc = Scenario::start(roomy(20)).await;
    let steady = sc.worker(Channel::Sms, "a");
    let load = sc.load(3000, 300);

    finals(&sc.t, 600, Duration::from_secs(120)).await;
    let joiner = sc.worker(Channel::Sms, "b");
    finals(&sc.t, 1800, Duration::from_secs(120)).await;
    signal(&joiner, libc::SIGTERM);
    assert!(
        wait(joiner).await.success(),
        "the leaver drains and exits 0"
    );
    let requests = load.await.unwrap();
    let statuses = finals(&sc.t, requests.len(), Duration::from_secs(180)).await;
    signal(&steady, libc::SIGTERM);
    assert!(wait(steady).await.success());

    let v = check_invariants(&requests, &statuses, &sc.sim.messages());
    report("worker joins and leaves", &v);
    sc.assert_nothing_lost(&v, &requests, &statuses, &["a", "b"])
        .await;
    let (a, b) = (
        std::fs::read_to_string(sc.log("a")).unwrap(),
        std::fs::read_to_string(sc.log("b")).unwrap(),
    );
    assert!(
        first_assignment(&b).is_some(),
        "the joiner was given partitions (a non-empty assignment)"
    );
    assert!(
        a.contains("partitions revoked"),
        "the steady worker gave partitions up when the joiner came"
    );
    assert!(
        b.contains("draining"),
        "the leaver drained its own when it left"
    );
    // Graceful moves repeat nothing: a revoked partition starts no new send, lets the sends
    // under way finish, and commits them before it goes.
    assert_eq!(v.duplicate_sends, 0, "{v}");
    assert_eq!(v.extra_finals, 0, "{v}");
}

/// tansu 0.6's in-memory store, which the scenarios run on, answers a fetch that starts inside
/// a record batch with the batches after it: the rest of that batch is never seen. A group
/// member that takes over a partition committed mid-batch (ours commit what they finished)
/// would skip those messages; so the scenarios' clients write one record per batch
/// (`otp_test_support::ONE_RECORD_PER_BATCH`). Kept as a check: once an upgraded tansu
/// returns the whole batch, as Kafka does, this fails and the workaround can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_memory_skips_the_rest_of_a_batch() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use rdkafka::ClientConfig;

    let broker = TansuBroker::start(Storage::Memory);
    let topic = "batch-check".to_string();
    let kafka = otp_test_support::test_kafka(broker.bootstrap());
    otp_kafka::admin::create_topics(&kafka, std::slice::from_ref(&topic), 1, 1)
        .await
        .unwrap();
    // Three records in one batch: sent together, lingering long enough to travel as one.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "300")
        .create()
        .unwrap();
    let payloads: Vec<String> = (0..3).map(|i| format!("record {i}")).collect();
    let sends: Vec<_> = payloads
        .iter()
        .map(|payload| {
            let queued = producer.send_result(FutureRecord::<(), _>::to(&topic).payload(payload));
            queued.map_err(|(e, _)| e).unwrap()
        })
        .collect();
    let mut offsets = Vec::new();
    for sent in sends {
        offsets.push(sent.await.unwrap().unwrap().offset);
    }
    assert_eq!(offsets, [0, 1, 2]);

    let read_from = |offset: i64| {
        let (bootstrap, topic) = (broker.bootstrap().to_string(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "batch-check")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(offset))
                .unwrap();
            consumer.assign(&tpl).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            let mut got = Vec::new();
            while got.len() < 3 && std::time::Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    use rdkafka::Message;
                    got.push(m.offset());
                }
            }
            got
        })
    };
    assert_eq!(
        read_from(0).await.unwrap(),
        [0, 1, 2],
        "from the batch's start"
    );
    assert_eq!(
        read_from(1).await.unwrap(),
        Vec::<i64>::new(),
        "from inside the batch: Kafka gives 1 and 2; tansu 0.6 in memory gave nothing. If it \
         now gives them, drop ONE_RECORD_PER_BATCH"
    );
}

/// The broker goes down and comes back, staged with librdkafka's mock cluster (tansu 0.6,
/// restarted on its SQLite store, panics when an idempotent producer resumes its sequence, so
/// a real restart cannot be staged with it). The ingress answers 503 while the broker is down
/// and 202 again after; the worker resumes; every request the ingress acknowledged reaches a
/// final status. Request errors on produce (retriable) are staged on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let _ = tracing_subscriber::fmt()
        .with_env_filter("otp_kafka=warn,otp_worker=warn")
        .try_init();
    let mock = MockCluster::new(1).unwrap();
    let kafka = otp_test_support::test_kafka(mock.bootstrap_servers());
    let topics = kafka.topics();
    for topic in topics.all() {
        mock.create_topic(&topic, 2, 1).unwrap();
    }
    let sim = sim(roomy(10)).await;
    let worker = otp::stack::Worker::start(
        &kafka,
        common::test_config(),
        common::open_limits(),
        PhoneHasher::new(HASH_KEY.as_bytes()),
        otp::stack::sms_client(&sim),
    );

    let publisher = otp_producer::CodeRequestPublisher::new(
        &kafka,
        otp_producer::PublisherConfig {
            topics: topics.clone(),
            ack_timeout: Duration::from_secs(2),
            ..otp_producer::PublisherConfig::default()
        },
        kafka
            .credentials(PhoneHasher::new(HASH_KEY.as_bytes()))
            .unwrap(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/v1/code-requests");
    let app = otp_producer::ingress::router(
        publisher,
        &otp_producer::ingress::IngressConfig::new(addr, kafka.clone()),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let post = |i: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let expires_at = chrono::Utc::now() + life(i);
            let body = serde_json::json!({
                "phone": phone(i), "code": code(i), "channels": ["sms"],
                "expires_at": expires_at.to_rfc3339(),
            });
            let r = http.post(&url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap_or(Value::Null);
            let id = answer["request_id"].as_str().map(str::to_string);
            (status, id, expires_at)
        }
    };

    let mut accepted: Vec<CodeRequest> = Vec::new();
    let mut record = |i: usize, id: String, expires_at: chrono::DateTime<chrono::Utc>| {
        let mut s = Submission::new(phone(i), code(i), vec![Channel::Sms], life(i));
        s.request_id = Some(id);
        let mut r = s.complete(chrono::Utc::now());
        r.expires_at = expires_at; // as posted
        accepted.push(r);
    };
    let mut i = 0;
    while i < 300 {
        let (status, id, expires_at) = post(i).await;
        assert_eq!(status, 202, "broker up: accepted");
        record(i, id.unwrap(), expires_at);
        i += 1;
    }
    // The broker goes down under a working worker: one that owns its partitions and has
    // written statuses. (When it went down before the worker's group had formed, the first
    // status the worker wrote after the outage was in some runs never acknowledged, nor timed
    // out, and the request stayed in flight; that case is not understood and is left open.)
    let before = collect_json_until(
        &kafka.brokers,
        &topics.delivery_status(),
        Duration::from_secs(60),
        |got| distinct_finals(got) >= 10,
    )
    .await;
    assert!(
        distinct_finals(&before) >= 10,
        "the worker delivered before the outage"
    );
    mock.broker_down(1).unwrap();
    for _ in 0..3 {
        let (status, _, _) = post(i).await;
        assert_eq!(
            status, 503,
            "broker down: 503, so the login system can retry or fall back"
        );
        i += 1;
    }
    mock.broker_up(1).unwrap();
    // Retriable produce errors right after: the idempotent producer retries them.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 5],
    );
    let (mut after, mut refused_after) = (0, 0);
    let recover_by = std::time::Instant::now() + Duration::from_secs(60);
    while after < 300 {
        assert!(
            std::time::Instant::now() < recover_by,
            "the ingress did not recover within 60 s ({after} accepted since the broker came back)"
        );
        let (status, id, expires_at) = post(i).await;
        if status == 202 {
            record(i, id.unwrap(), expires_at);
            after += 1;
        } else {
            assert_eq!(status, 503, "only 503 while the producer reconnects");
            refused_after += 1;
        }
        i += 1;
    }
    let statuses = collect_json_until(
        &kafka.brokers,
        &topics.delivery_status(),
        Duration::from_secs(120),
        {
            let n = accepted.len();
            move |got| distinct_finals(got) >= n
        },
    )
    .await;
    worker.stop().await.expect("the worker rode out the outage");

    let v = check_invariants(&accepted, &statuses, &sim.messages());
    report(
        &format!("broker down and up ({refused_after} refused while reconnecting)"),
        &v,
    );
    if !v.promises_hold() {
        let again = read_statuses(&kafka.brokers, &topics).await;
        let trail = trail(&v, &accepted, &statuses, &again, &sim.messages(), &[]);
        println!("--- lost requests ---\n{trail}");
    }
    v.assert_nothing_lost();
}

/// WhatsApp answers 500 for 30 s, then heals: requests are retried, fall back to SMS within
/// their life, and after the outage WhatsApp delivers again. Nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outage_then_heal() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sc = Scenario::start(roomy(10)).await;
    let (t, sim) = (&sc.t, &sc.sim);
    let wa = sc.worker(Channel::Whatsapp, "wa");
    let sms = sc.worker(Channel::Sms, "sms");

    sim.set_whatsapp_outage(Some((500, 131000)));
    let during = publish_steady(
        sc.publisher.clone(),
        0,
        1500,
        50,
        vec![Channel::Whatsapp, Channel::Sms],
    )
    .await; // 30 s at 50/s: each costs five tries, a fallback and an SMS
    sim.set_whatsapp_outage(None);
    let after = publish_steady(
        sc.publisher.clone(),
        1500,
        500,
        50,
        vec![Channel::Whatsapp, Channel::Sms],
    )
    .await;
    let requests: Vec<CodeRequest> = during.iter().chain(&after).cloned().collect();
    let statuses = finals(t, requests.len(), Duration::from_secs(300)).await;
    for w in [wa, sms] {
        signal(&w, libc::SIGTERM);
        assert!(wait(w).await.success());
    }

    let v = check_invariants(&requests, &statuses, &sim.messages());
    report("provider outage 30 s", &v);
    sc.assert_nothing_lost(&v, &requests, &statuses, &["wa", "sms"])
        .await;
    let fell_back = statuses
        .iter()
        .filter(|s| s["status"] == "fallback")
        .count();
    assert!(fell_back > 0, "requests during the outage fell back");
    let healed = after
        .iter()
        .filter(|r| {
            statuses.iter().any(|s| {
                s["request_id"] == r.request_id.as_str()
                    && s["status"] == "sent"
                    && s["channel"] == "whatsapp"
            })
        })
        .count();
    assert!(healed > 0, "after the outage WhatsApp delivers again");
}

/// A slow provider: answers take longer than the client's timeout for many requests. They
/// time out, are retried, and the provider never sees more requests at once than the
/// workers' in-flight bound. A timed-out request the provider completed anyway is a
/// duplicate: counted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_provider_times_out_and_retries_within_bounds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sc = Scenario::start(SimConfig {
        latency: Duration::from_millis(200),
        latency_jitter: Duration::from_millis(600),
        ..common::roomy_sim()
    })
    .await;
    let sim = &sc.sim;
    let worker = sc.worker_with(Channel::Sms, "w", &[("OTP_SMS_REQUEST_TIMEOUT", "500ms")]);
    let requests = sc.load(2000, 200).await.unwrap();
    let statuses = finals(&sc.t, requests.len(), Duration::from_secs(180)).await;
    signal(&worker, libc::SIGTERM);
    assert!(wait(worker).await.success());

    let v = check_invariants(&requests, &statuses, &sim.messages());
    let stats = sim.stats();
    report(
        &format!(
            "slow provider ({} requests completed by the provider for {} codes, at most {} \
             at once)",
            stats.received,
            requests.len(),
            stats.max_concurrent_requests
        ),
        &v,
    );
    sc.assert_nothing_lost(&v, &requests, &statuses, &["w"])
        .await;
    // (A request the client gave up on is not recorded by the simulator, which drops the
    // call with the connection; the tries on the statuses show the retries.)
    let retried = statuses
        .iter()
        .filter(|s| s["final"] == true && s["tries"].as_u64().unwrap_or(1) > 1)
        .count();
    assert!(retried > 0, "some requests timed out and were retried");
    assert!(
        stats.max_concurrent_requests <= MAX_IN_FLIGHT as u64,
        "in flight stays bounded: {}",
        stats.max_concurrent_requests
    );
}

/// The broker and the worker are stopped together, as `docker compose down` does: the worker
/// still exits within its shutdown grace (10 s here) plus the close bound (5 s), and exits
/// non-zero because its last commit could not be confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_is_down_exits_within_the_bound() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A broker of its own: this one is killed.
    let broker = TansuBroker::start(Storage::Memory);
    let t = TestTopics::create(&broker, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = worker_config(dir.path());
    let sim = sim(roomy(10)).await;
    let log = dir.path().join("w.log");
    let worker = Proc(Some(spawn_worker(
        &t,
        Channel::Sms,
        &sim,
        &config,
        &log,
        &[],
    )));
    let publisher = Arc::new(t.publisher(PhoneHasher::new(HASH_KEY.as_bytes())));
    let requests = publish_steady(publisher, 0, 20, 20, vec![Channel::Sms]).await;
    // Working: every request has its final status, so it owns partitions and has offsets.
    finals(&t, requests.len(), Duration::from_secs(60)).await;

    broker.kill();
    let signalled = std::time::Instant::now();
    signal(&worker, libc::SIGTERM);
    let pid = worker.0.as_ref().expect("running").id() as i32;
    let exited = tokio::time::timeout(Duration::from_secs(60), wait(worker)).await;
    let took = signalled.elapsed();
    let Ok(status) = exited else {
        // SAFETY: our own child, still running (its waiter has not reaped it).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("the worker still ran {took:?} after SIGTERM");
    };
    println!("[SIGTERM while the broker is down] exited after {took:?}: {status}");
    let bound = Duration::from_secs(10) + otp_kafka::group::CLOSE_WITHIN + Duration::from_secs(3);
    assert!(
        took < bound,
        "shutdown took {took:?}: grace 10 s, close bound {:?}",
        otp_kafka::group::CLOSE_WITHIN
    );
    assert!(!status.success(), "the last commit could not be confirmed");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("the last commit could not be confirmed"),
        "the log says why"
    );
}
