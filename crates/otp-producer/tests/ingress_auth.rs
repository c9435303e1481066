//! The HTTP ingress as an attacker meets it, against a real broker (tansu): no key, a wrong
//! key, a disabled app's key and an app over its quota are refused with 401, 401, 403 and 429
//! (`Retry-After`), and publish nothing; a valid key's request is published under the key's
//! app, whatever the body says.

use otp_events::Channel;
use otp_events::PhoneHasher;
use otp_producer::ingress::auth::{new_key, KeyFile};
use otp_producer::ingress::{router_with, Apps, Auth, IngressConfig};
use otp_test_support::{message_count, payload_json, read_messages, shared_broker, TestTopics};
use serde_json::json;
use std::time::Duration;

/// The ingress on a loopback port, admitting `apps`' keys.
async fn serve(t: &TestTopics, apps: Apps) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = IngressConfig::new(addr, t.kafka.clone());
    let app = router_with(
        t.publisher(PhoneHasher::new(b"auth")),
        &config,
        Auth::Keys(apps),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_key_within_its_quota_publishes_and_the_app_is_the_keys() {
    // The recorder `/metrics` renders, installed before the first call.
    let prometheus = otp_kafka::observe::prometheus();
    let t = TestTopics::create(shared_broker(), 1).await;
    let (key, entry) = new_key("login-web");
    let (disabled_key, disabled_entry) = new_key("old-app");
    let text = format!("{}{entry}\n{disabled_entry}disabled = true\n", "")
        .replace("per_second = 100\nburst = 200", "per_second = 1\nburst = 1");
    let apps = Apps::new(toml::from_str::<KeyFile>(&text).unwrap()).unwrap();
    let addr = serve(&t, apps).await;

    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/code-requests");
    let expires_at = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let body = json!({"phone": "+15551234567", "code": "123456", "channels": ["sms"],
                      "expires_at": expires_at, "app": "someone-else"});
    let post = |auth: Option<String>, body: serde_json::Value| {
        let mut r = http.post(&url).json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let no_key = post(None, body.clone()).await.unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(no_key.headers()["www-authenticate"], "Bearer");
    let wrong = post(Some("Bearer otp_guess".into()), body.clone())
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let off = post(Some(format!("Bearer {disabled_key}")), body.clone())
        .await
        .unwrap();
    assert_eq!(off.status(), 403);

    // The body names another app: refused, naming the field.
    let bearer = format!("Bearer {key}");
    let other_app = post(Some(bearer.clone()), body.clone()).await.unwrap();
    assert_eq!(other_app.status(), 400);
    let error: serde_json::Value = other_app.json().await.unwrap();
    assert_eq!(error["error"]["field"], "app");
    let mut own = body.clone();
    own.as_object_mut().unwrap().remove("app");
    // 1 per second, burst 1: the refused request above took the token (the quota is counted
    // before the body is read), so the next one at once is over the rate.
    let over = post(Some(bearer.clone()), own.clone()).await.unwrap();
    assert_eq!(over.status(), 429);
    let retry: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1);
    tokio::time::sleep(Duration::from_secs(retry)).await; // the rate window is what is tested
    let accepted = post(Some(bearer.clone()), own.clone()).await.unwrap();
    assert_eq!(accepted.status(), 202);

    let topic = t.topics.requests(Channel::Sms);
    let published = read_messages(&t.kafka.brokers, &topic, 1, Duration::from_secs(10)).await;
    assert_eq!(published.len(), 1);
    assert_eq!(payload_json(&published[0])["app"], "login-web");
    assert_eq!(
        message_count(&t.kafka.brokers, &topic),
        1,
        "nothing else was published"
    );
    // What ops see of it (the dashboard's ingress panel, OtpIngressUnavailable's ratio).
    let text = prometheus.render();
    for outcome in [
        "accepted",
        "invalid",
        "unauthenticated",
        "disabled",
        "over_quota",
    ] {
        let series = format!("otp_ingress_requests_total{{outcome=\"{outcome}\"}}");
        let n: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"));
        assert!(n >= 1.0, "{series} {n}");
    }
}

/// An ingress that could not seal one of its apps' requests refuses to start, naming the app,
/// rather than refusing each of that app's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_a_sealing_key_stops_the_ingress_at_start() {
    let t = TestTopics::create(shared_broker(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys.toml");
    let (_, shop) = new_key("shop");
    let (_, bank) = new_key("bank");
    std::fs::write(&keys, format!("{shop}\n{bank}")).unwrap();
    let mut kafka = t.kafka.clone();
    kafka.sealing =
        Some(otp_events::Keyring::parse(&format!("s1@shop={}", "5b".repeat(32))).unwrap());
    let mut config = IngressConfig::new("127.0.0.1:0".parse().unwrap(), kafka);
    config.api_keys = Some(keys);
    let e = otp_producer::ingress::serve(config, PhoneHasher::new(b"auth"), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"bank\"") && e.contains("OTP_SEAL_KEYS") && !e.contains("\"shop\""),
        "{e}"
    );
}

/// `POST /v1/verification-outcomes`: an app's key is required (401 without), the outcome is
/// written under the key's app (`app/request_id` on `otp.verification-outcomes`), a body
/// naming another app or breaking a rule is refused naming the field, and reports do not
/// count against the app's codes per day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_reported_under_the_keys_app_and_refused_when_invalid() {
    let t = TestTopics::create(shared_broker(), 1).await;
    let (key, entry) = new_key("login-web");
    let entry = entry.replace("per_day = 1000000", "per_day = 1");
    let apps = Apps::new(toml::from_str::<KeyFile>(&entry).unwrap()).unwrap();
    let addr = serve(&t, apps).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/verification-outcomes");
    let post = |auth: Option<&str>, body: serde_json::Value| {
        let mut r = http.post(&url).json(&body);
        if let Some(key) = auth {
            r = r.header("authorization", format!("Bearer {key}"));
        }
        r.send()
    };
    let ok = json!({"request_id": "req-1", "outcome": "verified", "attempts": 2});
    assert_eq!(post(None, ok.clone()).await.unwrap().status(), 401);
    for (body, field) in [
        (
            json!({"request_id": "req-1", "outcome": "approved"}),
            "outcome",
        ),
        (
            json!({"request_id": "req-1", "outcome": "verified", "app": "other"}),
            "app",
        ),
        (
            json!({"request_id": "req-1", "outcome": "verified", "code": "123456"}),
            "code",
        ),
    ] {
        let refused = post(Some(&key), body).await.unwrap();
        assert_eq!(refused.status(), 400);
        let error: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(error["error"]["field"], field, "{error}");
        assert!(!error.to_string().contains("123456"), "{error}");
    }
    // per_day = 1 code; two outcomes still go through.
    for id in ["req-1", "req-2"] {
        let mut body = ok.clone();
        body["request_id"] = json!(id);
        let accepted = post(Some(&key), body).await.unwrap();
        assert_eq!(accepted.status(), 202);
        let answer: serde_json::Value = accepted.json().await.unwrap();
        assert_eq!(answer["request_id"], id);
        assert!(answer["event_id"].is_string());
    }
    let topic = t.topics.verification_outcomes();
    let written = read_messages(&t.kafka.brokers, &topic, 2, Duration::from_secs(10)).await;
    assert_eq!(written.len(), 2);
    use rdkafka::Message;
    let keys: Vec<&[u8]> = written.iter().filter_map(|m| m.key()).collect();
    assert!(keys.contains(&&b"login-web/req-1"[..]), "{keys:?}");
    let first = payload_json(&written[0]);
    assert_eq!(
        (first["app"].as_str(), first["outcome"].as_str()),
        (Some("login-web"), Some("verified"))
    );
    assert_eq!(first["schema"], "otp.verification_outcome.v1");
    assert_eq!(message_count(&t.kafka.brokers, &topic), 2);
}
