//! Memory of the request_ids this worker has sent or has in flight, so a request published
//! twice is sent once. Bounded in size, and an id is forgotten a while after its code expired
//! (kept that while so a late copy is reported `duplicate`, not given a second final status).

use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// How long an id is remembered after its code expired.
const KEEP_AFTER_EXPIRY_MINUTES: i64 = 5;

/// Where a message came from: topic, partition, offset.
pub type Source = (String, i32, i64);

pub struct Dedup {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    /// Per request_id: its expiry and the message (partition, offset) that claimed it.
    expiry_of: HashMap<String, (DateTime<Utc>, Source)>,
    by_expiry: BTreeSet<(DateTime<Utc>, String)>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    /// Remember `request_id` until `expires_at`. Returns false when another message already
    /// claimed it. The same message seen again (redelivered after its partition came back to
    /// us with its work abandoned) is not a duplicate: it was never finished.
    pub fn first_sight(
        &self,
        request_id: &str,
        source: Source,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let mut inner = self.inner.lock().expect("dedup lock");
        inner.forget_expired(now);
        if let Some((_, claimant)) = inner.expiry_of.get(request_id) {
            return *claimant == source;
        }
        if inner.expiry_of.len() >= self.capacity {
            // Full of live ids: forget the one closest to expiry, the least likely to recur.
            if let Some(first) = inner.by_expiry.pop_first() {
                inner.expiry_of.remove(&first.1);
            }
        }
        inner
            .expiry_of
            .insert(request_id.to_string(), (expires_at, source));
        inner.by_expiry.insert((expires_at, request_id.to_string()));
        true
    }

    /// Ids remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("dedup lock").expiry_of.len()
    }
}

impl Inner {
    fn forget_expired(&mut self, now: DateTime<Utc>) {
        while let Some((exp, _)) = self.by_expiry.first() {
            if *exp + chrono::Duration::minutes(KEEP_AFTER_EXPIRY_MINUTES) > now {
                break;
            }
            let (_, id) = self.by_expiry.pop_first().expect("first exists");
            self.expiry_of.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn second_sight_is_a_duplicate_until_a_while_after_expiry() {
        let d = Dedup::new(10);
        let now = Utc::now();
        let exp = now + Duration::minutes(5);
        let src = |o| ("t".to_string(), 0, o);
        assert!(d.first_sight("a", src(1), exp, now));
        assert!(
            !d.first_sight("a", src(2), exp, now),
            "another message, same id"
        );
        assert!(
            d.first_sight("a", src(1), exp, now),
            "the same message redelivered"
        );
        assert!(
            !d.first_sight("a", src(3), exp, exp + Duration::seconds(1)),
            "kept a while after expiry"
        );
        assert!(
            d.first_sight("a", src(3), exp, exp + Duration::minutes(6)),
            "then forgotten"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let d = Dedup::new(3);
        let now = Utc::now();
        for i in 0..10 {
            let src = ("t".to_string(), 0, i);
            assert!(d.first_sight(&format!("r{i}"), src, now + Duration::minutes(i + 1), now));
        }
        assert_eq!(d.len(), 3);
        let other = ("t".to_string(), 0, 99);
        assert!(
            !d.first_sight("r9", other, now + Duration::minutes(10), now),
            "the latest are kept"
        );
    }
}
