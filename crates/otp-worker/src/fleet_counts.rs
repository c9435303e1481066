//! Abuse counts that hold across the fleet: the WhatsApp and SMS worker groups, and every
//! worker of a group.
//!
//! A worker's abuse rules count in memory what it admits. Alone, that would see only the
//! requests of its own partitions on its own channel: a number's codes split between the
//! WhatsApp and SMS topics would meet two fresh counts, a number range spread over partitions
//! owned by several workers one count per worker, and a restarted worker a count of zero. So
//! each admission is also written to `otp.abuse-admissions` (in the background, batched: a
//! send never waits for it), and every worker reads every partition of that topic from its
//! beginning (its retention is short), adding the others' admissions of the last window to its
//! own counts. (Not from a point in time: that needs the broker to look offsets up by time,
//! which the whole short topic makes unnecessary.)
//!
//! The counts are shared, not locked: an admission reaches the other workers up to a few
//! hundred milliseconds after it was made (the batch window of up to 200 ms, then the broker),
//! so two requests for one number on two channels within that time can both pass the last
//! slot. A burst that tries this is still capped by each worker's own count. The admissions
//! carry keyed hashes only (see `otp_events::AbuseAdmissions`), and are written in batches,
//! one message each: a few writes a second per worker, whatever the traffic.

use crate::limits::Subject;
use chrono::Utc;
use otp_events::{AbuseAdmission, AbuseAdmissions, Channel, Role, ABUSE_ADMISSION_SCHEMA};
use otp_kafka::broadcast::{self, StartAt, Writers};
use otp_kafka::writer::KafkaWriter;
use otp_kafka::KafkaArgs;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Admissions waiting to be written, at most; past that (the broker is slow or away) an
/// admission is not shared, and counted in `otp_abuse_admissions_unshared_total`.
const QUEUE: usize = 8192;
/// A batch is written after this long, or at this size, whichever comes first.
const BATCH_WITHIN: Duration = Duration::from_millis(200);
const BATCH_SIZE: usize = 2000;

