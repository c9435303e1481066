//! Memory of the request_ids this worker has sent or has in flight, so a request published
//! twice is sent once. Bounded in size, and an id is forgotten a while after its code expired
//! (kept that while so a late copy is reported `duplicate`, not given a second final status).
//!
//! An id is remembered per app (ids are chosen by each login system, and one app's ids must
//! not suppress another's) together with a digest of what the request asks for (number and
//! code). The same id asking for something else is a [`Sight::Conflict`], not a
//! duplicate: it is refused on its own, and what the first request asked for is unaffected.
//!
//! It is the largest state a worker keeps per request handled (a heap profile of a 40,000
//! request backlog run: 10.3 MB of the worker's heap peak before entries were made small,
//! 2.4 MB after), so an entry is kept small: the key is shared by both indexes, and the
//! topic of the claiming message is stored once per topic.

use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// How long an id is remembered after its code expired.
const KEEP_AFTER_EXPIRY_MINUTES: i64 = 5;

/// Where a message came from: topic, partition, offset.
pub type Source = (String, i32, i64);

/// What the memory says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    /// Not seen (or the same message redelivered): go on.
    First,
    /// Seen before, asking for the same: a duplicate.
    Again,
    /// The id was claimed by a request asking for something else.
    Conflict,
}

/// The memory's key for a request: its app and its request_id.
pub fn key(app: Option<&str>, request_id: &str) -> String {
    // The separator cannot be part of an app or an id.
    format!("{}\u{1f}{request_id}", app.unwrap_or(""))
}

pub struct Dedup {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    /// Per key: the message that claimed it and the digest of what it asked for.
    claims: HashMap<Arc<str>, Claim>,
    /// Per key, its expiry, in time order.
    by_expiry: BTreeSet<(DateTime<Utc>, Arc<str>)>,
    /// The topics of claiming messages (a worker reads one or two), indexed by [`Claim`].
    topics: Vec<String>,
}

/// What is remembered of a key (its expiry is in the expiry index).
struct Claim {
    /// The claiming message: its topic (an index into `Inner::topics`), partition, offset.
    topic: u16,
    partition: i32,
    offset: i64,
    digest: Box<str>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    /// Remember `key` ([`key`]) with the `digest` of what it asks for until `expires_at`. The
    /// same message seen again (redelivered after its partition came back to us with its work
    /// abandoned) is not a duplicate: it was never finished.
    pub fn first_sight(
        &self,
        key: &str,
        digest: &str,
        source: Source,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Sight {
        let mut inner = self.inner.lock().expect("dedup lock");
        inner.forget_expired(now);
        if let Some(sight) = inner.sight(key, digest, &source) {
            return sight;
        }
        if inner.claims.len() >= self.capacity {
            // Full of live ids: forget the one closest to expiry, the least likely to recur.
            if let Some(first) = inner.by_expiry.pop_first() {
                inner.claims.remove(&first.1);
            }
        }
        let topic = inner.topic_index(&source.0);
        let key: Arc<str> = Arc::from(key);
        let claim = Claim {
            topic,
            partition: source.1,
            offset: source.2,
            digest: digest.into(),
        };
        // (A key already remembered was answered above: this one is new.)
        inner.claims.insert(key.clone(), claim);
        inner.by_expiry.insert((expires_at, key));
        Sight::First
    }

    /// What [`Dedup::first_sight`] would say, without remembering anything: asked before the
    /// rules that may still refuse the request, so that a refused request never holds an id.
    pub fn peek(&self, key: &str, digest: &str, source: &Source, now: DateTime<Utc>) -> Sight {
        let mut inner = self.inner.lock().expect("dedup lock");
        inner.forget_expired(now);
        inner.sight(key, digest, source).unwrap_or(Sight::First)
    }

    /// Ids remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("dedup lock").claims.len()
    }
}

impl Inner {
    /// What a remembered `key` says about a request; `None` when it is not remembered.
    fn sight(&self, key: &str, digest: &str, source: &Source) -> Option<Sight> {
        let claim = self.claims.get(key)?;
        let same_message = claim.partition == source.1
            && claim.offset == source.2
            && self.topics.get(usize::from(claim.topic)) == Some(&source.0);
        Some(if same_message {
            Sight::First
        } else if *claim.digest != *digest {
            Sight::Conflict
        } else {
            Sight::Again
        })
    }

