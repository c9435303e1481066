//! Twilio Messaging error codes and what the runtime does with each (DESIGN.md, "Error
//! classes").

use super::{ErrorClass::*, ErrorTable};

pub static SMS: ErrorTable = ErrorTable {
    entries: &[
        (20429, Transient, "too many concurrent requests"),
        (30001, Transient, "queue overflow"),
        (30008, Transient, "unknown delivery error"),
        (21211, Recipient, "invalid 'To' phone number"),
        (21610, Recipient, "recipient replied STOP (unsubscribed)"),
        (
            21612,
            Recipient,
            "'To' number not reachable from this sender",
        ),
        (21614, Recipient, "'To' number is not a mobile number"),
        (21635, Recipient, "'To' number cannot be reached by SMS"),
        (30005, Recipient, "unknown destination handset"),
        (30006, Recipient, "landline or unreachable carrier"),
        (
            20003,
            ChannelBroken,
            "authentication failed (account SID or token)",
        ),
        (
            21606,
            ChannelBroken,
            "'From' number is not a valid SMS sender for this account",
        ),
        (
            21608,
            ChannelBroken,
            "trial account: 'To' number not verified",
        ),
        (21602, InvalidRequest, "message body is required"),
        (21604, InvalidRequest, "'To' phone number is required"),
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
            (&[20429, 30001, 30008], Transient),
            (
                &[21211, 21610, 21612, 21614, 21635, 30005, 30006],
                Recipient,
            ),
            (&[20003, 21606, 21608], ChannelBroken),
            (&[21602, 21604], InvalidRequest),
        ];
        let differences = SMS.differences(expected);
        assert!(differences.is_empty(), "{differences:#?}");
    }

    #[test]
    fn http_429_and_5xx_without_a_code_are_transient() {
        assert_eq!(SMS.classify(429, None).class, Transient);
        assert_eq!(SMS.classify(500, None).class, Transient);
        assert_eq!(SMS.classify(400, Some(21614)).class, Recipient);
    }
}
