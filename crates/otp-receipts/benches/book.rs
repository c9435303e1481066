//! The confirmation tracker's own cost, without Kafka: applying a receipt, and the deadline
//! check it runs every tick over everything it holds. One tracker task does both for all its
//! partitions, so these bound how many pending sends one tracker can carry.
//! `cargo bench -p otp-receipts --bench book`; in CI it runs once in test mode.

use chrono::{Duration, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use otp_events::{
    Channel, ConfirmationState, PendingConfirmation, PhoneHasher, Receipt, ReceiptStatus,
    Submission, PENDING_CONFIRMATION_SCHEMA, RECEIPT_SCHEMA,
};
use otp_receipts::tracker::{Book, Tag};
use std::hint::black_box;

fn record(i: usize) -> (String, PendingConfirmation) {
    let id = format!("01a2215d-10d4-7210-a256-{i:012}");
    let phone = format!("+1555{:07}", 1_000_000 + i % 9_000_000);
    let channels = vec![Channel::Whatsapp, Channel::Sms];
    let mut s = Submission::new(&phone, "123456", channels, Duration::minutes(5));
    s.request_id = Some(id.clone());
    let request = s.complete(Utc::now());
    let record = PendingConfirmation {
        provider: None,
        schema: PENDING_CONFIRMATION_SCHEMA.into(),
        channel: Channel::Whatsapp,
        request,
        provider_message_id: format!("wamid.{i}"),
        accepted_at: Utc::now(),
        confirm_by: Some(Utc::now() + Duration::seconds(15)),
        timeout_is_final: false,
        state: ConfirmationState::Awaiting,
        reported: Vec::new(),
    };
    (id, record)
}

fn receipt(id: &str, i: usize, status: ReceiptStatus) -> Receipt {
    Receipt {
        schema: RECEIPT_SCHEMA.into(),
        request_id: Some(id.into()),
        app: None,
        channel: Channel::Whatsapp,
        provider: Some(otp_events::Provider::WhatsappCloud),
        // As the ingress writes it: the keyed hash of the wamid.
        provider_message_id: hasher().public_message_id(Channel::Whatsapp, &format!("wamid.{i}")),
        status,
        error: None,
        provider_timestamp: None,
        received_at: Utc::now(),
    }
}

fn hasher() -> PhoneHasher {
    PhoneHasher::new(b"bench-key")
}

/// A book holding `n` sends awaiting their receipt, spread over 8 partitions.
fn book(n: usize) -> (Book, Vec<String>) {
    let mut book = Book::new(hasher(), Duration::minutes(2), Duration::minutes(2));
    let now = Utc::now();
    let ids = (0..n)
        .map(|i| {
            let (id, r) = record(i);
            book.record(&id, Some(r), (i % 8) as i32, now);
            id
        })
        .collect();
    (book, ids)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker_book");
    group.throughput(Throughput::Elements(1));
    group.bench_function("delivered_receipt", |b| {
        b.iter_batched(
            || {
                let (book, ids) = book(1);
                (book, ids[0].clone())
            },
            |(mut book, id)| {
                let tag = Tag {
                    partition: 0,
                    offset: 0,
                    generation: 0,
                };
                let r = receipt(&id, 0, ReceiptStatus::Delivered);
                black_box(book.receipt(r, tag, Utc::now()))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The tick: nothing due, everything scanned.
    let mut group = c.benchmark_group("tracker_tick");
    for held in [10_000usize, 100_000] {
        let (mut book, _) = book(held);
        group.throughput(Throughput::Elements(held as u64));
        group.bench_with_input(BenchmarkId::from_parameter(held), &held, |b, _| {
            b.iter(|| black_box(book.due(Utc::now(), |_| true)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
