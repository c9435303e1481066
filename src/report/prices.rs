//! The price table `otp report` estimates costs with: per channel, a price per message by
//! destination country, and a default.
//!
//! What is charged differs by provider: Meta prices WhatsApp authentication templates per
//! message *delivered*, by the recipient's country; Twilio prices SMS per message *sent* (per
//! segment; a code fits one), by destination. Without receipts (confirmation off) a WhatsApp
//! delivery is unknown, so sent messages are charged instead. Prices change: keep your own
//! table in a file (`--prices`), in TOML:
//!
//! ```toml
//! currency = "USD"
//! [whatsapp]
//! default = 0.0135
//! GB = 0.0358
//! [sms]
//! default = 0.0079
//! GB = 0.0413
//! ```

use otp_events::Channel;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// The currency of every price (only printed).
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default)]
    pub whatsapp: CountryPrices,
    #[serde(default)]
    pub sms: CountryPrices,
}

/// Price per message by ISO country code, and `default` for the rest.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CountryPrices {
    #[serde(default)]
    pub default: f64,
    #[serde(flatten)]
    pub by_country: BTreeMap<String, f64>,
}

fn default_currency() -> String {
    "USD".to_string()
}

impl Default for Prices {
    /// Illustrative list prices (USD, 2025), to be replaced by the operator's own.
    fn default() -> Self {
        let table = |default, list: &[(&str, f64)]| CountryPrices {
            default,
            by_country: list.iter().map(|(c, p)| (c.to_string(), *p)).collect(),
        };
        Self {
            currency: default_currency(),
            whatsapp: table(
                0.0135,
                &[
                    ("GB", 0.0358),
                    ("US", 0.0135),
                    ("IN", 0.0014),
                    ("BR", 0.0315),
                ],
            ),
            sms: table(
                0.0500,
                &[
                    ("GB", 0.0413),
                    ("US", 0.0083),
                    ("IN", 0.0830),
                    ("BR", 0.0577),
                ],
            ),
        }
    }
}

impl Prices {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The price of one message on `channel` to `country`.
    pub fn price(&self, channel: Channel, country: &str) -> f64 {
        let table = match channel {
            Channel::Whatsapp => &self.whatsapp,
            Channel::Sms => &self.sms,
        };
        table
            .by_country
            .get(country)
            .copied()
            .unwrap_or(table.default)
    }

    /// How many messages are charged, of `sent` taken by the provider and `delivered` by
    /// receipt.
    pub fn charged(&self, channel: Channel, sent: u64, delivered: u64) -> u64 {
        match channel {
            Channel::Whatsapp if delivered > 0 => delivered,
            Channel::Whatsapp | Channel::Sms => sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_from_toml_prices_by_country_with_a_default() {
        let p = Prices::from_toml(
            "currency = \"EUR\"\n[whatsapp]\ndefault = 0.02\nGB = 0.03\n[sms]\ndefault = 0.05\n",
        )
        .unwrap();
        assert_eq!(p.currency, "EUR");
        assert_eq!(p.price(Channel::Whatsapp, "GB"), 0.03);
        assert_eq!(p.price(Channel::Whatsapp, "DE"), 0.02);
        assert_eq!(p.price(Channel::Sms, "GB"), 0.05);
        assert!(
            Prices::from_toml("[fax]\ndefault = 1.0\n").is_err(),
            "unknown channel"
        );
    }

    #[test]
    fn whatsapp_is_charged_per_delivered_sms_per_sent() {
        let p = Prices::default();
        assert_eq!(p.charged(Channel::Whatsapp, 10, 8), 8);
        assert_eq!(p.charged(Channel::Whatsapp, 10, 0), 10, "no receipts");
        assert_eq!(p.charged(Channel::Sms, 10, 8), 10);
    }
}
