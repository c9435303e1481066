//! Abuse counts that hold across the fleet: the WhatsApp and SMS worker groups, and every
//! worker of a group.
//!
//! A worker's abuse rules count in memory what it admits. Alone, that would see only the
//! requests of its own partitions on its own channel: a number's codes split between the
//! WhatsApp and SMS topics would meet two fresh counts, a number range spread over partitions
//! owned by several workers one count per worker, and a restarted worker a count of zero. So
//! each admission is also written to `otp.abuse-admissions` (in the background: a send never
//! waits for it), and every worker reads every partition of that topic, from one abuse window
//! back, adding the admissions of the others to its own counts.
//!
//! The counts are shared, not locked: an admission reaches the other workers some
//! milliseconds after it was made, so two requests for one number on two channels within that
//! time can both pass the last slot. A burst that tries this is still capped by each worker's
//! own count. The admissions carry keyed hashes only (see `otp_events::AbuseAdmission`).

use crate::limits::Subject;
use chrono::Utc;
use otp_events::{AbuseAdmission, Channel, ABUSE_ADMISSION_SCHEMA};
use otp_kafka::broadcast::{self, StartAt};
use otp_kafka::writer::KafkaWriter;
use otp_kafka::KafkaArgs;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Admission writes in flight at most; past that (the broker is slow or away) an admission is
/// not shared, and counted in `otp_abuse_admissions_unshared_total`.
const MAX_IN_FLIGHT: usize = 4096;

/// This worker's side of the shared counts: writes its admissions.
pub struct FleetCounts {
    writer: Arc<KafkaWriter>,
    channel: Channel,
    /// This process, among the writers: its own admissions, read back, are not counted twice.
    origin: String,
    slots: Arc<Semaphore>,
}

impl FleetCounts {
    pub fn new(writer: Arc<KafkaWriter>, channel: Channel) -> Self {
        Self {
            writer,
            channel,
            origin: uuid::Uuid::now_v7().simple().to_string(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Share an admission this worker just counted. Returns at once.
    pub fn admitted(&self, subject: &Subject) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            metrics::counter!("otp_abuse_admissions_unshared_total", "channel" => self.channel.as_str())
                .increment(1);
            return;
        };
        let admission = AbuseAdmission {
            schema: ABUSE_ADMISSION_SCHEMA.to_string(),
            channel: self.channel,
            origin: self.origin.clone(),
            phone_key: subject.phone_key.clone(),
            prefix_key: subject.prefix_key.clone(),
            country: subject.country.clone(),
            admitted_at: Utc::now(),
        };
        let writer = self.writer.clone();
        tokio::spawn(async move {
            writer.admission(&admission).await;
            drop(slot);
        });
    }

    /// Read the fleet's admissions, from `lookback` ago, and hand each (all but this worker's
    /// own) to `count` (the limiter's `admitted_elsewhere`) with the instant it
    /// was made. Runs until the handle is aborted.
    pub fn listen(
        &self,
        kafka: &KafkaArgs,
        lookback: Duration,
        count: impl Fn(&Subject, Instant) + Send + 'static,
    ) -> JoinHandle<()> {
        let topic = kafka.topics().abuse_admissions();
        let name = format!("otp-{}-abuse-admissions", self.channel);
        let (origin, channel) = (self.origin.clone(), self.channel);
        let label = topic.clone();
        broadcast::listen(
            kafka,
            topic,
            &name,
            StartAt::Back(lookback),
            move |payload| {
                let Some(a) = AbuseAdmission::from_json(payload) else {
                    metrics::counter!("otp_abuse_admissions_unreadable_total").increment(1);
                    return;
                };
                if a.origin == origin {
                    return;
                }
                let subject = Subject {
                    phone_key: a.phone_key,
                    prefix_key: a.prefix_key,
                    country: a.country,
                    premium: false,
                };
                // Its age by the wall clock, on this process's monotonic clock.
                let age = (Utc::now() - a.admitted_at).to_std().unwrap_or_default();
                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                count(&subject, at);
                metrics::counter!("otp_abuse_admissions_counted_total", "channel" => channel.as_str(), "topic" => label.clone())
                .increment(1);
            },
        )
    }
}
