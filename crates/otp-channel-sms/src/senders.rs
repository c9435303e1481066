//! Who a text comes from, per destination country: some countries need a registered number or
//! sender id of their own (India's DLT headers, a US 10DLC or toll-free number), so each
//! provider has a default sender and may name one per ISO country. The destination's country is
//! libphonenumber's, never the request's text.

use otp_events::{country_of, CodeRequest};
use std::collections::HashMap;

/// A provider's senders by destination country.
#[derive(Debug, Clone, Default)]
pub struct Senders {
    by_country: HashMap<String, String>,
}

impl Senders {
    pub fn new(by_country: Vec<(String, String)>) -> Self {
        Self {
            by_country: by_country.into_iter().collect(),
        }
    }

    /// The sender named for `request`'s destination country, if one is.
    pub fn for_request(&self, request: &CodeRequest) -> Option<&str> {
        if self.by_country.is_empty() {
            return None; // no parse for a provider without any
        }
        country_of(&request.phone)
            .and_then(|c| self.by_country.get(&c))
            .map(String::as_str)
    }
}

/// `CC=SENDER`, the value of a `--…-sender` flag.
pub fn parse_country_sender(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((country, sender))
            if country.len() == 2
                && country.bytes().all(|b| b.is_ascii_uppercase())
                && !sender.is_empty() =>
        {
            Ok((country.to_string(), sender.to_string()))
        }
        _ => Err("must be CC=SENDER, CC an ISO 3166-1 alpha-2 code (two capital letters)".into()),
    }
}
