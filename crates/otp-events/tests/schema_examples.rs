//! The Rust types and the JSON Schemas must agree: every valid example validates with the
//! `jsonschema` crate and round-trips through the Rust type unchanged; every invalid example
//! is refused by both, and the Rust error names the field the example breaks.

use otp_events::{decode_code_request, CodeRequest, DeliveryStatus, Rules};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn validator(name: &str) -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_slice(&std::fs::read(schemas_dir().join(name)).unwrap()).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles")
}

fn examples(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> =
        std::fs::read_dir(schemas_dir().join("examples").join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples in {dir}");
    out
}

#[test]
fn valid_code_requests_validate_and_round_trip_unchanged() {
    let schema = validator("code-request.v1.json");
    for (name, bytes) in examples("valid") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            schema.is_valid(&json),
            "{name}: schema refused a valid example"
        );
        let decoded = decode_code_request(&bytes, &Rules::default())
            .unwrap_or_else(|e| panic!("{name}: Rust refused a valid example: {e}"));
        assert_eq!(
            serde_json::to_value(&decoded).unwrap(),
            json,
            "{name}: round trip changed it"
        );
        let via_serde: CodeRequest = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(via_serde, decoded, "{name}: serde and decode disagree");
    }
}

/// The field each invalid example breaks, so the test fails if Rust blames the wrong one.
fn expected_field(example: &str) -> &'static str {
    match example {
        "unknown-field" => "password",
        "schema-missing" | "schema-unknown-version" => "schema",
        "request-id-bad-chars" => "request_id",
        "created-at-not-rfc3339" => "created_at",
        "expires-at-not-rfc3339" => "expires_at",
        e if e.starts_with("phone") => "phone",
        e if e.starts_with("code") => "code",
        e if e.starts_with("channels") => "channels",
        e if e.starts_with("locale") => "locale",
        e if e.starts_with("attempt") => "attempt",
        e if e.starts_with("app") => "app",
        other => panic!("add the expected field of invalid example {other}"),
    }
}

#[test]
fn invalid_code_requests_are_refused_by_both_naming_the_field() {
    let schema = validator("code-request.v1.json");
    let invalid = examples("invalid");
    assert!(
        invalid.len() >= 15,
        "the contract promises at least 15 invalid examples"
    );
    for (name, bytes) in invalid {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            !schema.is_valid(&json),
            "{name}: schema accepted an invalid example"
        );
        let err = decode_code_request(&bytes, &Rules::default())
            .expect_err(&format!("{name}: Rust accepted an invalid example"));
        assert_eq!(err.field, expected_field(&name), "{name}: {err}");
    }
}

/// Rules JSON Schema cannot state (one timestamp against another, fallback state): the schema
/// accepts these, Rust refuses them. They are listed apart so the limits of the schema are
/// visible rather than hidden.
#[test]
fn rules_beyond_the_schema_are_enforced_by_rust() {
    let schema = validator("code-request.v1.json");
    for (name, bytes) in examples("invalid-beyond-schema") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            schema.is_valid(&json),
            "{name}: now expressible in the schema; move it to invalid/"
        );
        let err = decode_code_request(&bytes, &Rules::default())
            .expect_err(&format!("{name}: Rust accepted it"));
        let field = if name.starts_with("expires") {
            "expires_at"
        } else {
            "tried_channels"
        };
        assert_eq!(err.field, field, "{name}: {err}");
    }
}

#[test]
fn max_ttl_is_configurable() {
    let bytes = std::fs::read(schemas_dir().join("examples/valid/minimal-sms.json")).unwrap();
    let strict = Rules {
        max_ttl: chrono::Duration::minutes(10),
        ..Rules::default()
    };
    assert_eq!(
        decode_code_request(&bytes, &strict).unwrap_err().field,
        "expires_at"
    );
    assert!(decode_code_request(&bytes, &Rules::default()).is_ok());
}

#[test]
fn errors_never_quote_the_phone_or_the_code() {
    for (name, bytes) in examples("invalid") {
        let err = decode_code_request(&bytes, &Rules::default())
            .unwrap_err()
            .to_string();
        for secret in ["5551234567", "555 123 4567", "123456", "12ab56", "hunter2"] {
            assert!(
                !err.contains(secret),
                "{name}: error quotes a secret: {err}"
            );
        }
    }
}

#[test]
fn delivery_status_examples_validate_and_round_trip() {
    let schema = validator("delivery-status.v1.json");
    for (name, bytes) in examples("delivery-status") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(schema.is_valid(&json), "{name}: schema refused it");
        let status: DeliveryStatus = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json,
            "{name}: round trip changed it"
        );
    }
}

