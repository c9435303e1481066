//! Codes and phone numbers sealed inside Kafka.
//!
//! A code request's `phone` and `code` are what an attacker wants; on the request topics, in
//! pending confirmations and in dead letters they would otherwise sit in plaintext for the
//! topics' retention, readable by every Kafka admin and every principal with read access. So
//! the producer seals them together into one field, `sealed`, with ChaCha20-Poly1305 (RFC
//! 8439, RustCrypto `chacha20poly1305`): `"<key id>:<base64 of nonce ‖ ciphertext>"`. The
//! request's `schema`, `app` and `request_id` are the associated data, so a sealed secret moved
//! to another request, or to another app's request of the same id, does not open. Everything
//! else (request_id, channels, deadlines, app; the phone hash is the message key) stays in
//! clear for keying, limits and analytics. The envelope, byte for byte, with a test vector
//! that [`tests`] checks: `schemas/README.md`, "The sealed envelope".
//!
//! Keys come as a [`Keyring`]: a key seals, any listed key opens, so keys rotate without
//! downtime (add the new key second everywhere, then first, then drop the old one once nothing
//! sealed with it is retained). A key may be **scoped to one app** (`id@app=hex`): it seals and
//! opens that app's requests only. A login system's producer then holds its own app's key
//! only, and cannot open or forge another app's codes, while the workers hold every app's.
//! Workers open the envelope in memory only, and everything they write back (fallback
//! requests, pending confirmations) is sealed again.
//!
//! Values sealed before the app was bound (associated data `schema \n request_id`) still open,
//! under unscoped keys only: scoped keys are newer than the binding, so nothing of theirs
//! predates it.

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
    #[error("was sealed with key id {0:?}, which belongs to another app than the request's")]
    OtherApp(String),
    #[error(
        "cannot be sealed: no key of OTP_SEAL_KEYS is for this app (each is scoped to another app)"
    )]
    NoKeyForApp,
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
    /// The one app whose requests it seals and opens; `None`: every app's.
    app: Option<String>,
    cipher: ChaCha20Poly1305,
    /// Signs what a login system reports about its requests (see [`Keyring::sign_report`]):
    /// HMAC-SHA256(key, [`REPORT_KEY_LABEL`]), so the cipher key is never an HMAC key itself.
    report_key: [u8; 32],
}

impl SealKey {
    fn serves(&self, app: Option<&str>) -> bool {
        self.app.as_deref().is_none_or(|own| Some(own) == app)
    }
}

/// The keys that seal and open codes and numbers: the first seals.
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<Vec<SealKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self
            .keys
            .iter()
            .map(|k| match &k.app {
                Some(app) => format!("{}@{app}", k.id),
                None => k.id.clone(),
            })
            .collect();
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

    /// From `"id=<64 hex digits>,id@app=<64 hex digits>"`: for each request, the first key
    /// that serves its app seals (a key `id@app` serves that app only; `id`, every app). Ids
    /// are short identifiers (letters, digits, `-`, `_`); apps are as in a code request.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (scope, app) = match item.split_once('=') {
                Some((head, hex_key)) => match head.split_once('@') {
                    Some((id, app)) => (format!("{id}={hex_key}"), Some(app)),
                    None => (item.to_string(), None),
                },
                None => (item.to_string(), None),
            };
            if app.is_some_and(|a| !crate::validate::is_valid_app(a)) {
                return Err(SealError::Keyring(
                    "the app of `id@app` must be 1 to 64 letters, digits, '.', '_' or '-'",
                ));
            }
            let (id, bytes) = key_entry(&scope).map_err(SealError::Keyring)?;
            if keys.iter().any(|k: &SealKey| k.id == id) {
                return Err(SealError::Keyring("a key id is listed twice"));
            }
            keys.push(SealKey {
                id: id.to_string(),
                app: app.map(str::to_owned),
                cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
                report_key: hmac_sha256(&bytes, &[REPORT_KEY_LABEL]),
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

    /// Seal `phone` and `code` for the request `request_id` of `app` and `schema`, with the
    /// first key that serves `app`.
    pub fn seal(&self, request: Sealed<'_>, phone: &str, code: &str) -> Result<String, SealError> {
        self.seal_with_nonce(request, phone, code, rand::random())
    }

    /// [`Keyring::seal`] with a given nonce: for the envelope's test vector only. A nonce must
    /// never repeat under one key.
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &self,
        request: Sealed<'_>,
        phone: &str,
        code: &str,
        nonce: [u8; 12],
    ) -> Result<String, SealError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.serves(request.app))
            .ok_or(SealError::NoKeyForApp)?;
        let plaintext = serde_json::to_vec(&Secret { phone, code }).expect("serialises");
        let aad = request.associated_data();
        let sealed = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 seals any message of this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{}:{}",
            key.id,
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Whether some key of this ring seals `app`'s requests.
    pub fn seals_for(&self, app: Option<&str>) -> bool {
        self.keys.iter().any(|k| k.serves(app))
    }

    /// Open what [`Keyring::seal`] sealed for this request: `(phone, code)`.
    pub fn open(&self, request: Sealed<'_>, sealed: &str) -> Result<(String, String), SealError> {
        let (id, body) = sealed.split_once(':').ok_or(SealError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.chars().take(32).collect()))?;
        if !key.serves(request.app) {
            return Err(SealError::OtherApp(key.id.clone()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let decrypt = |aad: &[u8]| {
            key.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad,
                    },
                )
                .ok()
        };
        let plaintext = decrypt(&request.associated_data())
            // Sealed before the app was bound: unscoped keys only (see the module's doc).
            .or_else(|| {
                key.app
                    .is_none()
                    .then(|| decrypt(&request.unbound_associated_data()))
                    .flatten()
            })
            .ok_or(SealError::DoesNotOpen)?;
        let secret: Secret<'_> =
            serde_json::from_slice(&plaintext).map_err(|_| SealError::DoesNotOpen)?;
        Ok((secret.phone.to_string(), secret.code.to_string()))
    }
}

