//! A worker's own work per message, up to and after the provider call, without a broker or a
//! provider: decode (open the sealed phone and code), derive the number's facts and hashes,
//! the guards (clock, expiry, duplicate memory, abuse rules, the claim of the id), a sender
//! slot, the circuit, then the `sent` status with its public message id, encoded. What the
//! pipeline does per message besides Kafka and HTTP, so that a regression shows here.
//!
//! `cargo bench -p otp-worker --bench hot_path`; in CI it runs once in test mode.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures_util::FutureExt;
use otp_events::{
    decode_code_request, Channel, DeliveryStatus, Keyring, PhoneHasher, Provider, Rules,
    StatusKind, Submission,
};
use otp_worker::hot_path::{At, Attempt, Conversion, Dedup, Guards, Health, Limiter, Routes};
use otp_worker::{
    AbuseConfig, CircuitConfig, ConversionConfig, LimitsConfig, RoutesConfig, WindowRule,
};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The guards as a worker builds them: the production abuse defaults (per number, premium
/// numbers), no range rule (the bench's numbers share a few ranges), and a sender rate far
/// above the bench's, so that a slot is reserved and paced but never waited for.
fn guards(rules: &Rules) -> Guards {
    let limits = LimitsConfig {
        sender_per_second: 1_000_000_000,
        sender_burst: 1_000_000,
        recipient_period: None,
    };
    let abuse = AbuseConfig {
        per_prefix: None,
        per_phone: Some(WindowRule {
            count: 5,
            window: Duration::from_secs(600),
        }),
        fleet_counts: false,
        ..AbuseConfig::default()
    };
    Guards {
        limiter: Limiter::new(&[(Provider::WhatsappCloud, limits)], &abuse),
        routes: Routes::new(&RoutesConfig::default(), &[Provider::WhatsappCloud]).expect("valid"),
        health: Health::new(
            "whatsapp",
            &[Provider::WhatsappCloud],
            CircuitConfig::default(),
        ),
        dedup: Dedup::new(100_000),
        rules: rules.clone(),
        hasher: PhoneHasher::new(b"bench-hash-key"),
        // On, as in production (this worker's channel, WhatsApp, is not refused on).
        conversion: std::sync::Arc::new(Conversion::new(
            &ConversionConfig::default(),
            otp_events::Channel::Whatsapp,
            Vec::new(),
        )),
    }
}

/// A new sealed request event each time: a new id and a new number, as production sees them.
fn next_event(rules: &Rules) -> Vec<u8> {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let phone = format!("+447{:09}", 400_000_000 + n % 500_000_000);
    let request = Submission::new(
        phone,
        "493817",
        vec![Channel::Whatsapp, Channel::Sms],
        chrono::Duration::minutes(5),
    )
    .complete(chrono::Utc::now());
    rules.encode_request(&request).expect("sealable")
}

fn per_message(guards: &Guards, event: &[u8]) -> Vec<u8> {
    let channel = Channel::Whatsapp;
    let request = decode_code_request(event, &guards.rules).expect("valid");
    let subject = guards.subject_of(&request);
    let now = chrono::Utc::now();
    let at = At {
        request: &request,
        channel,
        provider: None,
        now,
    };
    let source = ("otp.code-requests.whatsapp".to_string(), 0, 0);
    let attempt = guards
        .admit(at, &subject, false, &source, |_, _| {})
        .expect("admitted");
    assert_eq!(attempt, Attempt::First);
    let latest = Instant::now() + Duration::from_secs(240);
    let provider = guards.providers_for(&subject)[0];
    guards
        .limiter
        .acquire(provider, &subject, latest, attempt)
        .now_or_never()
        .expect("a free slot is not waited for")
        .expect("within the limits");
    let country = subject.country.as_deref();
    let _ = black_box(guards.health.admit(provider, country));
    let public_id = guards.hasher.public_message_id(
        channel,
        "wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3AA==",
    );
    let mut status = DeliveryStatus::about_recipient(
        &request,
        StatusKind::Sent,
        channel,
        subject.phone_key.clone(),
        subject.country.clone(),
    );
    status.tries = Some(1);
    status.provider = Some(provider);
    status.provider_message_id = Some(public_id);
    status.to_json()
}

fn bench(c: &mut Criterion) {
    let rules = Rules {
        sealing: Some(
            Keyring::parse(
                "bench=62656e6368207365616c696e67206b657920666f72206f74702d706970656c69",
            )
            .expect("a valid key"),
        ),
        ..Rules::default()
    };
    let guards = guards(&rules);
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("per_message", |b| {
        b.iter_batched(
            || next_event(&rules),
            |event| per_message(&guards, black_box(&event)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
