//! Vonage Messages API error codes and what the runtime does with each (DESIGN.md, "Error
//! classes"; PROVIDERS.md, "SMS: Vonage Messages API"; meanings from Vonage's "Messages API
//! errors"). Vonage answers an error with an RFC 7807 body whose `type` URL ends in the code
//! (`https://developer.vonage.com/api-errors/messages#1000`, older bodies `.../messages-olympus#1000`).

use super::{ErrorClass::*, ErrorTable};

pub static VONAGE: ErrorTable = ErrorTable {
    provider: "vonage",
    entries: &[
        (1000, Throttled, "throttled: too many requests"),
        (1030, Transient, "internal error at Vonage"),
        (1100, Transient, "communication with the carrier failed"),
        (
            1040,
            Recipient,
            "invalid message (unrecognised number prefix)",
        ),
        (1050, Recipient, "number barred"),
        (1060, ChannelBroken, "partner account barred"),
        (1070, ChannelBroken, "partner quota or credit exceeded"),
        (1080, ChannelBroken, "account not enabled for this API"),
        (
            1120,
            RouteBroken,
            "sender address refused by the destination's regulation",
        ),
        // Our payload: a bug of ours, the same for every user; the provider is unusable.
        (1020, ChannelBroken, "invalid parameters in our request"),
        (1130, ChannelBroken, "invalid TTL in our request"),
    ],
    ranges: &[],
};

/// The Vonage error code at the end of an RFC 7807 `type` URL (`...#1120` or `.../1120`).
pub fn vonage_code(type_url: &str) -> Option<i64> {
    let tail = type_url.rsplit(['#', '/']).next()?;
    tail.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::super::ErrorClass;
    use super::*;

    /// The classes the provider issue and PROVIDERS.md give: a change to the table must
    /// change this.
    #[test]
    fn every_listed_code_has_its_class() {
        let expected: &[(&[i64], ErrorClass)] = &[
            (&[1030, 1100], Transient),
            (&[1000], Throttled),
            (&[1040, 1050], Recipient),
            (&[1120], RouteBroken),
            (&[1060, 1070, 1080, 1020, 1130], ChannelBroken),
        ];
        let differences = VONAGE.differences(expected);
        assert!(differences.is_empty(), "{differences:#?}");
    }

    #[test]
    fn the_code_is_read_from_the_type_url() {
        assert_eq!(
            vonage_code("https://developer.vonage.com/api-errors/messages#1120"),
            Some(1120)
        );
        assert_eq!(
            vonage_code("https://developer.nexmo.com/api-errors#unauthorized"),
            None
        );
    }
}
