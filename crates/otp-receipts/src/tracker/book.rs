//! The confirmation tracker's memory and decisions, without Kafka: which sends await a
//! receipt, what each receipt means for them, and which deadlines have passed.
//!
//! The book is rebuilt from `otp.pending-confirmations` on assignment and kept in step with
//! it: every decision comes back as [`Action`]s, which the runtime ([`super`]) carries out
//! in order for each request (a fallback's status, then the request handed on, then the
//! record's new state; different requests side by side), so a crash repeats a decision
//! rather than losing it.
//!
//! A failed receipt may come without a request_id (Meta does not document
//! `biz_opaque_callback_data` on failed statuses). It is then keyed by its message and lands
//! on the partition of the message's index entry, which the worker wrote beside the record;
//! the book resolves it there and hands it on ([`Action::Reroute`]) to its request's
//! partition.
//!
//! Requests are keyed by their confirmation key (`app/request_id`, or the bare id without an
//! app: [`otp_events::confirmation_key`]), since request ids are unique per app only.
//!
//! One request can have a record per channel (the WhatsApp send that fell back, then the
//! SMS send). The topic keeps only the latest per key, so after a restart only the
//! latest channel's receipts are reported: those of an earlier, settled channel are
//! informational and may be missed.

use chrono::{DateTime, Duration, Utc};
use otp_events::confirmation_key;
use otp_events::{
    Channel, ChannelSignal, CodeRequest, ConfirmationState, DeliveryStatus, ErrorCategory,
    MessageIndex, PendingConfirmation, PhoneHasher, Provider, Receipt, ReceiptStatus, SignalKind,
    SignalSource, StatusError, StatusKind, MESSAGE_KEY_PREFIX,
};
use std::collections::{BTreeSet, HashMap};

/// Where a receipt sits in the receipts topic, so its offset is committed only once it has
/// been applied (an orphan is held until its record arrives or it is given up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub partition: i32,
    pub offset: i64,
    pub generation: u64,
}

#[derive(Debug)]
pub enum Action {
    /// Report `status` (the `fallback`), then hand the request to its next channel
    /// (acks=all): the cause before its effects on the status topic.
    FallBack {
        next: CodeRequest,
        status: DeliveryStatus,
    },
    Status(DeliveryStatus),
    /// Write the record's new state to the compacted topic.
    Save(PendingConfirmation),
    /// Tombstone the request's records (or a message's index entry).
    Forget(String),
    /// A receipt resolved to its request: write it again under the request's key, where the
    /// request's record is.
    Reroute(Receipt),
    /// Tell the workers what a failed receipt of one of our sends says about the channel's
    /// health (for the request of confirmation key `key`).
    Signal {
        key: String,
        signal: ChannelSignal,
    },
}

impl Action {
    /// Whether this action tells the world something new (a fallback, a status, a receipt
    /// handed on), as opposed to writing down what was already done (the record's new state,
    /// a tombstone). A member that is giving the partition up stops before the next action
    /// that acts, so that the partition's new owner, which rebuilds the same deadlines, is the
    /// only one to act on them; the writing down of what it did still goes, so the new owner
    /// reads it and does not act again.
    pub fn acts(&self) -> bool {
        match self {
            Action::FallBack { .. }
            | Action::Status(_)
            | Action::Reroute(_)
            | Action::Signal { .. } => true,
            Action::Save(_) | Action::Forget(_) => false,
        }
    }

