//! Good and bad outcomes over a sliding window, counted in a few time slices: what the
//! circuits (`circuit`) open on and what the routes' error weights (`routes::weights`) compare.
//!
//! A slice starts at its first outcome and holds everything within `window / SLICES` of it;
//! slices older than the window are dropped on each count. So the memory per tally is at most
//! `SLICES + 1` triples, whatever the traffic, and the window is exact to one slice.

use std::time::{Duration, Instant};

/// The window is counted in this many slices.
const SLICES: u32 = 6;

/// Outcomes of the last `window`.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// (slice start, good, bad), oldest first.
    slices: Vec<(Instant, u32, u32)>,
}

impl Tally {
    /// Count one outcome at `now`; the window's (good, bad) after it.
    pub fn count(&mut self, bad: bool, now: Instant, window: Duration) -> (u32, u32) {
        self.forget(now, window);
        let slice = window / SLICES;
        match self.slices.last_mut() {
            Some((start, good, bads)) if now.saturating_duration_since(*start) < slice => {
                *if bad { bads } else { good } += 1;
            }
            _ => self.slices.push((now, u32::from(!bad), u32::from(bad))),
        }
        self.totals()
    }

    /// The window's (good, bad) at `now`.
    pub fn at(&mut self, now: Instant, window: Duration) -> (u32, u32) {
        self.forget(now, window);
        self.totals()
    }

    fn forget(&mut self, now: Instant, window: Duration) {
        self.slices
            .retain(|(start, _, _)| now.saturating_duration_since(*start) < window);
    }

    fn totals(&self) -> (u32, u32) {
        self.slices
            .iter()
            .fold((0, 0), |(g, b), (_, gg, bb)| (g + gg, b + bb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_the_window_holds_and_forgets_the_rest() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut t = Tally::default();
        assert_eq!(t.count(false, t0, window), (1, 0));
        assert_eq!(t.count(true, t0 + Duration::from_secs(5), window), (1, 1));
        assert_eq!(t.count(true, t0 + Duration::from_secs(30), window), (1, 2));
        // At 62 s the first slice (0 s to 10 s) has left the window.
        assert_eq!(t.at(t0 + Duration::from_secs(62), window), (0, 1));
        assert_eq!(t.at(t0 + Duration::from_secs(200), window), (0, 0));
        assert!(t.slices.is_empty());
        for i in 0..1000 {
            t.count(i % 2 == 0, t0 + Duration::from_millis(300 + i * 60), window);
        }
        assert!(t.slices.len() <= SLICES as usize + 1, "{}", t.slices.len());
    }
}
