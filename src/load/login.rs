//! The login system's part of a load run: its users enter a share of the codes that reach
//! them, some seconds after they arrive (`--entered`, `--enter-after`), reported as signed
//! `verified` outcomes as a login system reports them; and a staged SMS pump (`--pump`):
//! requests to one number range whose codes nobody enters, counted apart from the run's
//! requests, so that the report shows how many got through before the workers' conversion
//! defence refused the range.

use anyhow::Context;
use otp_events::{OutcomeKind, VerificationOutcome};
use otp_producer::CodeRequestPublisher;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// Codes waiting to be entered, at most; past that a code is not reported (counted).
const QUEUE: usize = 100_000;

/// Whether the user of request `id` enters a code that reached them, for a share of
/// `percent`: a draw by the request_id, so a run is repeatable for its ids.
pub(crate) fn user_enters(id: &str, percent: u8) -> bool {
    let draw = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 100;
    draw < u32::from(percent)
}

/// The pump's i-th recipient: one number range, `+1555999`, last digits clear of the
/// simulator's staged ones.
pub(crate) fn pump_phone(i: usize) -> String {
    format!("+1555999{:04}", 4000 + i % 6000)
}

/// What the login system saw and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LoginFigures {
    /// Percent of delivered codes their users enter.
    pub entered_percent: u8,
    /// `verified` outcomes reported (and acknowledged by the broker).
    pub outcomes_reported: usize,
    /// Codes that would have been entered but found the queue full.
    pub outcomes_dropped: usize,
    /// The pump's requests, and their endings by `status/error.code`.
    pub pump_requests: usize,
    pub pump_endings: BTreeMap<String, usize>,
}

/// Shared by the publisher, the status follower (a thread) and the reporter task.
pub struct LoginSystem {
    entered: u8,
    after: Duration,
    pump: Mutex<HashSet<String>>,
    /// Taken away by [`LoginSystem::close`], which ends the reporter once it has caught up.
    to_report: Mutex<Option<mpsc::Sender<(String, Instant)>>>,
    figures: Mutex<LoginFigures>,
}

impl LoginSystem {
    /// With `entered > 0`, the receiver the reporter ([`report`]) reads.
    pub fn new(
        entered: u8,
        after: Duration,
        pump_requests: usize,
    ) -> (Arc<Self>, Option<mpsc::Receiver<(String, Instant)>>) {
        let (tx, rx) = match entered {
            0 => (None, None),
            _ => {
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(rx))
            }
        };
        let figures = LoginFigures {
            entered_percent: entered,
            pump_requests,
            ..LoginFigures::default()
        };
        let login = Self {
            entered,
            after,
            pump: Mutex::new(HashSet::new()),
            to_report: Mutex::new(tx),
            figures: Mutex::new(figures),
        };
        (Arc::new(login), rx)
    }

    /// A pump request about to be published.
    pub fn pumping(&self, id: &str) {
        self.pump.lock().expect("pump lock").insert(id.to_string());
    }

    /// A final status (from the follower's thread). Returns whether it was the pump's: those
    /// are counted here, not among the run's requests. A code that reached its user is
    /// queued to be entered `after` from now, for the drawn share.
    pub fn ended(&self, id: &str, status: &str, error_code: Option<&str>) -> bool {
        if self.pump.lock().expect("pump lock").contains(id) {
            let ending = format!("{status}/{}", error_code.unwrap_or("-"));
            let mut f = self.figures.lock().expect("figures lock");
            *f.pump_endings.entry(ending).or_default() += 1;
            return true;
        }
        let reached = matches!(status, "sent" | "delivered" | "read");
        if let Some(tx) = &*self.to_report.lock().expect("report lock") {
            if reached && user_enters(id, self.entered) {
                let due = Instant::now() + self.after;
                if tx.try_send((id.to_string(), due)).is_err() {
                    self.figures.lock().expect("figures lock").outcomes_dropped += 1;
                }
            }
        }
        false
    }

    /// No more codes to enter: the reporter ends once it has reported those queued.
    pub fn close(&self) {
        self.to_report.lock().expect("report lock").take();
    }

    /// Pump requests with a final status.
    pub fn pump_finished(&self) -> usize {
        let f = self.figures.lock().expect("figures lock");
        f.pump_endings.values().sum()
    }

    /// A report's answer from the broker: counted when acknowledged.
    fn reported(&self, answer: Result<(), otp_producer::PublishError>) -> anyhow::Result<()> {
        answer.context("report an outcome")?;
        self.figures.lock().expect("figures lock").outcomes_reported += 1;
        Ok(())
    }

    pub fn figures(&self) -> LoginFigures {
        self.figures.lock().expect("figures lock").clone()
    }
}

/// Report each queued code as entered once it is due, signed by `publisher`, until the queue
/// closes. At most 256 reports wait for the broker at once.
pub async fn report(
    login: Arc<LoginSystem>,
    mut queue: mpsc::Receiver<(String, Instant)>,
    publisher: Arc<CodeRequestPublisher>,
) -> anyhow::Result<()> {
    let window = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((id, due)) = queue.recv().await {
        // Due in the order queued: every code waits the same `after`.
        tokio::time::sleep_until(due).await;
        let permit = window.clone().acquire_owned().await?;
        let publisher = publisher.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = VerificationOutcome::new(id, OutcomeKind::Verified, chrono::Utc::now());
            publisher.publish_outcome(&outcome).await
        });
        while let Some(done) = tasks.try_join_next() {
            login.reported(done?)?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        login.reported(done?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entered_share_holds_over_many_ids() {
        let n = (0..10_000)
            .filter(|_| user_enters(&format!("{:x}", rand::random::<u64>()), 80))
            .count();
        assert!(
            (7_500..=8_500).contains(&n),
            "{n} of 10,000 entered at 80 %"
        );
        assert!(!user_enters("any", 0));
    }

    #[test]
    fn the_pumps_endings_are_counted_apart_and_only_reached_codes_are_entered() {
        let (login, rx) = LoginSystem::new(100, Duration::ZERO, 2);
        let mut rx = rx.expect("a reporter queue");
        login.pumping("p1");
        assert!(login.ended("p1", "failed", Some("low_conversion")));
        assert!(!login.ended("r1", "sent", None));
        assert!(!login.ended("r2", "expired", None));
        assert_eq!(rx.try_recv().map(|(id, _)| id).ok(), Some("r1".to_string()));
        assert!(rx.try_recv().is_err(), "an expired code is not entered");
        assert_eq!(login.pump_finished(), 1);
        assert_eq!(login.figures().pump_endings["failed/low_conversion"], 1);
    }
}
