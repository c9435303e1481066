//! libphonenumber's region look-up and number types, with the metadata's patterns compiled
//! once, so that a number's facts cost what their regular expressions cost.
//!
//! The `phonenumber` crate keeps its patterns as strings and, on every match, looks the
//! compiled expression up in one LRU cache of 100 behind a process-wide lock, hashing the
//! pattern's text to find it. A worker's numbers come from many regions, and one number of a
//! shared calling code tries the patterns of every region of its code (+1 has 25): the cache
//! did not hold them, and patterns were compiled again and again.
//!
//! Here each region's patterns are compiled on the first number of that region and kept: at
//! most the metadata's (about 1,100 of the kinds used here, some 15 MB once every region has
//! been seen; bounded by the metadata, not by the traffic). They are compiled without Unicode
//! classes (`\d` is ASCII), which matches the same on the ASCII digits they are given and
//! takes a seventh of the memory. The parser is then given the region it would have searched
//! for ([`region_hint`]), so that it matches only that region's prefixes.
//!
//! `cargo bench -p otp-events --bench phone`, medians: numbers of every region in turn
//! (`mixed_regions`) 577 µs -> 2.1 µs a number; one +1 555 number asked again 13.2 -> 3.5 µs.
//!
//! What is ported is [`source_for`] and `number_type` from the crate's `validator`, line for
//! line; `pii::tests` holds them, and the parse given a region, to the crate's own answers on
//! every example number of every region and on neighbours of each.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use phonenumber::metadata::{Descriptor, DATABASE};
use phonenumber::{Metadata, Type};
use regex::{Regex, RegexBuilder};

/// A region's metadata with the patterns this module matches, compiled.
pub(crate) struct Region {
    pub(crate) meta: &'static Metadata,
    leading_digits: Option<Regex>,
    international_prefix: Option<Regex>,
    national_prefix_for_parsing: Option<Regex>,
    general: Pattern,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    toll_free: Option<Pattern>,
    premium_rate: Option<Pattern>,
    shared_cost: Option<Pattern>,
    personal_number: Option<Pattern>,
    voip: Option<Pattern>,
    pager: Option<Pattern>,
    uan: Option<Pattern>,
    voicemail: Option<Pattern>,
    /// The fixed-line and mobile patterns are the same text.
    fixed_line_is_mobile: bool,
}

/// A descriptor's national-number pattern and possible lengths.
struct Pattern {
    regex: Regex,
    lengths: &'static [u16],
}

/// The regions of one calling code, in the metadata's order, each compiled on first use.
struct Code {
    ids: Vec<&'static str>,
    metas: Vec<&'static Metadata>,
    compiled: Vec<OnceLock<Region>>,
}

/// Every calling code of the metadata (at most three digits). Found by code, not from
/// `DATABASE.iter()`, which yields one entry per region id: the non-geographic entities
/// (+800, +808, +870, ...) all have the id "001", so it yields only one of them.
fn calling_codes() -> impl Iterator<Item = u16> {
    (1..=999).filter(|code| DATABASE.region(code).is_some())
}

/// Every entry of the metadata, each region and each non-geographic entity, by code.
pub(crate) fn all_metadata() -> impl Iterator<Item = &'static Metadata> {
    calling_codes()
        .filter_map(|code| DATABASE.by_code(&code))
        .flatten()
}

static CODES: LazyLock<HashMap<u16, Code>> = LazyLock::new(|| {
    let mut codes = HashMap::new();
    for code in calling_codes() {
        let ids = DATABASE.region(&code).unwrap_or_default();
        // As the crate: a region id names its metadata, but "001" (non-geographic entities)
        // is shared by several codes, whose metadata is found by code.
        let metas: Vec<&'static Metadata> = ids
            .iter()
            .filter_map(|id| match *id {
                "001" => DATABASE.by_code(&code).and_then(|m| m.first().copied()),
                id => DATABASE.by_id(id),
            })
            .collect();
        if metas.len() != ids.len() {
            continue;
        }
        let compiled = ids.iter().map(|_| OnceLock::new()).collect();
        codes.insert(
            code,
            Code {
                ids,
                metas,
                compiled,
            },
        );
    }
    codes
});

impl Code {
    fn region(&self, i: usize) -> &Region {
        self.compiled[i].get_or_init(|| Region::compile(self.metas[i]))
    }
}

/// Where a number's metadata comes from, as the crate's `validator::source_for` answers.
pub(crate) enum Source<'a> {
    /// A region of the code (its id parses as a country).
    Region(&'a Region),
    /// A non-geographic code's one entity.
    Entity(&'a Region),
}

impl<'a> Source<'a> {
    pub(crate) fn region(&self) -> &'a Region {
        match self {
            Source::Region(r) | Source::Entity(r) => r,
        }
    }
}