    /// The request this action is about (a message's index key for its tombstone): the
    /// writes about one key are made in the order the book decided them.
    pub fn key(&self) -> String {
        match self {
            Action::FallBack { status, .. } | Action::Status(status) => {
                confirmation_key(status.app.as_deref(), &status.request_id)
            }
            Action::Save(record) => record.key(),
            Action::Forget(key) => key.clone(),
            Action::Reroute(receipt) => receipt.key(),
            Action::Signal { key, .. } => key.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub actions: Vec<Action>,
    /// Receipts now applied or given up: their offsets may be committed.
    pub released: Vec<Tag>,
    /// Sends of ours newly delivered: how long each took (for [`super::slowness`]).
    pub deliveries: Vec<Delivery>,
}

/// One of our sends delivered, `latency_ms` after the provider accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub channel: Channel,
    pub provider: Provider,
    /// The destination's country, when the numbering plan knows it.
    pub country: Option<String>,
    pub latency_ms: i64,
}

struct Entry {
    record: PendingConfirmation,
    partition: i32,
}

/// A message's index entry: which request it belongs to.
struct Indexed {
    index: MessageIndex,
    partition: i32,
}

pub struct Book {
    hasher: PhoneHasher,
    /// How long a record outlives its code, for late delivered/read receipts.
    keep_after_expiry: Duration,
    /// How long a receipt waits for its record (the webhook can beat the worker's write).
    orphan_ttl: Duration,
    entries: HashMap<String, HashMap<Channel, Entry>>,
    /// Message key → its request, for receipts that carry no request_id.
    messages: HashMap<String, Indexed>,
    /// Confirmation deadlines in time order, so a tick looks only at what is due rather than
    /// at everything held (a tracker holds every send until its code expires, and scanning
    /// 100,000 records took 53 ms a tick). Entries are hints, checked against the record
    /// when due: one whose record has moved on or gone is dropped then.
    deadlines: BTreeSet<(DateTime<Utc>, String, Channel)>,
    /// When each request may be forgotten (`expires_at` plus `keep_after_expiry`), as hints
    /// in the same way.
    forget_at: BTreeSet<(DateTime<Utc>, String)>,
    /// Receipts waiting for their record, with when they started waiting.
    orphans: HashMap<String, Vec<(Receipt, Tag, DateTime<Utc>)>>,
}

/// How far a record has come: settled beats awaiting, then more receipts reported. Records
/// only move forward, so an older copy read back from the topic is recognised and ignored.
fn progress(r: &PendingConfirmation) -> (bool, usize) {
    let settled = !matches!(
        r.state,
        ConfirmationState::Awaiting | ConfirmationState::ReportOnly
    );
    (settled, r.reported.len())
}

impl Book {
    pub fn new(hasher: PhoneHasher, keep_after_expiry: Duration, orphan_ttl: Duration) -> Self {
        Self {
            hasher,
            keep_after_expiry,
            orphan_ttl,
            entries: HashMap::new(),
            messages: HashMap::new(),
            deadlines: BTreeSet::new(),
            forget_at: BTreeSet::new(),
            orphans: HashMap::new(),
        }
    }

    /// Sends awaiting a receipt that can still cause a fallback.
    pub fn awaiting(&self) -> usize {
        self.records()
            .filter(|r| r.state == ConfirmationState::Awaiting)
            .count()
    }

