//! Which language to ask Meta to send the authentication template in.
//!
//! Meta sends a template in exactly the `language.code` asked for, and only in a language the
//! template is approved in; any other code is answered with error 132001 ("template does not
//! exist" in that language). Codes are Meta's, case-sensitive: mostly bare languages (`de`,
//! `fr`, `ja`) and a few regional ones (`en_US`, `pt_BR`, `es_MX`, `zh_CN`); a user's locale
//! such as `de_DE` or `en_IN` is not one (Meta, "Message templates" / "Supported languages").
//!
//! So a request's locale is mapped to a code of the template's approved set: the exact code,
//! then the bare language, then the language's regional default, then the template's default
//! language. A language Meta refused anyway (approval withdrawn, a typo in the configured set)
//! is held back for a while, so the next users of that locale get the default language at
//! once instead of a refusal first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The template's approved languages and the ones Meta refused lately.
pub struct Languages {
    approved: Vec<String>,
    default: String,
    /// Approved codes Meta refused, until when they are not asked for. Keyed by approved codes
    /// only, so bounded by the approved set.
    refused: Mutex<HashMap<String, Instant>>,
    hold: Duration,
}

/// When a locale's language is approved only in regional variants, the one it means by
/// default.
const REGIONAL_DEFAULTS: &[(&str, &str)] = &[
    ("en", "en_US"),
    ("es", "es_ES"),
    ("pt", "pt_BR"),
    ("zh", "zh_CN"),
];

impl Languages {
    /// `approved` as Meta spells the codes; `default` is approved whether listed or not. A
    /// refused language is held back for `hold`.
    pub fn new(approved: &[String], default: &str, hold: Duration) -> Self {
        let mut codes: Vec<String> = approved
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if !codes.iter().any(|c| c == default) {
            codes.push(default.to_string());
        }
        Self {
            approved: codes,
            default: default.to_string(),
            refused: Mutex::new(HashMap::new()),
            hold,
        }
    }

    pub fn default_language(&self) -> &str {
        &self.default
    }

    /// The approved code to send a request of `locale` in, at `now`.
    pub fn pick(&self, locale: Option<&str>, now: Instant) -> &str {
        let Some((language, region)) = locale.and_then(parse_locale) else {
            return &self.default;
        };
        let refused = self.refused.lock().expect("languages lock");
        let usable = |code: &str| -> Option<&str> {
            let held = refused.get(code).is_some_and(|until| now < *until);
            let found = self.approved.iter().find(|c| c.as_str() == code)?;
            (!held).then_some(found.as_str())
        };
        let exact = region.map(|r| format!("{language}_{r}"));
        let regional_default = REGIONAL_DEFAULTS
            .iter()
            .find(|(l, _)| *l == language)
            .map(|(_, code)| *code);
        exact
            .as_deref()
            .and_then(usable)
            .or_else(|| usable(&language))
            .or_else(|| regional_default.and_then(usable))
            .or_else(|| {
                // Any approved regional variant of the language, in the configured order.
                let prefix = format!("{language}_");
                self.approved
                    .iter()
                    .find(|c| c.starts_with(&prefix))
                    .and_then(|c| usable(c))
            })
            .unwrap_or(&self.default)
    }

    /// Meta refused `code` (132001): hold it back until `now + hold`. Returns whether it was an
    /// approved code other than the default (only those are held back).
    pub fn refused(&self, code: &str, now: Instant) -> bool {
        if code == self.default || !self.approved.iter().any(|c| c == code) {
            return false;
        }
        let mut refused = self.refused.lock().expect("languages lock");
        refused.insert(code.to_string(), now + self.hold);
        true
    }
}

/// `de-DE`, `de_DE`, `de`, `zh-Hant-TW` → (language in lower case, region in upper case).
fn parse_locale(locale: &str) -> Option<(String, Option<String>)> {
    let mut parts = locale.split(['-', '_']).filter(|p| !p.is_empty());
    let language = parts.next()?.to_ascii_lowercase();
    if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let region = parts
        .rfind(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(|r| r.to_ascii_uppercase());
    Some((language, region))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn languages(approved: &[&str], default: &str) -> Languages {
        let approved: Vec<String> = approved.iter().map(|s| s.to_string()).collect();
        Languages::new(&approved, default, Duration::from_secs(3600))
    }

    #[test]
    fn locales_map_to_approved_codes_and_never_outside_them() {
        let l = languages(
            &["en_US", "en_GB", "de", "fr", "es_MX", "pt_BR", "zh_CN"],
            "en_US",
        );
        let now = Instant::now();
        for (locale, code) in [
            (Some("de_DE"), "de"),         // bare language
            (Some("de-AT"), "de"),         // separator and region of the user's locale
            (Some("fr_FR"), "fr"),         // bare language
            (Some("en_GB"), "en_GB"),      // exact
            (Some("en-gb"), "en_GB"),      // case of the user's locale
            (Some("en_IN"), "en_US"),      // regional default
            (Some("pt_PT"), "pt_BR"),      // regional default
            (Some("es_AR"), "es_MX"),      // the one regional variant approved
            (Some("zh-Hant-TW"), "zh_CN"), // script subtag skipped, regional default
            (Some("ja_JP"), "en_US"),      // not approved: the default
            (Some("x"), "en_US"),          // not a locale
            (None, "en_US"),
        ] {
            assert_eq!(l.pick(locale, now), code, "{locale:?}");
        }
    }

    #[test]
    fn a_refused_language_is_held_back_then_tried_again() {
        let l = languages(&["en_US", "de"], "en_US");
        let now = Instant::now();
        assert!(l.refused("de", now));
        assert_eq!(l.pick(Some("de_DE"), now), "en_US");
        let later = now + Duration::from_secs(3601);
        assert_eq!(l.pick(Some("de_DE"), later), "de");
    }

    #[test]
    fn the_default_and_unknown_codes_are_never_held_back() {
        let l = languages(&["de"], "en_US");
        let now = Instant::now();
        assert!(
            !l.refused("en_US", now),
            "a refused default means a broken channel"
        );
        assert!(!l.refused("ja", now), "not approved: never asked for");
        assert_eq!(l.pick(None, now), "en_US");
    }
}
