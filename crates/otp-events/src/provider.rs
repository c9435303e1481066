//! Providers: who we send through. A [`Channel`] is what the user enabled and ordered; a
//! provider is the vendor behind it (Meta's WhatsApp Cloud API; Twilio and Vonage for SMS).
//! One channel can have several providers, chosen per destination country by the worker's
//! routes; each has its own error table, limits and health.

use crate::provider_errors::{ErrorTable, TWILIO, VONAGE, WHATSAPP};
use crate::Channel;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A provider we can send through. The names are metric label values and status fields: a
/// bounded set, extended only here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Meta's WhatsApp Cloud API.
    WhatsappCloud,
    /// Twilio Programmable Messaging (SMS).
    Twilio,
    /// Vonage Messages API (SMS).
    Vonage,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::WhatsappCloud, Provider::Twilio, Provider::Vonage];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::WhatsappCloud => "whatsapp_cloud",
            Provider::Twilio => "twilio",
            Provider::Vonage => "vonage",
        }
    }

    /// The channel it delivers on.
    pub fn channel(self) -> Channel {
        match self {
            Provider::WhatsappCloud => Channel::Whatsapp,
            Provider::Twilio | Provider::Vonage => Channel::Sms,
        }
    }

    /// Its error codes and their classes.
    pub fn errors(self) -> &'static ErrorTable {
        match self {
            Provider::WhatsappCloud => &WHATSAPP,
            Provider::Twilio => &TWILIO,
            Provider::Vonage => &VONAGE,
        }
    }

    /// The providers of a channel, the first being the one a channel had before it had
    /// several (what an unqualified `[limits]` and a receipt without a provider mean).
    pub fn of(channel: Channel) -> &'static [Provider] {
        match channel {
            Channel::Whatsapp => &[Provider::WhatsappCloud],
            Channel::Sms => &[Provider::Twilio, Provider::Vonage],
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| r#"must be "whatsapp_cloud", "twilio" or "vonage""#.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_name_their_channel() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>(), Ok(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert!(Provider::of(p.channel()).contains(&p));
            assert_eq!(p.errors().provider, p.as_str());
        }
        assert!("sms".parse::<Provider>().unwrap_err().contains("twilio"));
    }
}