/// The crate's `validator::source_for(code, national)`, with compiled patterns.
pub(crate) fn source_for(code: u16, national: &str) -> Option<Source<'static>> {
    let c = CODES.get(&code)?;
    if c.ids.len() == 1 {
        return if c.ids[0] == "001" {
            Some(Source::Entity(c.region(0)))
        } else {
            c.ids[0]
                .parse::<phonenumber::country::Id>()
                .ok()
                .map(|_| Source::Region(c.region(0)))
        };
    }
    for i in 0..c.ids.len() {
        let region = c.region(i);
        let found = match &region.leading_digits {
            Some(pattern) => begins(pattern, national),
            None => region.number_type(national) != Type::Unknown,
        };
        if found {
            // The crate unwraps this parse; a region id that is no country ends the search.
            return c.ids[i]
                .parse::<phonenumber::country::Id>()
                .ok()
                .map(|_| Source::Region(region));
        }
    }
    None
}

/// A region to give `phonenumber::parse` for a number written `+` and digits, such that
/// the parser answers as it would without one (`parse(None, phone)`), but looks nothing up.
///
/// Without a region, the parser finds the number's region as [`source_for`] does, then strips
/// that region's national prefix from the number if present. Given a region, it takes that
/// one instead, and also strips the region's international prefix from the digits after `+`
/// if they begin with it. So the region given is the one [`source_for`] finds, and when no
/// region's patterns know the number (the parser then strips nothing), a region of its code
/// whose prefixes it does not begin with. `None` when neither holds: the parser decides
/// alone.
pub(crate) fn region_hint(phone: &str) -> Option<phonenumber::country::Id> {
    LazyLock::force(&PARSER_CACHE_SIZED);
    let digits = phone.strip_prefix('+')?;
    if digits.len() <= 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // As the parser: the first of the 1-3 leading digits that is a calling code.
    let (code, c, national) = (1..=3).find_map(|len| {
        let code: u16 = digits[..len].parse().ok()?;
        CODES.get(&code).map(|c| (code, c, &digits[len..]))
    })?;
    if c.ids.len() == 1 {
        // The parser finds the one region without a pattern, where a region given would
        // cost it a match of the international prefix.
        return None;
    }
    let region = match source_for(code, national.trim_start_matches('0')) {
        Some(Source::Region(region)) => region,
        Some(Source::Entity(_)) => return None,
        None => (0..c.ids.len())
            .map(|i| c.region(i))
            .find(|r| !r.strips_national_prefix(national))?,
    };
    if starts_with(&region.international_prefix, digits) {
        return None;
    }
    region.meta.id().parse().ok()
}

/// Whether `pattern`'s first match in `value` is at its start: how the crate matches every
/// pattern of its metadata.
fn begins(pattern: &Regex, value: &str) -> bool {
    pattern.find(value).is_some_and(|m| m.start() == 0)
}

fn starts_with(pattern: &Option<Regex>, value: &str) -> bool {
    pattern.as_ref().is_some_and(|p| begins(p, value))
}

/// The parser, given the region, still matches that region's international and national
/// prefixes through the crate's cache of 100 (and the region's general pattern when the
/// national prefix matches). The cache is made large enough for every region's two prefix
/// patterns beside the 100 it had, so that numbers from many regions do not compile them
/// again and again; they are short patterns, small once compiled.
static PARSER_CACHE_SIZED: LazyLock<()> = LazyLock::new(|| {
    let prefixes: std::collections::HashSet<&str> = all_metadata()
        .flat_map(|m| [m.international_prefix(), m.national_prefix_for_parsing()])
        .flatten()
        .map(|r| r.as_str())
        .collect();
    let cache = DATABASE.cache();
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    let capacity = cache.capacity().max(100 + prefixes.len());
    cache.set_capacity(capacity);
});

impl Region {
    fn compile(meta: &'static Metadata) -> Self {
        let d = meta.descriptors();
        let fixed_line_is_mobile = d.fixed_line().map(|x| x.national_number().as_str())
            == d.mobile().map(|x| x.national_number().as_str());
        Region {
            meta,
            leading_digits: meta.leading_digits().map(|r| compile(r.as_str())),
            international_prefix: meta.international_prefix().map(|r| compile(r.as_str())),
            national_prefix_for_parsing: meta
                .national_prefix_for_parsing()
                .map(|r| compile(r.as_str())),
            general: Pattern::of(d.general()),
            fixed_line: d.fixed_line().map(Pattern::of),
            mobile: d.mobile().map(Pattern::of),
            toll_free: d.toll_free().map(Pattern::of),
            premium_rate: d.premium_rate().map(Pattern::of),
            shared_cost: d.shared_cost().map(Pattern::of),
            personal_number: d.personal_number().map(Pattern::of),
            voip: d.voip().map(Pattern::of),
            pager: d.pager().map(Pattern::of),
            uan: d.uan().map(Pattern::of),
            voicemail: d.voicemail().map(Pattern::of),
            fixed_line_is_mobile,
        }
    }

