//! The producer against a real broker (tansu): the library and the HTTP ingress publish to the
//! first channel's topic with a key that is not the phone, the documented headers and the
//! payload; every invalid input is refused with the field named, and nothing reaches Kafka.

use otp_events::{
    decode_code_request, Channel, PhoneHasher, Rules, Submission, HEADER_REQUEST_ID, HEADER_SCHEMA,
};
use otp_producer::KafkaArgs;
use otp_producer::{CodeRequestPublisher, PublishError, PublisherConfig};
use otp_test_support::{message_count, payload_json, read_messages, shared_broker, TestTopics};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const PHONE: &str = "+15551234567";

fn hasher() -> PhoneHasher {
    PhoneHasher::new(b"test-key")
}

fn publisher(t: &TestTopics) -> CodeRequestPublisher {
    t.publisher(hasher())
}

fn header<'a>(m: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

fn assert_well_formed(m: &OwnedMessage, request_id: &str) {
    let key = std::str::from_utf8(m.key().unwrap()).unwrap();
    assert_eq!(key, hasher().hash(PHONE), "key is the keyed phone hash");
    assert!(!key.contains("5551234567"), "key must not hold the number");
    assert_eq!(header(m, HEADER_SCHEMA), Some("otp.code_request.v1"));
    assert_eq!(header(m, HEADER_REQUEST_ID), Some(request_id));
    // The phone and the code are sealed: nothing of either in the bytes, the key id in a
    // header, and the request opens with the deployment's keys.
    let bytes = String::from_utf8_lossy(m.payload().unwrap()).to_string();
    assert!(
        !bytes.contains("5551234567") && !bytes.contains("\"code\""),
        "{bytes}"
    );
    assert_eq!(header(m, otp_producer::HEADER_KEY_ID), Some("test"));
    let rules = Rules {
        sealing: Some(otp_test_support::test_keyring()),
        ..Rules::default()
    };
    let request =
        decode_code_request(m.payload().unwrap(), &rules).expect("payload is a valid code request");
    assert_eq!(request.request_id, request_id);
    assert_eq!(request.phone, PHONE);
}

