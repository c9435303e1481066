//! Hostile input to decoding and validation, generated (proptest, in CI): nothing panics,
//! every rejection names a field (or `$`, the whole body) and the rule it broke, and no
//! rejection quotes a digit run it was given, which could be a phone number or a code.

use otp_events::{
    decode_code_request, decode_submission, Rules, ValidationError, CODE_REQUEST_FIELDS,
};
use proptest::prelude::*;
use serde_json::Value;

const FIELDS: &[&str] = CODE_REQUEST_FIELDS;

fn valid() -> Value {
    serde_json::from_str(include_str!("../../../schemas/examples/valid/full.json")).unwrap()
}

fn assert_names_a_rule(e: &ValidationError) -> Result<(), TestCaseError> {
    prop_assert!(
        e.field == "$" || e.field == "<unknown field>" || !e.field.is_empty(),
        "no field named: {e:?}"
    );
    prop_assert!(e.message.len() >= 10, "no rule stated: {e:?}");
    Ok(())
}

fn assert_does_not_quote(e: &ValidationError, secret: &str) -> Result<(), TestCaseError> {
    let shown = format!("{} {}", e.field, e.message);
    prop_assert!(
        !shown.contains(secret),
        "the error quotes the input: {shown}"
    );
    Ok(())
}

/// Any JSON value, a few levels deep, with digit runs among the strings.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[0-9]{6,12}".prop_map(Value::String),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_with_a_reason(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let rules = Rules::default();
        if let Err(e) = decode_code_request(&bytes, &rules) {
            assert_names_a_rule(&e)?;
        }
        if let Err(e) = decode_submission(&bytes, chrono::Utc::now(), &rules) {
            assert_names_a_rule(&e)?;
        }
    }

    #[test]
    fn a_field_replaced_by_anything_is_named_and_not_quoted(
        field in prop::sample::select(FIELDS),
        value in any_json(),
        secret in "9[0-9]{9}",
    ) {
        let mut event = valid();
        event[field] = value;
        // A digit run hidden in the value, where a phone number or code would be.
        if let Value::String(s) = &mut event[field] {
            s.push_str(&secret);
        }
        let bytes = serde_json::to_vec(&event).unwrap();
        if let Err(e) = decode_code_request(&bytes, &Rules::default()) {
            assert_names_a_rule(&e)?;
            assert_does_not_quote(&e, &secret)?;
            prop_assert!(FIELDS.contains(&e.field.as_str()), "{e:?}");
        }
    }

    #[test]
    fn unknown_field_names_are_never_echoed_when_they_could_be_a_number(secret in "[0-9]{4,15}") {
        let mut event = valid();
        event[secret.as_str()] = Value::from(1);
        let e = decode_code_request(&serde_json::to_vec(&event).unwrap(), &Rules::default())
            .unwrap_err();
        assert_names_a_rule(&e)?;
        assert_does_not_quote(&e, &secret)?;
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    for depth in [200, 10_000, 100_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let e =
            decode_submission(body.as_bytes(), chrono::Utc::now(), &Rules::default()).unwrap_err();
        assert_eq!(e.field, "$", "{e:?}");
    }
}

#[test]
fn invalid_utf8_inside_a_string_is_refused_as_invalid_json() {
    let mut body = br#"{"phone":"+1555"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"0000000"}"#);
    let e = decode_code_request(&body, &Rules::default()).unwrap_err();
    assert_eq!(e.field, "$");
    assert!(e.message.contains("not valid JSON"), "{e:?}");
}

/// A reader that holds sealing keys refuses phone and code in plaintext (a producer writing
/// straight to Kafka without sealing), naming the field; a migration may allow them.
#[test]
fn a_plaintext_request_is_refused_by_a_reader_with_keys_unless_allowed() {
    let bytes = serde_json::to_vec(&valid()).unwrap();
    let (ring, _) = otp_events::Keyring::generate("k1");
    let strict = Rules {
        sealing: Some(ring.clone()),
        ..Rules::default()
    };
    let e = decode_code_request(&bytes, &strict).unwrap_err();
    assert_eq!(e.field, "sealed", "{e:?}");
    assert!(e.message.contains("plaintext"), "{e:?}");
    let migrating = Rules {
        sealing: Some(ring.clone()),
        allow_plaintext: true,
        ..Rules::default()
    };
    assert!(decode_code_request(&bytes, &migrating).is_ok());
    // The same request sealed is read by the strict reader.
    let request = decode_code_request(&bytes, &migrating).unwrap();
    let sealed = strict.encode_request(&request).unwrap();
    assert!(decode_code_request(&sealed, &strict).is_ok());
}
