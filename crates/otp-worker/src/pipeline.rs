//! The data path of one message, top to bottom:
//! decode → guard (expiry, duplicate, limits) → send → classify → report / fall back / retry.
//! The runtime ([`crate::runtime`]) does the consuming before and the committing after.

use crate::channel::{ChannelClient, ErrorClass, SendFailure, SendOutcome};
use crate::circuit::{Admission, Circuit, Verdict};
use crate::config::ConfirmationConfig;
use crate::dedup::Dedup;
use crate::limits::{Attempt, Limiter, Subject};
use crate::report::Reporter;
use crate::retry::{RetryConfig, RetrySchedule};
use chrono::Utc;
use otp_events::{
    decode_code_request, is_valid_request_id, number_range, phone_facts, Channel, CodeRequest,
    ConfirmationState, DeliveryStatus, ErrorCategory, PendingConfirmation, PhoneHasher, Rules,
    StatusError, StatusKind, HEADER_REQUEST_ID, PENDING_CONFIRMATION_SCHEMA,
};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use std::time::{Duration, Instant};

/// Everything one message needs on its way through; shared by all in-flight tasks.
pub struct Pipeline<C> {
    pub client: C,
    pub limiter: Limiter,
    pub circuit: Circuit,
    pub dedup: Dedup,
    pub retry: RetryConfig,
    pub reporter: Reporter,
    pub rules: Rules,
    pub hasher: PhoneHasher,
    /// Receipt-driven confirmation of accepted sends; off when `None`.
    pub confirmation: Option<ConfirmationConfig>,
}

/// Why a channel stopped trying: decides between fallback and `failed`.
struct Stop {
    error: StatusError,
    tries: u32,
}

impl<C: ChannelClient> Pipeline<C> {
    /// Take one message from the request topic to its final status or its fallback. Returns
    /// once what it wrote was acknowledged: then the message is finished.
    pub async fn handle(&self, message: &OwnedMessage) {
        // decode
        let request = match decode_code_request(message.payload().unwrap_or_default(), &self.rules)
        {
            Ok(request) => request,
            Err(e) => {
                return self
                    .reject(message, None, &format!("invalid code request: {e}"))
                    .await
            }
        };
        if request.current_channel() != Some(self.client.channel()) {
            let reason =
                "tried_channels: the request's current channel is not this topic's channel";
            return self.reject(message, Some(&request), reason).await;
        }

        // Everything derived from the phone number, once: libphonenumber's parse is the
        // costliest step of a message.
        let subject = self.subject_of(&request);

        // guard: expiry, then duplicates
        let now = Utc::now();
        if now >= request.expires_at {
            return self
                .report(&request, &subject, StatusKind::Expired, 0, None, None)
                .await;
        }
        let source = (
            message.topic().to_string(),
            message.partition(),
            message.offset(),
        );
        if !self
            .dedup
            .first_sight(&request.request_id, source, request.expires_at, now)
        {
            return self
                .report(&request, &subject, StatusKind::Duplicate, 0, None, None)
                .await;
        }

        // send, retrying transient failures while time allows
        let stop = match self.send_with_retries(&request, &subject).await {
            Ok((provider_message_id, tries)) => {
                return self
                    .accepted(&request, &subject, provider_message_id, tries)
                    .await;
            }
            Err(SendEnd::Invalid(failure, tries)) => {
                let reason = format!(
                    "the provider refused the request as invalid ({}): {}",
                    failure.code, failure.message
                );
                return self
                    .reject_after_send(message, &request, &subject, failure, tries, &reason)
                    .await;
            }
            Err(SendEnd::Refused(stop)) => {
                let status = StatusKind::Failed;
                return self
                    .report(
                        &request,
                        &subject,
                        status,
                        stop.tries,
                        None,
                        Some(stop.error),
                    )
                    .await;
            }
            Err(SendEnd::Stop(stop)) => stop,
        };

        // fall back, or fail
        self.fall_back_or_fail(&request, &subject, stop).await
    }

    /// The provider took it. Without confirmation that is the final word (`sent`). With it,
    /// the send is recorded as pending first, so the tracker reports its receipts; when a
    /// channel is left and time allows, a fallback is armed and the status is `accepted`
    /// (not final: the tracker ends the request's life).
    async fn accepted(
        &self,
        request: &CodeRequest,
        subject: &Subject,
        provider_message_id: String,
        tries: u32,
    ) {
        let mut kind = StatusKind::Sent;
        if let Some(confirmation) = &self.confirmation {
            let record = pending_record(
                request,
                self.client.channel(),
                &provider_message_id,
                confirmation,
            );
            if record.state == ConfirmationState::Awaiting {
                kind = StatusKind::Accepted;
            }
            self.reporter.pending(&record).await;
        }
        let channel = self.client.channel();
        let id = Some(self.hasher.public_message_id(channel, &provider_message_id));
        self.report(request, subject, kind, tries, id, None).await
    }

