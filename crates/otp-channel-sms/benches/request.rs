//! Building the Messages API form for one code.
//! `cargo bench -p otp-channel-sms --bench request`; in CI it runs once in test mode.

use criterion::{criterion_group, criterion_main, Criterion};
use otp_channel_sms::{Texts, TwilioArgs, TwilioClient};
use otp_events::{Channel, Submission};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let args = TwilioArgs {
        api_base_url: "http://127.0.0.1:1".into(),
        account_sid: Some("AC1".into()),
        from: Some("+15557654321".into()),
        messaging_service_sid: None,
        status_callback_url: Some("https://receipts.example/webhooks/sms/status".into()),
        request_timeout: std::time::Duration::from_secs(1),
        twilio_senders: Vec::new(),
    };
    let texts = Texts::new(&[], "en").unwrap();
    let client = TwilioClient::new(args, texts, "token".into()).unwrap();
    let now = chrono::Utc::now();
    let request = Submission::new(
        "+15551234567",
        "123456",
        vec![Channel::Sms],
        chrono::Duration::minutes(5),
    )
    .complete(now);
    c.bench_function("sms_form", |b| {
        b.iter(|| {
            serde_urlencoded::to_string(client.form(black_box(&request), now).unwrap()).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
