use super::*;
use otp_events::{ReceiptError, Submission, PENDING_CONFIRMATION_SCHEMA, RECEIPT_SCHEMA};

fn book() -> Book {
    Book::new(
        PhoneHasher::new(b"k"),
        Duration::minutes(2),
        Duration::minutes(2),
    )
}

fn record(id: &str, channels: Vec<Channel>, state: ConfirmationState) -> PendingConfirmation {
    let mut s = Submission::new("+15551230001", "123456", channels, Duration::minutes(5));
    s.request_id = Some(id.into());
    let request = s.complete(Utc::now());
    PendingConfirmation {
        provider: None,
        schema: PENDING_CONFIRMATION_SCHEMA.into(),
        channel: request.current_channel().unwrap(),
        request,
        provider_message_id: "wamid.1".into(),
        accepted_at: Utc::now(),
        confirm_by: (state == ConfirmationState::Awaiting)
            .then(|| Utc::now() + Duration::seconds(15)),
        timeout_is_final: false,
        state,
        reported: Vec::new(),
    }
}

/// A receipt for the record's send, as the ingress writes it (the wamid's keyed hash).
fn receipt(id: &str, status: ReceiptStatus) -> Receipt {
    Receipt {
        schema: RECEIPT_SCHEMA.into(),
        request_id: Some(id.into()),
        app: None,
        channel: Channel::Whatsapp,
        provider: Some(Provider::WhatsappCloud),
        provider_message_id: PhoneHasher::new(b"k").public_message_id(Channel::Whatsapp, "wamid.1"),
        status,
        error: (status == ReceiptStatus::Failed).then(|| ReceiptError {
            code: "131026".into(),
            category: ErrorCategory::Recipient,
            message: "not on WhatsApp".into(),
        }),
        provider_timestamp: None,
        received_at: Utc::now(),
    }
}

fn tag(offset: i64) -> Tag {
    Tag {
        partition: 0,
        offset,
        generation: 0,
    }
}

/// The statuses an outcome reports, as (status, final), fallbacks included.
fn reported(out: &Outcome) -> Vec<(StatusKind, bool)> {
    out.actions
        .iter()
        .filter_map(|a| match a {
            Action::Status(s) | Action::FallBack { status: s, .. } => Some((s.status, s.is_final)),
            _ => None,
        })
        .collect()
}

const WA_SMS: fn() -> Vec<Channel> = || vec![Channel::Whatsapp, Channel::Sms];

/// The worker's record of a WhatsApp send with SMS behind it, read on partition 0.
fn awaiting_whatsapp(b: &mut Book, id: &str, now: chrono::DateTime<Utc>) -> Outcome {
    let r = record(id, WA_SMS(), ConfirmationState::Awaiting);
    b.record(id, Some(r), 0, now)
}

#[test]
fn delivered_in_time_is_final_and_cancels_the_fallback() {
    let mut b = book();
    let now = Utc::now();
    awaiting_whatsapp(&mut b, "r", now);
    let out = b.receipt(receipt("r", ReceiptStatus::Sent), tag(0), now);
    assert_eq!(reported(&out), vec![(StatusKind::Sent, false)]);
    let out = b.receipt(receipt("r", ReceiptStatus::Delivered), tag(1), now);
    assert_eq!(reported(&out), vec![(StatusKind::Delivered, true)]);
    assert!(
        matches!(out.actions.last(), Some(Action::Save(r)) if r.state == ConfirmationState::Confirmed)
    );
    let out = b.receipt(receipt("r", ReceiptStatus::Read), tag(2), now);
    assert_eq!(reported(&out), vec![(StatusKind::Read, false)]);
    let later = b.due(now + Duration::seconds(60), |_| true);
    assert!(reported(&later).is_empty(), "no fallback after delivery");
    assert_eq!(b.awaiting(), 0);
}

#[test]
fn a_failed_receipt_falls_back_once_and_a_repeat_changes_nothing() {
    let mut b = book();
    let now = Utc::now();
    awaiting_whatsapp(&mut b, "r", now);
    let out = b.receipt(receipt("r", ReceiptStatus::Failed), tag(0), now);
    let Some(Action::FallBack { next, status }) = out.actions.first() else {
        panic!("{:?}", out.actions)
    };
    assert_eq!(next.current_channel(), Some(Channel::Sms));
    assert_eq!(status.error.as_ref().unwrap().code, "receipt_failed");
    assert_eq!(status.next_channel, Some(Channel::Sms));
    assert_eq!(out.released, vec![tag(0)]);
    let again = b.receipt(receipt("r", ReceiptStatus::Failed), tag(1), now);
    assert!(reported(&again).is_empty(), "{:?}", again.actions);
    assert_eq!(
        again.released,
        vec![tag(1)],
        "a duplicate is still committed"
    );
    assert!(reported(&b.due(now + Duration::seconds(60), |_| true)).is_empty());
}

