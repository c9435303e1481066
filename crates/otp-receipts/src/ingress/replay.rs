//! The ingress's memory of the webhook calls it accepted, so that a call replayed (by an
//! attacker who captured one, or by a provider retrying what we already took) writes nothing
//! again.
//!
//! A signed call stays valid forever: the providers' signatures cover the body (and Twilio's
//! the URL), not a time. Receipts replayed are harmless (the tracker applies each status of
//! a send once), but a provider's system-level errors (Meta's `value.errors`) carry no message
//! and no date, and each would become a channel signal again. So the ingress remembers the
//! SHA-256 of each call it accepted (route and body) for [`REMEMBER_FOR`], at most
//! [`MAX_CALLS`] of them (the oldest forgotten first, counted in
//! `otp_webhook_replay_cache_evicted_total`), and answers a call it remembers 200 without
//! writing anything (`otp_webhooks_total{outcome="replayed"}`). A call is remembered only once
//! its records were acknowledged, so a provider's retry of a call we failed is taken.
//!
//! Each ingress replica remembers its own calls: a replay spread over N replicas can be taken
//! N times. Signals from receipts do not depend on this (the tracker makes them once per
//! message and status, see `tracker::book`).

use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an accepted call is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(3600);
/// Calls remembered at most (about 100 bytes each).
pub const MAX_CALLS: usize = 200_000;

/// The calls accepted lately.
#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<Calls>,
}

#[derive(Default)]
struct Calls {
    digests: HashSet<[u8; 32]>,
    order: VecDeque<(Instant, [u8; 32])>,
}

/// A call's identity: its route and its raw body.
pub fn digest(route: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((route.len() as u64).to_be_bytes());
    h.update(route.as_bytes());
    h.update(body);
    h.finalize().into()
}

impl ReplayCache {
    /// Whether the call was accepted within [`REMEMBER_FOR`].
    pub fn seen(&self, digest: &[u8; 32], now: Instant) -> bool {
        let mut calls = self.inner.lock().expect("replay cache lock");
        calls.expire(now);
        calls.digests.contains(digest)
    }

    /// Remember an accepted call.
    pub fn accepted(&self, digest: [u8; 32], now: Instant) {
        let mut calls = self.inner.lock().expect("replay cache lock");
        calls.expire(now);
        if !calls.digests.insert(digest) {
            return;
        }
        calls.order.push_back((now, digest));
        while calls.order.len() > MAX_CALLS {
            if let Some((_, old)) = calls.order.pop_front() {
                calls.digests.remove(&old);
                metrics::counter!("otp_webhook_replay_cache_evicted_total").increment(1);
            }
        }
    }
}

impl Calls {
    fn expire(&mut self, now: Instant) {
        while let Some((at, d)) = self.order.front() {
            if now.duration_since(*at) < REMEMBER_FOR {
                break;
            }
            self.digests.remove(d);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_call_is_remembered_for_its_time_only() {
        let cache = ReplayCache::default();
        let t0 = Instant::now();
        let a = digest("/webhooks/whatsapp", b"{}");
        assert!(!cache.seen(&a, t0));
        cache.accepted(a, t0);
        assert!(cache.seen(&a, t0 + Duration::from_secs(60)));
        // Another route with the same body is another call.
        assert!(!cache.seen(&digest("/webhooks/sms/status", b"{}"), t0));
        assert!(!cache.seen(&a, t0 + REMEMBER_FOR));
    }

    #[test]
    fn the_cache_holds_at_most_max_calls() {
        let cache = ReplayCache::default();
        let t0 = Instant::now();
        for i in 0..(MAX_CALLS + 10) as u64 {
            cache.accepted(digest("r", &i.to_be_bytes()), t0);
        }
        let calls = cache.inner.lock().unwrap();
        assert_eq!(calls.digests.len(), MAX_CALLS);
        assert_eq!(calls.order.len(), MAX_CALLS);
    }
}
