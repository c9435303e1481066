//! The receipts ingress under a flood of large unsigned bodies: its memory stays bounded, and a
//! signed status webhook sent during the flood is still accepted. The ingress runs as its own
//! process (`otp receipts serve`), so its peak resident memory (`VmHWM`) is its own.

use otp_test_support::{shared_broker, spawn_kept, TestTopics};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP_SECRET: &str = "flood-app-secret";
/// Connections that each send a 1 MiB body without a signature.
const FLOOD: usize = 1024;
const BODY: usize = 1024 * 1024;
/// The bound the ingress documents: 1,024 small bodies (64 MiB at most, none here), the
/// large-body pool (32 MiB), and the process itself; without the pool it reached 1,080 MB.
const PEAK_BOUND_KIB: u64 = 160 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unsigned_bodies_holds_the_memory_bound_and_signed_webhooks_pass() {
    let t = TestTopics::create(shared_broker(), 1).await;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp"));
    cmd.args(["receipts", "serve", "--dev", "--listen", &listen])
        .args(["--public-url", &format!("http://{listen}")])
        .args(["--brokers", &t.kafka.brokers])
        .args(["--topic-prefix", &t.kafka.topic_prefix])
        .env("OTP_WHATSAPP_APP_SECRET", APP_SECRET)
        .env("OTP_WHATSAPP_VERIFY_TOKEN", "flood-verify")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut ingress = spawn_kept(cmd).expect("start the receipts ingress");
    let pid = ingress.id();
    let http = reqwest::Client::new();
    let health = format!("http://{listen}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(&health).send().await.is_err() {
        assert!(Instant::now() < deadline, "the ingress did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline = peak_kib(pid);

    // The flood: every connection sends its headers and its whole body, then waits.
    let junk = std::sync::Arc::new(vec![b'x'; BODY]);
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let (listen, junk) = (listen.clone(), junk.clone());
        flood.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&listen).await.ok()?;
            let head = format!(
                "POST /webhooks/whatsapp HTTP/1.1\r\nhost: {listen}\r\ncontent-type: application/json\r\n\
                 x-hub-signature-256: sha256=00\r\ncontent-length: {BODY}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.ok()?;
            let _ = s.write_all(&junk).await;
            let mut answer = vec![0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut answer))
                .await
                .ok()?
                .ok()?;
            let answer = String::from_utf8_lossy(&answer[..n]).to_string();
            answer.split(' ').nth(1).map(str::to_string)
        }));
    }

    // During the flood, a genuine (signed) status webhook is accepted.
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1055500000"},
            "statuses": [{"id": "wamid.flood1", "status": "delivered",
                "timestamp": chrono::Utc::now().timestamp().to_string(),
                "recipient_id": "15551230001", "biz_opaque_callback_data": "flood-1"}]}}]}]
    })
    .to_string();
    let signature = otp_events::signature::meta_signature(APP_SECRET.as_bytes(), body.as_bytes());
    let started = Instant::now();
    let signed = http
        .post(format!("http://{listen}/webhooks/whatsapp"))
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the signed webhook got an answer during the flood");
    assert_eq!(signed.status(), 200, "a signed webhook during the flood");
    let signed_took = started.elapsed();

    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for f in flood {
        let code = f.await.unwrap().unwrap_or_else(|| "none".into());
        *answers.entry(code).or_default() += 1;
    }
    let peak = peak_kib(pid);
    ingress.kill().unwrap();
    let _ = ingress.wait();
    eprintln!(
        "flood of {FLOOD} x {BODY} B: answers {answers:?}; ingress peak RSS {} MiB (baseline {} MiB); \
         signed webhook answered in {signed_took:?}",
        peak / 1024,
        baseline / 1024
    );
    assert!(
        peak < PEAK_BOUND_KIB,
        "the ingress peaked at {} MiB (bound {} MiB); answers {answers:?}",
        peak / 1024,
        PEAK_BOUND_KIB / 1024
    );
    assert!(
        answers.get("503").copied().unwrap_or(0) > FLOOD / 2,
        "most of the flood is refused before its body is read: {answers:?}"
    );
    assert!(
        !answers.contains_key("200"),
        "no unsigned body was accepted: {answers:?}"
    );
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}