#[test]
fn silence_falls_back_at_the_deadline_only_on_ready_partitions() {
    let mut b = book();
    let now = Utc::now();
    awaiting_whatsapp(&mut b, "r", now);
    assert!(reported(&b.due(now + Duration::seconds(5), |_| true)).is_empty());
    let late = now + Duration::seconds(16);
    assert!(
        reported(&b.due(late, |_| false)).is_empty(),
        "partition still catching up"
    );
    let out = b.due(late, |_| true);
    assert_eq!(reported(&out), vec![(StatusKind::Fallback, false)]);
    let Some(Action::FallBack { status, .. }) = out.actions.first() else {
        unreachable!()
    };
    assert_eq!(status.error.as_ref().unwrap().code, "receipt_timeout");
    assert!(reported(&b.due(late, |_| true)).is_empty(), "fires once");
}

/// On a provider whose receipts are not awaited (SMS by default), silence ends the request
/// `sent` at the deadline, without a fallback; a failed receipt still falls back.
#[test]
fn silence_is_final_sent_where_a_missing_receipt_is_no_evidence() {
    let mut b = book();
    let now = Utc::now();
    let mut r = record("quiet", WA_SMS(), ConfirmationState::Awaiting);
    r.timeout_is_final = true;
    b.record("quiet", Some(r.clone()), 0, now);
    let out = b.due(now + Duration::seconds(16), |_| true);
    assert_eq!(reported(&out), vec![(StatusKind::Sent, true)]);
    assert!(!out
        .actions
        .iter()
        .any(|a| matches!(a, Action::FallBack { .. })));
    assert!(
        matches!(out.actions.last(), Some(Action::Save(r)) if r.state == ConfirmationState::ReportOnly)
    );
    let late = b.receipt(receipt("quiet", ReceiptStatus::Failed), tag(0), now);
    assert_eq!(
        reported(&late),
        vec![(StatusKind::Failed, false)],
        "reported, not handed on"
    );

    b.record(
        "loud",
        Some(PendingConfirmation {
            request: record("loud", WA_SMS(), ConfirmationState::Awaiting).request,
            ..r
        }),
        0,
        now,
    );
    let out = b.receipt(receipt("loud", ReceiptStatus::Failed), tag(1), now);
    assert!(
        matches!(out.actions.first(), Some(Action::FallBack { .. })),
        "{:?}",
        out.actions
    );
}

#[test]
fn with_no_channel_left_a_failure_is_final_and_after_expiry_it_is_expired() {
    let mut b = book();
    let now = Utc::now();
    let mut only = record("r", vec![Channel::Whatsapp], ConfirmationState::Awaiting);
    only.confirm_by = Some(now);
    b.record("r", Some(only.clone()), 0, now);
    let out = b.receipt(receipt("r", ReceiptStatus::Failed), tag(0), now);
    assert_eq!(reported(&out), vec![(StatusKind::Failed, true)]);

    let mut b = book();
    awaiting_whatsapp(&mut b, "r", now);
    let dead = now + Duration::minutes(6);
    assert_eq!(
        reported(&b.due(dead, |_| true)),
        vec![(StatusKind::Expired, true)]
    );
}

#[test]
fn a_failure_seconds_before_expiry_is_failed_not_handed_on() {
    // Five minutes of life at the start; the failed receipt comes with 3 s left.
    let mut b = book();
    let start = Utc::now();
    awaiting_whatsapp(&mut b, "r", start);
    let late = start + Duration::minutes(5) - Duration::seconds(3);
    let out = b.receipt(receipt("r", ReceiptStatus::Failed), tag(0), late);
    assert_eq!(
        reported(&out),
        vec![(StatusKind::Failed, true)],
        "{:?}",
        out.actions
    );
    assert!(!out
        .actions
        .iter()
        .any(|a| matches!(a, Action::FallBack { .. })));
}