    fn subject_of(&self, request: &CodeRequest) -> Subject {
        let facts = phone_facts(&request.phone);
        Subject {
            phone_key: self.hasher.hash(&request.phone),
            prefix_key: self.hasher.hash(number_range(&request.phone)),
            country: facts.country,
            premium: facts.premium,
        }
    }

    async fn send_with_retries(
        &self,
        request: &CodeRequest,
        subject: &Subject,
    ) -> Result<(String, u32), SendEnd> {
        let latest = latest_useful(request, self.retry.safety_margin);
        let mut schedule = RetrySchedule::new(&self.retry);
        let channel = self.client.channel().as_str();
        loop {
            let attempt = match (schedule.tries(), request.attempt_number()) {
                (0, 1) => Attempt::First,
                (0, _) => Attempt::Fallback,
                _ => Attempt::Retry,
            };
            if let Err(limited) = self.limiter.acquire(subject, latest, attempt).await {
                let stop = Stop {
                    error: StatusError {
                        category: limited.category,
                        code: limited.rule.to_string(),
                        message: limited.to_string(),
                    },
                    tries: schedule.tries(),
                };
                // A provider limit's wait was too long: another channel may still make it.
                // An abuse rule refused the request itself: no channel may send it.
                return Err(if limited.waited_too_long {
                    SendEnd::Stop(stop)
                } else {
                    SendEnd::Refused(stop)
                });
            }
            if Utc::now() >= request.expires_at {
                return Err(SendEnd::Stop(Stop {
                    error: expired_error(),
                    tries: schedule.tries(),
                }));
            }
            if self.circuit.admit() == Admission::Refuse {
                return Err(SendEnd::Stop(Stop {
                    error: StatusError {
                        category: ErrorCategory::ChannelBroken,
                        code: "circuit_open".to_string(),
                        message: format!("the {channel} channel is failing; its circuit is open"),
                    },
                    tries: schedule.tries(),
                }));
            }
            let tries = schedule.record_try();
            let started = Instant::now();
            let outcome = self.client.send(request, Utc::now()).await;
            metrics::histogram!("otp_send_duration_seconds", "channel" => channel)
                .record(started.elapsed().as_secs_f64());
            let failure = match outcome {
                SendOutcome::Accepted {
                    provider_message_id,
                } => {
                    self.circuit.record(Verdict::Healthy);
                    return Ok((provider_message_id, tries));
                }
                SendOutcome::Failed(failure) => failure,
            };
            self.circuit.record(match failure.class {
                ErrorClass::ChannelBroken => Verdict::ChannelBroken,
                ErrorClass::Transient => Verdict::Unknown,
                ErrorClass::Recipient | ErrorClass::InvalidRequest => Verdict::Healthy,
            });
            metrics::counter!("otp_send_errors_total", "channel" => channel, "class" => failure.class.as_str())
                .increment(1);
            tracing::info!(
                request_id = %request.request_id, channel, tries,
                class = failure.class.as_str(), code = %failure.code, "send failed"
            );
            match failure.class {
                ErrorClass::Transient => {
                    let left = latest.saturating_duration_since(Instant::now());
                    match schedule.next_delay(left) {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => return Err(SendEnd::Stop(stop_from(failure, tries))),
                    }
                }
                ErrorClass::InvalidRequest => return Err(SendEnd::Invalid(failure, tries)),
                ErrorClass::Recipient | ErrorClass::ChannelBroken => {
                    return Err(SendEnd::Stop(stop_from(failure, tries)))
                }
            }
        }
    }

    async fn fall_back_or_fail(&self, request: &CodeRequest, subject: &Subject, stop: Stop) {
        if Utc::now() >= request.expires_at {
            let status = StatusKind::Expired;
            return self
                .report(request, subject, status, stop.tries, None, Some(stop.error))
                .await;
        }
        let Some(next) = request.for_next_channel() else {
            return self
                .report(
                    request,
                    subject,
                    StatusKind::Failed,
                    stop.tries,
                    None,
                    Some(stop.error),
                )
                .await;
        };
        match self.reporter.fallback(&next).await {
            Ok(()) => {
                let mut status = self.status(
                    request,
                    subject,
                    StatusKind::Fallback,
                    stop.tries,
                    Some(stop.error),
                );
                status.next_channel = next.current_channel();
                self.reporter.status(&status).await;
            }
            Err(e) => {
                let error = StatusError {
                    category: ErrorCategory::Internal,
                    code: "fallback_refused".to_string(),
                    message: e.to_string(),
                };
                self.report(
                    request,
                    subject,
                    StatusKind::Failed,
                    stop.tries,
                    None,
                    Some(error),
                )
                .await
            }
        }
    }

    fn status(
        &self,
        request: &CodeRequest,
        subject: &Subject,
        kind: StatusKind,
        tries: u32,
        error: Option<StatusError>,
    ) -> DeliveryStatus {
        let mut status = DeliveryStatus::about_recipient(
            request,
            kind,
            self.client.channel(),
            subject.phone_key.clone(),
            subject.country.clone(),
        );
        status.tries = (tries > 0).then_some(tries);
        status.error = error;
        status
    }