impl Keyring {
    /// Sign a record a login system writes about one of its requests (a verification outcome)
    /// with the first key that serves `app`: `"<key id>.<64 hex>"`, for the
    /// [`crate::HEADER_REPORT_MAC`] header. The MAC covers [`REPORT_MAC_LABEL`], the record's
    /// schema, its app (empty without one), its Kafka key and its payload, each
    /// length-prefixed. The producer that seals an app's codes holds the key: no one else
    /// (another app's producer included) can report for that app's requests.
    pub fn sign_report(
        &self,
        schema: &str,
        app: Option<&str>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<String, SealError> {
        let signer = self
            .keys
            .iter()
            .find(|k| k.serves(app))
            .ok_or(SealError::NoKeyForApp)?;
        use hmac::Mac;
        let mac = report_hmac(&signer.report_key, schema, app, key, payload).finalize();
        Ok(format!("{}.{}", signer.id, hex::encode(mac.into_bytes())))
    }

    /// Whether `header` is a valid [`Keyring::sign_report`] MAC of this record by a key that
    /// serves `app`. Compared in constant time.
    pub fn verify_report(
        &self,
        schema: &str,
        app: Option<&str>,
        key: &[u8],
        payload: &[u8],
        header: &str,
    ) -> bool {
        let Some((id, mac_hex)) = header.split_once('.') else {
            return false;
        };
        let Ok(mac) = hex::decode(mac_hex) else {
            return false;
        };
        self.keys
            .iter()
            .filter(|k| k.id == id && k.serves(app))
            .any(|k| {
                use hmac::Mac;
                report_hmac(&k.report_key, schema, app, key, payload)
                    .verify_slice(&mac)
                    .is_ok()
            })
    }
}

/// What a sealing key is turned into before it signs reports.
pub const REPORT_KEY_LABEL: &[u8] = b"otp-report-key/v1";
/// The first field of a report's MAC.
pub const REPORT_MAC_LABEL: &[u8] = b"otp-report-mac/v1";

fn new_hmac(key: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = new_hmac(key);
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// The HMAC of a report under `report_key`, fed every covered part, each length-prefixed:
/// signing finalizes it, verifying compares it in constant time.
fn report_hmac(
    report_key: &[u8; 32],
    schema: &str,
    app: Option<&str>,
    key: &[u8],
    payload: &[u8],
) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut m = new_hmac(report_key);
    for part in [
        REPORT_MAC_LABEL,
        schema.as_bytes(),
        app.unwrap_or("").as_bytes(),
        key,
        payload,
    ] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m
}

/// The request a sealed value belongs to: its associated data.
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    pub schema: &'a str,
    pub app: Option<&'a str>,
    pub request_id: &'a str,
}

