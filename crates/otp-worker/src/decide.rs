//! The worker's decisions, as pure functions of a request, the clock and the guards' answers.
//!
//! Nothing here waits, sends or writes. [`crate::pipeline`] asks the guards (duplicate memory,
//! limits, circuit) and the provider, hands their answers to these functions, and settles the
//! [`Outcome`] they return: the one place where a decision is written to Kafka. So every rule
//! of the data path (expiry, duplicates, error classes, the retry budget against the deadline,
//! the fallback order, the last channel, confirmation) is tested here without a broker.

use crate::circuit::Admission;
use crate::config::ConfirmationConfig;
use crate::dedup::Sight;
use crate::limits::{Attempt, Limited};
use crate::retry::RetrySchedule;
use chrono::{DateTime, Utc};
use otp_events::provider_errors::{ErrorClass, SendFailure};
use otp_events::{
    Channel, CodeRequest, ConfirmationState, ErrorCategory, PendingConfirmation, Provider, Rules,
    StatusError, StatusKind, PENDING_CONFIRMATION_SCHEMA,
};
use std::time::Duration;

/// How a message's life on this worker ends: what [`crate::pipeline`] settles.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The event fails our own validation: dead-letter it (original bytes, `reason`), then
    /// report `rejected` with `error`. A provider's answer never leads here.
    Reject {
        reason: String,
        error: StatusError,
        tries: u32,
    },
    /// Report this status, and nothing else: `expired`, `duplicate`, `failed`.
    Report {
        kind: StatusKind,
        tries: u32,
        error: Option<StatusError>,
    },
    /// The provider took it. With a pending confirmation, record it first; then report
    /// `accepted` (a fallback is armed) or `sent`.
    Accepted {
        provider_message_id: String,
        tries: u32,
        pending: Option<Box<PendingConfirmation>>,
    },
    /// Hand `next` to its channel's topic, then report `fallback`.
    FallBack {
        next: Box<CodeRequest>,
        tries: u32,
        error: StatusError,
    },
}

/// A request on this worker's channel, at a moment: what every decision starts from.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub request: &'a CodeRequest,
    pub channel: Channel,
    /// The provider of the try, once one is chosen.
    pub provider: Option<Provider>,
    pub now: DateTime<Utc>,
}

/// What to do after one try at the provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// A transient failure, and time for another try after this wait, on the same provider.
    RetryIn(Duration),
    /// A transient failure that sent nothing, every provider of the route tried: after this
    /// wait, go through the route again from its first provider (a throttled or briefly
    /// failing provider may take it now).
    RetryRouteIn(Duration),
    /// A rate window was hit (the fleet's sender rate, or the recipient's pair window): pass
    /// the limits again as `attempt`, then send, without spending one of the request's tries.
    Again(Attempt),
    /// This provider cannot take it now and nothing was sent: go on at once to the route's
    /// next provider, inside the channel (the user's fallback is not spent). The error is
    /// what the request ends with should no provider take it.
    OtherProvider(StatusError),
    Done(Outcome),
}

/// Whether a failed or refused send may move to another provider of the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failover {
    /// Another provider of the route is left to try.
    pub next: bool,
    /// The route has more than one provider.
    pub several: bool,
    /// The operator allows a send without an answer (a timeout) to go to the next provider
    /// (`routes.failover_ambiguous`): the code may then arrive twice.
    pub ambiguous: bool,
}

#[cfg(test)]
impl Failover {
    /// One provider, or none left.
    pub const NONE: Failover = Failover {
        next: false,
        several: false,
        ambiguous: false,
    };
}

/// Before anything is sent: the request must be for this worker's channel, alive, and not
/// seen before (`seen` looks without claiming the id: it is claimed by [`admit`], once the
/// abuse rules let the request through). `None`: go on to [`admit`].
pub fn guard(at: At<'_>, rules: &Rules, seen: impl FnOnce() -> Sight) -> Option<Outcome> {
    let At {
        request,
        channel,
        now,
        ..
    } = at;
    // Server time: before the duplicate memory, which keeps an id until its expiry.
    if let Err(e) = rules.check_clock(request, now) {
        let reason = e.to_string();
        return Some(Outcome::Reject {
            error: invalid_event(&reason),
            reason,
            tries: 0,
        });
    }
    if request.current_channel() != Some(channel) {
        let reason = "tried_channels: the request's current channel is not this topic's channel";
        return Some(Outcome::Reject {
            reason: reason.to_string(),
            error: invalid_event(reason),
            tries: 0,
        });
    }
    if now >= request.expires_at {
        return Some(report(StatusKind::Expired, 0, None));
    }
    sighted(seen())
}

