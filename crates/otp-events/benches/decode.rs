//! Decoding and validating a code request: the first thing a worker does with every message.
//! `cargo bench -p otp-events --bench decode`; in CI it runs once in test mode.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use otp_events::{decode_code_request, decode_submission, Rules};
use std::hint::black_box;

const EVENT: &[u8] = include_bytes!("../../../schemas/examples/valid/full.json");
const SUBMISSION: &[u8] = br#"{"phone":"+15551234567","code":"123456","channels":["whatsapp","sms"],"expires_at":"2026-11-27T10:05:00Z","locale":"en_US"}"#;

fn bench(c: &mut Criterion) {
    let rules = Rules::default();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("code_request_event", |b| {
        b.iter(|| decode_code_request(black_box(EVENT), &rules).unwrap())
    });
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
        .unwrap()
        .into();
    group.bench_function("http_submission", |b| {
        b.iter(|| decode_submission(black_box(SUBMISSION), now, &rules).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