    async fn report(
        &self,
        request: &CodeRequest,
        subject: &Subject,
        kind: StatusKind,
        tries: u32,
        provider_message_id: Option<String>,
        error: Option<StatusError>,
    ) {
        let mut status = self.status(request, subject, kind, tries, error);
        status.provider_message_id = provider_message_id;
        if kind.is_final() {
            metrics::histogram!(
                "otp_delivery_latency_seconds",
                "channel" => self.client.channel().as_str(),
                "status" => kind.as_str()
            )
            .record(status.latency_ms.unwrap_or(0) as f64 / 1000.0);
        }
        tracing::info!(
            request_id = %request.request_id,
            channel = self.client.channel().as_str(),
            status = kind.as_str(),
            phone_hash = status.phone_hash.as_deref().unwrap_or(""),
            "status"
        );
        self.reporter.status(&status).await;
    }

    /// An event we cannot deliver as it is: dead-letter it, and tell analysts when we can
    /// name its request.
    pub(crate) async fn reject(
        &self,
        message: &OwnedMessage,
        request: Option<&CodeRequest>,
        reason: &str,
    ) {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "event rejected to the dead-letter topic"
        );
        self.reporter.dead_letter(message, reason).await;
        let error = StatusError {
            category: ErrorCategory::InvalidRequest,
            code: "invalid_event".to_string(),
            message: reason.to_string(),
        };
        let status = match request {
            Some(request) => {
                let subject = self.subject_of(request);
                self.status(request, &subject, StatusKind::Rejected, 0, Some(error))
            }
            None => match readable_request_id(message) {
                Some(id) => DeliveryStatus::rejected(id, self.client.channel(), error),
                None => return,
            },
        };
        self.reporter.status(&status).await;
    }

    async fn reject_after_send(
        &self,
        message: &OwnedMessage,
        request: &CodeRequest,
        subject: &Subject,
        failure: SendFailure,
        tries: u32,
        reason: &str,
    ) {
        self.reporter.dead_letter(message, reason).await;
        let error = StatusError {
            category: ErrorCategory::InvalidRequest,
            code: failure.code,
            message: failure.message,
        };
        self.report(
            request,
            subject,
            StatusKind::Rejected,
            tries,
            None,
            Some(error),
        )
        .await;
    }
}

enum SendEnd {
    /// This channel is done with it: fall back or fail.
    Stop(Stop),
    /// Refused by an abuse rule: fail, whatever channels are left.
    Refused(Stop),
    Invalid(SendFailure, u32),
}

fn stop_from(failure: SendFailure, tries: u32) -> Stop {
    Stop {
        error: StatusError {
            category: failure.class.category(),
            code: failure.code,
            message: failure.message,
        },
        tries,
    }
}

fn expired_error() -> StatusError {
    StatusError {
        category: ErrorCategory::Expired,
        code: "expired".to_string(),
        message: "the code expired before it could be sent".to_string(),
    }
}

/// The pending confirmation of a send accepted now: a fallback is armed when a channel is
/// left and the window can end `fallback_time` before the code expires.
fn pending_record(
    request: &CodeRequest,
    channel: Channel,
    provider_message_id: &str,
    confirmation: &ConfirmationConfig,
) -> PendingConfirmation {
    let now = Utc::now();
    let window = chrono::Duration::from_std(confirmation.window).unwrap_or_default();
    let reserve = chrono::Duration::from_std(confirmation.fallback_time).unwrap_or_default();
    let confirm_by = (now + window).min(request.expires_at - reserve);
    let armed = request.next_channel().is_some() && confirm_by > now;
    PendingConfirmation {
        schema: PENDING_CONFIRMATION_SCHEMA.to_string(),
        request: request.clone(),
        channel,
        provider_message_id: provider_message_id.to_string(),
        accepted_at: now,
        confirm_by: armed.then_some(confirm_by),
        state: if armed {
            ConfirmationState::Awaiting
        } else {
            ConfirmationState::ReportOnly
        },
        reported: Vec::new(),
    }
}

/// The last instant a send or a retry is still worth starting: `expires_at` minus the margin.
fn latest_useful(request: &CodeRequest, margin: Duration) -> Instant {
    let left = (request.expires_at - Utc::now())
        .to_std()
        .unwrap_or_default()
        .saturating_sub(margin);
    Instant::now() + left
}

/// The request_id of an event that failed validation, when it can be read safely: from the
/// header, else from the JSON, and only if it looks like an id (it is echoed to analysts).
fn readable_request_id(message: &OwnedMessage) -> Option<String> {
    let from_header = message.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == HEADER_REQUEST_ID)
            .and_then(|h| std::str::from_utf8(h.value?).ok().map(str::to_owned))
    });
    let from_json = || {
        let v: serde_json::Value = serde_json::from_slice(message.payload()?).ok()?;
        v.get("request_id")?.as_str().map(str::to_owned)
    };
    from_header
        .or_else(from_json)
        .filter(|id| is_valid_request_id(id))
}