#[tokio::test]
async fn library_publishes_to_first_channel_topic_after_ack() {
    let t = TestTopics::create(shared_broker(), 3).await;
    let publisher = publisher(&t);
    let submission = Submission::new(
        PHONE,
        "123456",
        vec![Channel::Sms, Channel::Whatsapp],
        chrono::Duration::minutes(5),
    );
    let request_id = publisher.publish(submission).await.unwrap();
    assert!(uuid_v7_like(&request_id), "assigned id {request_id}");

    let mut given = Submission::new(
        PHONE,
        "654321",
        vec![Channel::Whatsapp],
        chrono::Duration::minutes(5),
    );
    given.request_id = Some("login-42".into());
    assert_eq!(publisher.publish(given).await.unwrap(), "login-42");

    let bootstrap = t.kafka.brokers.clone();
    let sms = read_messages(
        &bootstrap,
        &t.topics.requests(Channel::Sms),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(sms.len(), 1);
    assert_well_formed(&sms[0], &request_id);
    let wa = read_messages(
        &bootstrap,
        &t.topics.requests(Channel::Whatsapp),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(wa.len(), 1);
    assert_well_formed(&wa[0], "login-42");
}

fn uuid_v7_like(id: &str) -> bool {
    id.len() == 36 && id.as_bytes()[14] == b'7'
}

#[tokio::test]
async fn library_refuses_invalid_requests_before_kafka() {
    let t = TestTopics::create(shared_broker(), 1).await;
    let publisher = publisher(&t);
    let bad = Submission::new(
        "+1 555 123 4567",
        "123456",
        vec![Channel::Sms],
        chrono::Duration::minutes(5),
    );
    match publisher.publish(bad).await {
        Err(PublishError::Invalid(e)) => assert_eq!(e.field, "phone"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(
        message_count(&t.kafka.brokers, &t.topics.requests(Channel::Sms)),
        0
    );
}

/// The library reports outcomes keyed by the request's confirmation key, and refuses an
/// invalid one naming the field, before Kafka.
#[tokio::test]
async fn library_reports_outcomes_and_refuses_invalid_ones_before_kafka() {
    let t = TestTopics::create(shared_broker(), 1).await;
    let publisher = publisher(&t);
    let now = chrono::Utc::now();
    let mut verified =
        otp_events::VerificationOutcome::new("req-9", otp_events::OutcomeKind::Verified, now);
    verified.app = Some("shop".into());
    verified.attempts = Some(1);
    publisher.publish_outcome(&verified).await.unwrap();
    let mut bad = verified.clone();
    bad.attempts = Some(0);
    match publisher.publish_outcome(&bad).await {
        Err(PublishError::InvalidOutcome(e)) => assert_eq!(e.field, "attempts"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    let topic = t.topics.verification_outcomes();
    let written = read_messages(&t.kafka.brokers, &topic, 1, Duration::from_secs(10)).await;
    assert_eq!(written[0].key(), Some(&b"shop/req-9"[..]));
    assert_eq!(
        header(&written[0], otp_events::HEADER_SCHEMA),
        Some("otp.verification_outcome.v1")
    );
    assert_eq!(
        message_count(&t.kafka.brokers, &topic),
        1,
        "the invalid one was not sent"
    );
}

async fn start_ingress(kafka: &KafkaArgs, topics: &otp_events::Topics) -> SocketAddr {
    let config = PublisherConfig {
        topics: topics.clone(),
        ..PublisherConfig::default()
    };
    let publisher =
        CodeRequestPublisher::new(kafka, config, kafka.credentials(hasher()).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = otp_producer::ingress::router(
        publisher,
        &otp_producer::ingress::IngressConfig::new(addr, kafka.clone()),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn examples(dir: &str) -> Vec<(String, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/examples")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A submission whose `expires_at` is in the future, as a login system would send it now.
fn fresh_body() -> Value {
    let now = chrono::Utc::now();
    json!({
        "phone": PHONE,
        "code": "123456",
        "channels": ["whatsapp", "sms"],
        "expires_at": (now + chrono::Duration::minutes(5)).to_rfc3339(),
        "locale": "en_US",
    })
}

#[tokio::test]
async fn ingress_accepts_valid_requests_with_202_after_ack() {
    let t = TestTopics::create(shared_broker(), 2).await;
    let addr = start_ingress(&t.kafka, &t.topics).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/code-requests");

    let resp = http.post(&url).json(&fresh_body()).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let request_id = body["request_id"].as_str().unwrap().to_string();

    let mut with_id = fresh_body();
    with_id["request_id"] = json!("login-7");
    let resp = http.post(&url).json(&with_id).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await.unwrap()["request_id"], "login-7");

    let got = read_messages(
        &t.kafka.brokers,
        &t.topics.requests(Channel::Whatsapp),
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 2);
    let ids: Vec<String> = got
        .iter()
        .map(|m| payload_json(m)["request_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.contains(&request_id) && ids.contains(&"login-7".to_string()),
        "{ids:?}"
    );
    for m in &got {
        let id = payload_json(m)["request_id"].as_str().unwrap().to_string();
        assert_well_formed(m, &id);
    }

    for path in ["/healthz", "/readyz"] {
        let resp = http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn ingress_refuses_bad_input_naming_the_field_and_keeps_serving() {
    let t = TestTopics::create(shared_broker(), 1).await;
    let addr = start_ingress(&t.kafka, &t.topics).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/code-requests");

    let mut cases: Vec<(String, Vec<u8>, String)> = Vec::new();
    for (name, bytes) in examples("invalid") {
        let mut json: Value = serde_json::from_slice(&bytes).unwrap();
        // The examples carry fixed dates; keep the broken rule, refresh the rest.
        let obj = json.as_object_mut().unwrap();
        let now = chrono::Utc::now();
        if name != "created-at-not-rfc3339" {
            obj.remove("created_at");
        }
        if name != "expires-at-not-rfc3339" {
            obj.insert(
                "expires_at".into(),
                json!((now + chrono::Duration::minutes(5)).to_rfc3339()),
            );
        }
        let field = match name.as_str() {
            "unknown-field" => "password",
            "schema-missing" => continue, // schema may be left out of a submission
            n if n.starts_with("schema") => "schema",
            n if n.starts_with("request-id") => "request_id",
            n if n.starts_with("created-at") => "created_at",
            n if n.starts_with("expires-at") => "expires_at",
            n if n.starts_with("attempt") => "attempt",
            n => n.split('-').next().unwrap(),
        }
        .to_string();
        cases.push((name, serde_json::to_vec(&json).unwrap(), field));
    }
    let mut past = fresh_body();
    past["expires_at"] = json!((chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339());
    cases.push((
        "expired".into(),
        serde_json::to_vec(&past).unwrap(),
        "expires_at".into(),
    ));
    let mut too_long = fresh_body();
    too_long["expires_at"] = json!((chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339());
    cases.push((
        "ttl-too-long".into(),
        serde_json::to_vec(&too_long).unwrap(),
        "expires_at".into(),
    ));
    cases.push((
        "malformed-json".into(),
        b"{\"phone\": ".to_vec(),
        "$".into(),
    ));
    cases.push(("not-an-object".into(), b"[1,2]".to_vec(), "$".into()));
    cases.push((
        "invalid-utf8".into(),
        vec![b'{', 0xff, 0xfe, b'}'],
        "$".into(),
    ));
    assert!(cases.len() >= 20);

    for (name, body, field) in &cases {
        let resp = http
            .post(&url)
            .body(body.clone())
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["field"], field.as_str(), "{name}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
        assert!(
            !message.contains("5551234567") && !message.contains("123456"),
            "{name}: {message}"
        );
    }

    let oversized = vec![b' '; 16 * 1024 + 1];
    let resp = http.post(&url).body(oversized).send().await.unwrap();
    assert_eq!(resp.status(), 413);

    // Still serving after all of that.
    let resp = http.post(&url).json(&fresh_body()).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let got = read_messages(
        &t.kafka.brokers,
        &t.topics.requests(Channel::Whatsapp),
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 1);
    // Exactly one message: none of the refused bodies reached Kafka.
    assert_eq!(
        message_count(&t.kafka.brokers, &t.topics.requests(Channel::Whatsapp)),
        1
    );
    assert_eq!(
        message_count(&t.kafka.brokers, &t.topics.requests(Channel::Sms)),
        0
    );
}

#[tokio::test]
async fn ingress_answers_503_when_the_broker_does_not_ack() {
    // A port nothing listens on: the broker never acknowledges.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let kafka = otp_test_support::test_kafka(format!("127.0.0.1:{port}"));
    let topics = otp_events::Topics::default();
    let config = PublisherConfig {
        topics: topics.clone(),
        ack_timeout: Duration::from_millis(800),
        ..PublisherConfig::default()
    };
    let publisher =
        CodeRequestPublisher::new(&kafka, config, kafka.credentials(hasher()).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = otp_producer::ingress::router(
        publisher,
        &otp_producer::ingress::IngressConfig::new(addr, kafka.clone()),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::new();
    let mut body = fresh_body();
    body["request_id"] = json!("retry-me");
    let resp = http
        .post(format!("http://{addr}/v1/code-requests"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let json: Value = resp.json().await.unwrap();
    assert_eq!(
        json["request_id"], "retry-me",
        "the caller learns which id to retry with"
    );
    let resp = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let resp = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
