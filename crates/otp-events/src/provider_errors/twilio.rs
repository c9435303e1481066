//! Twilio Messaging error codes and what the runtime does with each (DESIGN.md, "Error
//! classes"; meanings from Twilio's "Error and Warning Dictionary"). The 300xx codes arrive
//! only as delivery errors on status callbacks; the others answer the send itself.

use super::{ErrorClass::*, ErrorTable};

pub static TWILIO: ErrorTable = ErrorTable {
    provider: "twilio",
    entries: &[
        // Too many concurrent API requests, or the sender's queue is full: a window on our
        // side, retried within the deadline.
        (20429, Throttled, "too many concurrent requests"),
        (21611, Throttled, "the sender's message queue is full"),
        // Delivery errors reported later (callbacks).
        (30001, Transient, "queue overflow"),
        (30003, Recipient, "handset unreachable"),
        (30005, Recipient, "unknown destination handset"),
        (30006, Recipient, "landline or unreachable carrier"),
        (30007, Recipient, "filtered by the carrier"),
        (30008, Transient, "unknown delivery error"),
        (30002, ChannelBroken, "account suspended"),
        // US and Canadian registration: Twilio refuses that country's route, not the account.
        (30032, RouteBroken, "toll-free number not verified (US/CA)"),
        (30034, RouteBroken, "A2P 10DLC registration missing (US/CA)"),
        // Recipient: this number cannot get it by SMS from us; the channel is healthy.
        (21211, Recipient, "invalid 'To' phone number"),
        (21608, Recipient, "trial account: 'To' number not verified"),
        (21610, Recipient, "recipient replied STOP (unsubscribed)"),
        (
            21612,
            Recipient,
            "'To' number not reachable from this sender",
        ),
        (21614, Recipient, "'To' number is not a mobile number"),
        (21635, Recipient, "'To' number cannot be reached by SMS"),
        // Route broken: our sender or account may not send to the destination's country; every
        // user there meets it, so it is not retried per user (PROVIDERS.md, "Corrections").
        (
            21408,
            RouteBroken,
            "geo permission not enabled for this country",
        ),
        (
            21606,
            RouteBroken,
            "'From' number cannot send to this destination",
        ),
        // Channel broken: credentials, account, sender, or our payload.
        (
            21661,
            ChannelBroken,
            "'From' number misconfigured for sending (sender, not recipient)",
        ),
        (
            20003,
            ChannelBroken,
            "authentication failed (account SID or token)",
        ),
        (20404, ChannelBroken, "account or resource not found"),
        (21602, ChannelBroken, "message body missing in our request"),
        (21604, ChannelBroken, "'To' missing in our request"),
        (21609, ChannelBroken, "invalid StatusCallback URL"),
    ],
    ranges: &[],
};

#[cfg(test)]
mod tests {
    use super::super::ErrorClass;
    use super::*;

    /// Every code DESIGN.md lists, with its class: a change to the table must change this.
    #[test]
    fn every_listed_code_has_its_class() {
        let expected: &[(&[i64], ErrorClass)] = &[
            (&[30001, 30008], Transient),
            (&[20429, 21611], Throttled),
            (
                &[
                    21211, 21608, 21610, 21612, 21614, 21635, 30003, 30005, 30006, 30007,
                ],
                Recipient,
            ),
            (&[21408, 21606, 30032, 30034], RouteBroken),
            (
                &[20003, 20404, 21602, 21604, 21609, 21661, 30002],
                ChannelBroken,
            ),
        ];
        let differences = TWILIO.differences(expected);
        assert!(differences.is_empty(), "{differences:#?}");
    }

    #[test]
    fn an_error_answer_proves_nothing_was_sent_unless_it_may_follow_a_send() {
        for status in [400, 401, 404, 429, 503] {
            assert!(TWILIO.classify(status, None).nothing_sent, "{status}");
        }
        assert!(TWILIO.classify(400, Some(21211)).nothing_sent);
        for status in [500, 502, 504] {
            assert!(!TWILIO.classify(status, None).nothing_sent, "{status}");
        }
    }

    #[test]
    fn http_429_without_a_code_is_throttling_and_5xx_transient() {
        assert_eq!(TWILIO.classify(429, None).class, Throttled);
        assert_eq!(TWILIO.classify(500, None).class, Transient);
        assert_eq!(TWILIO.classify(401, None).class, ChannelBroken);
        assert_eq!(TWILIO.classify(400, Some(21614)).class, Recipient);
    }
}
