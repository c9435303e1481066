//! Codes and phone numbers sealed inside Kafka.
//!
//! A code request's `phone` and `code` are what an attacker wants; on the request topics, in
//! pending confirmations and in dead letters they would otherwise sit in plaintext for the
//! topics' retention, readable by every Kafka admin and every principal with read access. So
//! the producer seals them together into one field, `sealed`, with ChaCha20-Poly1305 (RustCrypto
//! `chacha20poly1305`): `"<key id>:<base64 of nonce ‖ ciphertext>"`. The request's `schema` and
//! `request_id` are the associated data, so a sealed secret moved to another request does not
//! open. Everything else (request_id, channels, deadlines, app; the phone hash is the message
//! key) stays in clear for keying, limits and analytics.
//!
//! Keys come as a [`Keyring`]: the first key seals, any listed key opens, so keys rotate without
//! downtime (add the new key second everywhere, then first, then drop the old one once nothing
//! sealed with it is retained). Workers open the envelope in memory only, and everything they
//! write back (fallback requests, pending confirmations) is sealed again.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One `id=<64 hex digits>` entry of a keyring (sealing keys, record keys): the id (1 to 32
/// letters, digits, `-`, `_`) and the 32-byte key, or the rule it breaks (never the key).
pub(crate) fn key_entry(item: &str) -> Result<(&str, [u8; 32]), &'static str> {
    let (id, hex_key) = item.split_once('=').ok_or("each key must be ID=HEX")?;
    let valid_id = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_id {
        return Err("a key id must be 1 to 32 letters, digits, '-' or '_'");
    }
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(|key| (id, key))
        .ok_or("a key must be 64 hex digits (32 bytes)")
}

/// Why a keyring or a sealed value was refused. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("keyring: {0}")]
    Keyring(&'static str),
    #[error("was sealed with key id {0:?}, which this reader does not hold")]
    UnknownKey(String),
    #[error("is not a sealed value (\"<key id>:<base64>\")")]
    Malformed,
    #[error("does not open: not sealed for this request (forged, corrupted, or moved from another request)")]
    DoesNotOpen,
    #[error("is sealed, but this reader has no keys (set OTP_SEAL_KEYS)")]
    NoKeys,
}

#[derive(Clone)]
struct SealKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

/// The keys that seal and open codes and numbers: the first seals.
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<Vec<SealKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Secret<'a> {
    phone: &'a str,
    code: &'a str,
}

impl Keyring {
    /// Environment variable holding the keyring (or `OTP_SEAL_KEYS_FILE`, a file holding it).
    pub const ENV: &'static str = "OTP_SEAL_KEYS";

    /// From `"id=<64 hex digits>,id=<64 hex digits>"`: the first key seals. Ids are short
    /// identifiers (letters, digits, `-`, `_`).
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, bytes) = key_entry(item).map_err(SealError::Keyring)?;
            if keys.iter().any(|k: &SealKey| k.id == id) {
                return Err(SealError::Keyring("a key id is listed twice"));
            }
            keys.push(SealKey {
                id: id.to_string(),
                cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            });
        }
        if keys.is_empty() {
            return Err(SealError::Keyring("no key listed"));
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// A keyring of one new random key, as `id=hex` text too (for demos, tests and
    /// `otp keys`-style set-up).
    pub fn generate(id: &str) -> (Self, String) {
        let text = format!("{id}={}", hex::encode(rand::random::<[u8; 32]>()));
        let ring = Self::parse(&text).expect("a generated keyring is valid");
        (ring, text)
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seal `phone` and `code` for the request `request_id` of `schema`.
    pub fn seal(&self, schema: &str, request_id: &str, phone: &str, code: &str) -> String {
        let key = &self.keys[0];
        let nonce_bytes: [u8; 12] = rand::random();
        let plaintext = serde_json::to_vec(&Secret { phone, code }).expect("serialises");
        let aad = associated_data(schema, request_id);
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 seals any message of this size");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{}:{}",
            key.id,
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    /// Open what [`Keyring::seal`] sealed for this request: `(phone, code)`.
    pub fn open(
        &self,
        schema: &str,
        request_id: &str,
        sealed: &str,
    ) -> Result<(String, String), SealError> {
        let (id, body) = sealed.split_once(':').ok_or(SealError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.chars().take(32).collect()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let aad = associated_data(schema, request_id);
        let plaintext = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::DoesNotOpen)?;
        let secret: Secret<'_> =
            serde_json::from_slice(&plaintext).map_err(|_| SealError::DoesNotOpen)?;
        Ok((secret.phone.to_string(), secret.code.to_string()))
    }
}

/// The key id a sealed value names, for the `otp-key-id` header.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    sealed.split_once(':').map(|(id, _)| id)
}

fn associated_data(schema: &str, request_id: &str) -> Vec<u8> {
    format!("{schema}\n{request_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_sealed_opens_only_for_its_request_and_with_a_listed_key() {
        let (ring, text) = Keyring::generate("k1");
        let sealed = ring.seal("otp.code_request.v1", "req-1", "+15551234567", "123456");
        assert!(sealed.starts_with("k1:"));
        assert!(!sealed.contains("5551234567") && !sealed.contains("123456"));
        assert_eq!(
            ring.open("otp.code_request.v1", "req-1", &sealed),
            Ok(("+15551234567".to_string(), "123456".to_string()))
        );
        assert_eq!(
            ring.open("otp.code_request.v1", "req-2", &sealed),
            Err(SealError::DoesNotOpen),
            "moved to another request"
        );
        // Rotation: a new key first, the old one still listed, opens what the old one sealed.
        let (_, newer) = Keyring::generate("k2");
        let rotated = Keyring::parse(&format!("{newer},{text}")).unwrap();
        assert_eq!(rotated.current_id(), "k2");
        assert!(rotated
            .open("otp.code_request.v1", "req-1", &sealed)
            .is_ok());
        let (stranger, _) = Keyring::generate("k9");
        assert_eq!(
            stranger.open("otp.code_request.v1", "req-1", &sealed),
            Err(SealError::UnknownKey("k1".into()))
        );
        let mut tampered = sealed.clone();
        tampered.replace_range(sealed.len() - 4.., "AAAA");
        assert_eq!(
            ring.open("otp.code_request.v1", "req-1", &tampered),
            Err(SealError::DoesNotOpen)
        );
    }

    #[test]
    fn a_bad_keyring_names_the_rule() {
        for (text, rule) in [
            ("", "no key listed"),
            ("k1", "ID=HEX"),
            ("k1=00", "64 hex digits"),
            ("a b=00", "key id"),
        ] {
            let e = Keyring::parse(text).unwrap_err().to_string();
            assert!(e.contains(rule), "{text}: {e}");
        }
    }
}
