//! Provenance of internal records: which of our roles wrote a record that another of our
//! services acts on.
//!
//! Kafka's ACLs decide who may write a topic; they are a second wall, not the only one. A
//! pending confirmation makes the tracker sign a fallback, a receipt settles a send, an abuse
//! admission counts against a number, a channel signal opens a circuit: whoever can write such
//! a record could pump SMS to premium numbers, lock a user out or stop a channel. So every such
//! record carries a MAC made with a key of the *role* that wrote it, in the
//! [`HEADER_RECORD_MAC`] header, and its reader checks it against the roles it accepts for
//! that topic before acting. A record that does not verify is refused, counted and alerted on,
//! never acted on.
//!
//! The header is `<role>.<key id>.<hex HMAC-SHA256>`; the MAC covers a version label, the
//! record's schema (the `otp-schema` header's value), its Kafka key and its payload (or its
//! absence: a tombstone is authenticated too), each length-prefixed. Keys come as one
//! keyring per role in `OTP_RECORD_KEYS`: `worker:w1=<64 hex>,tracker:t1=<64 hex>,...`. A
//! role's first key signs, any of its keys verifies, so keys rotate as the sealing keyring's
//! do (add the new key second everywhere, move it first, drop the old one once the topics'
//! retention has passed). Each service holds the keys of the role it writes as and of the
//! roles it reads: workers `worker` and `tracker` (receipts' channel signals come from the
//! tracker), the tracker `worker`, `tracker` and `ingress`, the receipts ingress `ingress`.
//! Producers hold none.
//!
//! A MAC key verifies and signs alike: a service that reads a role's records could forge
//! them. The roles separate what a service that holds none of a role's keys can do (a login
//! system's producer, the ingress for pending records); they do not separate the services
//! that share a key.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The header holding a record's MAC.
pub const HEADER_RECORD_MAC: &str = "otp-record-mac";

const LABEL: &[u8] = b"otp-record-mac/v1";

/// Who wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The delivery workers: pending confirmations, the message index, abuse admissions.
    Worker,
    /// The confirmation tracker: its records' new states, receipts it hands on, channel
    /// signals from receipts.
    Tracker,
    /// The receipts ingress: receipts, channel signals from provider system errors.
    Ingress,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Worker, Role::Tracker, Role::Ingress];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Tracker => "tracker",
            Role::Ingress => "ingress",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Why a keyring was refused, or a record did not verify. Never holds a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvenanceError {
    #[error("OTP_RECORD_KEYS: {0}")]
    Keys(String),
    #[error("no {HEADER_RECORD_MAC} header")]
    Missing,
    #[error("{HEADER_RECORD_MAC}: not \"<role>.<key id>.<hex>\"")]
    Malformed,
    #[error("written as role {0:?}, which this topic does not take records from")]
    WrongRole(String),
    #[error("signed with {role} key id {id:?}, which this reader does not hold")]
    UnknownKey { role: &'static str, id: String },
    #[error("the MAC does not match the record (forged, altered, or keyed for another record)")]
    Mismatch,
}

impl ProvenanceError {
    /// Every value [`ProvenanceError::kind`] gives.
    pub const KINDS: [&'static str; 6] = [
        "keys",
        "missing",
        "malformed",
        "wrong_role",
        "unknown_key",
        "mismatch",
    ];

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProvenanceError::Keys(_) => "keys",
            ProvenanceError::Missing => "missing",
            ProvenanceError::Malformed => "malformed",
            ProvenanceError::WrongRole(_) => "wrong_role",
            ProvenanceError::UnknownKey { .. } => "unknown_key",
            ProvenanceError::Mismatch => "mismatch",
        }
    }
}

#[derive(Clone)]
struct RecordKey {
    id: String,
    mac: Hmac<Sha256>,
}

/// Each role's keys: the first signs.
#[derive(Clone)]
pub struct RecordKeys {
    roles: Arc<BTreeMap<Role, Vec<RecordKey>>>,
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: BTreeMap<&str, Vec<&str>> = self
            .roles
            .iter()
            .map(|(r, keys)| (r.as_str(), keys.iter().map(|k| k.id.as_str()).collect()))
            .collect();
        f.debug_struct("RecordKeys").field("key_ids", &ids).finish()
    }
}

/// What a record is, for its MAC: its schema, key and payload.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub schema: &'a str,
    pub key: &'a [u8],
    pub payload: Option<&'a [u8]>,
}

impl RecordKeys {
    /// Environment variable holding the keys (or `OTP_RECORD_KEYS_FILE`).
    pub const ENV: &'static str = "OTP_RECORD_KEYS";