#[test]
fn report_only_records_report_receipts_without_finals() {
    let mut b = book();
    let now = Utc::now();
    b.record(
        "r",
        Some(record(
            "r",
            vec![Channel::Sms],
            ConfirmationState::ReportOnly,
        )),
        0,
        now,
    );
    let mut sms = receipt("r", ReceiptStatus::Sent);
    sms.channel = Channel::Sms;
    sms.provider = Some(Provider::Twilio);
    sms.provider_message_id = "wamid.1".into(); // an SMS id is kept as it is
    assert!(
        reported(&b.receipt(sms.clone(), tag(0), now)).is_empty(),
        "the worker said sent"
    );
    sms.status = ReceiptStatus::Failed;
    sms.error = Some(ReceiptError {
        code: "30005".into(),
        category: ErrorCategory::Recipient,
        message: "unknown handset".into(),
    });
    assert_eq!(
        reported(&b.receipt(sms, tag(1), now)),
        vec![(StatusKind::Failed, false)]
    );
}

#[test]
fn receipts_before_their_record_wait_for_it_or_are_given_up() {
    let mut b = book();
    let now = Utc::now();
    let early = b.receipt(receipt("r", ReceiptStatus::Delivered), tag(0), now);
    assert!(
        early.actions.is_empty() && early.released.is_empty(),
        "held, not committed"
    );
    let out = awaiting_whatsapp(&mut b, "r", now);
    assert_eq!(reported(&out), vec![(StatusKind::Delivered, true)]);
    assert_eq!(out.released, vec![tag(0)]);

    b.receipt(receipt("stray", ReceiptStatus::Read), tag(5), now);
    let out = b.due(now + Duration::minutes(3), |_| true);
    assert!(
        out.released.contains(&tag(5)),
        "given up after the orphan TTL"
    );
}

#[test]
fn older_copies_of_a_record_read_back_are_ignored_and_expired_ones_forgotten() {
    let mut b = book();
    let now = Utc::now();
    let first = record("r", WA_SMS(), ConfirmationState::Awaiting);
    b.record("r", Some(first.clone()), 0, now);
    b.receipt(receipt("r", ReceiptStatus::Delivered), tag(0), now);
    b.record("r", Some(first), 0, now); // the worker's record, read again (e.g. a redelivery)
    assert_eq!(b.awaiting(), 0, "still confirmed");
    let out = b.due(now + Duration::minutes(8), |_| true);
    assert!(matches!(out.actions.as_slice(), [Action::Forget(id)] if id == "r"));
    assert!(b.is_empty());
    b.record(
        "x",
        Some(record("x", WA_SMS(), ConfirmationState::Awaiting)),
        1,
        now,
    );
    b.drop_partition(1);
    assert!(b.is_empty());
}

#[test]
fn a_deadline_follows_its_record_through_a_settled_copy_and_a_rebuild() {
    let mut b = book();
    let now = Utc::now();
    let late = now + Duration::seconds(20);
    // Settled by a copy read back (another tracker confirmed it): the deadline is void.
    awaiting_whatsapp(&mut b, "settled", now);
    let mut confirmed = record("settled", WA_SMS(), ConfirmationState::Confirmed);
    confirmed.reported.push(ReceiptStatus::Delivered);
    b.record("settled", Some(confirmed), 0, now);
    // Given up with its partition, then rebuilt from the topic: it fires once.
    let r = record("rebuilt", WA_SMS(), ConfirmationState::Awaiting);
    b.record("rebuilt", Some(r.clone()), 1, now);
    b.drop_partition(1);
    assert!(reported(&b.due(late, |_| true)).is_empty(), "not held");
    b.record("rebuilt", Some(r), 1, late);
    let out = b.due(late, |_| true);
    assert_eq!(reported(&out), vec![(StatusKind::Fallback, false)]);
    assert!(
        matches!(out.actions.first(), Some(Action::FallBack { next, .. }) if next.request_id == "rebuilt")
    );
    assert!(reported(&b.due(late, |_| true)).is_empty(), "fires once");
}

/// A failed receipt as Meta may send it: no request_id, keyed by its message.
fn uncorrelated_failure(message: &str) -> Receipt {
    let mut r = receipt("unused", ReceiptStatus::Failed);
    r.request_id = None;
    r.provider_message_id = message.into();
    r
}

fn index(id: &str, expires_in: Duration) -> MessageIndex {
    MessageIndex {
        schema: otp_events::MESSAGE_INDEX_SCHEMA.into(),
        request_id: id.into(),
        app: None,
        channel: Channel::Whatsapp,
        expires_at: Utc::now() + expires_in,
    }
}

