//! Privacy helpers: the keyed phone hash, masking for humans, and the country of a number.
//!
//! A phone number leaves a worker only towards the provider. Everywhere else (Kafka keys,
//! status events, logs, metrics) it is replaced by [`PhoneHasher::hash`], an HMAC so that
//! nobody without the key can confirm a guessed number by hashing it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Keyed hash of phone numbers (HMAC-SHA256, first 16 bytes, hex).
#[derive(Clone)]
pub struct PhoneHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for PhoneHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneHasher(<key redacted>)")
    }
}

impl PhoneHasher {
    /// Env var holding the deployment's hash key. Every producer and worker of a deployment
    /// must share it, since the hash is the partitioning key.
    pub const KEY_ENV: &'static str = "OTP_PHONE_HASH_KEY";
    /// Key used when none is configured: fine for demos and tests, not for production (a
    /// public key makes the hash a plain lookup table).
    pub const DEV_KEY: &'static [u8] = b"otp-pipeline-development-key";

    pub fn new(key: &[u8]) -> Self {
        Self {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length"),
        }
    }

    /// The key from `OTP_PHONE_HASH_KEY`, else the development key. The bool says whether the
    /// development key is in use, so binaries can warn.
    pub fn from_env() -> (Self, bool) {
        match std::env::var(Self::KEY_ENV) {
            Ok(key) if !key.is_empty() => (Self::new(key.as_bytes()), false),
            _ => (Self::new(Self::DEV_KEY), true),
        }
    }

    /// The provider's message id as analysts may see it. WhatsApp's ids (`wamid.` + base64)
    /// embed the recipient's number, so they are replaced by their keyed hash
    /// (`wamid-hash-` + 32 hex); other providers' ids (Twilio's `SM...`) are kept.
    pub fn public_message_id(&self, channel: crate::Channel, id: &str) -> String {
        match channel {
            crate::Channel::Whatsapp if !id.starts_with(WAMID_HASH_PREFIX) => {
                format!("{WAMID_HASH_PREFIX}{}", self.hash(id))
            }
            _ => id.to_string(),
        }
    }

    /// The keyed hash of a phone number in its canonical spelling ([`canonical_phone`]): the
    /// Kafka key, the status `phone_hash` and the abuse-limit key.
    pub fn hash_phone(&self, phone: &str) -> String {
        self.hash(&canonical_phone(phone))
    }

    pub fn hash(&self, phone: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(phone.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// A phone number for human eyes: the calling-code's first digits and the last two,
/// e.g. `+44*******89`. Use only where a hash is no help (an operator's terminal).
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    if chars.len() < 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 5))
}

/// `phonenumber::parse(None, phone)`. For a number written `+` and digits, the region the
/// parser would look up (trying the patterns of every region of a shared code, through the
/// crate's pattern cache) is found with [`numbering`](crate::numbering)'s compiled patterns and
/// given to the parser, which then looks up nothing (`numbering::region_hint` says when that
/// changes nothing else).
fn parse(phone: &str) -> Result<phonenumber::PhoneNumber, phonenumber::ParseError> {
    if let Some(region) = crate::numbering::region_hint(phone) {
        if let Ok(number) = phonenumber::parse(Some(region), phone) {
            return Ok(number);
        }
    }
    phonenumber::parse(None, phone)
}

/// Load libphonenumber's metadata and compile the patterns of the busiest shared code (+1),
/// about 150 ms of CPU that would otherwise fall on the first request's latency: a service
/// calls it before it takes traffic.
pub fn load_numbering_plan() {
    let _ = phone_facts("+12015550123");
}

/// What the numbering plan says about a number, from one parse of libphonenumber's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhoneFacts {
    /// ISO 3166-1 alpha-2 country; `None` when unknown.
    pub country: Option<String>,
    /// Premium-rate or shared-cost (where SMS pumping makes its money). Numbers the plan does
    /// not know are not flagged.
    pub premium: bool,
    /// [`canonical_phone`] of the number, when it parses.
    pub canonical: Option<String>,
}

pub fn phone_facts(phone: &str) -> PhoneFacts {
    let Ok(number) = parse(phone) else {
        return PhoneFacts::default();
    };
    // One look-up of the number's region (for +1 it tries the pattern of each region that
    // shares the code), where `country().id()` and `number_type()` each made their own.
    let (national, region) = national_and_region(&number);
    PhoneFacts {
        country: country_in(&number, region.map(|r| r.meta)),
        premium: region.is_some_and(|r| r.is_premium(&national)),
        canonical: Some(e164(&number)),
    }
}

/// The number's national significant digits and its region, as `PhoneNumber::metadata`
/// finds it (the crate's `source_for`, on compiled patterns).
fn national_and_region(
    number: &phonenumber::PhoneNumber,
) -> (String, Option<&'static crate::numbering::Region>) {
    let national = number.national().value().to_string();
    let region = crate::numbering::source_for(number.code().value(), &national).map(|s| s.region());
    (national, region)
}

