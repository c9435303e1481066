//! One test per outcome of the data path, without a broker or a provider.

use super::*;
use crate::dedup::Sight;
use crate::retry::RetryConfig;
use otp_events::Submission;

const WA: Channel = Channel::Whatsapp;
const SMS: Channel = Channel::Sms;

/// A request for `channels`, created now, living `ttl_secs`.
fn request(channels: &[Channel], ttl_secs: i64) -> CodeRequest {
    Submission::new(
        "+15551230001",
        "123456",
        channels.to_vec(),
        chrono::Duration::seconds(ttl_secs),
    )
    .complete(Utc::now())
}

/// The send cutoff before expiry the tests use (that of the default 5 s safety margin).
const MARGIN: chrono::Duration = chrono::Duration::seconds(1);

fn at(request: &CodeRequest, channel: Channel) -> At<'_> {
    At {
        request,
        channel,
        provider: None,
        now: Utc::now(),
    }
}

fn failure(class: ErrorClass, code: &str) -> SendFailure {
    SendFailure {
        class,
        code: code.to_string(),
        message: "from the table".to_string(),
        unknown_code: false,
        nothing_sent: true,
    }
}

/// A schedule that has recorded `tries` tries.
fn schedule(tries: u32) -> RetrySchedule {
    let mut s = RetrySchedule::new(&RetryConfig::default());
    for _ in 0..tries {
        s.record_try();
    }
    s
}

fn after(request: &CodeRequest, answer: Result<String, SendFailure>, left: Duration) -> Next {
    after_send(
        at(request, WA),
        answer,
        &mut schedule(1),
        left,
        None,
        Failover::NONE,
    )
}

/// The outcome a try ended with (not a retry).
fn done(next: Next) -> Outcome {
    match next {
        Next::Done(outcome) => outcome,
        other => panic!("not done: {other:?}"),
    }
}

fn fallback_to(outcome: &Outcome) -> Option<(Channel, &str)> {
    match outcome {
        Outcome::FallBack { next, error, .. } => {
            Some((next.current_channel()?, error.code.as_str()))
        }
        _ => None,
    }
}

fn reported(outcome: &Outcome) -> Option<(StatusKind, Option<&str>)> {
    match outcome {
        Outcome::Report { kind, error, .. } => {
            Some((*kind, error.as_ref().map(|e| e.code.as_str())))
        }
        _ => None,
    }
}

#[test]
fn a_live_first_sighted_request_for_this_channel_goes_on_to_the_send() {
    let r = request(&[WA, SMS], 300);
    assert_eq!(guard(at(&r, WA), &Rules::default(), || Sight::First), None);
}

