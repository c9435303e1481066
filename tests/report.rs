//! `otp report` on a run with known outcomes, against tansu: the numbers it prints are what
//! the run did, replays are dropped, and `--json`, `--csv` and `--since` agree.

mod common;

use common::*;
use otp_events::Channel::{Sms, Whatsapp};
use otp_events::Submission;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

fn report(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_otp"))
        .arg("report")
        .args(["--brokers", &stack.t.kafka.brokers])
        .args(["--topic-prefix", &stack.t.kafka.topic_prefix])
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run otp report");
    assert!(
        out.status.success(),
        "otp report {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_run_says_what_the_run_did() {
    let stack = Stack::start(2, roomy_sim()).await;
    let workers = stack.workers();
    // a: sent on WhatsApp. b: not on WhatsApp (131026), sent by SMS. c: a landline, SMS only:
    // failed (21614). Then a published again: a duplicate.
    let mut again = Submission::new(
        "+447700900777",
        "121212",
        vec![Whatsapp, Sms],
        chrono::Duration::minutes(5),
    );
    again.request_id = Some("report-a".into());
    let a = stack.publisher.publish(again.clone()).await.unwrap();
    let b = stack
        .publish("+447700900026", "343434", &[Whatsapp, Sms])
        .await;
    let c = stack.publish("+447700900614", "565656", &[Sms]).await;
    let ids = vec![a.clone(), b.clone(), c.clone()];
    stack.statuses_until_final(&ids, WITHIN).await;
    stack.publisher.publish(again).await.unwrap();
    // Read back until the duplicate and every final are in (the status topic's partitions are
    // read side by side, so one can be ahead of the other).
    let wanted = ids.clone();
    let statuses = stack
        .statuses_until(WITHIN, move |got| {
            got.iter()
                .any(|s| s["request_id"] == "report-a" && s["status"] == "duplicate")
                && wanted.iter().all(|id| {
                    got.iter()
                        .any(|s| s["request_id"] == id.as_str() && s["final"] == true)
                })
        })
        .await;
    assert_eq!(final_is(&statuses, &b, "sent", "sms")["attempt"], 2);
    final_is(&statuses, &c, "failed", "sms");
    // An event written twice (a producer's retry, a replay): the report counts it once.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.t.kafka.brokers)
        .create()
        .unwrap();
    let first = serde_json::to_vec(&statuses[0]).unwrap();
    producer
        .send(
            FutureRecord::to(&stack.t.topics.delivery_status())
                .key(statuses[0]["request_id"].as_str().unwrap())
                .payload(&first),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // The login system says a's code was entered and b's abandoned, through the CLI; and
    // reports on a request that never was.
    for (id, outcome) in [
        (a.as_str(), "verified"),
        (b.as_str(), "abandoned"),
        ("ghost-1", "verified"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_otp"))
            .arg("outcome")
            .args(["--brokers", &stack.t.kafka.brokers])
            .args(["--topic-prefix", &stack.t.kafka.topic_prefix])
            .args(["--request-id", id, "--outcome", outcome, "--attempts", "1"])
            // The login system's key signs the outcome.
            .env("OTP_SEAL_KEYS", otp_test_support::TEST_SEAL_KEYS)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(outcome));
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_otp"))
        .arg("outcome")
        .args(["--brokers", &stack.t.kafka.brokers])
        .args(["--request-id", &a, "--outcome", "approved"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("outcome: must be one of"), "{err}");
    // Without a key to sign with, nothing is written: a login system's outcomes are signed.
    let unsigned = Command::new(env!("CARGO_BIN_EXE_otp"))
        .arg("outcome")
        .args(["--brokers", &stack.t.kafka.brokers])
        .args(["--request-id", &a, "--outcome", "verified"])
        .env_remove("OTP_SEAL_KEYS")
        .env_remove("OTP_SEAL_KEYS_FILE")
        .env_remove("OTP_DEV")
        .output()
        .unwrap();
    assert!(!unsigned.status.success());
    let err = String::from_utf8_lossy(&unsigned.stderr);
    assert!(err.contains("OTP_SEAL_KEYS"), "{err}");

    let json: Value = serde_json::from_str(&report(&stack, &["--from-beginning", "--json"]))
        .expect("--json prints JSON");
    // Conversion: 1 verified of 3 requests; the outcome about no request joins nothing.
    assert_eq!(json["summary"]["verified"], 1, "{json}");
    assert!((json["summary"]["conversion"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(json["outcomes_unmatched"], 1, "{json}");
    assert_eq!(json["enabled_channels"]["whatsapp,sms"], 2, "{json}");
    assert_eq!(json["enabled_channels"]["sms"], 1, "{json}");
    assert!(json["window"]["until"].is_string(), "{json}");
    let by_channel = json["conversion"].as_array().unwrap();
    let conv = |channel: &str| {
        by_channel
            .iter()
            .find(|r| r["group"]["channel"] == channel && r["group"]["country"] == "GB")
            .unwrap_or_else(|| panic!("no {channel}/GB conversion in {json}"))
    };
    // a was sent on WhatsApp and verified; b carried by SMS, abandoned; c failed by SMS.
    assert_eq!(
        (
            conv("whatsapp")["requests"].as_u64(),
            conv("whatsapp")["verified"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        (
            conv("sms")["requests"].as_u64(),
            conv("sms")["abandoned"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let conversion_csv = report(
        &stack,
        &[
            "--from-beginning",
            "--csv",
            "--csv-table",
            "conversion",
            "--group-by",
            "channel",
        ],
    );
    let rows: Vec<&str> = conversion_csv.lines().collect();
    assert!(
        rows[0].starts_with(
            "window_since,window_until,channel,requests,delivered,verified,conversion"
        ),
        "{conversion_csv}"
    );
    assert!(
        rows.iter().any(|l| l.contains(",all,3,0,1,0.3333,")),
        "{conversion_csv}"
    );
    let s = &json["summary"];
    let got = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    assert_eq!(
        [
            "requests",
            "delivered",
            "sent_only",
            "fell_back",
            "failed",
            "expired"
        ]
        .map(got),
        [3, 0, 2, 1, 1, 0],
        "{json}"
    );
    assert_eq!(json["replays_dropped"], 1, "{json}");
    let row = |channel: &str, country: &str| {
        json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["channel"] == channel && r["country"] == country)
            .unwrap_or_else(|| panic!("no {channel}/{country} row in {json}"))
            .clone()
    };
    let wa = row("whatsapp", "GB");
    assert_eq!(
        (wa["requests"].as_u64(), wa["sent"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(wa["fallbacks"]["131026"], 1, "{wa}");
    let sms = row("sms", "all");
    assert_eq!(
        (
            sms["requests"].as_u64(),
            sms["sent"].as_u64(),
            sms["failed"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert!(sms["sent_ms"]["p50"].as_u64().is_some(), "{sms}");

    // The same run read from an hour back, and as CSV: the same numbers.
    let since: Value = serde_json::from_str(&report(&stack, &["--since", "1h", "--json"])).unwrap();
    assert_eq!(since["summary"], json["summary"]);
    let csv = report(&stack, &["--from-beginning", "--csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("window_since,window_until,channel,country,requests,sent,delivered"),
        "{csv}"
    );
    assert_eq!(
        lines.len(),
        1 + json["rows"].as_array().unwrap().len(),
        "{csv}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(",whatsapp,GB,2,1,0,0,0,0.5000,131026:1,")),
        "{csv}"
    );
    let table = report(&stack, &["--from-beginning"]);
    assert!(table.contains("requests 3"), "{table}");
    for secret in ["447700900777", "121212", "447700900026"] {
        assert!(
            !table.contains(secret) && !csv.contains(secret),
            "{secret} printed"
        );
    }
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[test]
fn the_report_says_where_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_otp"))
        .args(["report", "--brokers", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--since") && err.contains("--from-beginning"),
        "{err}"
    );
}
