//! The checks a message passes before its first send, all in memory: the clock, channel and
//! expiry rules, the duplicate memory, the abuse rules, and the routes, provider limits and
//! health that every try then asks. The decisions are [`crate::decide`]'s; this holds the state they
//! are asked against.
//!
//! Kept apart from the pipeline's I/O (the provider client, the Kafka writer) so that the whole
//! per-message path up to the send runs without a broker or a provider: the pipeline asks it,
//! and the hot-path benchmark (`benches/hot_path.rs`) measures it.

use crate::circuit::Health;
use crate::conversion::{About, Conversion};
use crate::decide::{self, At, Outcome};
use crate::dedup::{Dedup, Source};
use crate::limits::{Attempt, Limited, Limiter, Subject};
use crate::routes::Routes;
use otp_events::{number_range, phone_facts, CodeRequest, ErrorCategory, PhoneHasher, Rules};
use std::time::Instant;

/// The rule name (and `error.code`) of a request refused for its range's conversion.
pub const LOW_CONVERSION: &str = "low_conversion";

/// One worker's guards, shared by all its in-flight messages.
pub struct Guards {
    pub limiter: Limiter,
    /// Which providers a destination's sends go through.
    pub routes: Routes,
    /// Circuits per provider and destination country.
    pub health: Health,
    pub dedup: Dedup,
    pub rules: Rules,
    pub hasher: PhoneHasher,
    /// The share of codes users entered, per number range and country.
    pub conversion: std::sync::Arc<Conversion>,
}

impl Guards {
    /// Everything derived from the phone number, once: libphonenumber's parse is the costliest
    /// step of a message.
    pub fn subject_of(&self, request: &CodeRequest) -> Subject {
        let facts = phone_facts(&request.phone);
        // Keyed by the canonical spelling, so that spellings of one subscriber share counts.
        let canonical = facts.canonical.as_deref().unwrap_or(&request.phone);
        Subject {
            phone_key: self.hasher.hash(canonical),
            prefix_key: self.hasher.hash(number_range(canonical)),
            country: facts.country,
            premium: facts.premium,
        }
    }

    /// The providers to try for `subject`, in order (see [`Routes::order`]).
    pub fn providers_for(&self, subject: &Subject) -> Vec<otp_events::Provider> {
        let country = subject.country.as_deref();
        self.routes.order(
            country,
            |p| self.health.is_open(p, country),
            rand::random::<f64>,
        )
    }

    /// The clock, channel, expiry and duplicate rules, then the abuse rules, then the claim of
    /// the request_id: the first attempt to make, or the outcome that ends the request here.
    ///
    /// The id is only looked at before the abuse rules and claimed after them, so that a copy
    /// the rules refuse (a front-run id, say) claims nothing. `admitted` hears a first try
    /// that the abuse rules admitted, with its confirmation key (for the fleet's shared
    /// counts).
    pub fn admit(
        &self,
        at: At<'_>,
        subject: &Subject,
        fallback: bool,
        source: &Source,
        admitted: impl FnOnce(&Subject, &str),
    ) -> Result<Attempt, Outcome> {
        let request = at.request;
        let now = at.now;
        // Per app, with what the request asks for: the same id asking for another number or
        // code is a conflict, not a duplicate. (Not the deadline: a login system that retries
        // a publish computes it again, and the clock rules bound it anyway.)
        let key = crate::dedup::key(request.app.as_deref(), &request.request_id);
        let digest = self
            .hasher
            .hash(&format!("{}\n{}", request.phone, request.code));
        let seen = || self.dedup.peek(&key, &digest, source, now);
        if let Some(outcome) = decide::guard(at, &self.rules, seen) {
            return Err(outcome);
        }
        // The abuse rules count a request once, on its first channel.
        let first = if fallback {
            Attempt::Fallback
        } else {
            Attempt::First
        };
        let confirmation =
            otp_events::confirmation_key(request.app.as_deref(), &request.request_id);
        let about = About {
            request: &confirmation,
            app: request.app.as_deref(),
            range: &subject.prefix_key,
            country: subject.country.as_deref(),
        };
        // A range that converts below its floor: refused on a first try and on a fallback
        // alike (a pump that asks for WhatsApp first falls back to SMS).
        let abuse = match self.conversion.refuses(&about, Instant::now()) {
            Some(_) => {
                metrics::counter!("otp_limited_total", "rule" => LOW_CONVERSION).increment(1);
                Err(Limited {
                    rule: LOW_CONVERSION,
                    category: ErrorCategory::Blocked,
                    waited_too_long: false,
                })
            }
            None => self.limiter.admit(subject, first),
        };
        if abuse.is_ok() && first == Attempt::First {
            self.conversion.admitted(&about, Instant::now());
            admitted(subject, &confirmation);
        }
        let claim = || {
            self.dedup
                .first_sight(&key, &digest, source.clone(), request.expires_at, now)
        };
        match decide::admit(abuse, claim) {
            Some(outcome) => Err(outcome),
            None => Ok(first),
        }
    }
}