    /// The index of `topic` in `topics`, added when new. A worker reads one or two topics;
    /// should more than `u16::MAX` ever come, the last index is shared (a redelivered
    /// message of such a topic would then be taken for a duplicate: safe, nothing is sent).
    fn topic_index(&mut self, topic: &str) -> u16 {
        if let Some(i) = self.topics.iter().position(|t| t == topic) {
            return u16::try_from(i).unwrap_or(u16::MAX);
        }
        if self.topics.len() <= usize::from(u16::MAX) {
            self.topics.push(topic.to_string());
        }
        u16::try_from(self.topics.len() - 1).unwrap_or(u16::MAX)
    }

    fn forget_expired(&mut self, now: DateTime<Utc>) {
        while let Some((exp, _)) = self.by_expiry.first() {
            if *exp + chrono::Duration::minutes(KEEP_AFTER_EXPIRY_MINUTES) > now {
                break;
            }
            let (_, id) = self.by_expiry.pop_first().expect("first exists");
            self.claims.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_peek_answers_like_a_sight_and_remembers_nothing() {
        let d = Dedup::new(10);
        let now = Utc::now();
        let exp = now + Duration::minutes(5);
        let src = |o| ("t".to_string(), 0, o);
        assert_eq!(d.peek("a", "d", &src(1), now), Sight::First);
        assert_eq!(d.len(), 0, "a peek claims nothing");
        assert_eq!(d.first_sight("a", "d", src(1), exp, now), Sight::First);
        assert_eq!(d.peek("a", "d", &src(2), now), Sight::Again);
        assert_eq!(d.peek("a", "other", &src(2), now), Sight::Conflict);
        assert_eq!(d.peek("a", "d", &src(1), now), Sight::First, "redelivered");
        let elsewhere = ("u".to_string(), 0, 1);
        assert_eq!(
            d.peek("a", "d", &elsewhere, now),
            Sight::Again,
            "the same partition and offset of another topic is another message"
        );
    }

    #[test]
    fn second_sight_is_a_duplicate_until_a_while_after_expiry() {
        let d = Dedup::new(10);
        let now = Utc::now();
        let exp = now + Duration::minutes(5);
        let src = |o| ("t".to_string(), 0, o);
        assert_eq!(d.first_sight("a", "d", src(1), exp, now), Sight::First);
        assert_eq!(
            d.first_sight("a", "d", src(2), exp, now),
            Sight::Again,
            "another message, same id"
        );
        assert_eq!(
            d.first_sight("a", "d", src(1), exp, now),
            Sight::First,
            "the same message redelivered"
        );
        assert_eq!(
            d.first_sight("a", "d", src(3), exp, exp + Duration::seconds(1)),
            Sight::Again,
            "kept a while after expiry"
        );
        assert_eq!(
            d.first_sight("a", "d", src(3), exp, exp + Duration::minutes(6)),
            Sight::First,
            "then forgotten"
        );
    }

    #[test]
    fn the_same_id_asking_for_something_else_is_a_conflict_and_ids_are_per_app() {
        let d = Dedup::new(10);
        let now = Utc::now();
        let exp = now + Duration::minutes(5);
        let src = |o| ("t".to_string(), 0, o);
        let web = key(Some("web"), "login-1");
        assert_eq!(
            d.first_sight(&web, "to-alice", src(1), exp, now),
            Sight::First
        );
        assert_eq!(
            d.first_sight(&web, "to-mallory", src(2), exp, now),
            Sight::Conflict,
            "same app and id, another number or code"
        );
        assert_eq!(
            d.first_sight(&web, "to-alice", src(3), exp, now),
            Sight::Again
        );
        let app = key(Some("app"), "login-1");
        assert_eq!(
            d.first_sight(&app, "to-mallory", src(4), exp, now),
            Sight::First,
            "another app's id is its own"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let d = Dedup::new(3);
        let now = Utc::now();
        for i in 0..10 {
            let src = ("t".to_string(), 0, i);
            let seen = d.first_sight(
                &format!("r{i}"),
                "d",
                src,
                now + Duration::minutes(i + 1),
                now,
            );
            assert_eq!(seen, Sight::First);
        }
        assert_eq!(d.len(), 3);
        let other = ("t".to_string(), 0, 99);
        assert_eq!(
            d.first_sight("r9", "d", other, now + Duration::minutes(10), now),
            Sight::Again,
            "the latest are kept"
        );
    }
}