/// After the guards: the abuse rules' answer for the request, then the claim of its id. The id
/// is claimed only once every rule let the request through, so a request that a rule refuses
/// (a front-run id to a blocked destination, say) never holds an id that the real request
/// needs. `claim` is asked only then. `None`: go on to the send.
pub fn admit(abuse: Result<(), Limited>, claim: impl FnOnce() -> Sight) -> Option<Outcome> {
    if let Err(limited) = abuse {
        // An abuse rule refused the request itself: no channel may send it.
        return Some(report(StatusKind::Failed, 0, Some(limit_error(&limited))));
    }
    sighted(claim())
}

/// What the duplicate memory's answer means for the request.
fn sighted(sight: Sight) -> Option<Outcome> {
    match sight {
        Sight::First => None,
        Sight::Again => Some(report(StatusKind::Duplicate, 0, None)),
        Sight::Conflict => {
            let reason = "request_id: already used by this app for a request asking for \
                          another number or code";
            Some(Outcome::Reject {
                reason: reason.to_string(),
                error: StatusError {
                    category: ErrorCategory::InvalidRequest,
                    code: "request_id_conflict".to_string(),
                    message: reason.to_string(),
                },
                tries: 0,
            })
        }
    }
}

fn limit_error(limited: &Limited) -> StatusError {
    StatusError {
        category: limited.category,
        code: limited.rule.to_string(),
        message: limited.to_string(),
    }
}

/// Before each try: the limits' answer, the clock and the circuits' admission. The circuit is
/// asked last, and only when the limits and the clock let the send go, since asking a
/// half-open circuit takes its one probe. A refusing circuit moves the send to the route's
/// next provider when `failover.next`. `None`: send.
///
/// No try starts with less than `cutoff` left before the code expires ([`send_cutoff`]): a
/// send started a moment before expiry reaches the provider after it. Such a request is
/// reported `expired` on the spot; another channel would have no more time.
pub fn before_send(
    at: At<'_>,
    limits: Result<(), Limited>,
    circuit: impl FnOnce() -> Admission,
    tries: u32,
    cutoff: chrono::Duration,
    failover: Failover,
) -> Option<Next> {
    let At {
        request,
        channel,
        now,
        ..
    } = at;
    let done = |outcome| Some(Next::Done(outcome));
    if let Err(limited) = limits {
        let error = limit_error(&limited);
        // A provider limit's wait was too long: another provider, or another channel, may
        // still make it. A rule that refused the request itself: no channel may send it.
        return if !limited.waited_too_long {
            done(report(StatusKind::Failed, tries, Some(error)))
        } else if failover.next {
            Some(Next::OtherProvider(error))
        } else {
            done(stop(request, now, error, tries))
        };
    }
    if now >= request.expires_at {
        return done(stop(request, now, expired_error(), tries));
    }
    if now >= request.expires_at - cutoff {
        let error = StatusError {
            category: ErrorCategory::Expired,
            code: "expired".to_string(),
            message: format!(
                "less than {} ms were left before the code expired; not sent",
                cutoff.num_milliseconds()
            ),
        };
        return done(report(StatusKind::Expired, tries, Some(error)));
    }
    if circuit() == Admission::Refuse {
        let error = StatusError {
            category: ErrorCategory::ChannelBroken,
            code: "circuit_open".to_string(),
            message: format!(
                "the {channel} provider is failing for this destination; its circuit is open"
            ),
        };
        if failover.next {
            return Some(Next::OtherProvider(error));
        }
        return done(stop(request, now, error, tries));
    }
    None
}

/// The least time a try needs left before expiry to start: a fifth of the retry safety margin
/// (1 s of the default 5 s). The margin itself is what retries leave to the next channel, so
/// the cutoff must be smaller: a fallback that comes when the margin is reached still goes.
pub fn send_cutoff(safety_margin: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(safety_margin / 5).unwrap_or_default()
}

