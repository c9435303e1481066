//! How far one message got on its way through the pipeline, kept outside the pipeline's task
//! so that the runtime can read it after that task panicked.
//!
//! A panic is a bug, and the runtime must still keep the analysts' promise of exactly one
//! final status per request, and must not wedge the partition. What it may write depends on
//! how far the message got: nothing final yet, so the event is dead-lettered with a `rejected`
//! status; a provider call started, so the same but saying the code may have gone out; its
//! ending written or being handed over (to the next channel, or to the tracker through a
//! pending confirmation), so nothing more: whoever it was handed to writes the ending.

use std::sync::atomic::{AtomicU8, Ordering};

/// Shared by a message's task (which moves it on) and the runtime (which reads it).
#[derive(Debug, Default)]
pub struct Progress(AtomicU8);

/// The furthest point a message reached; later points are greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reached {
    /// No provider call started, nothing final written.
    Nothing = 0,
    /// A provider call started: the code may have gone out.
    SendStarted = 1,
    /// Its ending is written, or being handed over: its final status, its hand-over to the
    /// next channel (`fall_back`), or its pending confirmation (from which the tracker writes
    /// the ending). Nothing more may be written about it.
    Ended = 2,
}

impl Reached {
    /// The label of `otp_handling_panics_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reached::Nothing => "before_send",
            Reached::SendStarted => "after_send",
            Reached::Ended => "after_final",
        }
    }
}

impl Progress {
    /// Record that the message reached `point` (never moves back).
    pub fn reach(&self, point: Reached) {
        self.0.fetch_max(point as u8, Ordering::SeqCst);
    }

    pub fn reached(&self) -> Reached {
        match self.0.load(Ordering::SeqCst) {
            0 => Reached::Nothing,
            1 => Reached::SendStarted,
            _ => Reached::Ended,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_moves_forward() {
        let p = Progress::default();
        assert_eq!(p.reached(), Reached::Nothing);
        p.reach(Reached::Ended);
        p.reach(Reached::SendStarted);
        assert_eq!(p.reached(), Reached::Ended);
    }
}
