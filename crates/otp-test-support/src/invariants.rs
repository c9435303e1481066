//! What the pipeline promises, checked from the outside after a scenario: given the requests
//! that were acknowledged, the status topic read back, and what the provider simulator
//! received, count what went wrong. Every fault scenario ends with [`check`] and prints the
//! [`Verdict`], so a failure says what happened, not only that something did.

use otp_events::CodeRequest;
use otp_provider_sim::Received;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;

#[derive(Debug, Default)]
pub struct Verdict {
    pub requests: usize,
    /// Requests with no final status (`sent`, `failed` or `expired`): lost.
    pub lost: Vec<String>,
    /// Final statuses beyond the first, summed over requests (a redelivered message is
    /// handled again by a worker that does not remember it).
    pub extra_finals: usize,
    /// Of those, the ones that said `expired`: a message handled again after its code's
    /// life (or too close to its end to try) is reported expired without a send.
    pub extra_expired: usize,
    /// `fallback` statuses with no later status on the channel they handed over to.
    pub fallbacks_not_followed: Vec<String>,
    /// Provider accepts beyond the first per request (a code the user got twice).
    pub duplicate_sends: usize,
    /// Provider requests that arrived after the code's `expires_at`.
    pub sends_after_expiry: usize,
    /// Requests the provider accepted at least once.
    pub delivered: usize,
}

impl Verdict {
    /// Whether what [`Self::assert_nothing_lost`] asserts holds.
    pub fn promises_hold(&self) -> bool {
        self.lost.is_empty()
            && self.fallbacks_not_followed.is_empty()
            && self.sends_after_expiry == 0
    }

    /// The promises that hold whatever the fault: nothing lost, every fallback followed, no
    /// code sent after it expired.
    pub fn assert_nothing_lost(&self) {
        assert!(
            self.promises_hold(),
            "{self}\nlost (first 5): {:?}\nfallbacks not followed (first 5): {:?}",
            &self.lost[..self.lost.len().min(5)],
            &self.fallbacks_not_followed[..self.fallbacks_not_followed.len().min(5)],
        );
    }
}

/// Everything the outside saw of each lost request (the first 5): when it expires, the
/// provider calls to its number, its statuses in `statuses` and in `again` (the status topic
/// read once more after the workers stopped: late, or never written?), and every line of the
/// named logs that mentions its id. A lost request is a bug to be found, so its failure must
/// carry the trail.
pub fn trail(
    v: &Verdict,
    requests: &[CodeRequest],
    statuses: &[Value],
    again: &[Value],
    sends: &[Received],
    logs: &[(&str, String)],
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for id in v.lost.iter().take(5) {
        let r = requests.iter().find(|r| r.request_id == *id);
        let calls: Vec<(&str, i64)> = sends
            .iter()
            .filter(|m| r.is_some_and(|r| r.phone == m.to))
            .map(|m| (m.outcome.as_str(), m.received_at_ms))
            .collect();
        let of = |all: &[Value]| -> Vec<String> {
            all.iter()
                .filter(|s| s["request_id"] == *id.as_str())
                .map(|s| format!("{}@{}", s["status"], s["occurred_at"]))
                .collect()
        };
        let _ = writeln!(
            out,
            "lost {id}: expires {:?}; provider calls {calls:?}; statuses {:?}; read again after the stop {:?}",
            r.map(|r| r.expires_at),
            of(statuses),
            of(again)
        );
        for (name, log) in logs {
            for line in log.lines().filter(|l| l.contains(id.as_str())) {
                let _ = writeln!(out, "  [{name}] {line}");
            }
        }
    }
    out
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariants: {} requests, {} lost, {} extra final statuses, {} fallbacks not \
             followed, {} delivered, {} duplicate sends, {} sends after expiry",
            self.requests,
            self.lost.len(),
            self.extra_finals,
            self.fallbacks_not_followed.len(),
            self.delivered,
            self.duplicate_sends,
            self.sends_after_expiry
        )
    }
}