impl Sealed<'_> {
    /// `otp-seal-v2 \n schema \n app \n request_id` (an absent app is empty).
    fn associated_data(&self) -> Vec<u8> {
        format!(
            "{SEAL_AAD_TAG}\n{}\n{}\n{}",
            self.schema,
            self.app.unwrap_or(""),
            self.request_id
        )
        .into_bytes()
    }

    /// Before the app was bound: `schema \n request_id`.
    fn unbound_associated_data(&self) -> Vec<u8> {
        format!("{}\n{}", self.schema, self.request_id).into_bytes()
    }
}

/// The first line of the associated data.
pub const SEAL_AAD_TAG: &str = "otp-seal-v2";

/// The key id a sealed value names, for the `otp-key-id` header.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    sealed.split_once(':').map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "otp.code_request.v1";

    fn req<'a>(app: Option<&'a str>, request_id: &'a str) -> Sealed<'a> {
        Sealed {
            schema: SCHEMA,
            app,
            request_id,
        }
    }

    #[test]
    fn what_is_sealed_opens_only_for_its_request_and_with_a_listed_key() {
        let (ring, text) = Keyring::generate("k1");
        let sealed = ring
            .seal(req(None, "req-1"), "+15551234567", "123456")
            .unwrap();
        assert!(sealed.starts_with("k1:"));
        assert!(!sealed.contains("5551234567") && !sealed.contains("123456"));
        assert_eq!(
            ring.open(req(None, "req-1"), &sealed),
            Ok(("+15551234567".to_string(), "123456".to_string()))
        );
        assert_eq!(
            ring.open(req(None, "req-2"), &sealed),
            Err(SealError::DoesNotOpen),
            "moved to another request"
        );
        // Rotation: a new key first, the old one still listed, opens what the old one sealed.
        let (_, newer) = Keyring::generate("k2");
        let rotated = Keyring::parse(&format!("{newer},{text}")).unwrap();
        assert!(rotated.open(req(None, "req-1"), &sealed).is_ok());
        let (stranger, _) = Keyring::generate("k9");
        assert_eq!(
            stranger.open(req(None, "req-1"), &sealed),
            Err(SealError::UnknownKey("k1".into()))
        );
        let mut tampered = sealed.clone();
        tampered.replace_range(sealed.len() - 4.., "AAAA");
        assert_eq!(
            ring.open(req(None, "req-1"), &tampered),
            Err(SealError::DoesNotOpen)
        );
    }

    /// The app is bound: a value moved to another app's request of the same id does not
    /// open, and a key scoped to one app neither seals nor opens another's.
    #[test]
    fn the_app_is_bound_and_scoped_keys_serve_their_app_only() {
        let (ring, _) = Keyring::generate("k1");
        let sealed = ring
            .seal(req(Some("shop"), "r"), "+15551234567", "123456")
            .unwrap();
        assert!(ring.open(req(Some("shop"), "r"), &sealed).is_ok());
        for other in [Some("bank"), None] {
            assert_eq!(
                ring.open(req(other, "r"), &sealed),
                Err(SealError::DoesNotOpen),
                "{other:?}"
            );
        }
        let hex = "11".repeat(32);
        let shop_only = Keyring::parse(&format!("s1@shop={hex}")).unwrap();
        assert_eq!(
            format!("{shop_only:?}"),
            r#"Keyring { key_ids: ["s1@shop"] }"#
        );
        assert_eq!(
            shop_only.seal(req(Some("bank"), "r"), "+15551234567", "1"),
            Err(SealError::NoKeyForApp)
        );
        assert!(!shop_only.seals_for(None) && shop_only.seals_for(Some("shop")));
        // The workers hold every app's key; the first that serves the app seals.
        let workers =
            Keyring::parse(&format!("b1@bank={},s1@shop={hex}", "22".repeat(32))).unwrap();
        let by_shop = shop_only
            .seal(req(Some("shop"), "r"), "+15551234567", "123456")
            .unwrap();
        assert!(workers.open(req(Some("shop"), "r"), &by_shop).is_ok());
        let by_bank = workers
            .seal(req(Some("bank"), "r"), "+15551234567", "123456")
            .unwrap();
        assert!(by_bank.starts_with("b1:"));
        assert_eq!(
            shop_only.open(req(Some("bank"), "r"), &by_bank),
            Err(SealError::UnknownKey("b1".into())),
            "a producer of one app cannot open another's"
        );
        // A shop key's value under a bank request: refused by scope before any decryption.
        assert_eq!(
            workers.open(req(Some("bank"), "r"), &by_shop),
            Err(SealError::OtherApp("s1".into()))
        );
    }

    /// Values sealed before the app was bound (associated data `schema \n request_id`) open
    /// under unscoped keys, and never under scoped ones.
    #[test]
    fn values_sealed_before_the_app_was_bound_open_under_unscoped_keys_only() {
        let hex = "33".repeat(32);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&[0x33; 32]));
        let nonce = [7u8; 12];
        let old_aad = format!("{SCHEMA}\nreq-1");
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: br#"{"phone":"+15551234567","code":"123456"}"#,
                    aad: old_aad.as_bytes(),
                },
            )
            .unwrap();
        let body = base64::engine::general_purpose::STANDARD.encode([&nonce[..], &ct].concat());
        let unscoped = Keyring::parse(&format!("old={hex}")).unwrap();
        assert!(unscoped
            .open(req(Some("shop"), "req-1"), &format!("old:{body}"))
            .is_ok());
        let scoped = Keyring::parse(&format!("old@shop={hex}")).unwrap();
        assert_eq!(
            scoped.open(req(Some("shop"), "req-1"), &format!("old:{body}")),
            Err(SealError::DoesNotOpen)
        );
    }

    /// The envelope of `schemas/README.md` ("The sealed envelope"): its vector was computed
    /// with Python's `cryptography` (an independent ChaCha20-Poly1305), from the page alone.
    #[test]
    fn the_documented_test_vector_seals_and_opens() {
        let ring = Keyring::parse(
            "shop-1@shop=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .unwrap();
        let vector = "shop-1:oKGio6Slpqeoqaqrd4kINyKIp4+aLdglyc/Iyq9t54p1XUKPlru01RRA+S5dsiW+m//d9yadUXVQXH9iYBrCutaThy0=";
        let nonce: [u8; 12] = hex::decode("a0a1a2a3a4a5a6a7a8a9aaab")
            .unwrap()
            .try_into()
            .unwrap();
        let request = req(Some("shop"), "req-1");
        assert_eq!(
            ring.seal_with_nonce(request, "+15551234567", "123456", nonce)
                .unwrap(),
            vector
        );
        assert_eq!(
            ring.open(request, vector),
            Ok(("+15551234567".into(), "123456".into()))
        );
        let readme = include_str!("../../../schemas/README.md");
        assert!(
            readme.contains(vector),
            "schemas/README.md shows the vector"
        );
    }

    #[test]
    fn a_bad_keyring_names_the_rule() {
        for (text, rule) in [
            ("", "no key listed"),
            ("k1", "ID=HEX"),
            ("k1=00", "64 hex digits"),
            ("a b=00", "key id"),
            ("k1@bad app=00", "the app of `id@app`"),
        ] {
            let e = Keyring::parse(text).unwrap_err().to_string();
            assert!(e.contains(rule), "{text}: {e}");
        }
    }

    #[test]
    fn a_report_verifies_only_for_its_app_and_bytes() {
        let (_, k1) = Keyring::generate("k1");
        let (_, k2) = Keyring::generate("k2");
        let a_key = k1.replacen('=', "@app-a=", 1);
        let producer_a = Keyring::parse(&a_key).unwrap();
        let workers = Keyring::parse(&format!("{a_key},{k2}")).unwrap();
        let (s, key, body) = ("otp.verification_outcome.v1", b"app-a/r1", b"{}");
        let mac = producer_a.sign_report(s, Some("app-a"), key, body).unwrap();
        assert!(mac.starts_with("k1."));
        assert!(workers.verify_report(s, Some("app-a"), key, body, &mac));
        assert!(
            !workers.verify_report(s, Some("app-b"), key, body, &mac),
            "another app"
        );
        assert!(!workers.verify_report(s, Some("app-a"), b"app-a/r2", body, &mac));
        assert!(!workers.verify_report(s, Some("app-a"), key, b"{ }", &mac));
        assert!(!workers.verify_report(s, Some("app-a"), key, body, "k1.00"));
        assert!(!workers.verify_report(s, Some("app-a"), key, body, "garbage"));
        // A producer whose only key is app-a's cannot report for app-b.
        assert_eq!(
            producer_a.sign_report(s, Some("app-b"), key, body),
            Err(SealError::NoKeyForApp)
        );
        // An unscoped key reports for any app, and the workers' ring verifies it.
        let any = Keyring::parse(&k2).unwrap();
        let mac = any
            .sign_report(s, Some("app-b"), b"app-b/r1", body)
            .unwrap();
        assert!(workers.verify_report(s, Some("app-b"), b"app-b/r1", body, &mac));
    }
}
