//! Webhook signatures of the two providers, computed and checked in one place: the receipts
//! ingress verifies with these, the provider simulator signs with them, and both are tested
//! against the vectors the providers (or, for Meta's scheme, GitHub's identical one) publish.
//!
//! Checks go through `hmac`'s `verify_slice`, which compares in constant time.

use base64::Engine;
use hmac::{Hmac, Mac};

type HmacSha256 = Hmac<sha2::Sha256>;
type HmacSha1 = Hmac<sha1::Sha1>;

/// Meta's `X-Hub-Signature-256` header value for `body`: `sha256=` + hex HMAC-SHA256 of the
/// raw bytes, keyed with the app secret.
/// Whether two secrets are equal, in time that depends on neither their contents nor their
/// lengths: both are hashed first, and the digests compared in constant time.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest;
    let (x, y): ([u8; 32], [u8; 32]) = (
        sha2::Sha256::digest(a).into(),
        sha2::Sha256::digest(b).into(),
    );
    digests_equal(&x, &y)
}

/// Whether two SHA-256 digests are equal, in constant time.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

pub fn meta_signature(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(app_secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is Meta's signature of `body` under `app_secret`.
pub fn meta_signature_valid(app_secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(given) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(app_secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Twilio's `X-Twilio-Signature` for a POST to `url` (the full public URL Twilio called,
/// query string included) with form `params`: base64 HMAC-SHA1, keyed with the auth token, of
/// the URL followed by every parameter's name and value, sorted by name.
pub fn twilio_signature(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    let mac = twilio_mac(auth_token, url, params);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `header` is Twilio's signature of a POST to `url` with `params`. The URL is tried
/// as given and with its default port added or removed (`https://h/x` and `https://h:443/x`),
/// as Twilio's own helper libraries do ("Webhooks security": the signing side is not
/// consistent about the port).
pub fn twilio_signature_valid(
    auth_token: &[u8],
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else {
        return false;
    };
    std::iter::once(url.to_string())
        .chain(with_other_port_spelling(url))
        .any(|url| {
            twilio_mac(auth_token, &url, params)
                .verify_slice(&given)
                .is_ok()
        })
}

/// `url` with its scheme's default port added when absent, or removed when present; `None`
/// for a URL with another port or scheme.
fn with_other_port_spelling(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The port is after the last ':' that follows any IPv6 literal's ']'.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    match authority[host_end..].rfind(':') {
        Some(i) if &authority[host_end + i + 1..] == default => {
            Some(format!("{scheme}://{}{tail}", &authority[..host_end + i]))
        }
        Some(_) => None,
        None => Some(format!("{scheme}://{authority}:{default}{tail}")),
    }
}

fn twilio_mac(auth_token: &[u8], url: &str, params: &[(String, String)]) -> HmacSha1 {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name, then value: a repeated name is signed in value order, as Twilio's libraries do.
    sorted.sort();
    let mut mac = HmacSha1::new_from_slice(auth_token).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Decode a form body into its pairs, in order (for signing and checking).
pub fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, serde_urlencoded::de::Error> {
    serde_urlencoded::from_bytes(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_whatever_their_lengths() {
        assert!(secrets_equal(b"verify-token", b"verify-token"));
        assert!(!secrets_equal(b"verify-token", b"verify-tokeN"));
        assert!(!secrets_equal(b"verify-token", b"verify-token-longer"));
        assert!(!secrets_equal(b"", b"x"));
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// twilio.com/docs/usage/security, "Validating requests": auth token `12345`.
    #[test]
    fn twilio_documentation_vector() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            twilio_signature(b"12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        let mut shuffled = params.clone();
        shuffled.reverse();
        assert!(twilio_signature_valid(
            b"12345",
            url,
            &shuffled,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        let mut altered = params.clone();
        altered[2].1 = "1235".into();
        assert!(!twilio_signature_valid(
            b"12345",
            url,
            &altered,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!twilio_signature_valid(
            b"12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!twilio_signature_valid(
            b"12345",
            url,
            &params,
            "not base64!"
        ));
        assert!(!twilio_signature_valid(b"12345", url, &params, ""));
    }

    /// Signed by Twilio for the URL with its default port, checked against the URL without it,
    /// and the other way round; any other port is a different URL.
    #[test]
    fn twilio_urls_match_with_and_without_the_default_port() {
        let params = vec![("MessageSid".to_string(), "SM1".to_string())];
        let bare = "https://otp.example.com/webhooks/sms/status?request_id=r1";
        let ported = "https://otp.example.com:443/webhooks/sms/status?request_id=r1";
        let signed_ported = twilio_signature(b"token", ported, &params);
        let signed_bare = twilio_signature(b"token", bare, &params);
        assert!(twilio_signature_valid(
            b"token",
            bare,
            &params,
            &signed_ported
        ));
        assert!(twilio_signature_valid(
            b"token",
            ported,
            &params,
            &signed_bare
        ));
        let other = "https://otp.example.com:8443/webhooks/sms/status?request_id=r1";
        assert!(!twilio_signature_valid(
            b"token",
            bare,
            &params,
            &twilio_signature(b"token", other, &params)
        ));
        assert_eq!(
            with_other_port_spelling("http://[::1]:80/x"),
            Some("http://[::1]/x".to_string())
        );
        assert_eq!(
            with_other_port_spelling("http://127.0.0.1:9500/x"),
            None,
            "a non-default port has no other spelling"
        );
    }

    /// Meta publishes no vector for `X-Hub-Signature-256`; GitHub's webhook documentation
    /// ("Validating webhook deliveries") publishes one for the identical scheme, and RFC 4231
    /// test case 2 checks the HMAC-SHA256 underneath.
    #[test]
    fn meta_scheme_vectors() {
        let github = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            meta_signature(b"It's a Secret to Everybody", b"Hello, World!"),
            github
        );
        assert!(meta_signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            github
        ));
        assert_eq!(
            meta_signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(!meta_signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            github
        ));
        assert!(!meta_signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            &github[7..]
        ));
        assert!(!meta_signature_valid(b"x", b"Hello, World!", "sha256=zz"));
    }
}