/// Check `requests` (each to a distinct phone number, which is how provider requests are
/// matched to them: SMS requests carry no request_id) against `statuses` (the status topic,
/// in topic order) and `sends` (the simulator's record).
pub fn check(requests: &[CodeRequest], statuses: &[Value], sends: &[Received]) -> Verdict {
    let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for s in statuses {
        if let Some(id) = s["request_id"].as_str() {
            by_id.entry(id).or_default().push(s);
        }
    }
    let by_phone: HashMap<&str, &CodeRequest> =
        requests.iter().map(|r| (r.phone.as_str(), r)).collect();
    assert_eq!(
        by_phone.len(),
        requests.len(),
        "scenarios must give every request its own phone number"
    );

    let mut v = Verdict {
        requests: requests.len(),
        ..Verdict::default()
    };
    for r in requests {
        let story = by_id
            .get(r.request_id.as_str())
            .cloned()
            .unwrap_or_default();
        let finals = story.iter().filter(|s| s["final"] == true).count();
        if finals == 0 {
            v.lost.push(r.request_id.clone());
        }
        v.extra_finals += finals.saturating_sub(1);
        v.extra_expired += story
            .iter()
            .filter(|s| s["final"] == true)
            .skip(1)
            .filter(|s| s["status"] == "expired")
            .count();
        for (i, s) in story.iter().enumerate() {
            if s["status"] != "fallback" {
                continue;
            }
            let next = &s["next_channel"];
            if !story[i + 1..].iter().any(|later| &later["channel"] == next) {
                v.fallbacks_not_followed.push(r.request_id.clone());
            }
        }
    }

    let mut accepted: HashMap<&str, usize> = HashMap::new();
    for m in sends {
        let Some(r) = by_phone.get(m.to.as_str()) else {
            continue;
        };
        if m.received_at_ms > r.expires_at.timestamp_millis() {
            v.sends_after_expiry += 1;
        }
        if m.outcome == "accepted" {
            *accepted.entry(m.to.as_str()).or_default() += 1;
        }
    }
    v.delivered = accepted.len();
    v.duplicate_sends = accepted.values().map(|n| n - 1).sum();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use otp_events::{Channel, Submission};
    use serde_json::json;

    fn request(phone: &str) -> CodeRequest {
        Submission::new(
            phone,
            "123456",
            vec![Channel::Whatsapp, Channel::Sms],
            chrono::Duration::minutes(5),
        )
        .complete(chrono::Utc::now())
    }

    fn send(to: &str, outcome: &str, at_ms: i64) -> Received {
        Received {
            api: "sms".into(),
            to: to.into(),
            code: "123456".into(),
            request_id: None,
            received_at_ms: at_ms,
            outcome: outcome.into(),
            provider_message_id: None,
            language: None,
        }
    }

    #[test]
    fn counts_what_went_wrong() {
        let (a, b, c) = (
            request("+15550001"),
            request("+15550002"),
            request("+15550003"),
        );
        let now = chrono::Utc::now().timestamp_millis();
        let statuses = vec![
            json!({"request_id": a.request_id, "status": "sent", "channel": "sms", "final": true}),
            json!({"request_id": a.request_id, "status": "sent", "channel": "sms", "final": true}),
            json!({"request_id": a.request_id, "status": "expired", "channel": "sms", "final": true}),
            json!({"request_id": b.request_id, "status": "fallback", "channel": "whatsapp",
                   "next_channel": "sms", "final": false}),
        ];
        let sends = vec![
            send("+15550001", "accepted", now),
            send("+15550001", "accepted", now),
            send("+15550003", "accepted", c.expires_at.timestamp_millis() + 1),
        ];
        let v = check(&[a, b.clone(), c.clone()], &statuses, &sends);
        assert_eq!(v.lost, vec![b.request_id.clone(), c.request_id.clone()]);
        assert_eq!((v.extra_finals, v.extra_expired), (2, 1));
        assert_eq!(v.fallbacks_not_followed, vec![b.request_id]);
        assert_eq!((v.delivered, v.duplicate_sends), (2, 1));
        assert_eq!(v.sends_after_expiry, 1);
        assert!(v.to_string().contains("2 lost"), "{v}");
    }
}
