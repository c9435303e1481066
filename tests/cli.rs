//! The `otp` command against a real broker: `topics create` (twice) and `send`.

use otp_events::{decode_code_request, Channel, PhoneHasher, Rules};
use otp_test_support::{read_messages, shared_broker};
use rdkafka::Message;
use std::process::Command;
use std::time::Duration;

fn otp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_otp"))
        .args(args)
        .env("OTP_PHONE_HASH_KEY", "cli-test-key")
        .env("OTP_SEAL_KEYS", otp_test_support::TEST_SEAL_KEYS)
        .env("OTP_FALLBACK_KEY", otp_test_support::TEST_FALLBACK_KEY)
        .env("OTP_RECORD_KEYS", otp_test_support::TEST_RECORD_KEYS)
        .output()
        .expect("run otp")
}

#[tokio::test]
async fn topics_create_is_idempotent_and_send_prints_the_request_id() {
    let broker = shared_broker();
    let bootstrap = broker.bootstrap();
    let prefix = format!("cli{}.", std::process::id());

    let first = otp(&[
        "topics",
        "create",
        "--brokers",
        &bootstrap,
        "--topic-prefix",
        &prefix,
        "--partitions",
        "2",
        "--replication-factor",
        "1",
    ]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8(first.stdout).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("created\t")).count(),
        otp_events::Topics::default().all().len(),
        "{out}"
    );
    let second = otp(&[
        "topics",
        "create",
        "--brokers",
        &bootstrap,
        "--topic-prefix",
        &prefix,
        "--replication-factor",
        "1",
    ]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let out = String::from_utf8(second.stdout).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.starts_with("exists\t")).count(),
        otp_events::Topics::default().all().len(),
        "{out}"
    );

    let sent = otp(&[
        "send",
        "--brokers",
        &bootstrap,
        "--topic-prefix",
        &prefix,
        "--phone",
        "+15551234567",
        "--code",
        "123456",
        "--channels",
        "sms,whatsapp",
        "--expires-in",
        "2m",
    ]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let request_id = String::from_utf8(sent.stdout).unwrap().trim().to_string();
    assert_eq!(request_id.len(), 36, "{request_id}");

    let topic = format!("{prefix}otp.code-requests.sms");
    let got = read_messages(&bootstrap, &topic, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let key = std::str::from_utf8(got[0].key().unwrap()).unwrap();
    assert_eq!(key, PhoneHasher::new(b"cli-test-key").hash("+15551234567"));
    let sealed = Rules {
        sealing: Some(otp_test_support::test_keyring()),
        ..Rules::default()
    };
    let payload = got[0].payload().unwrap();
    assert!(
        !String::from_utf8_lossy(payload).contains("5551234567"),
        "the number is sealed on Kafka"
    );
    let request = decode_code_request(payload, &sealed).unwrap();
    assert_eq!(request.request_id, request_id);
    assert_eq!(request.channels, vec![Channel::Sms, Channel::Whatsapp]);
    let ttl = request.expires_at - request.created_at;
    assert!(ttl > chrono::Duration::seconds(119) && ttl <= chrono::Duration::seconds(120));
}

#[test]
fn every_service_refuses_to_start_without_the_phone_hash_key() {
    let services: &[&[&str]] = &[
        &["worker", "whatsapp", "--phone-number-id", "1055500000"],
        &[
            "worker",
            "sms",
            "--account-sid",
            "ACx",
            "--from",
            "+15557654321",
        ],
        &[
            "receipts",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            "https://otp.example.com",
        ],
        &["receipts", "track"],
        &["send", "--phone", "+15551234567", "--code", "123456"],
    ];
    for args in services {
        let out = Command::new(env!("CARGO_BIN_EXE_otp"))
            .args(*args)
            .args(["--brokers", "127.0.0.1:1"])
            .env_remove("OTP_PHONE_HASH_KEY")
            .env_remove("OTP_PHONE_HASH_KEY_FILE")
            .env_remove("OTP_DEV")
            .env("OTP_WHATSAPP_TOKEN", "t")
            .env("OTP_SMS_AUTH_TOKEN", "t")
            .output()
            .expect("run otp");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started: {stderr}");
        assert!(
            stderr.contains("OTP_PHONE_HASH_KEY is not set") && stderr.contains("--dev"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn workers_and_the_tracker_refuse_to_start_without_the_sealing_fallback_and_record_keys() {
    let run = |args: &[&str], with: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp"));
        cmd.args(args)
            .args(["--brokers", "127.0.0.1:1"])
            .env_remove("OTP_SEAL_KEYS")
            .env_remove("OTP_SEAL_KEYS_FILE")
            .env_remove("OTP_FALLBACK_KEY")
            .env_remove("OTP_FALLBACK_KEY_FILE")
            .env_remove("OTP_RECORD_KEYS")
            .env_remove("OTP_RECORD_KEYS_FILE")
            .env_remove("OTP_DEV")
            .env("OTP_PHONE_HASH_KEY", "k")
            .env("OTP_WHATSAPP_TOKEN", "t");
        for (k, v) in with {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run otp");
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let whatsapp = ["worker", "whatsapp", "--phone-number-id", "1055500000"];
    for args in [
        &whatsapp[..],
        &["receipts", "track"],
        &["send", "--phone", "+15551234567", "--code", "123456"],
    ] {
        let stderr = run(args, &[]);
        assert!(
            stderr.contains("OTP_SEAL_KEYS is not set"),
            "{args:?}: {stderr}"
        );
    }
    let seal = [("OTP_SEAL_KEYS", otp_test_support::TEST_SEAL_KEYS)];
    for args in [&whatsapp[..], &["receipts", "track"]] {
        let stderr = run(args, &seal);
        assert!(
            stderr.contains("OTP_FALLBACK_KEY is not set"),
            "{args:?}: {stderr}"
        );
    }
    // The keys that authenticate internal records: every service that writes or reads them.
    let fallback = ("OTP_FALLBACK_KEY", otp_test_support::TEST_FALLBACK_KEY);
    let ingress = [
        "receipts",
        "serve",
        "--public-url",
        "http://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
    ];
    for args in [&whatsapp[..], &["receipts", "track"], &ingress[..]] {
        let stderr = run(args, &[seal[0], fallback]);
        assert!(
            stderr.contains("OTP_RECORD_KEYS is not set"),
            "{args:?}: {stderr}"
        );
    }
    // Keys without a role the service needs: it names the role.
    let ingress_only = (
        "OTP_RECORD_KEYS",
        "ingress:i=0000000000000000000000000000000000000000000000000000000000000001",
    );
    for (args, role) in [
        (&whatsapp[..], "worker"),
        (&["receipts", "track"][..], "worker"),
    ] {
        let stderr = run(args, &[seal[0], fallback, ingress_only]);
        assert!(
            stderr.contains("no key for role(s)") && stderr.contains(role),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn the_receipts_ingress_refuses_to_start_with_a_callback_url_it_cannot_verify() {
    // Twilio signs the URL it called: a StatusCallback elsewhere than the ingress's public URL
    // plus /webhooks/sms/status would make every SMS receipt fail its signature.
    let out = otp(&[
        "receipts",
        "serve",
        "--brokers",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--public-url",
        "https://otp.example.com",
        "--sms-status-callback-url",
        "https://otp.example.com/sms/status",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("OTP_SMS_STATUS_CALLBACK_URL")
            && stderr.contains("https://otp.example.com/webhooks/sms/status"),
        "{stderr}"
    );
}

#[test]
fn send_refuses_a_bad_phone_naming_the_field_without_echoing_it() {
    let out = otp(&[
        "send",
        "--brokers",
        "127.0.0.1:1",
        "--phone",
        "+1 555 123 4567",
        "--code",
        "123456",
        "--channels",
        "sms",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("phone: must be E.164"), "{err}");
    assert!(!err.contains("555 123 4567"), "{err}");
}

#[test]
fn demo_delivers_every_request_to_a_final_status_on_the_embedded_broker() {
    let out = Command::new(env!("CARGO_BIN_EXE_otp"))
        .args(["demo", "--requests", "60", "--timeout", "60s"])
        .output()
        .expect("run otp demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("embedded"), "{stdout}");
    for row in [
        "delivered  whatsapp", // confirmed by the simulator's webhooks
        "sent       sms",
        "expired    sms",
        "failed     sms",
        "read       whatsapp",
        "delivered  sms",
    ] {
        assert!(stdout.contains(row), "summary lacks {row}: {stdout}");
    }
    for reason in ["131026", "receipt_failed", "receipt_timeout"] {
        assert!(
            stdout.contains(reason),
            "no fallback for {reason}: {stdout}"
        );
    }
    // Twilio is down for the demo: every SMS goes by Vonage, none lost.
    let by_provider = stdout
        .split("SMS accepted by provider")
        .nth(1)
        .expect("the provider table");
    assert!(by_provider.contains("vonage"), "{stdout}");
    assert!(
        !by_provider
            .lines()
            .take(3)
            .any(|l| l.trim_start().starts_with("twilio")),
        "{stdout}"
    );
    assert!(stdout.contains("dead letters              1"), "{stdout}");
    assert!(stdout.contains("duplicates refused        1"), "{stdout}");
    assert!(
        stdout.contains("provider rate-limit violations   0"),
        "{stdout}"
    );
    // The staged pump is refused once its range has 10 judged requests and none entered.
    assert!(stdout.contains("attack stopped"), "{stdout}");
    let sent: usize = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("sent before the range was refused"))
        .and_then(|n| n.trim().parse().ok())
        .expect("the pump's line");
    assert!(
        (10..=45).contains(&sent),
        "{sent} pumped codes sent: {stdout}"
    );
}

/// A worker TOML that sets only the sender rate keeps the provider's other limits: WhatsApp's
/// 6 s pair period and its burst (limits merge field by field).
#[test]
fn a_toml_setting_only_the_rate_keeps_the_pair_period() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, "[limits]\nsender_per_second = 50\n").unwrap();
    let config = path.to_str().unwrap();
    let out = otp(&[
        "worker",
        "whatsapp",
        "--config",
        config,
        "--phone-number-id",
        "1",
        "--print-config",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Value = toml::from_str(&stdout).unwrap();
    let whatsapp = &printed["provider_limits"]["whatsapp_cloud"];
    assert_eq!(
        whatsapp["sender_per_second"].as_integer(),
        Some(50),
        "{stdout}"
    );
    assert_eq!(whatsapp["sender_burst"].as_integer(), Some(10), "{stdout}");
    assert_eq!(
        whatsapp["recipient_period"].as_str(),
        Some("6s"),
        "{stdout}"
    );
    let out = otp(&["worker", "sms", "--config", config, "--print-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Value = toml::from_str(&stdout).unwrap();
    for provider in ["twilio", "vonage"] {
        let limits = &printed["provider_limits"][provider];
        assert_eq!(
            limits["sender_per_second"].as_integer(),
            Some(50),
            "{stdout}"
        );
        assert!(
            limits.get("recipient_period").is_none(),
            "SMS has no pair limit: {stdout}"
        );
    }
}

/// `otp load` on 2 partitions, a fifth of the recipients not on WhatsApp, with `args`: its
/// JSON report, once it exited successfully.
fn load_report(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["load", "--partitions", "2", "--not-on-whatsapp", "20"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--timeout", "120s"]);
    let out = otp(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// `otp load` end to end on the test broker: its workers are real processes, every request
/// ends final, the figures add up, and the plot is written.
#[tokio::test]
async fn load_measures_a_run_and_draws_it() {
    let broker = shared_broker();
    let bootstrap = broker.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.svg");
    let report = load_report(&[
        "--brokers",
        &bootstrap,
        "--requests",
        "60",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(report["finished"], 60, "{report:#}");
    assert_eq!(report["finals"]["sent/whatsapp"], 48, "{report:#}");
    assert_eq!(report["finals"]["sent/sms"], 12, "{report:#}");
    assert_eq!(report["fallbacks"], 12);
    assert_eq!(report["rate_limit_violations"], 0);
    assert_eq!(report["latency_to_provider_ms"]["count"], 60);
    assert_eq!(report["latency_to_fallback_sms_ms"]["count"], 12);
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(w["cpu_seconds"].as_f64().unwrap() > 0.0, "{w}");
        assert!(w["peak_rss_mb"].as_f64().unwrap() > 1.0, "{w}");
    }
    assert_eq!(workers[1]["sends"], 12, "the SMS worker sent the fallbacks");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("Throughput"));
}

/// `otp load --embedded --receipts`: the receipts path under load, on the embedded broker.
/// The receipts ingress and the confirmation tracker run as processes of their own, every
/// WhatsApp delivery is confirmed by the tracker (SMS, the last channel, ends `sent`), every
/// webhook the simulator posted is answered, and the receipts figures add up.
#[tokio::test]
async fn load_with_receipts_confirms_every_delivery_on_the_embedded_broker() {
    let report = load_report(&[
        "--embedded",
        "--receipts",
        "--receipt-delay",
        "100ms",
        "--requests",
        "100",
    ]);
    assert_eq!(report["finished"], 100, "{report:#}");
    assert_eq!(report["finals"]["delivered/whatsapp"], 80, "{report:#}");
    assert_eq!(report["finals"]["sent/sms"], 20, "{report:#}");
    assert_eq!(report["fallbacks"], 20, "only the staged ones: {report:#}");
    let r = &report["receipts"];
    assert_eq!(r["confirmed"], 80, "{report:#}");
    assert_eq!(r["receipt_delay_ms"], 100);
    let latency = &r["confirmation_latency_ms"];
    assert_eq!(latency["count"], 80, "{report:#}");
    // sent and delivered for each of the 80 WhatsApp and the 20 SMS messages, each answered.
    assert_eq!(r["webhooks"]["attempts"], 200, "{report:#}");
    assert_eq!(r["webhooks"]["delivered"], 200, "{report:#}");
    assert_eq!(r["ingress_answer_us"]["count"], 200, "{report:#}");
    for service in ["ingress", "tracker"] {
        let f = &r[service];
        assert!(f["cpu_seconds"].as_f64().unwrap() > 0.0, "{service}: {f}");
        assert!(f["peak_rss_mb"].as_f64().unwrap() > 1.0, "{service}: {f}");
    }
}

/// The HTTP ingress serves `/metrics` on its own listener (`--metrics-listen`), apart from the
/// public one, with every outcome's series from the start and each call counted.
#[tokio::test]
async fn the_http_ingress_serves_its_metrics_apart_from_the_public_listener() {
    let free = || {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let (public, metrics) = (free(), free());
    let broker = shared_broker();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp"));
    cmd.args(["producer", "serve", "--dev"])
        .args(["--listen", &public, "--metrics-listen", &metrics])
        .args(["--brokers", &broker.bootstrap()])
        .args(["--topic-prefix", &format!("ingress{}.", std::process::id())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut ingress = otp_test_support::spawn_kept(cmd).expect("start the ingress");
    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("http://{metrics}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    // Up once its metrics answer (it binds both listeners at start).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        if let Some(text) = scrape().await {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ingress did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        before.contains("otp_ingress_requests_total{outcome=\"invalid\"} 0"),
        "every outcome from the start: {before}"
    );
    let refused = http
        .post(format!("http://{public}/v1/code-requests"))
        .body("{\"phone\": 12}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let public_metrics = http
        .get(format!("http://{public}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public_metrics.status(), 404, "not on the public listener");
    let after = scrape().await.expect("metrics");
    ingress.kill().unwrap();
    let _ = ingress.wait();
    assert!(
        after.contains("otp_ingress_requests_total{outcome=\"invalid\"} 1"),
        "{after}"
    );
}
