//! WhatsApp Cloud API error codes and what the runtime does with each (DESIGN.md, "Error
//! classes"). Meta publishes no retry table; these classes are ours.

use super::{ErrorClass::*, ErrorTable};

pub static WHATSAPP: ErrorTable = ErrorTable {
    entries: &[
        (1, Transient, "API unknown error"),
        (2, Transient, "API service temporarily unavailable"),
        (4, Transient, "API too many calls (app rate limit)"),
        (80007, Transient, "WhatsApp Business Account rate limit hit"),
        (130429, Transient, "Cloud API throughput limit reached"),
        (131000, Transient, "something went wrong at WhatsApp"),
        (131016, Transient, "WhatsApp service unavailable"),
        (
            131056,
            Transient,
            "pair rate limit: too many messages to this recipient",
        ),
        (133004, Transient, "WhatsApp server temporarily unavailable"),
        (
            131026,
            Recipient,
            "message undeliverable: recipient not on WhatsApp or cannot receive",
        ),
        (131048, Recipient, "spam rate limit hit for this recipient"),
        (131021, Recipient, "recipient cannot be the sender"),
        (
            131030,
            Recipient,
            "recipient not in the allowed list (test number)",
        ),
        (190, ChannelBroken, "access token expired or invalid"),
        (10, ChannelBroken, "permission denied"),
        (200, ChannelBroken, "permission not granted"),
        (
            368,
            ChannelBroken,
            "account temporarily blocked for policy violations",
        ),
        (131031, ChannelBroken, "business account locked"),
        (131042, ChannelBroken, "business eligibility payment issue"),
        (132000, ChannelBroken, "template parameter count mismatch"),
        (
            132001,
            ChannelBroken,
            "template does not exist in this language",
        ),
        (132012, ChannelBroken, "template parameter format mismatch"),
        (132015, ChannelBroken, "template paused for low quality"),
        (132016, ChannelBroken, "template disabled for low quality"),
        (133010, ChannelBroken, "phone number not registered"),
        (100, InvalidRequest, "invalid parameter in our request"),
    ],
};

#[cfg(test)]
mod tests {
    use super::super::ErrorClass;
    use super::*;

    /// Every code DESIGN.md lists, with its class: a change to the table must change this.
    #[test]
    fn every_listed_code_has_its_class() {
        let expected: &[(&[i64], ErrorClass)] = &[
            (
                &[1, 2, 4, 80007, 130429, 131000, 131016, 131056, 133004],
                Transient,
            ),
            (&[131026, 131048, 131021, 131030], Recipient),
            (
                &[
                    190, 10, 200, 368, 131031, 131042, 132000, 132001, 132012, 132015, 132016,
                    133010,
                ],
                ChannelBroken,
            ),
            (&[100], InvalidRequest),
        ];
        let differences = WHATSAPP.differences(expected);
        assert!(differences.is_empty(), "{differences:#?}");
    }

    #[test]
    fn unknown_codes_classify_by_http_status() {
        assert_eq!(WHATSAPP.classify(503, None).class, Transient);
        assert_eq!(WHATSAPP.classify(429, Some(999_999)).class, Transient);
        assert_eq!(WHATSAPP.classify(400, Some(999_999)).class, Recipient);
        assert_eq!(WHATSAPP.classify(400, Some(131026)).code, "131026");
    }
}