#[test]
fn a_failed_receipt_without_request_id_is_resolved_by_its_message_and_handed_on() {
    let mut b = book();
    let now = Utc::now();
    let public = PhoneHasher::new(b"k").public_message_id(Channel::Whatsapp, "wamid.1");
    let key = otp_events::message_key(&public);
    b.index(&key, Some(index("r", Duration::minutes(5))), 0, now);
    let out = b.receipt(uncorrelated_failure(&public), tag(0), now);
    let [Action::Reroute(resolved)] = out.actions.as_slice() else {
        panic!("{:?}", out.actions)
    };
    assert_eq!(resolved.request_id.as_deref(), Some("r"));
    assert_eq!(resolved.key(), "r", "written again under its request's key");
    assert_eq!(out.released, vec![tag(0)]);
    // Applied on the request's partition, it falls back at once.
    awaiting_whatsapp(&mut b, "r", now);
    let applied = b.receipt(resolved.clone(), tag(1), now);
    assert!(
        matches!(applied.actions.first(), Some(Action::FallBack { .. })),
        "{:?}",
        applied.actions
    );
}

#[test]
fn an_uncorrelated_receipt_waits_for_its_index_entry_and_the_entry_is_forgotten_after_expiry() {
    let mut b = book();
    let now = Utc::now();
    let key = otp_events::message_key("wamid-hash-2");
    let early = b.receipt(uncorrelated_failure("wamid-hash-2"), tag(0), now);
    assert!(early.actions.is_empty() && early.released.is_empty());
    let out = b.index(&key, Some(index("r2", Duration::minutes(1))), 0, now);
    assert!(
        matches!(out.actions.as_slice(), [Action::Reroute(r)] if r.request_id.as_deref() == Some("r2"))
    );
    assert_eq!(out.released, vec![tag(0)]);
    // Forgotten (tombstoned) once the code is dead and the keep time is over, not before.
    assert!(b
        .due(now + Duration::minutes(2), |_| true)
        .actions
        .is_empty());
    let later = b.due(now + Duration::minutes(4), |_| true);
    assert!(
        matches!(later.actions.as_slice(), [Action::Forget(k)] if *k == key),
        "{:?}",
        later.actions
    );
    let unknown = b.receipt(uncorrelated_failure("wamid-hash-2"), tag(1), now);
    assert!(unknown.actions.is_empty(), "the index entry is gone");
}

#[test]
fn a_receipt_for_another_send_of_the_request_changes_nothing() {
    // The first copy of a send repeated after a crash fails; the record holds the second.
    let mut b = book();
    let now = Utc::now();
    awaiting_whatsapp(&mut b, "r", now);
    let mut other = receipt("r", ReceiptStatus::Failed);
    other.provider_message_id =
        PhoneHasher::new(b"k").public_message_id(Channel::Whatsapp, "wamid.first-copy");
    let out = b.receipt(other, tag(0), now);
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(out.released, vec![tag(0)], "committed all the same");
    assert_eq!(b.awaiting(), 1, "the fallback is still armed");
    let delivered = b.receipt(receipt("r", ReceiptStatus::Delivered), tag(1), now);
    assert_eq!(reported(&delivered), vec![(StatusKind::Delivered, true)]);
}

#[test]
fn a_receipt_from_another_provider_than_the_send_changes_nothing() {
    // The SMS send went through Twilio (a record without a provider: the channel's first).
    let mut b = book();
    let now = Utc::now();
    let r = record("s", vec![Channel::Sms], ConfirmationState::Awaiting);
    b.record("s", Some(r), 0, now);
    let from = |provider| {
        let mut r = receipt("s", ReceiptStatus::Failed);
        r.channel = Channel::Sms;
        r.provider = provider;
        r.provider_message_id = PhoneHasher::new(b"k").public_message_id(Channel::Sms, "wamid.1");
        r
    };
    let out = b.receipt(from(Some(Provider::Vonage)), tag(0), now);
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(out.released, vec![tag(0)]);
    assert_eq!(b.awaiting(), 1, "still awaiting Twilio's receipt");
    let out = b.receipt(from(None), tag(1), now);
    assert!(
        !out.actions.is_empty(),
        "a receipt written before providers were named acts"
    );
}

#[test]
fn a_fired_deadline_is_one_act_then_the_record_of_it() {
    // A member letting the partition go stops before an act, never between an act and its
    // record: the record tells the new owner the deadline already fired.
    let mut b = book();
    let now = Utc::now();
    awaiting_whatsapp(&mut b, "r", now);
    let out = b.due(now + Duration::seconds(16), |_| true);
    let acts: Vec<bool> = out.actions.iter().map(Action::acts).collect();
    assert_eq!(acts, vec![true, false], "{:?}", out.actions);
    assert!(matches!(&out.actions[1], Action::Save(r) if r.state == ConfirmationState::FellBack));
}