/// v2 is v1 and `provider`: its examples validate against v2 and round-trip; v1 refuses
/// them (so v1 stays the default until consumers move); and what the writer sends in each
/// version validates against that version.
#[test]
fn delivery_status_v2_examples_validate_and_each_version_is_written_as_published() {
    use otp_events::{Provider, StatusVersion};
    let v1 = validator("delivery-status.v1.json");
    let v2 = validator("delivery-status.v2.json");
    for (name, bytes) in examples("delivery-status-v2") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v2.is_valid(&json), "{name}: v2 refused it");
        let status: DeliveryStatus = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json,
            "{name}: round trip"
        );
        if json.get("provider").is_some() {
            assert!(!v1.is_valid(&json), "{name}: v1 has no provider field");
        }
    }
    for (name, bytes) in examples("delivery-status") {
        let mut status: DeliveryStatus = serde_json::from_slice(&bytes).unwrap();
        status.provider = Some(Provider::Vonage);
        let (payload, schema) = status.encode(StatusVersion::V1);
        let json: Value = serde_json::from_slice(&payload).unwrap();
        assert!(v1.is_valid(&json), "{name} as v1: {json}");
        assert_eq!(
            (schema, json.get("provider")),
            ("otp.delivery_status.v1", None)
        );
        let (payload, schema) = status.encode(StatusVersion::V2);
        let json: Value = serde_json::from_slice(&payload).unwrap();
        assert!(v2.is_valid(&json), "{name} as v2: {json}");
        assert_eq!(
            (schema, &json["provider"]),
            ("otp.delivery_status.v2", &Value::from("vonage"))
        );
    }
}

#[test]
fn delivery_receipt_examples_validate_and_round_trip() {
    let schema = validator("delivery-receipt.v1.json");
    for (name, bytes) in examples("delivery-receipt") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(schema.is_valid(&json), "{name}: schema refused it");
        let receipt: otp_events::Receipt = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            serde_json::to_value(&receipt).unwrap(),
            json,
            "{name}: round trip changed it"
        );
    }
    let mut unknown: Value = serde_json::from_slice(&examples("delivery-receipt")[0].1).unwrap();
    unknown["recipient_id"] = Value::from("15551230001");
    assert!(
        !schema.is_valid(&unknown),
        "no room for the provider's recipient field"
    );
    assert!(serde_json::from_value::<otp_events::Receipt>(unknown).is_err());
}

#[test]
fn statuses_built_by_rust_validate_against_the_schema() {
    use otp_events::{Channel, ErrorCategory, PhoneHasher, StatusError, StatusKind};
    let schema = validator("delivery-status.v1.json");
    let bytes = std::fs::read(schemas_dir().join("examples/valid/full.json")).unwrap();
    let request = decode_code_request(&bytes, &Rules::default()).unwrap();
    let hasher = PhoneHasher::new(b"test");
    let mut fallback =
        DeliveryStatus::about(&request, StatusKind::Fallback, Channel::Whatsapp, &hasher)
            .with_error(StatusError {
                category: ErrorCategory::Recipient,
                code: "131026".into(),
                message: "not on WhatsApp".into(),
            });
    fallback.next_channel = Some(Channel::Sms);
    let rejected = DeliveryStatus::rejected(
        "req-x".into(),
        Channel::Sms,
        StatusError {
            category: ErrorCategory::InvalidRequest,
            code: "invalid_event".into(),
            message: "x".into(),
        },
    );
    for status in [fallback, rejected] {
        let json = serde_json::to_value(&status).unwrap();
        assert!(schema.is_valid(&json), "{json}");
        let text = json.to_string();
        assert!(!text.contains(&request.phone) && !text.contains(&request.code));
    }
}

#[test]
fn an_unknown_field_named_like_a_number_is_not_echoed() {
    let bytes = br#"{"+15551234567":"x","schema":"otp.code_request.v1"}"#;
    let err = decode_code_request(bytes, &Rules::default()).unwrap_err();
    assert_eq!(err.field, "<unknown field>");
    assert!(!err.to_string().contains("5551234567"));
}

/// The examples' clock: a few minutes after they happened.
fn outcome_now() -> chrono::DateTime<chrono::Utc> {
    "2026-12-07T10:06:00Z".parse().unwrap()
}

#[test]
fn verification_outcome_examples_validate_and_round_trip_unchanged() {
    let schema = validator("verification-outcome.v1.json");
    for (name, bytes) in examples("verification-outcome") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(schema.is_valid(&json), "{name}: schema refused it");
        let decoded = otp_events::decode_outcome(&bytes, outcome_now())
            .unwrap_or_else(|e| panic!("{name}: Rust refused it: {e}"));
        assert_eq!(serde_json::to_value(&decoded).unwrap(), json, "{name}");
    }
}

#[test]
fn invalid_verification_outcomes_are_refused_by_both_naming_the_field() {
    let schema = validator("verification-outcome.v1.json");
    for (name, bytes) in examples("verification-outcome-invalid") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(!schema.is_valid(&json), "{name}: schema accepted it");
        let err = otp_events::decode_outcome(&bytes, outcome_now())
            .expect_err(&format!("{name}: Rust accepted it"));
        let field = match name.as_str() {
            "code-carried" => "code",
            "phone-carried" => "phone",
            n if n.starts_with("outcome") => "outcome",
            n if n.starts_with("request-id") => "request_id",
            n if n.starts_with("attempts") => "attempts",
            n if n.starts_with("app") => "app",
            other => panic!("add the expected field of {other}"),
        };
        assert_eq!(err.field, field, "{name}: {err}");
        for secret in ["123456", "5551234567"] {
            assert!(!err.to_string().contains(secret), "{name}: {err}");
        }
    }
}
