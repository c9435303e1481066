//! WhatsApp Cloud API error codes and what the runtime does with each (DESIGN.md, "Error
//! classes"; meanings from Meta, "Error codes" for the Cloud API). Meta publishes no retry
//! table: the classes are ours.

use super::{ErrorClass::*, ErrorTable};

pub static WHATSAPP: ErrorTable = ErrorTable {
    provider: "whatsapp_cloud",
    entries: &[
        // Transient: Meta's side, try again.
        (1, Transient, "API unknown error"),
        (2, Transient, "API service temporarily unavailable"),
        (131000, Transient, "something went wrong at WhatsApp"),
        (131016, Transient, "WhatsApp service unavailable"),
        (131057, Transient, "business account in maintenance mode"),
        (133004, Transient, "WhatsApp server temporarily unavailable"),
        // Windows on our side ("try again later or reduce the frequency").
        (4, Throttled, "API too many calls (app rate limit)"),
        (80007, Throttled, "WhatsApp Business Account rate limit hit"),
        (130429, Throttled, "Cloud API throughput limit reached"),
        // One user, about one message per 6 s.
        (
            131056,
            PairLimited,
            "pair rate limit: too many messages to this recipient",
        ),
        // Recipient: this user cannot get it on WhatsApp; the channel is healthy.
        (
            131026,
            Recipient,
            "message undeliverable: recipient not on WhatsApp or cannot receive",
        ),
        (131021, Recipient, "recipient cannot be the sender"),
        (
            131030,
            Recipient,
            "recipient not in the allowed list (test number)",
        ),
        (131047, Recipient, "re-engagement window closed"),
        (131049, Recipient, "Meta chose not to deliver this message"),
        (130472, Recipient, "recipient is part of an experiment"),
        // Route broken: every user of the destination's country meets it (PROVIDERS.md,
        // "Corrections"); not retried per user.
        (
            130497,
            RouteBroken,
            "business restricted from messaging users in this country",
        ),
        // Channel broken: credentials, account, sender quality, or our payload or template.
        (0, ChannelBroken, "authentication failed (AuthException)"),
        (33, ChannelBroken, "business phone number deleted"),
        (3, ChannelBroken, "capability or permission missing"),
        (10, ChannelBroken, "permission denied"),
        (
            100,
            ChannelBroken,
            "unsupported or misspelled parameter in our request",
        ),
        (190, ChannelBroken, "access token expired or invalid"),
        (
            368,
            ChannelBroken,
            "account temporarily blocked for policy violations",
        ),
        (131005, ChannelBroken, "access denied"),
        (
            131008,
            ChannelBroken,
            "required parameter missing in our request",
        ),
        (
            131009,
            ChannelBroken,
            "parameter value invalid in our request",
        ),
        (131031, ChannelBroken, "business account locked"),
        (131037, ChannelBroken, "display name not approved"),
        (131042, ChannelBroken, "business eligibility payment issue"),
        (131045, ChannelBroken, "phone number certificate missing"),
        (
            131048,
            ChannelBroken,
            "messages from this number restricted: earlier ones were flagged as spam",
        ),
        (131051, ChannelBroken, "unsupported message type"),
        (132000, ChannelBroken, "template parameter count mismatch"),
        (
            132001,
            ChannelBroken,
            "template does not exist in its default language",
        ),
        (
            132005,
            ChannelBroken,
            "template text too long once filled in",
        ),
        (
            132007,
            ChannelBroken,
            "template format character policy violated",
        ),
        (132012, ChannelBroken, "template parameter format mismatch"),
        (132015, ChannelBroken, "template paused for low quality"),
        (132016, ChannelBroken, "template disabled for low quality"),
        (
            133000,
            ChannelBroken,
            "phone number deregistration incomplete",
        ),
        (133010, ChannelBroken, "phone number not registered"),
    ],
    ranges: &[(200, 299, ChannelBroken, "API permission missing")],
};

#[cfg(test)]
mod tests {
    use super::super::ErrorClass;
    use super::*;

    /// Every code DESIGN.md lists, with its class: a change to the table must change this.
    #[test]
    fn every_listed_code_has_its_class() {
        let expected: &[(&[i64], ErrorClass)] = &[
            (&[1, 2, 131000, 131016, 131057, 133004], Transient),
            (&[4, 80007, 130429], Throttled),
            (&[131056], PairLimited),
            (&[131021, 131026, 131030, 131047, 131049, 130472], Recipient),
            (&[130497], RouteBroken),
            (
                &[
                    0, 3, 10, 33, 100, 190, 368, 131005, 131008, 131009, 131031, 131037, 131042,
                    131045, 131048, 131051, 132000, 132001, 132005, 132007, 132012, 132015, 132016,
                    133000, 133010,
                ],
                ChannelBroken,
            ),
        ];
        let differences = WHATSAPP.differences(expected);
        assert!(differences.is_empty(), "{differences:#?}");
        for code in [200, 250, 299] {
            assert_eq!(WHATSAPP.class_of(code), Some(ChannelBroken), "{code}");
        }
        assert_eq!(WHATSAPP.class_of(300), None);
    }

    #[test]
    fn a_sender_quality_restriction_is_the_channel_not_the_recipient() {
        assert_eq!(WHATSAPP.class_of(131048), Some(ChannelBroken));
    }

    #[test]
    fn our_payload_refused_breaks_the_channel_it_never_dead_letters() {
        for code in [100, 131008, 131009, 131051, 132005, 132007] {
            assert_eq!(WHATSAPP.class_of(code), Some(ChannelBroken), "{code}");
        }
    }

    #[test]
    fn unknown_codes_classify_by_http_status() {
        assert_eq!(WHATSAPP.classify(503, None).class, Transient);
        assert_eq!(WHATSAPP.classify(429, Some(999_999)).class, Throttled);
        assert_eq!(WHATSAPP.classify(401, Some(999_999)).class, ChannelBroken);
        assert_eq!(WHATSAPP.classify(403, None).class, ChannelBroken);
        assert_eq!(WHATSAPP.classify(400, Some(999_999)).class, Recipient);
        assert_eq!(WHATSAPP.classify(400, Some(131026)).code, "131026");
        assert_eq!(WHATSAPP.classify(403, Some(250)).code, "250");
        assert!(WHATSAPP.classify(400, Some(999_999)).unknown_code);
        assert!(
            WHATSAPP.classify(418, None).unknown_code,
            "an unexplained refusal"
        );
        assert!(
            !WHATSAPP.classify(503, None).unknown_code,
            "an outage's answer is no news"
        );
    }
}
