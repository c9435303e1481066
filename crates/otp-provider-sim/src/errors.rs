//! The providers' error codes as the simulator answers them: the HTTP status and title of each
//! WhatsApp Cloud API code, the HTTP status of each Twilio API code, and which Twilio codes are
//! delivery errors (reported only on status callbacks, never as the answer to the send).
//!
//! Every place the simulator answers an error goes through these tables, so a code always
//! comes back with the status the provider documents for it.

/// The HTTP status Meta answers with for a Cloud API error code.
///
/// Source: Meta, "Error codes" (WhatsApp Cloud API), the "HTTP Status Code" column: 0 and 190
/// are 401; 3 is 500; 10, 200-299, 368, 131005, 131031 and 130497 are 403; 132001 is 404;
/// 131000 and 131057 are 500; 2, 131016 and 133004 are 503; the throttling codes (4, 80007,
/// 130429, 131048, 131056) and the other request, recipient and template codes are 400.
pub fn whatsapp_http_status(code: i64) -> u16 {
    match code {
        0 | 190 => 401,
        3 | 131000 | 131057 => 500,
        2 | 131016 | 133004 => 503,
        10 | 200..=299 | 368 | 130497 | 131005 | 131031 => 403,
        132001 => 404,
        // 1, 4, 33, 100, 80007, 130429, 130472, 131008, 131009, 131021, 131026, 131030,
        // 131037, 131042, 131045, 131047, 131048, 131049, 131051, 131052, 131053, 131056,
        // 132000, 132005, 132007, 132012, 132015, 132016, 133000, 133005-133010 ...
        _ => 400,
    }
}

/// The title Meta gives a Cloud API error code (Meta, "Error codes"); it goes in the error
/// body's `message` as `(#CODE) Title` and in webhook `errors[].title`.
pub fn whatsapp_title(code: i64) -> &'static str {
    match code {
        0 => "AuthException",
        1 => "API Unknown",
        2 => "API Service",
        3 => "API Method",
        4 => "API Too Many Calls",
        10 => "Permission Denied",
        100 => "Invalid parameter",
        190 => "Access token has expired",
        200..=299 => "API Permission",
        368 => "Temporarily blocked for policies violations",
        80007 => "Rate limit issues",
        130429 => "Rate limit hit",
        130472 => "User's number is part of an experiment",
        130497 => "Business account is restricted from messaging users in this country",
        131000 => "Something went wrong",
        131005 => "Access denied",
        131008 => "Required parameter is missing",
        131009 => "Parameter value is not valid",
        131016 => "Service unavailable",
        131021 => "Recipient cannot be sender",
        131026 => "Message Undeliverable",
        131031 => "Account has been locked",
        131037 => "WhatsApp provided number needs display name approval before message can be sent",
        131042 => "Business eligibility payment issue",
        131045 => "Incorrect certificate",
        131047 => "Re-engagement message",
        131048 => "Spam rate limit hit",
        131049 => "This message was not delivered to maintain healthy ecosystem engagement",
        131051 => "Unsupported message type",
        131056 => "(Business Account, Consumer Account) pair rate limit hit",
        131057 => "Account in maintenance mode",
        132000 => "Template Param Count Mismatch",
        132001 => "Template does not exist",
        132005 => "Template Hydrated Text Too Long",
        132007 => "Template Format Character Policy Violated",
        133000 => "Incomplete Deregistration",
        133004 => "Server Temporarily Unavailable",
        _ => "Error",
    }
}

/// The HTTP status of a Twilio API error answered to the send itself.
///
/// Source: Twilio, "Error and Warning Dictionary": 20003 (authenticate) is 401, 20404 is 404,
/// 20429 (too many concurrent requests) is 429, 20500 (internal server error) is 500, 20503
/// (service unavailable) is 503; the 21xxx request errors (21211, 21602, 21611, 21614, ...)
/// are 400.
pub fn twilio_http_status(code: i64) -> u16 {
    match code {
        20003 => 401,
        20404 => 404,
        20429 => 429,
        20500 => 500,
        20503 => 503,
        _ => 400,
    }
}

