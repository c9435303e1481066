//! Proof that a worker wrote a request's fallback state.
//!
//! A request handed on to its next channel carries `attempt` and `tried_channels`, and abuse
//! limits count a request once, on its first channel. A producer that wrote that state itself
//! could skip them (the per-phone, per-range and destination rules). So the writer of a
//! fallback (a worker, or the confirmation tracker) signs the state with a key only they hold,
//! `OTP_FALLBACK_KEY`, in the `otp-fallback-proof` header; a worker treats a request whose
//! fallback state comes without a valid proof as a first try, and every rule applies.

use crate::CodeRequest;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the proof.
pub const HEADER_FALLBACK_PROOF: &str = "otp-fallback-proof";

/// The workers' key for fallback proofs.
#[derive(Clone)]
pub struct FallbackKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for FallbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FallbackKey(<secret>)")
    }
}

impl FallbackKey {
    /// Environment variable holding the key (or `OTP_FALLBACK_KEY_FILE`).
    pub const ENV: &'static str = "OTP_FALLBACK_KEY";

    pub fn new(key: &[u8]) -> Self {
        Self {
            mac: Hmac::new_from_slice(key).expect("HMAC takes a key of any length"),
        }
    }

    /// Whether `request` claims to have been handed on by a worker.
    pub fn claims_fallback(request: &CodeRequest) -> bool {
        request.attempt_number() > 1 || !request.tried_channels.is_empty()
    }

    /// The proof for `request`'s fallback state, hex.
    pub fn prove(&self, request: &CodeRequest) -> String {
        let mut mac = self.mac.clone();
        mac.update(&signed(request));
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `proof` is this key's proof of `request`'s fallback state (constant time).
    pub fn verify(&self, request: &CodeRequest, proof: &str) -> bool {
        let Ok(bytes) = hex::decode(proof) else {
            return false;
        };
        let mut mac = self.mac.clone();
        mac.update(&signed(request));
        mac.verify_slice(&bytes).is_ok()
    }
}

/// What is signed: the request's identity (app and id), what it asks for (number and code, so
/// a proof cannot be moved to another recipient), its fallback state and what bounds it.
fn signed(r: &CodeRequest) -> Vec<u8> {
    let names = |c: &[crate::Channel]| c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",");
    // Each field is length-prefixed, so no two requests sign the same bytes.
    let fields = [
        r.schema.clone(),
        r.app.clone().unwrap_or_default(),
        r.request_id.clone(),
        r.phone.clone(),
        r.code.clone(),
        r.attempt_number().to_string(),
        names(&r.tried_channels),
        names(&r.channels),
        r.expires_at.to_rfc3339(),
    ];
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, Submission};

    #[test]
    fn a_proof_holds_only_for_the_state_it_signed_and_the_key_that_signed_it() {
        let key = FallbackKey::new(b"workers");
        let first = Submission::new(
            "+15551234567",
            "123456",
            vec![Channel::Whatsapp, Channel::Sms],
            chrono::Duration::minutes(5),
        )
        .complete(chrono::Utc::now());
        assert!(!FallbackKey::claims_fallback(&first));
        let next = first.for_next_channel().unwrap();
        assert!(FallbackKey::claims_fallback(&next));
        let proof = key.prove(&next);
        assert!(key.verify(&next, &proof));
        assert!(!FallbackKey::new(b"a producer").verify(&next, &proof));
        let mut longer = next.clone();
        longer.expires_at += chrono::Duration::minutes(10);
        assert!(!key.verify(&longer, &proof), "the deadline is signed");
        let mut elsewhere = next.clone();
        elsewhere.phone = "+15559999999".into();
        assert!(!key.verify(&elsewhere, &proof), "the recipient is signed");
        let mut other_app = next.clone();
        other_app.app = Some("another-app".into());
        assert!(!key.verify(&other_app, &proof), "the app is signed");
        assert!(!key.verify(&next, "not hex"));
    }
}