fn e164(number: &phonenumber::PhoneNumber) -> String {
    // What the crate's E.164 formatting writes; written here because the crate first picks a
    // national format by matching its patterns, which E.164 does not use.
    without_mexican_mobile_token(format!("+{}{}", number.code().value(), number.national()))
}

/// Mexico dropped the mobile token "1" after the country code in 2019 ("+52 1 55 ..." is
/// "+52 55 ..."); Google's libphonenumber strips it when parsing, the Rust port's metadata
/// does not, so it is done here: "+521" followed by ten digits is the ten-digit number.
fn without_mexican_mobile_token(e164: String) -> String {
    match e164.strip_prefix("+521") {
        Some(rest) if rest.len() == 10 => format!("+52{rest}"),
        _ => e164,
    }
}

/// One spelling per subscriber: libphonenumber's E.164 formatting of the parsed number, so
/// that spellings of one number (a national prefix or a mobile token written after the
/// country code, as in Mexico's `+52 1 ...`) share one hash, one partition and one abuse
/// count. A number libphonenumber cannot parse is kept as written.
pub fn canonical_phone(phone: &str) -> String {
    match parse(phone) {
        Ok(number) => e164(&number),
        Err(_) => phone.to_string(),
    }
}

/// ISO 3166-1 alpha-2 country of an E.164 number, from libphonenumber's metadata. Numbers
/// whose calling code is shared (+1) are resolved by their area code; `None` when unknown.
pub fn country_of(phone: &str) -> Option<String> {
    country_of_number(&parse(phone).ok()?)
}

fn country_of_number(number: &phonenumber::PhoneNumber) -> Option<String> {
    country_in(number, national_and_region(number).1.map(|r| r.meta))
}

/// [`country_of`] with the number's region already looked up.
fn country_in(
    number: &phonenumber::PhoneNumber,
    meta: Option<&phonenumber::Metadata>,
) -> Option<String> {
    // As `number.country().id()`: the region's id when it names a country.
    if let Some(id) = meta.and_then(|m| m.id().parse::<phonenumber::country::Id>().ok()) {
        return Some(id.as_ref().to_string());
    }
    // Fictional or unassigned ranges: fall back to the main country of the calling code.
    let code = number.country().code();
    phonenumber::metadata::DATABASE
        .by_code(&code)
        .and_then(|regions| regions.first().map(|m| m.id().to_string()))
}

/// The number without its last 4 digits: the range a pumping attack walks through.
pub fn number_range(phone: &str) -> &str {
    &phone[..phone.len().saturating_sub(4)]
}

/// Prefix of a hashed WhatsApp message id (see [`PhoneHasher::public_message_id`]).
pub const WAMID_HASH_PREFIX: &str = "wamid-hash-";

#[cfg(test)]
mod tests {
    use super::*;

    /// The facts as libphonenumber's own calls give them (what `phone_facts` did before it
    /// asked only what its answers depend on).
    fn facts_the_long_way(phone: &str) -> PhoneFacts {
        use phonenumber::Type;
        let Ok(number) = phonenumber::parse(None, phone) else {
            return PhoneFacts::default();
        };
        let country = match number.country().id() {
            Some(id) => Some(id.as_ref().to_string()),
            None => phonenumber::metadata::DATABASE
                .by_code(&number.country().code())
                .and_then(|regions| regions.first().map(|m| m.id().to_string())),
        };
        PhoneFacts {
            country,
            premium: matches!(
                number.number_type(&phonenumber::metadata::DATABASE),
                Type::PremiumRate | Type::SharedCost
            ),
            canonical: Some(without_mexican_mobile_token(
                number.format().mode(phonenumber::Mode::E164).to_string(),
            )),
        }
    }

    /// Every example number of every kind of every region, and neighbours of each (the last
    /// digit changed, a digit dropped, a digit added, a zero or the national prefix after the
    /// code), written `+` and digits as requests carry them.
    fn numbers_to_check() -> Vec<(String, String)> {
        use phonenumber::Type;
        let kinds = [
            Type::FixedLine,
            Type::Mobile,
            Type::TollFree,
            Type::PremiumRate,
            Type::SharedCost,
            Type::PersonalNumber,
            Type::Voip,
            Type::Pager,
            Type::Uan,
            Type::Voicemail,
        ];
        let mut numbers = Vec::new();
        // By code: `DATABASE.iter()` yields one of the non-geographic entities only.
        for meta in crate::numbering::all_metadata() {
            let code = meta.country_code();
            for kind in kinds {
                let Some(example) = meta.descriptors().get(kind).and_then(|d| d.example()) else {
                    continue;
                };
                let label = format!("{} {kind:?}", meta.id());
                let mut neighbours = vec![
                    (format!("+{code}{example}"), format!("{label} example")),
                    (format!("+{code}{example}5"), format!("{label} longer")),
                    (
                        format!("+{code}0{example}"),
                        format!("{label} leading zero"),
                    ),
                ];
                if let Some(prefix) = meta.national_prefix() {
                    // The national prefix kept after the code, a common misspelling.
                    neighbours.push((
                        format!("+{code}{prefix}{example}"),
                        format!("{label} prefix"),
                    ));
                }
                let mut shorter = example.to_string();
                let last = shorter.pop().unwrap_or('0');
                neighbours.push((format!("+{code}{shorter}"), format!("{label} shorter")));
                let other = if last == '9' { '0' } else { '9' };
                neighbours.push((
                    format!("+{code}{shorter}{other}"),
                    format!("{label} last digit"),
                ));
                numbers.extend(neighbours);
            }
        }
        numbers
    }