    /// From `"role:id=<64 hex>,role:id=<64 hex>"`; roles are `worker`, `tracker`, `ingress`.
    pub fn parse(text: &str) -> Result<Self, ProvenanceError> {
        let bad = |m: &str| ProvenanceError::Keys(m.to_string());
        let mut roles: BTreeMap<Role, Vec<RecordKey>> = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (role, rest) = item
                .split_once(':')
                .ok_or_else(|| bad("each key must be ROLE:ID=HEX"))?;
            let role = Role::parse(role.trim())
                .ok_or_else(|| bad("a role must be worker, tracker or ingress"))?;
            let (id, bytes) = crate::seal::key_entry(rest).map_err(bad)?;
            let keys = roles.entry(role).or_default();
            if keys.iter().any(|k| k.id == id) {
                return Err(bad("a key id is listed twice for one role"));
            }
            keys.push(RecordKey {
                id: id.to_string(),
                mac: Hmac::new_from_slice(&bytes).expect("HMAC takes a key of any length"),
            });
        }
        if roles.is_empty() {
            return Err(bad("no key listed"));
        }
        Ok(Self {
            roles: Arc::new(roles),
        })
    }

    /// One new random key per role, as `OTP_RECORD_KEYS` text too (for demos and tests).
    pub fn generate() -> (Self, String) {
        let text = Role::ALL
            .iter()
            .map(|r| {
                let key = hex::encode(rand::random::<[u8; 32]>());
                format!("{}:{}1={key}", r.as_str(), r.as_str())
            })
            .collect::<Vec<_>>()
            .join(",");
        (Self::parse(&text).expect("generated keys are valid"), text)
    }

    /// Fail unless every role in `needed` has a key, naming those that do not.
    pub fn require(&self, needed: &[Role]) -> Result<(), ProvenanceError> {
        let missing: Vec<&str> = needed
            .iter()
            .filter(|r| !self.roles.contains_key(r))
            .map(|r| r.as_str())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ProvenanceError::Keys(format!(
                "no key for role(s) {}: this service writes or reads their records",
                missing.join(", ")
            )))
        }
    }

    /// The header value for `record` written as `role` (whose key must be held: see
    /// [`RecordKeys::require`]).
    pub fn sign(&self, role: Role, record: Record<'_>) -> String {
        let key = self
            .roles
            .get(&role)
            .and_then(|keys| keys.first())
            .unwrap_or_else(|| panic!("no {} record key: checked at start", role.as_str()));
        format!(
            "{}.{}.{}",
            role.as_str(),
            key.id,
            hex::encode(mac(&key.mac, record))
        )
    }

    /// The role that wrote `record`, if `header` is a valid MAC of it by one of `accepted`.
    pub fn verify(
        &self,
        header: Option<&[u8]>,
        accepted: &[Role],
        record: Record<'_>,
    ) -> Result<Role, ProvenanceError> {
        let header = header.ok_or(ProvenanceError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| ProvenanceError::Malformed)?;
        let mut parts = header.splitn(3, '.');
        let (Some(role), Some(id), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ProvenanceError::Malformed);
        };
        let tag = hex::decode(tag).map_err(|_| ProvenanceError::Malformed)?;
        let role = Role::parse(role)
            .filter(|r| accepted.contains(r))
            .ok_or_else(|| ProvenanceError::WrongRole(role.chars().take(16).collect()))?;
        let key = self
            .roles
            .get(&role)
            .and_then(|keys| keys.iter().find(|k| k.id == id))
            .ok_or_else(|| ProvenanceError::UnknownKey {
                role: role.as_str(),
                id: id.chars().take(32).collect(),
            })?;
        let mut check = key.mac.clone();
        feed(&mut check, record);
        check
            .verify_slice(&tag)
            .map(|()| role)
            .map_err(|_| ProvenanceError::Mismatch)
    }
}

fn mac(key: &Hmac<Sha256>, record: Record<'_>) -> Vec<u8> {
    let mut mac = key.clone();
    feed(&mut mac, record);
    mac.finalize().into_bytes().to_vec()
}