    /// Whether the parser, given this region, would take a national prefix off `national`
    /// (the crate's `helper::national_number` and the strip after it in `parse_with`).
    fn strips_national_prefix(&self, national: &str) -> bool {
        starts_with(&self.national_prefix_for_parsing, national)
            || self
                .meta
                .national_prefix()
                .is_some_and(|prefix| national.starts_with(prefix))
    }

    /// Premium-rate or shared-cost, as `number_type` would say, asking only what that answer
    /// depends on: its checks run in order (general, premium rate, toll free, shared cost,
    /// then the other kinds), so a number is shared-cost only if it is not toll-free, and the
    /// kinds after shared cost never change the answer.
    pub(crate) fn is_premium(&self, national: &str) -> bool {
        self.general.is_match(national)
            && (matches(&self.premium_rate, national)
                || (!matches(&self.toll_free, national) && matches(&self.shared_cost, national)))
    }

    /// The crate's `validator::number_type(meta, value)`.
    fn number_type(&self, value: &str) -> Type {
        if !self.general.is_match(value) {
            return Type::Unknown;
        }
        let kinds = [
            (&self.premium_rate, Type::PremiumRate),
            (&self.toll_free, Type::TollFree),
            (&self.shared_cost, Type::SharedCost),
            (&self.voip, Type::Voip),
            (&self.personal_number, Type::PersonalNumber),
            (&self.pager, Type::Pager),
            (&self.uan, Type::Uan),
            (&self.voicemail, Type::Voicemail),
        ];
        if let Some((_, kind)) = kinds.iter().find(|(p, _)| matches(p, value)) {
            return *kind;
        }
        if matches(&self.fixed_line, value) {
            if self.fixed_line_is_mobile || matches(&self.mobile, value) {
                return Type::FixedLineOrMobile;
            }
            return Type::FixedLine;
        }
        if matches(&self.mobile, value) {
            return Type::Mobile;
        }
        Type::Unknown
    }
}

fn matches(pattern: &Option<Pattern>, value: &str) -> bool {
    pattern.as_ref().is_some_and(|p| p.is_match(value))
}

impl Pattern {
    fn of(d: &'static Descriptor) -> Self {
        Pattern {
            regex: compile(d.national_number().as_str()),
            lengths: d.possible_length(),
        }
    }

    /// The crate's `Descriptor::is_match`.
    fn is_match(&self, value: &str) -> bool {
        if !self.lengths.is_empty() && !self.lengths.contains(&(value.len() as u16)) {
            return false;
        }
        begins(&self.regex, value)
    }
}

/// A metadata pattern with the crate's options (whitespace ignored), ASCII classes where the
/// pattern allows them.
fn compile(source: &str) -> Regex {
    let build = |unicode| {
        RegexBuilder::new(source)
            .ignore_whitespace(true)
            .unicode(unicode)
            .build()
    };
    build(false)
        .or_else(|_| build(true))
        .expect("the crate compiled this pattern when it loaded its metadata")
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;

    #[test]
    fn the_region_of_a_shared_code_is_found_by_its_patterns() {
        assert_eq!(region_hint("+447400123456"), Some(Id::GB));
        assert_eq!(region_hint("+447781123456"), Some(Id::GG));
        assert_eq!(region_hint("+12127363100"), Some(Id::US));
        assert_eq!(region_hint("+18762345678"), Some(Id::JM));
        // A code of one region: the parser finds it without a pattern.
        assert_eq!(region_hint("+5511987654321"), None);
        // Numbers no region's patterns know (the drama range, +1 555): a region of the code
        // that strips nothing stands in.
        assert_eq!(region_hint("+447700900123"), Some(Id::GB));
        assert_eq!(region_hint("+15551234567"), Some(Id::US));
        // A non-geographic code has no region to stand in.
        assert_eq!(region_hint("+80012345678"), None);
        assert_eq!(region_hint("+80812345678"), None);
    }

    #[test]
    fn every_calling_code_is_known_the_non_geographic_ones_included() {
        for code in [1, 44, 800, 808, 870, 878, 881, 882, 883, 888, 979] {
            assert!(CODES.contains_key(&code), "+{code}");
        }
        assert!(CODES.len() > 200, "{} codes", CODES.len());
        // +808 is shared-cost: the facts come from that entity's own patterns.
        let Some(Source::Entity(entity)) = source_for(808, "12345678") else {
            panic!("+808 is a non-geographic entity");
        };
        assert!(entity.is_premium("12345678"));
        // Not `+` and digits: the parser decides alone.
        assert_eq!(region_hint("+44 7700 900123"), None);
        assert_eq!(region_hint("447700900123"), None);
    }
}