    pub fn len(&self) -> usize {
        self.records().count()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn records(&self) -> impl Iterator<Item = &PendingConfirmation> {
        self.entries
            .values()
            .flat_map(|m| m.values().map(|e| &e.record))
    }

    /// A record read from the topic under its request's confirmation key `key` (`None`: a
    /// tombstone for it).
    pub fn record(
        &mut self,
        key: &str,
        record: Option<PendingConfirmation>,
        partition: i32,
        now: DateTime<Utc>,
    ) -> Outcome {
        let Some(record) = record else {
            self.entries.remove(key);
            return Outcome::default();
        };
        let channels = self.entries.entry(key.to_string()).or_default();
        let newer = channels
            .get(&record.channel)
            .is_none_or(|known| progress(&record) > progress(&known.record));
        if newer {
            if record.state == ConfirmationState::Awaiting {
                if let Some(at) = record.confirm_by {
                    self.deadlines.insert((at, key.to_string(), record.channel));
                }
            }
            self.forget_at.insert((
                record.request.expires_at + self.keep_after_expiry,
                key.to_string(),
            ));
            channels.insert(record.channel, Entry { record, partition });
        }
        // Receipts that arrived before the record apply now.
        let mut out = Outcome::default();
        if let Some(waiting) = self.orphans.remove(key) {
            for (receipt, tag, _) in waiting {
                let applied = self.receipt(receipt, tag, now);
                out.actions.extend(applied.actions);
                out.released.extend(applied.released);
            }
        }
        out
    }

    /// A message's index entry read from the pending topic under `key` (`None`: a
    /// tombstone).
    pub fn index(
        &mut self,
        key: &str,
        index: Option<MessageIndex>,
        partition: i32,
        now: DateTime<Utc>,
    ) -> Outcome {
        let Some(index) = index else {
            self.messages.remove(key);
            return Outcome::default();
        };
        self.forget_at
            .insert((index.expires_at + self.keep_after_expiry, key.to_string()));
        self.messages
            .insert(key.to_string(), Indexed { index, partition });
        let mut out = Outcome::default();
        if let Some(waiting) = self.orphans.remove(key) {
            for (receipt, tag, _) in waiting {
                let applied = self.receipt(receipt, tag, now);
                out.actions.extend(applied.actions);
                out.released.extend(applied.released);
            }
        }
        out
    }

    /// A receipt read from the receipts topic.
    pub fn receipt(&mut self, receipt: Receipt, tag: Tag, now: DateTime<Utc>) -> Outcome {
        if receipt.request_id.is_none() {
            return self.resolve_by_message(receipt, tag, now);
        }
        let key = receipt.key();
        let entry = self
            .entries
            .get_mut(&key)
            .and_then(|m| m.get_mut(&receipt.channel));
        let Some(entry) = entry else {
            self.orphans
                .entry(key)
                .or_default()
                .push((receipt, tag, now));
            return Outcome::default();
        };
        let mut out = Outcome {
            released: vec![tag],
            ..Outcome::default()
        };
        let record = &mut entry.record;
        if !about_the_send_held(&self.hasher, record, &receipt) {
            metrics::counter!("otp_receipts_other_send_total", "channel" => receipt.channel.as_str())
                .increment(1);
            return out;
        }
        if receipt.status == ReceiptStatus::Queued || record.reported.contains(&receipt.status) {
            return out; // nothing for analysts, or already reported
        }
        record.reported.push(receipt.status);
        apply_receipt(record, &receipt, &key, &self.hasher, now, &mut out);
        out.actions.push(Action::Save(record.clone()));
        out
    }

    /// A receipt keyed by its message (no request_id): resolved here through the message
    /// index and handed on to where its request is, or kept as an orphan until the index
    /// arrives.
    fn resolve_by_message(
        &mut self,
        mut receipt: Receipt,
        tag: Tag,
        now: DateTime<Utc>,
    ) -> Outcome {
        let mut out = Outcome::default();
        let key = receipt.key();
        let found = self
            .messages
            .get(&key)
            .filter(|m| m.index.channel == receipt.channel);
        match found {
            Some(m) => {
                receipt.request_id = Some(m.index.request_id.clone());
                receipt.app = m.index.app.clone();
                out.actions.push(Action::Reroute(receipt));
                out.released.push(tag);
            }
            None => self
                .orphans
                .entry(key)
                .or_default()
                .push((receipt, tag, now)),
        }
        out
    }

    /// Deadlines passed by `now` on the partitions `ready` allows (a partition is ready once
    /// its records and receipts have been read back after assignment): fallbacks to fire,
    /// records to forget, orphans to give up.
    pub fn due(&mut self, now: DateTime<Utc>, ready: impl Fn(i32) -> bool) -> Outcome {
        let mut out = Outcome::default();
        let due: Vec<_> = self
            .deadlines
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .cloned()
            .collect();
        for hint in due {
            let (at, id, channel) = &hint;
            let entry = self.entries.get_mut(id).and_then(|m| m.get_mut(channel));
            let current = entry.filter(|e| {
                e.record.state == ConfirmationState::Awaiting && e.record.confirm_by == Some(*at)
            });
            let Some(entry) = current else {
                self.deadlines.remove(&hint); // settled, replaced or given up meanwhile
                continue;
            };
            if !ready(entry.partition) {
                continue; // fires once the partition is read back
            }
            self.deadlines.remove(&hint);
            let record = &mut entry.record;
            if record.timeout_is_final {
                // No receipt on a provider whose receipts are not awaited: the send stands.
                let mut s = status_of(record, StatusKind::Sent, &self.hasher);
                s.is_final = true;
                out.actions.push(Action::Status(s));
                record.state = ConfirmationState::ReportOnly;
                out.actions.push(Action::Save(record.clone()));
                continue;
            }
            let reason = StatusError {
                category: ErrorCategory::Recipient,
                code: "receipt_timeout".into(),
                message: format!(
                    "no delivered receipt from {} within the confirmation window",
                    record.channel
                ),
            };
            out.actions
                .extend(settle(record, reason, &self.hasher, now));
            out.actions.push(Action::Save(record.clone()));
        }
        let due: Vec<_> = self
            .forget_at
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        for hint in due {
            let (_, id) = &hint;
            if id.starts_with(MESSAGE_KEY_PREFIX) {
                let over = self.messages.get(id).is_none_or(|m| {
                    m.index.expires_at + self.keep_after_expiry <= now && ready(m.partition)
                });
                if over {
                    self.forget_at.remove(&hint);
                    if self.messages.remove(id).is_some() {
                        out.actions.push(Action::Forget(id.clone()));
                    }
                }
                continue;
            }
            let Some(channels) = self.entries.get(id) else {
                self.forget_at.remove(&hint);
                continue;
            };
            let settled = channels.values().all(|e| {
                e.record.request.expires_at + self.keep_after_expiry <= now
                    && e.record.state != ConfirmationState::Awaiting
                    && ready(e.partition)
            });
            if settled {
                self.forget_at.remove(&hint);
                self.entries.remove(id);
                out.actions.push(Action::Forget(id.clone()));
            }
        }
        let ttl = self.orphan_ttl;
        self.orphans.retain(|_, waiting| {
            waiting.retain(|(receipt, tag, since)| {
                // From when the tracker read it, not when the provider sent it: a lagging
                // tracker must not give up receipts its records are about to meet.
                let keep = *since + ttl > now;
                if !keep {
                    metrics::counter!("otp_receipts_unmatched_total", "channel" => receipt.channel.as_str())
                        .increment(1);
                    out.released.push(*tag);
                }
                keep
            });
            !waiting.is_empty()
        });
        out
    }

    /// Forget everything of a partition given up (its new owner rebuilds it).
    pub fn drop_partition(&mut self, partition: i32) {
        self.entries.retain(|_, channels| {
            channels.retain(|_, e| e.partition != partition);
            !channels.is_empty()
        });
        self.messages.retain(|_, m| m.partition != partition);
        self.orphans.retain(|_, waiting| {
            waiting.retain(|(_, tag, _)| tag.partition != partition);
            !waiting.is_empty()
        });
    }
}

/// Least code life left for a fallback to be worth it.
const FALLBACK_MARGIN: Duration = Duration::seconds(5);

/// Whether a receipt is about the send its record holds, through the provider it went
/// through: one for another send of the same request (the first copy of a send repeated after
/// a crash, a replay of an old message's webhook, a send of the route's other provider) is
/// informational and changes nothing.
fn about_the_send_held(
    hasher: &PhoneHasher,
    record: &PendingConfirmation,
    receipt: &Receipt,
) -> bool {
    let current = hasher.public_message_id(record.channel, &record.provider_message_id);
    let same_provider = receipt.provider.is_none_or(|p| p == provider_of(record));
    receipt.provider_message_id == current && same_provider
}

/// What a new status of the send a record holds means: a status for analysts, a delivery
/// confirmed (the record's fallback disarmed), or a failure (a fallback, while one is armed).
fn apply_receipt(
    record: &mut PendingConfirmation,
    receipt: &Receipt,
    key: &str,
    hasher: &PhoneHasher,
    now: DateTime<Utc>,
    out: &mut Outcome,
) {
    let awaiting = record.state == ConfirmationState::Awaiting;
    let status = |record: &PendingConfirmation, kind: StatusKind, is_final: bool| {
        let mut s = status_of(record, kind, hasher);
        s.provider_message_id =
            Some(hasher.public_message_id(receipt.channel, &receipt.provider_message_id));
        s.is_final = is_final;
        s
    };
    match receipt.status {
        ReceiptStatus::Queued => {}
        // With no fallback armed, the worker already reported `sent` as final.
        ReceiptStatus::Sent if record.state == ConfirmationState::ReportOnly => {}
        ReceiptStatus::Sent => {
            out.actions
                .push(Action::Status(status(record, StatusKind::Sent, false)))
        }
        ReceiptStatus::Delivered | ReceiptStatus::Read => {
            if receipt.status == ReceiptStatus::Delivered {
                out.deliveries.push(Delivery {
                    channel: record.channel,
                    provider: provider_of(record),
                    country: otp_events::country_of(&record.request.phone),
                    latency_ms: (receipt.received_at - record.accepted_at).num_milliseconds(),
                });
            }
            let kind = if receipt.status == ReceiptStatus::Read {
                StatusKind::Read
            } else {
                StatusKind::Delivered
            };
            out.actions
                .push(Action::Status(status(record, kind, awaiting)));
            if awaiting {
                record.state = ConfirmationState::Confirmed;
            }
        }
        ReceiptStatus::Failed => {
            if let Some(signal) = signal_of(receipt, record, now) {
                out.actions.push(Action::Signal {
                    key: key.to_string(),
                    signal,
                });
            }
            let error = receipt
                .error
                .clone()
                .unwrap_or_else(|| otp_events::ReceiptError {
                    code: "unknown".into(),
                    category: ErrorCategory::Recipient,
                    message: "delivery failed".into(),
                });
            if awaiting {
                let reason = StatusError {
                    category: error.category,
                    code: "receipt_failed".into(),
                    message: format!(
                        "{} reported the message failed: {} ({})",
                        record.channel, error.code, error.message
                    ),
                };
                out.actions.extend(settle(record, reason, hasher, now));
            } else {
                let mut s = status(record, StatusKind::Failed, false);
                s.error = Some(StatusError {
                    category: error.category,
                    code: error.code,
                    message: error.message,
                });
                out.actions.push(Action::Status(s));
            }
        }
    }
}

/// End an awaiting record's wait without a confirmation: hand the request on when a channel
/// and time are left, else end its life here (`failed`, or `expired` once the code is dead).
fn settle(
    record: &mut PendingConfirmation,
    reason: StatusError,
    hasher: &PhoneHasher,
    now: DateTime<Utc>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    // Handing on a code about to die only sends a message the user cannot use: the next
    // channel needs a few seconds to deliver it.
    match record.request.for_next_channel() {
        Some(next) if now + FALLBACK_MARGIN < record.request.expires_at => {
            let mut s = status_of(record, StatusKind::Fallback, hasher).with_error(reason);
            s.next_channel = next.current_channel();
            actions.push(Action::FallBack { next, status: s });
            record.state = ConfirmationState::FellBack;
        }
        _ => {
            let kind = if now >= record.request.expires_at {
                StatusKind::Expired
            } else {
                StatusKind::Failed
            };
            let mut s = status_of(record, kind, hasher).with_error(reason);
            s.is_final = true;
            actions.push(Action::Status(s));
            record.state = ConfirmationState::Failed;
        }
    }
    actions
}

#[cfg(test)]
mod tests;

/// A provider timestamp older than this makes no signal: a circuit is about the channel's
/// health now, and an old status (a webhook retried for days, or replayed) says nothing about
/// it.
pub const SIGNAL_FRESH_FOR: Duration = Duration::minutes(10);

/// What a failed receipt says about its channel: a signal when its code means the channel is
/// broken or throttled, and the provider dated it within [`SIGNAL_FRESH_FOR`] (an undated one,
/// such as Twilio's, is as fresh as its arrival). The book asks this only for the first
/// `failed` of one of our own sends (after the message-id check), so each (message, status)
/// makes at most one signal, however often its webhook is replayed.
///
/// The signal names the provider of the send, and the destination's country, so that a
/// route error (a US registration lapsed) closes that country only.
fn signal_of(
    receipt: &Receipt,
    record: &PendingConfirmation,
    now: DateTime<Utc>,
) -> Option<ChannelSignal> {
    let provider = provider_of(record);
    let table = provider.errors();
    let code = receipt.error.as_ref()?.code.parse::<i64>().ok()?;
    let kind = table.class_of(code).and_then(SignalKind::of)?;
    let dated = receipt.provider_timestamp.unwrap_or(receipt.received_at);
    if now - dated > SIGNAL_FRESH_FOR {
        metrics::counter!("otp_channel_signals_stale_total", "channel" => receipt.channel.as_str())
            .increment(1);
        return None;
    }
    let country = otp_events::country_of(&record.request.phone);
    Some(
        ChannelSignal::new(
            receipt.channel,
            kind,
            SignalSource::Receipt,
            code.to_string(),
            now,
        )
        .about(provider, country),
    )
}

/// A status about a record's send: its request, channel and provider, and the send's public
/// message id.
fn status_of(
    record: &PendingConfirmation,
    kind: StatusKind,
    hasher: &PhoneHasher,
) -> DeliveryStatus {
    let mut s = DeliveryStatus::about(&record.request, kind, record.channel, hasher);
    s.provider = Some(provider_of(record));
    s.provider_message_id =
        Some(hasher.public_message_id(record.channel, &record.provider_message_id));
    s
}

/// The provider a pending record's send went through: the channel's first for records written
/// before providers were named.
fn provider_of(record: &PendingConfirmation) -> Provider {
    record.provider.unwrap_or(Provider::of(record.channel)[0])
}
