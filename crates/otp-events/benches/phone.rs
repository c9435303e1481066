//! A number's facts (country, premium rate, canonical spelling) by kind of number: what the
//! worker asks libphonenumber once per message. Numbers of a shared calling code (+1) cost
//! more, and fictional ones (+1 555, which no region's patterns know) the most: every region
//! of the code is tried before the code's main country is taken.
//! `cargo bench -p otp-events --bench phone`; in CI it runs once in test mode.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use otp_events::phone_facts;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("phone_facts");
    group.throughput(Throughput::Elements(1));
    for (label, phone) in [
        ("gb_mobile", "+447700900123"),
        ("us_new_york", "+12127363100"),
        ("nanp_caribbean", "+18762345678"),
        ("us_fictional_555", "+15551234567"),
        ("in_mobile", "+919876543210"),
        ("br_mobile", "+5511987654321"),
    ] {
        group.bench_function(label, |b| b.iter(|| phone_facts(black_box(phone))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