/// The title of a Twilio error code (Twilio, "Error and Warning Dictionary").
pub fn twilio_title(code: i64) -> &'static str {
    match code {
        20003 => "Authenticate",
        20404 => "The requested resource was not found",
        20429 => "Too Many Requests",
        20500 => "Internal Server Error",
        20503 => "Service Unavailable",
        21211 => "Invalid 'To' Phone Number",
        21602 => "Message body is required",
        21603 => "A 'From' or 'MessagingServiceSid' parameter is required",
        21604 => "A 'To' phone number is required",
        21611 => "This 'From' number has exceeded the maximum number of queued messages",
        21614 => "'To' number is not a valid mobile number",
        30001 => "Queue overflow",
        30002 => "Account suspended",
        30003 => "Unreachable destination handset",
        30004 => "Message blocked",
        30005 => "Unknown destination handset",
        30006 => "Landline or unreachable carrier",
        30007 => "Message filtered",
        30008 => "Unknown error",
        30009 => "Missing segment",
        30010 => "Message price exceeds max price",
        30032 => "Toll-Free Number Has Not Been Verified",
        30034 => "Message from an Unregistered Number",
        30036 => "Validity Period Expired",
        90007 => "Invalid validity period value",
        _ => "Error",
    }
}

/// For a Twilio delivery error, the status its callback reports; `None` for a code that answers
/// the send itself.
///
/// Twilio's 30001-30010, 30032, 30034 and 30036 happen after the message was accepted (201,
/// `queued`) and arrive only on status callbacks (Twilio, "Error and Warning Dictionary": each
/// is logged against the message, not the request). Which status carries them follows Twilio,
/// "Messages resource" (message status values): `failed` when the message "could not be sent"
/// (queue overflow 30001, account suspended 30002, price over the maximum 30010, validity
/// period expired in the queue 30036); `undelivered` when the carrier's delivery receipt says
/// it was not delivered (30003-30009, and the registration blocks 30032 and 30034, which
/// carriers apply to sent messages).
pub fn twilio_delivery_status(code: i64) -> Option<&'static str> {
    match code {
        30001 | 30002 | 30010 | 30036 => Some("failed"),
        30003..=30009 | 30032 | 30034 => Some("undelivered"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whatsapp_codes_answer_with_metas_documented_status() {
        let table = [
            (0, 401),
            (190, 401),
            (3, 500),
            (200, 403),
            (250, 403),
            (299, 403),
            (131005, 403),
            (131031, 403),
            (130497, 403),
            (368, 403),
            (132001, 404),
            (131000, 500),
            (131057, 500),
            (131016, 503),
            (100, 400),
            (130429, 400),
            (131056, 400),
            (131026, 400),
            (131048, 400),
            (4, 400),
            (80007, 400),
            (300, 400),
        ];
        for (code, status) in table {
            assert_eq!(whatsapp_http_status(code), status, "code {code}");
        }
    }

    #[test]
    fn twilio_api_codes_and_delivery_codes_are_told_apart() {
        assert_eq!(twilio_http_status(20429), 429);
        assert_eq!(twilio_http_status(20500), 500);
        assert_eq!(twilio_http_status(21611), 400);
        assert_eq!(twilio_http_status(20003), 401);
        for code in (30001..=30010).chain([30032, 30034, 30036]) {
            assert!(twilio_delivery_status(code).is_some(), "{code}");
        }
        for code in [20429, 20500, 21211, 21611, 21614, 30011, 30033] {
            assert_eq!(twilio_delivery_status(code), None, "{code}");
        }
        assert_eq!(twilio_delivery_status(30001), Some("failed"));
        assert_eq!(twilio_delivery_status(30036), Some("failed"));
        assert_eq!(twilio_delivery_status(30005), Some("undelivered"));
        assert_eq!(twilio_delivery_status(30032), Some("undelivered"));
    }
}