/// This worker's side of the shared counts: writes its admissions, in batches.
pub struct FleetCounts {
    channel: Channel,
    /// This process, among the writers: its own admissions, read back, are not counted twice.
    origin: String,
    queue: mpsc::Sender<AbuseAdmission>,
    /// The batch writer; aborted when the counts are dropped, or stopped with [`Self::stop`].
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl FleetCounts {
    pub fn new(writer: Arc<KafkaWriter>, channel: Channel) -> Self {
        let origin = uuid::Uuid::now_v7().simple().to_string();
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(writer, channel, origin.clone(), rx));
        Self {
            channel,
            origin,
            queue,
            writer: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Stop the batch writer and wait until it is gone (its producer closed). Admissions not
    /// yet written are not shared: the fleet's counts are best effort at a worker's end.
    pub async fn stop(&self) {
        let task = self.writer.lock().expect("writer lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Share an admission of the request `request` (its confirmation key) this worker just
    /// counted. Returns at once.
    pub fn admitted(&self, subject: &Subject, request: &str) {
        let admission = AbuseAdmission {
            phone_key: subject.phone_key.clone(),
            prefix_key: subject.prefix_key.clone(),
            country: subject.country.clone(),
            admitted_at: Utc::now(),
            request: Some(request.to_string()),
        };
        if self.queue.try_send(admission).is_err() {
            metrics::counter!("otp_abuse_admissions_unshared_total", "channel" => self.channel.as_str())
                .increment(1);
        }
    }

    /// Read the fleet's admissions of the last `lookback`, and hand each (all but this worker's
    /// own) to `count` (the limiter's `admitted_elsewhere`, the conversion counts) with its
    /// request's confirmation key and the instant it was made. Runs until the handle is
    /// aborted.
    pub fn listen(
        &self,
        kafka: &KafkaArgs,
        lookback: Duration,
        count: impl Fn(&Subject, Option<&str>, Instant) + Send + 'static,
    ) -> JoinHandle<()> {
        let topic = kafka.topics().abuse_admissions();
        let name = format!("otp-{}-abuse-admissions", self.channel);
        let (origin, channel) = (self.origin.clone(), self.channel);
        let label = topic.clone();
        let seen = std::sync::Mutex::new(SeenBatches::default());
        for reason in ["repeated", "future"] {
            metrics::counter!("otp_abuse_admissions_ignored_total", "reason" => reason)
                .increment(0);
        }
        broadcast::listen(
            kafka,
            topic,
            &name,
            // The whole topic (its retention is short); admissions older than every window
            // are skipped as they are read.
            StartAt::Beginning,
            Writers {
                roles: &[Role::Worker],
                label: "admissions",
            },
            move |payload| {
                let Some(batch) = AbuseAdmissions::from_json(payload) else {
                    metrics::counter!("otp_abuse_admissions_unreadable_total").increment(1);
                    return;
                };
                if batch.origin == origin {
                    return;
                }
                let (now, wall) = (Instant::now(), Utc::now());
                // A batch counts once: the same batch written again (a producer retry, or a
                // replay of an authentic record) changes nothing.
                if !seen
                    .lock()
                    .expect("seen batches")
                    .first_sight(&batch.batch, now, lookback)
                {
                    metrics::counter!("otp_abuse_admissions_ignored_total", "reason" => "repeated")
                        .increment(1);
                    return;
                }
                let mut counted = 0;
                for a in &batch.admitted {
                    if a.admitted_at > wall + MAX_CLOCK_AHEAD {
                        // From the future: it would count for longer than its window.
                        metrics::counter!("otp_abuse_admissions_ignored_total", "reason" => "future")
                            .increment(1);
                        continue;
                    }
                    // Its age by the wall clock, on this process's monotonic clock.
                    let age = (wall - a.admitted_at).to_std().unwrap_or_default();
                    if age > lookback {
                        continue; // out of every window
                    }
                    let subject = Subject {
                        phone_key: a.phone_key.clone(),
                        prefix_key: a.prefix_key.clone(),
                        country: a.country.clone(),
                        premium: false,
                    };
                    // Older than this process's clock can tell (a host up for less than
                    // the lookback): it would be counted as made now.
                    let Some(at) = now.checked_sub(age) else {
                        continue;
                    };
                    count(&subject, a.request.as_deref(), at);
                    counted += 1;
                }
                metrics::counter!("otp_abuse_admissions_counted_total", "channel" => channel.as_str(), "topic" => label.clone())
                .increment(counted);
            },
        )
    }
}

/// How far ahead of this worker's clock an admission may be dated (another worker's clock
/// may run ahead a little); later, it is ignored.
const MAX_CLOCK_AHEAD: chrono::Duration = chrono::Duration::seconds(30);
/// Batch ids remembered at most; a batch older than the lookback has nothing left to count,
/// so its id is forgotten then, or the oldest first past this bound.
const MAX_SEEN_BATCHES: usize = 200_000;

/// The batches already counted, oldest first.
#[derive(Default)]
struct SeenBatches {
    ids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<(Instant, String)>,
}

impl SeenBatches {
    /// Whether `id` is new (and remember it), forgetting what is older than `lookback`.
    fn first_sight(&mut self, id: &str, now: Instant, lookback: Duration) -> bool {
        while let Some((at, old)) = self.order.front() {
            if now.duration_since(*at) <= lookback && self.order.len() < MAX_SEEN_BATCHES {
                break;
            }
            self.ids.remove(old);
            self.order.pop_front();
        }
        if self.ids.contains(id) {
            return false;
        }
        self.ids.insert(id.to_string());
        self.order.push_back((now, id.to_string()));
        true
    }
}

/// Write what `queue` brings in batches (one message each), until the queue closes.
async fn write_batches(
    writer: Arc<KafkaWriter>,
    channel: Channel,
    origin: String,
    mut queue: mpsc::Receiver<AbuseAdmission>,
) {
    let mut admitted = Vec::with_capacity(BATCH_SIZE);
    loop {
        if queue.recv_many(&mut admitted, BATCH_SIZE).await == 0 {
            return; // closed
        }
        // Gather what comes within the batch window.
        let until = tokio::time::Instant::now() + BATCH_WITHIN;
        while admitted.len() < BATCH_SIZE {
            let room = BATCH_SIZE - admitted.len();
            match tokio::time::timeout_at(until, queue.recv_many(&mut admitted, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let batch = AbuseAdmissions {
            schema: ABUSE_ADMISSION_SCHEMA.to_string(),
            channel,
            origin: origin.clone(),
            batch: uuid::Uuid::now_v7().simple().to_string(),
            admitted: std::mem::take(&mut admitted),
        };
        writer.admissions(&batch).await;
    }
}

impl Drop for FleetCounts {
    fn drop(&mut self) {
        if let Some(task) = self.writer.lock().expect("writer lock").take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_once_and_old_ids_are_forgotten() {
        let mut seen = SeenBatches::default();
        let t0 = Instant::now();
        let lookback = Duration::from_secs(600);
        assert!(seen.first_sight("b1", t0, lookback));
        assert!(!seen.first_sight("b1", t0 + Duration::from_secs(1), lookback));
        assert!(seen.first_sight("b2", t0 + Duration::from_secs(2), lookback));
        // Past the lookback, b1 is forgotten (a copy of it would have nothing left to count).
        assert!(seen.first_sight("b3", t0 + Duration::from_secs(601), lookback));
        assert_eq!(seen.ids.len(), 2);
    }
}