/// After a try (recorded in `schedule`): accepted, moved to the route's next provider when
/// nothing was sent and the provider is the problem, retried while `time_left` (before the
/// latest useful start) and the retry budget allow, or stopped by the error's class.
///
/// The next provider is tried at once, not after a backoff, and without spending the user's
/// channel fallback: for a provider's broken account or route, its throttling, a refusal
/// with an error answer (nothing was sent), or a connection that never opened. A send with no
/// answer (a timeout) may have gone out: it is retried on the same provider unless
/// `failover.ambiguous`. A recipient's refusal is the recipient's on every provider: it ends
/// the channel.
pub fn after_send(
    at: At<'_>,
    answer: Result<String, SendFailure>,
    schedule: &mut RetrySchedule,
    time_left: Duration,
    confirmation: Option<&ConfirmationConfig>,
    failover: Failover,
) -> Next {
    let At {
        request,
        channel,
        provider,
        now,
    } = at;
    let tries = schedule.tries();
    let failure = match answer {
        Ok(provider_message_id) => {
            // Receipts cannot be tied to a send whose id is unknown: no confirmation is armed
            // for it (a timeout would send the code a second time).
            let known = provider_message_id != crate::channel::UNKNOWN_MESSAGE_ID;
            let pending = confirmation.filter(|_| known).map(|c| {
                let mut record = pending_record(request, channel, &provider_message_id, c, now);
                record.provider = provider;
                // A missing receipt is no evidence of failure on this provider: the window's
                // end makes the send final as `sent`; a failed receipt still falls back.
                record.timeout_is_final = !c.falls_back_without_receipt(provider);
                Box::new(record)
            });
            return Next::Done(Outcome::Accepted {
                provider_message_id,
                tries,
                pending,
            });
        }
        Err(failure) => failure,
    };
    let elsewhere = match failure.class {
        ErrorClass::ChannelBroken | ErrorClass::RouteBroken | ErrorClass::Throttled => true,
        ErrorClass::Transient => failure.nothing_sent || failover.ambiguous,
        ErrorClass::Recipient | ErrorClass::PairLimited => false,
    };
    // Within the retry budget and the time left, like any try.
    if failover.next && elsewhere && schedule.tries_left() && !time_left.is_zero() {
        return Next::OtherProvider(error_of(failure));
    }
    match failure.class {
        ErrorClass::Transient => match schedule.next_delay(time_left) {
            Some(delay) if failover.several && elsewhere => Next::RetryRouteIn(delay),
            Some(delay) => Next::RetryIn(delay),
            None => Next::Done(stop(request, now, error_of(failure), tries)),
        },
        // The limits wait, and refuse a wait past the deadline: that ends the channel.
        ErrorClass::Throttled if schedule.requeue() => Next::Again(Attempt::Retry),
        ErrorClass::PairLimited if schedule.requeue() => Next::Again(Attempt::AfterPairLimit),
        ErrorClass::Throttled
        | ErrorClass::PairLimited
        | ErrorClass::Recipient
        | ErrorClass::ChannelBroken
        | ErrorClass::RouteBroken => Next::Done(stop(request, now, error_of(failure), tries)),
    }
}

/// This channel is done with the request: past its deadline it expired; else it goes to the
/// next channel it allows, and with none left it failed.
pub fn stop(request: &CodeRequest, now: DateTime<Utc>, error: StatusError, tries: u32) -> Outcome {
    if now >= request.expires_at {
        return report(StatusKind::Expired, tries, Some(error));
    }
    match request.for_next_channel() {
        Some(next) => Outcome::FallBack {
            next: Box::new(next),
            tries,
            error,
        },
        None => report(StatusKind::Failed, tries, Some(error)),
    }
}

/// The pending confirmation of a send accepted at `now`: a fallback is armed when a channel is
/// left and the window can end `fallback_time` before the code expires.
pub fn pending_record(
    request: &CodeRequest,
    channel: Channel,
    provider_message_id: &str,
    confirmation: &ConfirmationConfig,
    now: DateTime<Utc>,
) -> PendingConfirmation {
    let window = chrono::Duration::from_std(confirmation.window).unwrap_or_default();
    let reserve = chrono::Duration::from_std(confirmation.fallback_time).unwrap_or_default();
    let confirm_by = (now + window).min(request.expires_at - reserve);
    let armed = request.next_channel().is_some() && confirm_by > now;
    PendingConfirmation {
        provider: None,
        schema: PENDING_CONFIRMATION_SCHEMA.to_string(),
        request: request.clone(),
        channel,
        provider_message_id: provider_message_id.to_string(),
        accepted_at: now,
        confirm_by: armed.then_some(confirm_by),
        timeout_is_final: false,
        state: if armed {
            ConfirmationState::Awaiting
        } else {
            ConfirmationState::ReportOnly
        },
        reported: Vec::new(),
    }
}

/// The status an error on an event (not on its delivery) is reported with.
pub fn invalid_event(reason: &str) -> StatusError {
    StatusError {
        category: ErrorCategory::InvalidRequest,
        code: "invalid_event".to_string(),
        message: reason.to_string(),
    }
}

fn report(kind: StatusKind, tries: u32, error: Option<StatusError>) -> Outcome {
    Outcome::Report { kind, tries, error }
}

fn error_of(failure: SendFailure) -> StatusError {
    StatusError {
        category: failure.class.category(),
        code: failure.code,
        message: failure.message,
    }
}

fn expired_error() -> StatusError {
    StatusError {
        category: ErrorCategory::Expired,
        code: "expired".to_string(),
        message: "the code expired before it could be sent".to_string(),
    }
}

#[cfg(test)]
mod tests;
