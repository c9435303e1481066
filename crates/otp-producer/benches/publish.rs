//! Library publish throughput against a real broker (tansu), as a ratio to a bare rdkafka
//! `FutureProducer` sending the same payloads to the same broker in the same run.
//!
//! `cargo bench -p otp-producer --bench publish` measures both with criterion (batches of
//! concurrent sends, so the figure is throughput, not one round trip), then prints the ratio of
//! the medians. Target: at least 0.8. The cost the library adds per message is validation,
//! the keyed phone hash, serialisation and headers.

use criterion::{criterion_group, Criterion, Throughput};
use futures_util::future::join_all;
use otp_events::{Channel, PhoneHasher, Submission};
use otp_events::{CODE_REQUEST_SCHEMA, HEADER_REQUEST_ID, HEADER_SCHEMA};
use otp_test_support::{shared_broker, TestTopics};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

const BATCH: usize = 500;

fn submissions() -> Vec<Submission> {
    (0..BATCH)
        .map(|i| {
            Submission::new(
                format!("+1555{:07}", i),
                "123456",
                vec![Channel::Whatsapp, Channel::Sms],
                chrono::Duration::minutes(5),
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(TestTopics::create(shared_broker(), 4));
    let hasher = PhoneHasher::new(b"bench");
    let publisher = rt.block_on(async { t.publisher(hasher.clone()) });
    // librdkafka's producer with the library's own settings, and nothing of ours around it.
    let bare: FutureProducer = rt.block_on(async {
        t.kafka
            .to_rdkafka(otp_kafka::KafkaRole::Producer {
                message_timeout: Duration::from_secs(5),
            })
            .create()
            .unwrap()
    });
    // The bare producer sends exactly the bytes the library would: same key, same payload.
    let now = chrono::Utc::now();
    let prepared: Vec<(String, Vec<u8>, String)> = submissions()
        .into_iter()
        .map(|s| {
            let r = s.complete(now);
            (hasher.hash(&r.phone), r.to_json(), r.request_id.clone())
        })
        .collect();
    let topic = t.topics.requests(Channel::Whatsapp);

    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("library", |b| {
        b.to_async(&rt).iter_batched(
            submissions,
            |subs| async {
                let results = join_all(subs.into_iter().map(|s| publisher.publish(s))).await;
                assert!(results.iter().all(|r| r.is_ok()));
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("bare_rdkafka", |b| {
        b.to_async(&rt).iter(|| async {
            let sends = prepared.iter().map(|(key, payload, _)| {
                bare.send(
                    FutureRecord::to(&topic).key(key).payload(payload),
                    Timeout::After(Duration::from_secs(5)),
                )
            });
            let results = join_all(sends).await;
            assert!(results.iter().all(|r| r.is_ok()));
        })
    });
    // The same records as the library's, headers included: what the broker stores is then
    // identical and the ratio isolates the library's own cost.
    group.bench_function("bare_rdkafka_same_headers", |b| {
        b.to_async(&rt).iter(|| async {
            let sends = prepared.iter().map(|(key, payload, id)| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: HEADER_SCHEMA,
                        value: Some(CODE_REQUEST_SCHEMA),
                    })
                    .insert(Header {
                        key: HEADER_REQUEST_ID,
                        value: Some(id.as_str()),
                    });
                bare.send(
                    FutureRecord::to(&topic)
                        .key(key)
                        .payload(payload)
                        .headers(headers),
                    Timeout::After(Duration::from_secs(5)),
                )
            });
            let results = join_all(sends).await;
            assert!(results.iter().all(|r| r.is_ok()));
        })
    });
    group.finish();
}

criterion_group!(benches, bench);

const CRITERION_HOME: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/criterion");

fn main() {
    // Criterion writes beside the working directory (the package's) unless told otherwise.
    std::env::set_var("CRITERION_HOME", CRITERION_HOME);
    benches();
    Criterion::default().configure_from_args().final_summary();
    let median = |f: &str| -> Option<f64> {
        let path = format!(
            "{}/criterion/publish/{f}/new/estimates.json",
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target"
            )
            .into())
        );
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    // In test mode (`cargo test --benches`) nothing was measured: no ratio to print.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Times per batch: throughput ratio = bare time / library time.
    let Some(lib) = median("library") else { return };
    for bare in ["bare_rdkafka", "bare_rdkafka_same_headers"] {
        if let Some(t) = median(bare) {
            println!(
                "throughput ratio library / {bare} (medians): {:.2}  (library {:.0} msg/s, {bare} {:.0} msg/s)",
                t / lib,
                BATCH as f64 / (lib / 1e9),
                BATCH as f64 / (t / 1e9)
            );
        }
    }
}
