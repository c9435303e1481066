//! The simulated Twilio Messages API against Twilio's documentation: the sender queue (wait,
//! 21611, 30001, 30036), the concurrency limit (20429), delivery errors that arrive only on
//! status callbacks, staged numbers, Twilio's retry policy, and calls recorded on arrival.

mod common;

use common::{hooks, sim, sms_send, sms_send_valid_for, stats_until, Receiver, Sender};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

const AUTH_TOKEN: &[u8] = b"sim-auth-token";

fn callback(r: &Receiver, request_id: &str) -> String {
    format!("{}/webhooks/sms/status?request_id={request_id}", r.base)
}

/// The callbacks of one message, in arrival order: (status, error code).
async fn statuses_of(r: &mut Receiver, sid: &str, n: usize) -> Vec<(String, Option<String>)> {
    let mut got = Vec::new();
    while got.len() < n {
        let hook = r.next().await;
        let form = hook.form();
        if form["MessageSid"] == sid {
            got.push((
                form["MessageStatus"].clone(),
                form.get("ErrorCode").cloned(),
            ));
        }
    }
    got
}

fn pair(status: &str, code: Option<&str>) -> (String, Option<String>) {
    (status.to_string(), code.map(str::to_string))
}

#[tokio::test]
async fn over_the_senders_rate_a_message_is_queued_and_goes_out_at_the_rate() {
    let mut r = Receiver::start(&[]).await;
    // 10 a second, no burst: one every 100 ms.
    let s = sim(|c| {
        c.sms_rate = 10;
        c.sms_burst = 1;
    })
    .await;
    let t0 = Instant::now();
    let mut sids = Vec::new();
    for to in ["+15551240404", "+15551250404", "+15551260404"] {
        let (http, body) = sms_send(&s, to, Sender::From, Some(&callback(&r, "q"))).await;
        assert_eq!((http, body["status"].as_str()), (201, Some("queued")));
        sids.push(body["sid"].as_str().unwrap().to_string());
    }
    // Two of the three were over the rate: each a violation, though none was refused.
    assert_eq!(s.stats().rate_limit_violations.get("sms_sender"), Some(&2));

    // 0404 reports `sent` only, when the message leaves the queue.
    let mut sent_at = HashMap::new();
    for _ in 0..3 {
        let hook = r.next().await;
        let form = hook.form();
        assert_eq!(form["MessageStatus"], "sent");
        sent_at.insert(form["MessageSid"].clone(), t0.elapsed());
    }
    // The queue's schedule is absolute: the third leaves two intervals after the first came.
    assert!(
        sent_at[&sids[1]] >= Duration::from_millis(95),
        "{sent_at:?}"
    );
    assert!(
        sent_at[&sids[2]] >= Duration::from_millis(195),
        "{sent_at:?}"
    );
}

#[tokio::test]
async fn a_full_queue_refuses_a_from_send_with_21611() {
    // One a second, room for two waiting.
    let s = sim(|c| {
        c.sms_rate = 1;
        c.sms_burst = 1;
        c.sms_queue_capacity = Some(2);
    })
    .await;
    for i in 0..3 {
        let (http, _) = sms_send(&s, &format!("+1555127{i:04}"), Sender::From, None).await;
        assert_eq!(http, 201, "message {i}");
    }
    let (http, body) = sms_send(&s, "+15551270003", Sender::From, None).await;
    assert_eq!((http, body["code"].as_i64()), (400, Some(21611)));
    assert_eq!(body["status"], 400);
    let stats = s.stats();
    assert_eq!(stats.rate_limit_violations.get("sms_sender"), Some(&3));
    assert_eq!(stats.errors_by_code.get("21611"), Some(&1));
    assert_eq!(stats.accepted, 3);
}

#[tokio::test]
async fn a_full_queue_fails_a_messaging_service_send_with_30001_after_creation() {
    let mut r = Receiver::start(&[]).await;
    let s = sim(|c| {
        c.sms_rate = 1;
        c.sms_burst = 1;
        c.sms_queue_capacity = Some(0);
    })
    .await;
    assert_eq!(
        sms_send(&s, "+15551280001", Sender::MessagingService, None)
            .await
            .0,
        201
    );
    let (http, body) = sms_send(
        &s,
        "+15551280002",
        Sender::MessagingService,
        Some(&callback(&r, "ms")),
    )
    .await;
    assert_eq!((http, body["status"].as_str()), (201, Some("accepted")));
    let sid = body["sid"].as_str().unwrap();
    assert_eq!(
        statuses_of(&mut r, sid, 1).await,
        vec![pair("failed", Some("30001"))]
    );
}

#[tokio::test]
async fn a_message_that_waits_past_its_validity_period_fails_with_30036() {
    let mut r = Receiver::start(&[]).await;
    let s = sim(|c| {
        c.sms_rate = 1;
        c.sms_burst = 1;
    })
    .await;
    let cb = callback(&r, "vp");
    // Waits 0 s, 1 s, 2 s; valid for 1 s.
    let mut sids = Vec::new();
    for i in 0..3 {
        let to = format!("+1555129{i:03}0404");
        let (http, body) = sms_send_valid_for(&s, &to, Sender::From, Some(&cb), 1).await;
        assert_eq!(http, 201);
        sids.push(body["sid"].as_str().unwrap().to_string());
    }
    assert_eq!(
        statuses_of(&mut r, &sids[2], 1).await,
        vec![pair("failed", Some("30036"))]
    );
}