#[test]
fn a_request_for_another_channel_is_rejected() {
    let r = request(&[SMS], 300);
    let outcome = guard(at(&r, WA), &Rules::default(), || panic!("not asked"));
    match outcome {
        Some(Outcome::Reject { reason, error, .. }) => {
            assert!(reason.starts_with("tried_channels:"), "{reason}");
            assert_eq!(error.code, "invalid_event");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_request_is_reported_expired_and_not_remembered() {
    let r = request(&[WA, SMS], -1);
    let outcome = guard(at(&r, WA), &Rules::default(), || {
        panic!("an expired request is not recorded")
    });
    assert_eq!(
        reported(&outcome.unwrap()),
        Some((StatusKind::Expired, None))
    );
}

#[test]
fn requests_dated_in_the_future_or_living_past_the_code_life_are_rejected_unremembered() {
    // Server time: the client's created_at and expires_at are checked against our clock
    // before the duplicate memory keeps the id until its expiry.
    let mut year_9999 = request(&[WA, SMS], 300);
    year_9999.created_at = "9999-01-01T00:00:00Z".parse().unwrap();
    year_9999.expires_at = year_9999.created_at + chrono::Duration::minutes(5);
    let mut far_expiry = request(&[WA, SMS], 300);
    far_expiry.created_at = Utc::now();
    far_expiry.expires_at = Utc::now() + chrono::Duration::minutes(31);
    let mut slightly_ahead = request(&[WA, SMS], 300);
    slightly_ahead.created_at = Utc::now() + chrono::Duration::seconds(10);
    for (r, field) in [(&year_9999, "created_at"), (&far_expiry, "expires_at")] {
        match guard(at(r, WA), &Rules::default(), || panic!("not remembered")) {
            Some(Outcome::Reject { reason, error, .. }) => {
                assert!(reason.starts_with(&format!("{field}:")), "{reason}");
                assert_eq!(error.code, "invalid_event");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        guard(at(&slightly_ahead, WA), &Rules::default(), || Sight::First),
        None,
        "within the allowed clock skew"
    );
}

#[test]
fn a_request_id_claimed_for_something_else_is_a_conflict_refused_on_its_own() {
    let r = request(&[WA, SMS], 300);
    match guard(at(&r, WA), &Rules::default(), || Sight::Conflict) {
        Some(Outcome::Reject { reason, error, .. }) => {
            assert!(reason.starts_with("request_id:"), "{reason}");
            assert_eq!(error.code, "request_id_conflict");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_seen_before_is_a_duplicate() {
    let r = request(&[WA, SMS], 300);
    let outcome = guard(at(&r, WA), &Rules::default(), || Sight::Again).unwrap();
    assert_eq!(reported(&outcome), Some((StatusKind::Duplicate, None)));
}

#[test]
fn with_the_limits_clear_and_the_circuit_closed_the_send_goes() {
    let r = request(&[WA, SMS], 300);
    assert_eq!(
        before_send(
            at(&r, WA),
            Ok(()),
            || Admission::Send,
            0,
            MARGIN,
            Failover::NONE
        ),
        None
    );
}

#[test]
fn an_abuse_refusal_fails_the_request_whatever_channels_are_left() {
    let refused = Limited {
        rule: "per_phone",
        category: ErrorCategory::Blocked,
        waited_too_long: false,
    };
    let outcome = admit(Err(refused), || panic!("a refused request claims no id")).unwrap();
    assert_eq!(
        reported(&outcome),
        Some((StatusKind::Failed, Some("per_phone")))
    );
}

#[test]
fn the_id_is_claimed_only_when_the_abuse_rules_admit_the_request() {
    // Admitted: the claim is asked, and its answer decides.
    let mut claimed = false;
    assert_eq!(
        admit(Ok(()), || {
            claimed = true;
            Sight::First
        }),
        None
    );
    assert!(claimed);
    let outcome = admit(Ok(()), || Sight::Again).unwrap();
    assert_eq!(reported(&outcome), Some((StatusKind::Duplicate, None)));
    match admit(Ok(()), || Sight::Conflict) {
        Some(Outcome::Reject { error, .. }) => assert_eq!(error.code, "request_id_conflict"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_provider_limit_that_would_pass_the_deadline_falls_back() {
    let r = request(&[WA, SMS], 300);
    let too_long = Limited {
        rule: "recipient_pair_rate",
        category: ErrorCategory::RateLimited,
        waited_too_long: true,
    };
    let outcome = done(
        before_send(
            at(&r, WA),
            Err(too_long),
            || Admission::Send,
            0,
            MARGIN,
            Failover::NONE,
        )
        .unwrap(),
    );
    assert_eq!(fallback_to(&outcome), Some((SMS, "recipient_pair_rate")));
}

#[test]
fn the_circuit_is_not_asked_when_a_limit_or_the_clock_stops_the_send() {
    // Asking a half-open circuit takes its one probe: a send that will not go must not.
    let r = request(&[WA, SMS], 300);
    let refused = Limited {
        rule: "per_phone",
        category: ErrorCategory::Blocked,
        waited_too_long: false,
    };
    let not_asked = || -> Admission { panic!("the circuit was asked") };
    assert!(before_send(
        at(&r, WA),
        Err(refused),
        not_asked,
        0,
        MARGIN,
        Failover::NONE
    )
    .is_some());
    let late = At {
        now: r.expires_at,
        ..at(&r, WA)
    };
    assert!(before_send(late, Ok(()), not_asked, 0, MARGIN, Failover::NONE).is_some());
}

#[test]
fn no_try_starts_within_the_cutoff_before_expiry() {
    assert_eq!(send_cutoff(std::time::Duration::from_secs(5)), MARGIN);
    let r = request(&[WA, SMS], 300);
    let not_asked = || -> Admission { panic!("the circuit was asked") };
    for (tries, left_ms) in [(0, 999), (2, 1)] {
        let close = At {
            now: r.expires_at - chrono::Duration::milliseconds(left_ms),
            ..at(&r, WA)
        };
        let outcome =
            done(before_send(close, Ok(()), not_asked, tries, MARGIN, Failover::NONE).unwrap());
        // Expired on the spot: no fallback, since the next channel would have no more time.
        assert_eq!(
            reported(&outcome),
            Some((StatusKind::Expired, Some("expired"))),
            "{left_ms} ms left"
        );
    }
    let in_time = At {
        now: r.expires_at - chrono::Duration::milliseconds(1001),
        ..at(&r, WA)
    };
    assert_eq!(
        before_send(
            in_time,
            Ok(()),
            || Admission::Send,
            0,
            MARGIN,
            Failover::NONE
        ),
        None
    );
}

#[test]
fn an_open_circuit_falls_back_without_sending() {
    let r = request(&[WA, SMS], 300);
    let outcome = done(
        before_send(
            at(&r, WA),
            Ok(()),
            || Admission::Refuse,
            0,
            MARGIN,
            Failover::NONE,
        )
        .unwrap(),
    );
    assert_eq!(fallback_to(&outcome), Some((SMS, "circuit_open")));
}

#[test]
fn a_retry_due_after_the_deadline_is_not_sent() {
    let r = request(&[WA, SMS], 300);
    let late = At {
        now: r.expires_at,
        ..at(&r, WA)
    };
    let outcome =
        done(before_send(late, Ok(()), || Admission::Send, 2, MARGIN, Failover::NONE).unwrap());
    assert_eq!(
        outcome,
        Outcome::Report {
            kind: StatusKind::Expired,
            tries: 2,
            error: Some(expired_error()),
        }
    );
}

#[test]
fn an_accepted_send_without_confirmation_is_sent_with_no_pending_record() {
    let r = request(&[WA, SMS], 300);
    let next = after(&r, Ok("wamid.1".into()), Duration::from_secs(60));
    assert_eq!(
        next,
        Next::Done(Outcome::Accepted {
            provider_message_id: "wamid.1".into(),
            tries: 1,
            pending: None,
        })
    );
}

#[test]
fn with_confirmation_an_accepted_send_arms_a_fallback_when_a_channel_and_time_are_left() {
    let confirmation = ConfirmationConfig::default();
    for (channels, ttl, armed) in [
        (&[WA, SMS][..], 300, true),
        (&[WA][..], 300, false),    // no channel left
        (&[WA, SMS][..], 5, false), // less than the fallback's time left
    ] {
        let r = request(channels, ttl);
        let answer = Ok("wamid.1".to_string());
        let next = after_send(
            at(&r, WA),
            answer,
            &mut schedule(1),
            Duration::from_secs(60),
            Some(&confirmation),
            Failover::NONE,
        );
        let Next::Done(Outcome::Accepted {
            pending: Some(p), ..
        }) = next
        else {
            panic!("{next:?}");
        };
        let state = if armed {
            ConfirmationState::Awaiting
        } else {
            ConfirmationState::ReportOnly
        };
        assert_eq!(
            (p.state, p.confirm_by.is_some()),
            (state, armed),
            "{channels:?} {ttl}"
        );
        if let Some(by) = p.confirm_by {
            assert!(by <= r.expires_at - chrono::Duration::seconds(10));
        }
    }
}

#[test]
fn a_send_accepted_without_a_readable_id_is_sent_and_arms_no_fallback() {
    // The provider took it (2xx): it goes out. Its receipts cannot be matched, so a timeout
    // must not hand the code to another channel as if it never arrived.
    let r = request(&[WA, SMS], 300);
    let next = after_send(
        at(&r, WA),
        Ok(crate::channel::UNKNOWN_MESSAGE_ID.to_string()),
        &mut schedule(1),
        Duration::from_secs(60),
        Some(&ConfirmationConfig::default()),
        Failover::NONE,
    );
    assert!(
        matches!(next, Next::Done(Outcome::Accepted { pending: None, .. })),
        "{next:?}"
    );
}

#[test]
fn a_transient_failure_is_retried_while_time_allows() {
    let r = request(&[WA, SMS], 300);
    let next = after(
        &r,
        Err(failure(ErrorClass::Transient, "http_503")),
        Duration::from_secs(60),
    );
    assert!(matches!(next, Next::RetryIn(_)), "{next:?}");
}

#[test]
fn a_transient_failure_with_no_time_for_a_retry_falls_back() {
    let r = request(&[WA, SMS], 300);
    let next = after(
        &r,
        Err(failure(ErrorClass::Transient, "http_503")),
        Duration::ZERO,
    );
    let outcome = done(next);
    assert_eq!(fallback_to(&outcome), Some((SMS, "http_503")));
}

#[test]
fn a_transient_failure_past_the_retry_budget_falls_back() {
    let r = request(&[WA, SMS], 300);
    let max = RetryConfig::default().max_tries;
    let next = after_send(
        at(&r, WA),
        Err(failure(ErrorClass::Transient, "timeout")),
        &mut schedule(max),
        Duration::from_secs(600),
        None,
        Failover::NONE,
    );
    let outcome = done(next);
    assert_eq!(fallback_to(&outcome), Some((SMS, "timeout")));
}

#[test]
fn a_recipient_error_falls_back_at_once_in_the_users_order() {
    let r = request(&[WA, SMS], 300);
    let next = after(
        &r,
        Err(failure(ErrorClass::Recipient, "131026")),
        Duration::from_secs(60),
    );
    let outcome = done(next);
    assert_eq!(fallback_to(&outcome), Some((SMS, "131026")));
    let Outcome::FallBack { next, tries, .. } = outcome else {
        unreachable!()
    };
    assert_eq!(tries, 1);
    assert_eq!(next.tried_channels, vec![WA]);
    assert_eq!(next.expires_at, r.expires_at, "the deadline travels");
    assert_eq!(next.request_id, r.request_id, "the id travels");
}

#[test]
fn a_channel_error_falls_back() {
    let r = request(&[WA, SMS], 300);
    let next = after(
        &r,
        Err(failure(ErrorClass::ChannelBroken, "190")),
        Duration::from_secs(60),
    );
    let outcome = done(next);
    assert_eq!(fallback_to(&outcome), Some((SMS, "190")));
}

#[test]
fn on_the_last_channel_a_stop_fails_the_request() {
    let r = request(&[WA], 300);
    let next = after(
        &r,
        Err(failure(ErrorClass::Recipient, "131026")),
        Duration::from_secs(60),
    );
    let outcome = done(next);
    assert_eq!(
        reported(&outcome),
        Some((StatusKind::Failed, Some("131026")))
    );
}

#[test]
fn a_stop_after_the_deadline_is_expired_not_a_fallback() {
    let r = request(&[WA, SMS], 300);
    let error = error_of(failure(ErrorClass::Recipient, "131026"));
    let outcome = stop(&r, r.expires_at, error, 1);
    assert_eq!(
        reported(&outcome),
        Some((StatusKind::Expired, Some("131026")))
    );
}

#[test]
fn a_payload_the_provider_refuses_falls_back_and_is_never_dead_lettered() {
    let r = request(&[WA, SMS], 300);
    // Meta's 100: "unsupported or misspelled parameter" in our request.
    let class = otp_events::provider_errors::WHATSAPP.class_of(100).unwrap();
    let next = after(&r, Err(failure(class, "100")), Duration::from_secs(60));
    let outcome = done(next);
    assert_eq!(fallback_to(&outcome), Some((SMS, "100")));
}

#[test]
fn throttling_tries_again_after_the_limits_without_spending_a_try() {
    let r = request(&[WA, SMS], 300);
    let max = RetryConfig::default().max_tries;
    // The next-to-last try of the budget is answered "throttled"...
    let mut s = schedule(max - 2);
    s.record_try();
    let next = after_send(
        at(&r, WA),
        Err(failure(ErrorClass::Throttled, "130429")),
        &mut s,
        Duration::from_secs(60),
        None,
        Failover::NONE,
    );
    assert_eq!(next, Next::Again(Attempt::Retry));
    // ...so a transient failure of the last send after it still has a retry: the throttled
    // send did not count.
    s.record_try();
    let next = after_send(
        at(&r, WA),
        Err(failure(ErrorClass::Transient, "http_503")),
        &mut s,
        Duration::from_secs(60),
        None,
        Failover::NONE,
    );
    assert!(matches!(next, Next::RetryIn(_)), "{next:?}");
}

#[test]
fn the_pair_limit_tries_again_through_the_recipients_window() {
    let r = request(&[WA, SMS], 300);
    let next = after(
        &r,
        Err(failure(ErrorClass::PairLimited, "131056")),
        Duration::from_secs(60),
    );
    assert_eq!(next, Next::Again(Attempt::AfterPairLimit));
}

#[test]
fn rate_windows_are_tried_again_a_bounded_number_of_times_then_fall_back() {
    let r = request(&[WA, SMS], 300);
    let mut s = schedule(1);
    for _ in 0..RetryConfig::default().max_requeues {
        assert!(s.requeue());
    }
    let next = after_send(
        at(&r, WA),
        Err(failure(ErrorClass::Throttled, "130429")),
        &mut s,
        Duration::from_secs(60),
        None,
        Failover::NONE,
    );
    assert_eq!(fallback_to(&done(next)), Some((SMS, "130429")));
}

// ------------------------------------------------------------ failover inside the channel

const ANOTHER: Failover = Failover {
    next: true,
    several: true,
    ambiguous: false,
};

fn next_provider(next: Next) -> String {
    match next {
        Next::OtherProvider(error) => error.code,
        other => panic!("not a move to the next provider: {other:?}"),
    }
}

/// A provider's broken account or route, its throttling, a refusal answered with an error
/// (nothing sent), a connection that never opened: the next provider, at once, inside the
/// channel.
#[test]
fn what_proves_nothing_was_sent_moves_to_the_next_provider() {
    let r = request(&[SMS, WA], 300);
    let left = Duration::from_secs(60);
    for (class, code) in [
        (ErrorClass::ChannelBroken, "20003"),
        (ErrorClass::RouteBroken, "21408"),
        (ErrorClass::Throttled, "20429"),
        (ErrorClass::Transient, "http_503"),
        (ErrorClass::Transient, "connect"),
    ] {
        let next = after_send(
            at(&r, SMS),
            Err(failure(class, code)),
            &mut schedule(1),
            left,
            None,
            ANOTHER,
        );
        assert_eq!(next_provider(next), code, "{class:?}");
    }
}

/// No answer: the send may have gone out. The same provider retries it, unless the operator
/// allows a resend elsewhere.
#[test]
fn an_ambiguous_failure_stays_on_its_provider_unless_allowed() {
    let r = request(&[SMS, WA], 300);
    let left = Duration::from_secs(60);
    let timeout = SendFailure {
        nothing_sent: false,
        ..failure(ErrorClass::Transient, "timeout")
    };
    let next = after_send(
        at(&r, SMS),
        Err(timeout.clone()),
        &mut schedule(1),
        left,
        None,
        ANOTHER,
    );
    assert!(matches!(next, Next::RetryIn(_)), "{next:?}");
    let allowed = Failover {
        ambiguous: true,
        ..ANOTHER
    };
    let next = after_send(
        at(&r, SMS),
        Err(timeout),
        &mut schedule(1),
        left,
        None,
        allowed,
    );
    assert_eq!(next_provider(next), "timeout");
}

/// Every provider of the route tried, a transient failure that sent nothing: the route again
/// after a backoff, from its first provider (one that throttled may take it now); one that
/// may have been sent stays on its provider.
#[test]
fn with_the_route_tried_a_failure_that_sent_nothing_goes_round_again() {
    let r = request(&[SMS, WA], 300);
    let last = Failover {
        next: false,
        ..ANOTHER
    };
    let left = Duration::from_secs(60);
    let refused = failure(ErrorClass::Transient, "connect");
    let next = after_send(
        at(&r, SMS),
        Err(refused),
        &mut schedule(2),
        left,
        None,
        last,
    );
    assert!(matches!(next, Next::RetryRouteIn(_)), "{next:?}");
    let timeout = SendFailure {
        nothing_sent: false,
        ..failure(ErrorClass::Transient, "timeout")
    };
    let next = after_send(
        at(&r, SMS),
        Err(timeout),
        &mut schedule(2),
        left,
        None,
        last,
    );
    assert!(matches!(next, Next::RetryIn(_)), "{next:?}");
}

/// A recipient's refusal holds on every provider: the user's next channel.
#[test]
fn a_recipients_refusal_ends_the_channel_whatever_providers_are_left() {
    let r = request(&[SMS, WA], 300);
    let next = after_send(
        at(&r, SMS),
        Err(failure(ErrorClass::Recipient, "21211")),
        &mut schedule(1),
        Duration::from_secs(60),
        None,
        ANOTHER,
    );
    assert_eq!(fallback_to(&done(next)), Some((WA, "21211")));
}

/// The last provider of a route falls back as one provider always did; the retry budget and
/// the time left bound the moves too.
#[test]
fn without_another_provider_or_budget_the_channel_ends() {
    let r = request(&[SMS, WA], 300);
    let broken = || Err(failure(ErrorClass::RouteBroken, "21408"));
    let left = Duration::from_secs(60);
    let next = after_send(
        at(&r, SMS),
        broken(),
        &mut schedule(1),
        left,
        None,
        Failover::NONE,
    );
    assert_eq!(fallback_to(&done(next)), Some((WA, "21408")));
    let spent = RetryConfig::default().max_tries;
    let next = after_send(
        at(&r, SMS),
        broken(),
        &mut schedule(spent),
        left,
        None,
        ANOTHER,
    );
    assert_eq!(fallback_to(&done(next)), Some((WA, "21408")));
    let next = after_send(
        at(&r, SMS),
        broken(),
        &mut schedule(1),
        Duration::ZERO,
        None,
        ANOTHER,
    );
    assert_eq!(fallback_to(&done(next)), Some((WA, "21408")));
}

/// An open circuit, or a sender rate that cannot serve in time, on one provider: the next one.
#[test]
fn a_refusal_before_the_send_moves_to_the_next_provider() {
    let r = request(&[SMS, WA], 300);
    let next = before_send(
        at(&r, SMS),
        Ok(()),
        || Admission::Refuse,
        0,
        MARGIN,
        ANOTHER,
    );
    assert_eq!(next_provider(next.unwrap()), "circuit_open");
    let too_long = Err(Limited {
        rule: "sender_rate",
        category: ErrorCategory::RateLimited,
        waited_too_long: true,
    });
    let next = before_send(
        at(&r, SMS),
        too_long,
        || Admission::Send,
        0,
        MARGIN,
        ANOTHER,
    );
    assert_eq!(next_provider(next.unwrap()), "sender_rate");
}