/// The signals an outcome sends the workers.
fn signals(out: &Outcome) -> Vec<(Channel, SignalKind, String)> {
    out.actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { signal, .. } => {
                Some((signal.channel, signal.kind, signal.code.clone()))
            }
            _ => None,
        })
        .collect()
}

fn failed_with(id: &str, code: &str) -> Receipt {
    let mut r = receipt(id, ReceiptStatus::Failed);
    r.error.as_mut().unwrap().code = code.into();
    r
}

/// A captured failed webhook replayed any number of times makes one signal: the book makes
/// it for the first `failed` of one of our own sends only (131031: the account is locked).
#[test]
fn a_broken_channel_receipt_signals_once_for_our_send_only() {
    let mut b = book();
    let now = Utc::now();
    awaiting_whatsapp(&mut b, "r", now);
    let first = b.receipt(failed_with("r", "131031"), tag(0), now);
    assert_eq!(
        signals(&first),
        vec![(
            Channel::Whatsapp,
            SignalKind::ChannelBroken,
            "131031".into()
        )]
    );
    for i in 1..8 {
        let replay = b.receipt(failed_with("r", "131031"), tag(i), now);
        assert!(
            signals(&replay).is_empty(),
            "replay {i}: {:?}",
            replay.actions
        );
    }
    // Another send's failure (not the one the record holds) signals nothing.
    awaiting_whatsapp(&mut b, "s", now);
    let mut other = failed_with("s", "131031");
    other.provider_message_id =
        PhoneHasher::new(b"k").public_message_id(Channel::Whatsapp, "wamid.other");
    assert!(signals(&b.receipt(other, tag(9), now)).is_empty());
    // A recipient's failure is no news about the channel.
    awaiting_whatsapp(&mut b, "t", now);
    assert!(signals(&b.receipt(failed_with("t", "131026"), tag(10), now)).is_empty());
}

/// A failure the provider dated long ago (a webhook retried for days) opens no circuit now.
#[test]
fn a_stale_failure_makes_no_signal() {
    let mut b = book();
    let now = Utc::now();
    awaiting_whatsapp(&mut b, "r", now);
    let mut old = failed_with("r", "131031");
    old.provider_timestamp = Some(now - SIGNAL_FRESH_FOR - Duration::seconds(1));
    let out = b.receipt(old, tag(0), now);
    assert!(signals(&out).is_empty(), "{:?}", out.actions);
    assert!(
        out.actions
            .iter()
            .any(|a| matches!(a, Action::FallBack { .. })),
        "the send itself still falls back"
    );
}

/// Request ids are unique per app only: two apps' requests of one id are two requests, each
/// with its own record, receipts and deadline.
#[test]
fn two_apps_requests_of_one_id_are_kept_apart() {
    let mut b = book();
    let now = Utc::now();
    for app in ["shop", "bank"] {
        let mut r = record("r", WA_SMS(), ConfirmationState::Awaiting);
        r.request.app = Some(app.into());
        assert_eq!(r.key(), format!("{app}/r"));
        b.record(&r.key(), Some(r), 0, now);
    }
    assert_eq!(b.awaiting(), 2, "one did not replace the other");
    let mut delivered = receipt("r", ReceiptStatus::Delivered);
    delivered.app = Some("shop".into());
    let out = b.receipt(delivered, tag(0), now);
    assert_eq!(reported(&out), vec![(StatusKind::Delivered, true)]);
    let Some(Action::Status(status)) = out.actions.first() else {
        panic!("{:?}", out.actions)
    };
    assert_eq!(status.app.as_deref(), Some("shop"));
    // A receipt without the app is about a request without one: neither of these.
    let bare = b.receipt(receipt("r", ReceiptStatus::Failed), tag(1), now);
    assert!(
        bare.actions.is_empty() && bare.released.is_empty(),
        "held as an orphan"
    );
    let due = b.due(now + Duration::seconds(60), |_| true);
    let fallbacks: Vec<Option<&str>> = due
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::FallBack { next, .. } => Some(next.app.as_deref()),
            _ => None,
        })
        .collect();
    assert_eq!(
        fallbacks,
        vec![Some("bank")],
        "only the silent app's request falls back"
    );
}
