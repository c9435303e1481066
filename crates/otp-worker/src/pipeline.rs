//! The data path of one message, top to bottom: decode → guard (clock, channel, expiry,
//! duplicate) → abuse rules → claim the id → provider limits → send → classify → retry, until
//! an [`Outcome`] is decided (or the partition is let go before a send starts: the message is
//! then abandoned to its next owner, see [`crate::letting_go`]); then [`Pipeline::settle`]
//! writes it (report / fall back / dead letter) in order, each write acknowledged. The decisions themselves are the pure functions
//! of [`crate::decide`]; this module asks the guards and the provider and passes their answers
//! on. The runtime ([`crate::runtime`]) does the consuming before and the committing after.

use crate::channel::{ChannelClient, SendOutcome};
use crate::circuit::Verdict;
use crate::config::ConfirmationConfig;
use crate::decide::{self, At, Failover, Next, Outcome};
use crate::fleet_counts::FleetCounts;
use crate::guards::Guards;
use crate::letting_go::{Handled, Stop};
use crate::limits::{Attempt, Subject};
use crate::progress::{Progress, Reached};
use crate::retry::{RetryConfig, RetrySchedule};
use chrono::Utc;
use otp_events::provider_errors::ErrorClass;
use otp_events::{
    confirmation_key, decode_code_request, is_valid_request_id, CodeRequest, ConfirmationState,
    DeliveryStatus, FallbackKey, MessageIndex, Provider, StatusError, StatusKind,
    HEADER_FALLBACK_PROOF, HEADER_REQUEST_ID, MESSAGE_INDEX_SCHEMA,
};
use otp_kafka::writer::KafkaWriter;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything one message needs on its way through; shared by all in-flight tasks.
pub struct Pipeline<C> {
    pub client: C,
    /// The in-memory checks before and around each send.
    pub guards: Guards,
    pub retry: RetryConfig,
    pub writer: Arc<KafkaWriter>,
    /// Checks that a request's fallback state was written by a worker or the tracker; without
    /// it (or without a valid proof) a request is a first try.
    pub fallback_key: Option<FallbackKey>,
    /// Shares this worker's abuse admissions with the fleet; off when `None`.
    pub fleet_counts: Option<FleetCounts>,
    /// Receipt-driven confirmation of accepted sends; off when `None`.
    pub confirmation: Option<ConfirmationConfig>,
}

impl<C: ChannelClient> Pipeline<C> {
    /// Take one message from the request topic to its final status or its fallback. Returns
    /// once what it wrote was acknowledged (then the message is finished), or once its
    /// partition was let go before its send started (`stop`: then it is abandoned, and its
    /// next owner delivers it). `progress` tells the runtime how far it got, should it panic.
    pub async fn handle(
        &self,
        message: &OwnedMessage,
        stop: &Stop,
        progress: &Progress,
    ) -> Handled {
        let request =
            match decode_code_request(message.payload().unwrap_or_default(), &self.guards.rules) {
                Ok(request) => request,
                Err(e) => {
                    stop.pass(); // no slot to reserve: the partition's line goes on
                    let reason = format!("invalid code request: {e}");
                    self.reject_undecodable(message, &reason).await;
                    progress.reach(Reached::Ended);
                    return Handled::Finished;
                }
            };
        tracing::debug!(
            request_id = %request.request_id,
            partition = message.partition(),
            offset = message.offset(),
            "handling"
        );
        // Everything derived from the phone number, once: libphonenumber's parse is the
        // costliest step of a message.
        let subject = self.guards.subject_of(&request);
        let fallback = self.proven_fallback(message, &request);
        // With the provider the outcome happened on (none when a rule ended it before any).
        let decided = self
            .decide(message, &request, &subject, fallback, stop, progress)
            .await;
        let Some((outcome, through)) = decided else {
            let channel = self.client.channel().as_str();
            metrics::counter!("otp_abandoned_total", "channel" => channel).increment(1);
            tracing::debug!(request_id = %request.request_id, "partition let go before the send: left to its next owner");
            return Handled::Abandoned;
        };
        self.settle(message, &request, &subject, outcome, through, progress)
            .await;
        progress.reach(Reached::Ended);
        Handled::Finished
    }

