//! Building the Cloud API request body for one code.
//! `cargo bench -p otp-channel-whatsapp --bench request`; in CI it runs once in test mode.

use criterion::{criterion_group, criterion_main, Criterion};
use otp_channel_whatsapp::{WhatsappArgs, WhatsappClient};
use otp_events::{Channel, Submission};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let args = WhatsappArgs::new("http://127.0.0.1:1", "42");
    let client = WhatsappClient::new(args, "token".into()).unwrap();
    let now = chrono::Utc::now();
    let request = Submission::new(
        "+15551234567",
        "123456",
        vec![Channel::Whatsapp],
        chrono::Duration::minutes(5),
    )
    .complete(now);
    c.bench_function("whatsapp_body", |b| {
        b.iter(|| {
            let request = black_box(&request);
            serde_json::to_vec(&client.body(request, client.language_for(request))).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
