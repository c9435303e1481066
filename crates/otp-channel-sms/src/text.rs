//! The message text of a code, per locale: shared by every SMS provider.

use crate::config::BUILT_IN_TEMPLATES;
use chrono::{DateTime, Utc};
use otp_events::CodeRequest;
use std::collections::HashMap;

/// Message bodies by locale, with `{code}` and `{minutes}`.
#[derive(Debug, Clone)]
pub struct Texts {
    templates: HashMap<String, String>,
    default_locale: String,
}

impl Texts {
    /// The built-in templates, with `extra` over them; `default_locale` must have one.
    pub fn new(extra: &[(String, String)], default_locale: &str) -> anyhow::Result<Self> {
        let mut templates: HashMap<String, String> = BUILT_IN_TEMPLATES
            .iter()
            .map(|(l, t)| (l.to_string(), t.to_string()))
            .collect();
        templates.extend(extra.iter().cloned());
        if !templates.contains_key(default_locale) {
            anyhow::bail!("no body template for the default locale {default_locale}");
        }
        Ok(Self {
            templates,
            default_locale: default_locale.to_string(),
        })
    }

    /// The message text: the request's locale (exact, then its language), else the default.
    pub fn of(&self, request: &CodeRequest, now: DateTime<Utc>) -> String {
        let locale = request.locale.as_deref().unwrap_or("");
        let language = locale.split(['_', '-']).next().unwrap_or("");
        let template = [locale, language, self.default_locale.as_str()]
            .iter()
            .find_map(|l| self.templates.get(*l))
            .expect("the default locale's template exists");
        let minutes = ((request.expires_at - now).num_seconds().max(1) + 59) / 60;
        template
            .replace("{code}", &request.code)
            .replace("{minutes}", &minutes.to_string())
    }
}
