//! The `otp-sms-worker` binary under load: SIGTERM drains and exits 0, a restart finishes the
//! rest, every request ends with exactly one final status, and neither the logs (at debug
//! level) nor `/metrics` hold a phone number or a code.

use otp_events::{Channel, PhoneHasher, Submission};
use otp_provider_sim::SimConfig;
use otp_test_support::{collect_json_until, shared_broker, TestTopics};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const N: usize = 300;

/// Each in its own number range, so the default per-range abuse limit leaves them alone.
fn phone(i: usize) -> String {
    format!("+1555{:03}{:04}", i, 2000 + i)
}

fn code(i: usize) -> String {
    // Ten digits: no timestamp, offset or counter in a log line is that long a digit run. No
    // run of zeros either: a float in `/metrics` (0.9700000000000001) would hold one.
    format!("97{:08}", 31_415_926 + i * 7)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_worker(t: &TestTopics, sim_url: &str, metrics_port: u16, log: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-sms-worker"));
    cmd.args([
        "--sender-rate",
        "200",
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
    ])
    .env("OTP_KAFKA_BROKERS", &t.kafka.brokers)
    .env("OTP_TOPIC_PREFIX", &t.kafka.topic_prefix)
    .env("OTP_SMS_API_BASE_URL", sim_url)
    .env("OTP_SMS_ACCOUNT_SID", "ACsim")
    .env("OTP_SMS_FROM", "+15557654321")
    .env("OTP_SMS_AUTH_TOKEN", "sim-auth-token")
    .env("OTP_PHONE_HASH_KEY", "sigterm-test")
    .env("OTP_SEAL_KEYS", otp_test_support::TEST_SEAL_KEYS)
    .env("OTP_FALLBACK_KEY", otp_test_support::TEST_FALLBACK_KEY)
    .env("OTP_RECORD_KEYS", otp_test_support::TEST_RECORD_KEYS)
    .env("RUST_LOG", "debug")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap());
    otp_test_support::spawn_kept(cmd).expect("start otp-sms-worker")
}

async fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

async fn finals(t: &TestTopics, at_least: usize) -> Vec<serde_json::Value> {
    collect_json_until(
        &t.kafka.brokers,
        &t.topics.delivery_status(),
        Duration::from_secs(60),
        move |got| got.iter().filter(|s| s["final"] == true).count() >= at_least,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_then_restart_ends_every_request_once() {
    let t = TestTopics::create(shared_broker(), 4).await;
    let sim_config = SimConfig {
        latency: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let sim = otp_provider_sim::start("127.0.0.1:0".parse().unwrap(), sim_config)
        .await
        .unwrap();
    let publisher = t.publisher(PhoneHasher::new(b"sigterm-test"));
    let mut ids = Vec::new();
    for i in 0..N {
        let s = Submission::new(
            phone(i),
            code(i),
            vec![Channel::Sms],
            chrono::Duration::minutes(10),
        );
        ids.push(publisher.publish(s).await.unwrap());
    }

    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let first = spawn_worker(
        &t,
        &sim.base_url(),
        metrics_port,
        &dir.path().join("first.log"),
    );
    finals(&t, 50).await; // under load: some done, many in flight or waiting
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("otp_statuses_total"), "{metrics}");
    assert!(metrics.contains("otp_send_duration_seconds"), "{metrics}");
    let status = sigterm_and_wait(first).await;
    assert_eq!(status.code(), Some(0), "SIGTERM must drain and exit 0");
    let done_at_stop = finals(&t, 0)
        .await
        .iter()
        .filter(|s| s["final"] == true)
        .count();
    assert!(
        done_at_stop < N,
        "the stop should come under load ({done_at_stop} of {N} done)"
    );

    let second = spawn_worker(
        &t,
        &sim.base_url(),
        free_port(),
        &dir.path().join("second.log"),
    );
    let statuses = finals(&t, N).await;
    let status = sigterm_and_wait(second).await;
    assert_eq!(status.code(), Some(0));

    for id in &ids {
        let n = statuses
            .iter()
            .filter(|s| s["request_id"] == id.as_str() && s["final"] == true)
            .count();
        assert_eq!(n, 1, "request {id} has {n} final statuses");
        let s = statuses
            .iter()
            .find(|s| s["request_id"] == id.as_str() && s["final"] == true)
            .unwrap();
        assert_eq!(s["status"], "sent");
    }
    assert_eq!(sim.stats().accepted as usize, N, "each code sent once");

    let mut logs = String::new();
    for name in ["first.log", "second.log"] {
        logs.push_str(&std::fs::read_to_string(dir.path().join(name)).unwrap());
    }
    assert!(logs.contains("status"), "debug logs were captured");
    let all_statuses = serde_json::to_string(&statuses).unwrap();
    for i in 0..N {
        for secret in [phone(i), phone(i)[1..].to_string(), code(i)] {
            assert!(!logs.contains(&secret), "a log line holds {secret}");
            assert!(!metrics.contains(&secret), "metrics hold {secret}");
            assert!(!all_statuses.contains(&secret), "a status holds {secret}");
        }
    }
}
