//! The rules of a code request, shared by every entry point.
//!
//! The same rules are written down in `schemas/code-request.v1.json`; the schema tests check
//! that both agree on every example. Rules that JSON Schema cannot express (a timestamp
//! compared with another) live only here and are documented in the schema's descriptions.

use crate::{CodeRequest, Keyring, ValidationError, CODE_REQUEST_SCHEMA};
use chrono::Duration;
use serde_json::{Map, Value};

/// The longest life of a code, unless a deployment sets its own (`Rules::max_ttl`, and the
/// services' `max_ttl`): stated here once.
pub const DEFAULT_MAX_CODE_LIFE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Limits that a deployment may tune. Everything else is fixed by the contract.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Longest allowed life of a code, `expires_at - created_at`, and how far from now a
    /// reader accepts `expires_at`. Default: [`DEFAULT_MAX_CODE_LIFE`].
    pub max_ttl: Duration,
    /// How far ahead of the reader's clock `created_at` may be. Default: 30 seconds.
    pub max_clock_skew: Duration,
    /// The keys that seal `phone` and `code` on Kafka ([`crate::Keyring`]): requests are
    /// written sealed with the first, and sealed ones read with any. `None`: written in
    /// plaintext, and a sealed request cannot be read.
    pub sealing: Option<Keyring>,
    /// Whether a reader that holds keys still takes requests with `phone` and `code` in
    /// plaintext (a producer that does not seal yet), during a migration only. Default:
    /// refused, so that a request written straight to Kafka in plaintext is dead-lettered.
    pub allow_plaintext: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_std(DEFAULT_MAX_CODE_LIFE).expect("30 minutes fit"),
            max_clock_skew: Duration::seconds(30),
            sealing: None,
            allow_plaintext: false,
        }
    }
}

/// The associated data of `request`'s seal.
fn sealed_for(request: &CodeRequest) -> crate::Sealed<'_> {
    crate::Sealed {
        schema: &request.schema,
        app: request.app.as_deref(),
        request_id: &request.request_id,
    }
}

impl Rules {
    /// The request as it is written to Kafka: `phone` and `code` sealed into `sealed` when
    /// the rules hold keys. Refused (naming `app`) when none of the keys serves the request's
    /// app; [`CodeRequest::validate`] checks that first.
    pub fn request_value(&self, request: &CodeRequest) -> Result<Value, ValidationError> {
        let mut value = serde_json::to_value(request).expect("a CodeRequest always serialises");
        if let (Some(ring), Value::Object(obj)) = (&self.sealing, &mut value) {
            let sealed = ring
                .seal(sealed_for(request), &request.phone, &request.code)
                .map_err(|e| ValidationError::new("app", e.to_string()))?;
            obj.remove("phone");
            obj.remove("code");
            obj.insert("sealed".into(), Value::String(sealed));
        }
        Ok(value)
    }

    /// [`Rules::request_value`] as bytes.
    pub fn encode_request(&self, request: &CodeRequest) -> Result<Vec<u8>, ValidationError> {
        Ok(serde_json::to_vec(&self.request_value(request)?).expect("a JSON value serialises"))
    }

    /// Whether this writer can seal `app`'s requests: it holds no keys (it writes plaintext),
    /// or one of them serves the app.
    pub fn can_seal_for(&self, app: Option<&str>) -> Result<(), ValidationError> {
        match &self.sealing {
            Some(ring) if !ring.seals_for(app) => Err(ValidationError::new(
                "app",
                crate::SealError::NoKeyForApp.to_string(),
            )),
            _ => Ok(()),
        }
    }

    /// Open a sealed request object in place (`sealed` → `phone` and `code`). A plaintext one
    /// is left as it is when the reader holds no keys or [`Rules::allow_plaintext`], and
    /// refused otherwise. The error names the field and never the secret.
    pub fn open_object(&self, obj: &mut Map<String, Value>) -> Result<(), ValidationError> {
        let Some(sealed) = obj.remove("sealed") else {
            if self.sealing.is_some() && !self.allow_plaintext {
                return Err(ValidationError::new(
                    "sealed",
                    "is required: phone and code in plaintext are refused (the producer holds \
                     no OTP_SEAL_KEYS); a migration may allow them (allow_plaintext_requests)",
                ));
            }
            return Ok(());
        };
        if obj.contains_key("phone") || obj.contains_key("code") {
            return Err(ValidationError::new(
                "sealed",
                "must not come with phone or code (they are sealed inside it)",
            ));
        }
        let sealed = sealed
            .as_str()
            .ok_or_else(|| ValidationError::new("sealed", "must be a string"))?;
        let text = |field: &str| {
            obj.get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ValidationError::new(field, "is required (a string)"))
        };
        let (schema, request_id) = (text("schema")?, text("request_id")?);
        let app = obj.get("app").and_then(Value::as_str);
        let ring = self
            .sealing
            .as_ref()
            .ok_or_else(|| ValidationError::new("sealed", crate::SealError::NoKeys.to_string()))?;
        let request = crate::Sealed {
            schema: &schema,
            app,
            request_id: &request_id,
        };
        let (phone, code) = ring
            .open(request, sealed)
            .map_err(|e| ValidationError::new("sealed", e.to_string()))?;
        obj.insert("phone".into(), Value::String(phone));
        obj.insert("code".into(), Value::String(code));
        Ok(())
    }

    /// The rules against the reader's clock (server time): `created_at` is at most
    /// `max_clock_skew` ahead of `now`, and `expires_at` at most `max_ttl` after it. A request
    /// dated in the future would otherwise outlive its code life in every memory that keeps it
    /// until expiry (duplicate memory, the tracker), and a producer could make one live for
    /// years.
    pub fn check_clock(
        &self,
        r: &CodeRequest,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ValidationError> {
        if r.created_at > now + self.max_clock_skew {
            return Err(ValidationError::new(
                "created_at",
                format!(
                    "must not be more than {} seconds ahead of the reader's clock",
                    self.max_clock_skew.num_seconds()
                ),
            ));
        }
        if r.expires_at > now + self.max_ttl {
            return Err(ValidationError::new(
                "expires_at",
                format!(
                    "must be at most {} seconds after the reader's clock",
                    self.max_ttl.num_seconds()
                ),
            ));
        }
        Ok(())
    }
}