    /// Whether the request is a fallback a worker or the tracker wrote: it claims fallback
    /// state and carries that state's proof. A claim without a proof is counted, logged, and
    /// treated as a first try, so that every abuse rule applies to it.
    fn proven_fallback(&self, message: &OwnedMessage, request: &CodeRequest) -> bool {
        if !FallbackKey::claims_fallback(request) {
            return false;
        }
        let proof = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == HEADER_FALLBACK_PROOF)
                .and_then(|h| std::str::from_utf8(h.value?).ok())
        });
        let proven = match (&self.fallback_key, proof) {
            (Some(key), Some(proof)) => key.verify(request, proof),
            _ => false,
        };
        if !proven {
            let channel = self.client.channel().as_str();
            metrics::counter!("otp_fallback_unproven_total", "channel" => channel).increment(1);
            tracing::warn!(
                request_id = %request.request_id, channel,
                "fallback state without a valid proof: treated as a first try"
            );
        }
        proven
    }

    /// Guard, then send and retry while the decisions say so; `None` when the partition was
    /// let go before a send started (a send under way is never cut off).
    async fn decide(
        &self,
        message: &OwnedMessage,
        request: &CodeRequest,
        subject: &Subject,
        fallback: bool,
        stop: &Stop,
        progress: &Progress,
    ) -> Option<(Outcome, Option<Provider>)> {
        let channel = self.client.channel();
        let at = |now| At {
            request,
            channel,
            provider: None,
            now,
        };
        let at_provider_of = |provider, now| At {
            provider: Some(provider),
            ..at(now)
        };
        let source = (
            message.topic().to_string(),
            message.partition(),
            message.offset(),
        );
        let shared = |subject: &Subject, request: &str| {
            if let Some(fleet) = &self.fleet_counts {
                fleet.admitted(subject, request);
            }
        };
        // The partition's messages are guarded and reserve their first slot in the order they
        // were handed over (see `letting_go`): a revoke can then always finish the messages
        // before one already sending.
        let turn = tokio::select! {
            biased;
            () = stop.wait() => return None,
            turn = stop.turn() => turn,
        };
        let first = match self
            .guards
            .admit(at(Utc::now()), subject, fallback, &source, shared)
        {
            Ok(first) => first,
            Err(outcome) => return Some((outcome, None)),
        };
        let mut turn = Some(turn);

        let latest = latest_useful(request, self.retry.safety_margin);
        let cutoff = decide::send_cutoff(self.retry.safety_margin);
        let mut schedule = RetrySchedule::new(&self.retry);
        // The route's providers, in the order to try them; a send that proves nothing was sent
        // moves to the next one at once.
        let mut order = self.guards.providers_for(subject);
        let mut at_provider = 0;
        let mut again = None;
        loop {
            let provider = order[at_provider];
            let failover = Failover {
                next: at_provider + 1 < order.len(),
                several: order.len() > 1,
                ambiguous: self.guards.routes.failover_ambiguous,
            };
            let attempt = again.take().unwrap_or(match schedule.tries() {
                0 => first,
                _ => Attempt::Retry,
            });
            let limits = tokio::select! {
                biased;
                () = stop.wait() => return None,
                limits = self.guards.limiter.acquire_in_line(provider, subject, latest, attempt, turn.take()) => limits,
            };
            // Let go while waiting for the slot: the slot goes unused.
            if stop.abandons() {
                return None;
            }
            let country = subject.country.as_deref();
            let admission = || self.guards.health.admit(provider, country);
            let before = decide::before_send(
                at_provider_of(provider, Utc::now()),
                limits,
                admission,
                schedule.tries(),
                cutoff,
                failover,
            );
            let next = match before {
                Some(next) => next,
                // Checked again as the send starts, with the partition's other messages: an
                // earlier one abandoned meanwhile means this one must not go either.
                None if !stop.begin_send() => return None,
                None => {
                    progress.reach(Reached::SendStarted);
                    let answer = self
                        .send_once(provider, request, subject, &mut schedule)
                        .await;
                    let left = latest.saturating_duration_since(Instant::now());
                    let confirmation = self.confirmation.as_ref();
                    decide::after_send(
                        at_provider_of(provider, Utc::now()),
                        answer,
                        &mut schedule,
                        left,
                        confirmation,
                        failover,
                    )
                }
            };
            match next {
                Next::RetryIn(delay) => tokio::select! {
                    biased;
                    () = stop.wait() => return None,
                    () = tokio::time::sleep(delay) => {}
                },
                Next::RetryRouteIn(delay) => {
                    tokio::select! {
                        biased;
                        () = stop.wait() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                    // The route again, as the circuits stand now.
                    order = self.guards.providers_for(subject);
                    at_provider = 0;
                }
                Next::Again(attempt) => again = Some(attempt),
                Next::OtherProvider(error) => {
                    let from = provider.as_str();
                    let to = order[at_provider + 1].as_str();
                    metrics::counter!("otp_provider_failovers_total", "from" => from, "to" => to, "code" => failover_reason(&error))
                        .increment(1);
                    tracing::info!(
                        request_id = %request.request_id, from, to, code = %error.code,
                        "moved to the route's next provider"
                    );
                    at_provider += 1;
                    // Nothing reached the recipient: the new provider's try does not take
                    // the recipient's window again.
                    again = Some(Attempt::Retry);
                }
                Next::Done(outcome) => return Some((outcome, Some(provider))),
            }
        }
    }

    /// One try at `provider`, recorded in `schedule`, its health, its limits and the metrics.
    async fn send_once(
        &self,
        provider: Provider,
        request: &CodeRequest,
        subject: &Subject,
        schedule: &mut RetrySchedule,
    ) -> Result<String, otp_events::provider_errors::SendFailure> {
        let channel = self.client.channel().as_str();
        let name = provider.as_str();
        let country = subject.country.as_deref();
        let tries = schedule.record_try();
        let started = Instant::now();
        let outcome = self.client.send(provider, request, Utc::now()).await;
        metrics::histogram!("otp_send_duration_seconds", "channel" => channel, "provider" => name)
            .record(started.elapsed().as_secs_f64());
        let failure = match outcome {
            SendOutcome::Accepted {
                provider_message_id,
            } => {
                self.guards
                    .health
                    .record(provider, country, Verdict::Healthy);
                self.guards
                    .routes
                    .answered(provider, country, false, Instant::now());
                // From here on only the public id: a wamid embeds the number, and the id is
                // written to Kafka (status, pending record, message index).
                // An unknown id stays recognisable: no receipt can be tied to it.
                if provider_message_id == crate::channel::UNKNOWN_MESSAGE_ID {
                    return Ok(provider_message_id);
                }
                let public = self
                    .guards
                    .hasher
                    .public_message_id(self.client.channel(), &provider_message_id);
                return Ok(public);
            }
            SendOutcome::Failed(failure) => failure,
        };
        // A recipient's refusal or a rate window says nothing about the provider: it must not
        // count as an accepted send does.
        self.guards.health.record(
            provider,
            country,
            match failure.class {
                ErrorClass::ChannelBroken => Verdict::ProviderBroken,
                ErrorClass::RouteBroken => Verdict::RouteBroken,
                ErrorClass::Transient
                | ErrorClass::Throttled
                | ErrorClass::PairLimited
                | ErrorClass::Recipient => Verdict::Unknown,
            },
        );
        // The provider's own errors weigh on its share of first tries there; a recipient's
        // refusal or a pair window is not its fault.
        if !matches!(
            failure.class,
            ErrorClass::Recipient | ErrorClass::PairLimited
        ) {
            self.guards
                .routes
                .answered(provider, country, true, Instant::now());
        }
        match failure.class {
            // The window is the fleet's: every request of this worker slows down, not only
            // this one.
            ErrorClass::Throttled => self.guards.limiter.throttled(Some(provider)),
            ErrorClass::PairLimited => self.guards.limiter.pair_limited(subject),
            _ => {}
        }
        if matches!(
            failure.class,
            ErrorClass::ChannelBroken | ErrorClass::RouteBroken
        ) {
            tracing::error!(
                request_id = %request.request_id, channel, provider = name,
                country = country.unwrap_or(""), code = %failure.code,
                reason = %failure.message, "the provider says it cannot send (account or route)"
            );
        }
        metrics::counter!("otp_send_errors_total", "channel" => channel, "provider" => name, "class" => failure.class.as_str())
            .increment(1);
        tracing::info!(
            request_id = %request.request_id, channel, provider = name, tries,
            class = failure.class.as_str(), code = %failure.code, "send failed"
        );
        Err(failure)
    }

    /// Write what was decided, in order, each write acknowledged before the next: a `fallback`
    /// status before the request it hands on, a pending confirmation before its `accepted`
    /// status, a dead letter before its `rejected` status.
    async fn settle(
        &self,
        message: &OwnedMessage,
        request: &CodeRequest,
        subject: &Subject,
        outcome: Outcome,
        provider: Option<Provider>,
        progress: &Progress,
    ) {
        let status = |kind, tries, error| {
            let mut status = self.status(request, subject, kind, tries, error);
            status.provider = provider;
            status
        };
        match outcome {
            Outcome::Reject {
                reason,
                error,
                tries,
            } => {
                self.dead_letter(message, &reason).await;
                let status = status(StatusKind::Rejected, tries, Some(error));
                self.write_status(status).await;
            }
            Outcome::Report { kind, tries, error } => {
                self.write_status(status(kind, tries, error)).await;
            }
            Outcome::Accepted {
                provider_message_id,
                tries,
                mut pending,
            } => {
                let mut kind = StatusKind::Sent;
                let channel = self.client.channel();
                // Already the public id: `send_once` replaced the provider's.
                let public_id = provider_message_id;
                if let Some(record) = &mut pending {
                    record.provider = provider;
                    // From the first write on, the tracker owns the ending.
                    progress.reach(Reached::Ended);
                    if record.state == ConfirmationState::Awaiting {
                        kind = StatusKind::Accepted;
                    }
                    // Before the record: a receipt without correlation finds its request
                    // through this. Meta's failed statuses may omit it, and Vonage's
                    // `client_ref` holds at most 40 characters, which `app/request_id` can
                    // pass.
                    let index = MessageIndex {
                        schema: MESSAGE_INDEX_SCHEMA.to_string(),
                        request_id: request.request_id.clone(),
                        app: request.app.clone(),
                        channel,
                        expires_at: request.expires_at,
                    };
                    self.writer.message_index(&public_id, &index).await;
                    self.writer.pending(record).await;
                }
                if let Some(provider) = provider {
                    // Whether users enter this provider's codes, for the routes.
                    let key = confirmation_key(request.app.as_deref(), &request.request_id);
                    self.guards.conversion.sent_through(&key, provider);
                }
                let mut status = status(kind, tries, None);
                status.provider_message_id = Some(public_id);
                self.write_status(status).await;
            }
            Outcome::FallBack { next, tries, error } => {
                // Why, by category (a bounded label; the provider's code is on the status).
                let channel = self.client.channel().as_str();
                metrics::counter!("otp_fallbacks_total", "channel" => channel, "category" => error.category.as_str())
                    .increment(1);
                let mut status = status(StatusKind::Fallback, tries, Some(error));
                status.next_channel = next.current_channel();
                self.log_status(&status);
                // The fallback status before the request it hands on (cause before effect);
                // a request that cannot be handed on ends `failed` (`fallback_refused`). From
                // the first write on, the next channel (or that failure) is the ending.
                progress.reach(Reached::Ended);
                if let Err(e) = self.writer.fall_back(&next, &status).await {
                    self.write_status(status.fallback_refused(&e.to_string()))
                        .await;
                }
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

    /// Write a status about a request, with its log line.
    async fn write_status(&self, status: DeliveryStatus) {
        self.log_status(&status);
        self.writer.status(&status).await;
        tracing::debug!(request_id = %status.request_id, "status acknowledged");
    }

    /// A status's log line (its latency, when final, is recorded where it is written).
    fn log_status(&self, status: &DeliveryStatus) {
        let channel = self.client.channel().as_str();
        let provider = status.provider.map_or("none", |p| p.as_str());
        tracing::info!(
            request_id = %status.request_id,
            channel,
            provider,
            status = status.status.as_str(),
            phone_hash = status.phone_hash.as_deref().unwrap_or(""),
            "status"
        );
    }

    async fn dead_letter(&self, message: &OwnedMessage, reason: &str) {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "event rejected to the dead-letter topic"
        );
        self.writer.dead_letter(message, reason).await;
    }

    /// An event that is not a code request we can read: dead-letter it, and tell analysts
    /// when its request_id can be read.
    pub(crate) async fn reject_undecodable(&self, message: &OwnedMessage, reason: &str) {
        self.dead_letter(message, reason).await;
        if let Some(id) = readable_request_id(message) {
            let error = decide::invalid_event(reason);
            let status = DeliveryStatus::rejected(id, self.client.channel(), error);
            self.writer.status(&status).await;
        }
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

/// A bounded label for why a send moved to another provider: the error's category, or
/// `circuit_open` / the limit's rule for refusals before the send.
fn failover_reason(error: &StatusError) -> &'static str {
    match error.code.as_str() {
        "circuit_open" => "circuit_open",
        "sender_rate" => "sender_rate",
        _ => error.category.as_str(),
    }
}