fn feed(mac: &mut Hmac<Sha256>, record: Record<'_>) {
    let mut part = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    part(LABEL);
    part(record.schema.as_bytes());
    part(record.key);
    match record.payload {
        Some(payload) => {
            part(b"payload");
            part(payload);
        }
        None => part(b"tombstone"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "worker:w1=0000000000000000000000000000000000000000000000000000000000000001,\
                        worker:w0=0000000000000000000000000000000000000000000000000000000000000002,\
                        ingress:i1=0000000000000000000000000000000000000000000000000000000000000003";

    fn record<'a>(payload: Option<&'a [u8]>) -> Record<'a> {
        Record {
            schema: "otp.pending_confirmation.v1",
            key: b"req-1",
            payload,
        }
    }

    #[test]
    fn a_signed_record_verifies_for_its_role_and_nothing_else() {
        let keys = RecordKeys::parse(KEYS).unwrap();
        let header = keys.sign(Role::Worker, record(Some(b"{}")));
        assert!(header.starts_with("worker.w1."), "{header}");
        let h = Some(header.as_bytes());
        assert_eq!(
            keys.verify(h, &[Role::Worker], record(Some(b"{}"))),
            Ok(Role::Worker)
        );
        // Another payload, key, schema, a tombstone: none verifies.
        assert_eq!(
            keys.verify(h, &[Role::Worker], record(Some(b"{ }"))),
            Err(ProvenanceError::Mismatch)
        );
        let other_key = Record {
            key: b"req-2",
            ..record(Some(b"{}"))
        };
        assert_eq!(
            keys.verify(h, &[Role::Worker], other_key),
            Err(ProvenanceError::Mismatch)
        );
        let other_schema = Record {
            schema: "otp.message_index.v1",
            ..record(Some(b"{}"))
        };
        assert_eq!(
            keys.verify(h, &[Role::Worker], other_schema),
            Err(ProvenanceError::Mismatch)
        );
        assert_eq!(
            keys.verify(h, &[Role::Worker], record(None)),
            Err(ProvenanceError::Mismatch)
        );
        // A topic that takes only the ingress's records refuses the worker's.
        assert_eq!(
            keys.verify(h, &[Role::Ingress], record(Some(b"{}"))),
            Err(ProvenanceError::WrongRole("worker".into()))
        );
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_refused() {
        let keys = RecordKeys::parse(KEYS).unwrap();
        let r = record(Some(b"{}"));
        assert_eq!(
            keys.verify(None, &[Role::Worker], r),
            Err(ProvenanceError::Missing)
        );
        assert_eq!(
            keys.verify(Some(b"worker.w1"), &[Role::Worker], r),
            Err(ProvenanceError::Malformed)
        );
        assert_eq!(
            keys.verify(Some(b"worker.w1.zz"), &[Role::Worker], r),
            Err(ProvenanceError::Malformed)
        );
        assert_eq!(
            keys.verify(Some(b"worker.w9.00"), &[Role::Worker], r),
            Err(ProvenanceError::UnknownKey {
                role: "worker",
                id: "w9".into()
            })
        );
        // Signed by a keyring this reader does not share.
        let (stranger, _) = RecordKeys::generate();
        let forged = stranger.sign(Role::Worker, r);
        assert!(keys
            .verify(Some(forged.as_bytes()), &[Role::Worker], r)
            .is_err());
    }

    #[test]
    fn every_kind_is_listed() {
        let all = [
            ProvenanceError::Keys(String::new()),
            ProvenanceError::Missing,
            ProvenanceError::Malformed,
            ProvenanceError::WrongRole(String::new()),
            ProvenanceError::UnknownKey {
                role: "worker",
                id: String::new(),
            },
            ProvenanceError::Mismatch,
        ];
        let kinds: Vec<&str> = all.iter().map(ProvenanceError::kind).collect();
        assert_eq!(kinds, ProvenanceError::KINDS);
    }

    #[test]
    fn keys_rotate_any_listed_key_verifies() {
        let old = RecordKeys::parse(
            "worker:w0=0000000000000000000000000000000000000000000000000000000000000002",
        )
        .unwrap();
        let header = old.sign(Role::Worker, record(Some(b"x")));
        let new = RecordKeys::parse(KEYS).unwrap();
        assert_eq!(
            new.verify(Some(header.as_bytes()), &[Role::Worker], record(Some(b"x"))),
            Ok(Role::Worker)
        );
    }

    #[test]
    fn bad_key_text_names_the_rule_never_the_key() {
        for (text, rule) in [
            ("", "no key listed"),
            ("worker=00", "ROLE:ID=HEX"),
            ("worker:a", "ID=HEX"),
            ("admin:a=00", "worker, tracker or ingress"),
            ("worker:a=0011", "64 hex digits"),
            ("worker:a b=00", "key id"),
        ] {
            let e = RecordKeys::parse(text).unwrap_err().to_string();
            assert!(e.contains(rule), "{text:?}: {e}");
            assert!(!e.contains("0011"), "{e}");
        }
        let keys = RecordKeys::parse(KEYS).unwrap();
        let e = keys.require(&[Role::Worker, Role::Tracker]).unwrap_err();
        assert!(e.to_string().contains("tracker"), "{e}");
        assert!(keys.require(&[Role::Worker, Role::Ingress]).is_ok());
    }
}
