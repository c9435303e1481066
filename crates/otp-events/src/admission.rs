//! Abuse admissions: one record per request admitted by the abuse rules, on
//! `otp.abuse-admissions`, so that the rules' counts hold across the whole fleet.
//!
//! A worker counts what it admits at once, in memory. Alone, that count would see only its
//! own partitions of its own channel: a number's requests split across the WhatsApp and SMS
//! groups (or a number range's requests spread over partitions owned by different workers)
//! would each meet a fresh count. So every admission is also written here (in batches of a
//! few milliseconds), and every worker reads every partition of the topic and adds the
//! admissions of the others to its counts.
//! A worker that starts (or takes over partitions) reads back the last window of admissions,
//! so its counts do not start from zero either.
//!
//! Nothing in here reveals a number: the keys are the keyed hashes the worker counts by.

use crate::Channel;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const ABUSE_ADMISSION_SCHEMA: &str = "otp.abuse_admissions.v1";

/// The requests one worker's abuse rules admitted over a few milliseconds, in one message
/// (one write per batch, not per request), keyed by `origin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbuseAdmissions {
    pub schema: String,
    /// The channel of the worker that admitted them.
    pub channel: Channel,
    /// The worker process that admitted them (random per process): it has counted them.
    pub origin: String,
    /// This batch (a UUIDv7): a reader counts a batch once, however often it is written.
    pub batch: String,
    pub admitted: Vec<AbuseAdmission>,
}

/// One admitted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbuseAdmission {
    /// Keyed hash of the canonical number (the status events' `phone_hash`).
    pub phone_key: String,
    /// Keyed hash of the number's range (the number without its last 4 digits).
    pub prefix_key: String,
    /// ISO country of the calling code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    pub admitted_at: DateTime<Utc>,
    /// The request's confirmation key (`app/request_id`, or the bare id): what a verification
    /// outcome names, so that every worker can tell the conversion of a number range. Absent
    /// in batches of workers older than the conversion defence (readers older than it refuse
    /// batches that carry it: upgrade every worker in one roll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

impl AbuseAdmissions {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("AbuseAdmissions always serialise")
    }

    /// The batch in `payload`, if it is one of this schema.
    pub fn from_json(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Self>(payload)
            .ok()
            .filter(|a| a.schema == ABUSE_ADMISSION_SCHEMA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_schemas() {
        let a = AbuseAdmissions {
            schema: ABUSE_ADMISSION_SCHEMA.to_string(),
            channel: Channel::Sms,
            origin: "w1".into(),
            batch: "b1".into(),
            admitted: vec![AbuseAdmission {
                phone_key: "ph_1".into(),
                prefix_key: "ph_2".into(),
                country: Some("GB".into()),
                admitted_at: Utc::now(),
                request: Some("app-a/r1".into()),
            }],
        };
        assert_eq!(AbuseAdmissions::from_json(&a.to_json()), Some(a.clone()));
        let other = AbuseAdmissions {
            schema: "otp.other.v1".into(),
            ..a
        };
        assert_eq!(AbuseAdmissions::from_json(&other.to_json()), None);
        assert_eq!(AbuseAdmissions::from_json(b"{}"), None);
    }
}