pub(crate) const REQUEST_ID_MAX: usize = 64;
pub(crate) const APP_MAX: usize = 64;
pub(crate) const USER_REF_MAX: usize = 128;

impl Rules {
    pub(crate) fn check(&self, r: &CodeRequest) -> Result<(), ValidationError> {
        if r.schema != CODE_REQUEST_SCHEMA {
            return Err(ValidationError::new(
                "schema",
                format!("must be \"{CODE_REQUEST_SCHEMA}\" (unknown schema or version)"),
            ));
        }
        check_request_id(&r.request_id)?;
        check_phone(&r.phone)?;
        check_code(&r.code)?;
        if r.channels.is_empty() {
            return Err(ValidationError::new(
                "channels",
                "must list at least one channel",
            ));
        }
        for (i, c) in r.channels.iter().enumerate() {
            if r.channels[..i].contains(c) {
                return Err(ValidationError::new(
                    "channels",
                    "must not repeat a channel",
                ));
            }
        }
        if let Some(locale) = &r.locale {
            check_locale(locale)?;
        }
        if r.expires_at <= r.created_at {
            return Err(ValidationError::new(
                "expires_at",
                "must be after created_at",
            ));
        }
        if r.expires_at - r.created_at > self.max_ttl {
            return Err(ValidationError::new(
                "expires_at",
                format!(
                    "must be at most {} seconds after created_at",
                    self.max_ttl.num_seconds()
                ),
            ));
        }
        if let Some(app) = &r.app {
            check_app(app)?;
        }
        // A request this writer could not seal again (a fallback, a pending record) is
        // refused here, where it is named, rather than when it is written.
        self.can_seal_for(r.app.as_deref())?;
        check_text("user_ref", r.user_ref.as_deref(), USER_REF_MAX)?;
        if r.attempt == Some(0) {
            return Err(ValidationError::new("attempt", "must be at least 1"));
        }
        for (i, c) in r.tried_channels.iter().enumerate() {
            if !r.channels.contains(c) || r.tried_channels[..i].contains(c) {
                return Err(ValidationError::new(
                    "tried_channels",
                    "must hold distinct channels taken from channels",
                ));
            }
        }
        if r.current_channel().is_none() {
            return Err(ValidationError::new(
                "tried_channels",
                "must leave at least one channel of channels untried",
            ));
        }
        Ok(())
    }
}

/// Whether `id` is a request_id as the contract defines it (also used to decide whether an
/// unreadable event's id is safe to echo).
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_MAX
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_request_id(id: &str) -> Result<(), ValidationError> {
    if is_valid_request_id(id) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "request_id",
            format!(
                "must be 1 to {REQUEST_ID_MAX} characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// E.164: "+", then 8 to 15 digits, the first not 0. Nothing is normalised: a number with
/// spaces or dashes is refused, so what we hash is exactly what the login system stores.
pub(crate) fn check_phone(phone: &str) -> Result<(), ValidationError> {
    let digits = phone.strip_prefix('+').unwrap_or("");
    let ok = phone.starts_with('+')
        && (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "phone",
            "must be E.164: '+' then 8 to 15 digits, the first not 0, with no spaces or dashes",
        ))
    }
}

fn check_code(code: &str) -> Result<(), ValidationError> {
    if (4..=10).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ValidationError::new("code", "must be 4 to 10 digits"))
    }
}

/// `en`, `pt_BR` or `pt-BR`: a language, optionally with a region.
fn check_locale(locale: &str) -> Result<(), ValidationError> {
    let (lang, region) = match locale.split_once(['_', '-']) {
        Some((l, r)) => (l, Some(r)),
        None => (locale, None),
    };
    let lang_ok = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase());
    let region_ok =
        region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()));
    if lang_ok && region_ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "locale",
            "must be a language code with an optional region, like \"en\" or \"pt_BR\"",
        ))
    }
}

/// Whether `app` is an identifier: it names a login system in metrics, statuses and limits,
/// so free text (spaces, markup, a phone number with its `+`) has no place in it.
pub fn is_valid_app(app: &str) -> bool {
    !app.is_empty()
        && app.len() <= APP_MAX
        && app.as_bytes()[0].is_ascii_alphanumeric()
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_app(app: &str) -> Result<(), ValidationError> {
    if is_valid_app(app) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "app",
            format!(
                "must be 1 to {APP_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

fn check_text(field: &str, value: Option<&str>, max: usize) -> Result<(), ValidationError> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > max => Err(ValidationError::new(
            field,
            format!("must be 1 to {max} characters"),
        )),
        _ => Ok(()),
    }
}