#[tokio::test]
async fn too_many_concurrent_requests_get_429_20429() {
    let s = sim(|c| {
        c.sms_max_concurrent = 2;
        c.latency = Duration::from_secs(1);
    })
    .await;
    let (a, b, c) = tokio::join!(
        sms_send(&s, "+15551300001", Sender::From, None),
        sms_send(&s, "+15551300002", Sender::From, None),
        sms_send(&s, "+15551300003", Sender::From, None),
    );
    let mut statuses = vec![a.0, b.0, c.0];
    statuses.sort();
    assert_eq!(statuses, vec![201, 201, 429]);
    let refused = [a, b, c].into_iter().find(|x| x.0 == 429).unwrap().1;
    assert_eq!(refused["code"], 20429);
    let stats = s.stats();
    assert_eq!(stats.rate_limit_violations.get("sms_concurrent"), Some(&1));
    assert_eq!(stats.rate_limit_violations.get("sms_sender"), None);
    // Once the others are answered there is room again.
    assert_eq!(
        sms_send(&s, "+15551300004", Sender::From, None).await.0,
        201
    );
}

#[tokio::test]
async fn delivery_errors_come_on_callbacks_never_as_answers() {
    for (code, expected) in [
        (
            "30005",
            vec![pair("sent", None), pair("undelivered", Some("30005"))],
        ),
        ("30001", vec![pair("failed", Some("30001"))]),
        (
            "30032",
            vec![pair("sent", None), pair("undelivered", Some("30032"))],
        ),
    ] {
        let mut r = Receiver::start(&[]).await;
        let s = sim(|c| c.sms_errors = vec![(code.parse().unwrap(), 1.0)]).await;
        let (http, body) =
            sms_send(&s, "+15551310001", Sender::From, Some(&callback(&r, "d"))).await;
        assert_eq!(
            (http, body["status"].as_str()),
            (201, Some("queued")),
            "{code}"
        );
        let sid = body["sid"].as_str().unwrap();
        assert_eq!(
            statuses_of(&mut r, sid, expected.len()).await,
            expected,
            "{code}"
        );
        assert_eq!(s.stats().accepted, 1);
    }
    // Any other code answers the send.
    let s = sim(|c| c.sms_errors = vec![(21211, 1.0)]).await;
    let (http, body) = sms_send(&s, "+15551310002", Sender::From, None).await;
    assert_eq!((http, body["code"].as_i64()), (400, Some(21211)));
}

#[tokio::test]
async fn staged_sms_numbers() {
    let mut r = Receiver::start(&[]).await;
    let s = sim(|_| {}).await;
    // 0500: Twilio's internal server error twice, then accepted.
    for _ in 0..2 {
        let (http, body) = sms_send(&s, "+15551320500", Sender::From, None).await;
        assert_eq!((http, body["code"].as_i64()), (500, Some(20500)));
        assert_eq!(
            body["more_info"],
            "https://www.twilio.com/docs/errors/20500"
        );
    }
    assert_eq!(
        sms_send(&s, "+15551320500", Sender::From, None).await.0,
        201
    );

    // 3032: accepted, `sent`, then `undelivered` 30032 (toll-free number not verified).
    let cb = callback(&r, "req-3032");
    let (http, body) = sms_send(&s, "+15551323032", Sender::From, Some(&cb)).await;
    assert_eq!(http, 201);
    let sid = body["sid"].as_str().unwrap().to_string();
    let first = r.next().await;
    assert!(otp_events::signature::twilio_signature_valid(
        AUTH_TOKEN,
        &cb,
        &first.form_pairs(),
        first.headers["x-twilio-signature"].to_str().unwrap()
    ));
    assert_eq!(first.form()["MessageStatus"], "sent");
    assert_eq!(
        statuses_of(&mut r, &sid, 1).await,
        vec![pair("undelivered", Some("30032"))]
    );
}

#[tokio::test]
async fn twilio_does_not_retry_a_callback_answered_5xx() {
    let mut r = Receiver::start(&[500]).await;
    let s = sim(|_| {}).await;
    // 0404: `sent` only, so one callback in all.
    let (http, _) = sms_send(&s, "+15551330404", Sender::From, Some(&callback(&r, "x"))).await;
    assert_eq!(http, 201);
    assert_eq!(r.next().await.form()["MessageStatus"], "sent");
    let stats = stats_until(&s, |st| hooks(st, "sms", "given_up") == 1).await;
    assert_eq!(hooks(&stats, "sms", "attempts"), 1);
    assert_eq!(hooks(&stats, "sms", "retried"), 0);
    // The simulator has stopped trying; nothing more reaches the receiver.
    assert!(r.another_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn twilio_retries_a_failed_connection_once() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = sim(|_| {}).await;
    let cb = format!("http://{closed}/webhooks/sms/status?request_id=y");
    assert_eq!(
        sms_send(&s, "+15551340404", Sender::From, Some(&cb))
            .await
            .0,
        201
    );
    let stats = stats_until(&s, |st| hooks(st, "sms", "given_up") == 1).await;
    assert_eq!(hooks(&stats, "sms", "attempts"), 2);
    assert_eq!(hooks(&stats, "sms", "retried"), 1);
}

#[tokio::test]
async fn a_call_is_recorded_when_it_arrives_even_if_the_client_gives_up() {
    let s = sim(|c| c.latency = Duration::from_secs(5)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "ACsim:sim-auth-token",
    );
    let gave_up = impatient
        .post(format!(
            "{}/2010-04-01/Accounts/ACsim/Messages.json",
            s.base_url()
        ))
        .header("authorization", format!("Basic {auth}"))
        .form(&[
            ("To", "+15551350001"),
            ("From", "+15557654321"),
            ("Body", "123456 is your code"),
        ])
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    // Recorded on arrival, with the outcome the provider acted on.
    let messages = s.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].outcome, "accepted");
    assert_eq!(messages[0].to, "+15551350001");
    // The answer nobody took is counted once the connection is gone.
    stats_until(&s, |st| st.abandoned == 1).await;
}
