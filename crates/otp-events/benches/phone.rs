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
    // A worker's traffic: numbers of many regions in turn (every example number of the
    // metadata, each with its last digit varied), so that no cache holds one number's
    // patterns only.
    let mixed = mixed_numbers();
    let mut next = 0;
    group.bench_function("mixed_regions", |b| {
        b.iter(|| {
            next = (next + 1) % mixed.len();
            phone_facts(black_box(&mixed[next]))
        })
    });
    group.finish();
}

/// Every region's example numbers of each kind, with the last digit varied, in a shuffled
/// but fixed order.
fn mixed_numbers() -> Vec<String> {
    use phonenumber::Type;
    let mut numbers = Vec::new();
    for meta in phonenumber::metadata::DATABASE.iter() {
        for kind in [
            Type::FixedLine,
            Type::Mobile,
            Type::TollFree,
            Type::PremiumRate,
        ] {
            if let Some(example) = meta.descriptors().get(kind).and_then(|d| d.example()) {
                for last in ['1', '7'] {
                    let mut digits = example.to_string();
                    digits.pop();
                    digits.push(last);
                    numbers.push(format!("+{}{digits}", meta.country_code()));
                }
            }
        }
    }
    numbers.sort_by_key(|n| {
        n.bytes()
            .rev()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b))
    });
    numbers
}

criterion_group!(benches, bench);
criterion_main!(benches);