    #[test]
    fn phone_facts_agrees_with_libphonenumber_on_every_example_and_its_neighbours() {
        let (mut checked, mut premium, mut shared_codes) = (0, 0, 0);
        for (phone, label) in numbers_to_check() {
            let expected = facts_the_long_way(&phone);
            assert_eq!(phone_facts(&phone), expected, "{label}");
            checked += 1;
            premium += usize::from(expected.premium);
            shared_codes += usize::from(phone.starts_with("+1") || phone.starts_with("+44"));
        }
        assert!(checked > 5000, "every region's examples: {checked}");
        assert!(
            premium > 300,
            "premium and shared-cost among them: {premium}"
        );
        assert!(
            shared_codes > 500,
            "numbers of shared codes: {shared_codes}"
        );
    }

    #[test]
    fn the_region_given_to_the_parser_changes_nothing_it_answers() {
        let mut hinted = 0;
        for (phone, label) in numbers_to_check() {
            assert_eq!(
                parse(&phone).ok(),
                phonenumber::parse(None, &phone).ok(),
                "{label}"
            );
            hinted += usize::from(crate::numbering::region_hint(&phone).is_some());
        }
        // The numbers of shared codes (+1, +44, +7, ...), where finding the region costs
        // patterns.
        assert!(hinted > 1000, "numbers given their region: {hinted}");
    }

    #[test]
    fn spellings_of_one_subscriber_share_one_canonical_number() {
        // Mexico: the mobile token "1" after the country code is not part of the number.
        assert_eq!(
            canonical_phone("+5215512345678"),
            canonical_phone("+525512345678")
        );
        assert_eq!(canonical_phone("+525512345678"), "+525512345678");
        let h = PhoneHasher::new(b"k");
        assert_eq!(
            h.hash_phone("+5215512345678"),
            h.hash_phone("+525512345678")
        );
        assert_ne!(h.hash_phone("+525512345678"), h.hash_phone("+525512345679"));
        assert_eq!(canonical_phone("+15551234567"), "+15551234567");
    }

    #[test]
    fn hash_is_keyed_stable_and_hides_the_number() {
        let a = PhoneHasher::new(b"k1");
        let b = PhoneHasher::new(b"k2");
        let h = a.hash("+15551234567");
        assert_eq!(h, a.hash("+15551234567"));
        assert_ne!(h, b.hash("+15551234567"));
        assert_eq!(h.len(), 32);
        assert!(!h.contains("5551234567"));
    }

    #[test]
    fn mask_keeps_only_prefix_and_last_two() {
        assert_eq!(mask_phone("+447700900123"), "+44********23");
        assert!(!mask_phone("+15551234567").contains("1234"));
    }

    #[test]
    fn premium_rate_numbers_are_recognised() {
        assert!(phone_facts("+611900123456").premium, "AU 1900 premium");
        assert!(phone_facts("+80812345678").premium, "+808 shared cost");
        assert!(!phone_facts("+447700900123").premium);
        assert_eq!(phone_facts("+447700900123").country.as_deref(), Some("GB"));
        assert_eq!(number_range("+447700900123"), "+44770090");
    }

    #[test]
    fn country_from_calling_code() {
        assert_eq!(country_of("+447700900123").as_deref(), Some("GB"));
        assert_eq!(country_of("+4915112345678").as_deref(), Some("DE"));
        assert_eq!(country_of("+15551234567").as_deref(), Some("US"));
        assert_eq!(country_of("+5511987654321").as_deref(), Some("BR"));
    }

    #[test]
    fn whatsapp_message_ids_are_hashed_because_they_embed_the_number() {
        let h = PhoneHasher::new(b"k");
        // A real wamid: base64 of a blob that holds the recipient's number (15551234567).
        let wamid = "wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA";
        let public = h.public_message_id(crate::Channel::Whatsapp, wamid);
        assert!(
            public.starts_with(WAMID_HASH_PREFIX) && public.len() == 11 + 32,
            "{public}"
        );
        assert_eq!(
            public,
            h.public_message_id(crate::Channel::Whatsapp, wamid),
            "stable"
        );
        assert_eq!(
            public,
            h.public_message_id(crate::Channel::Whatsapp, &public),
            "idempotent"
        );
        assert_eq!(h.public_message_id(crate::Channel::Sms, "SM123"), "SM123");
    }
}
