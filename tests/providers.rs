//! Provider fidelity end to end (tansu and the simulator over HTTP): the workers follow what
//! Meta's and Twilio's documentation says, and the simulator answers as they document.

mod common;

use common::*;
use otp::stack::{whatsapp_client_with, Worker};
use otp_events::Channel::{Sms, Whatsapp};
use otp_events::{PhoneHasher, Submission};
use otp_provider_sim::SimConfig;
use otp_test_support::read_messages;
use otp_worker::LimitsConfig;
use std::collections::HashMap;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(90);

/// Users' locales as login systems pass them: most are not Meta template codes.
const LOCALES: &[&str] = &[
    "de_DE", "fr_FR", "ja_JP", "en_IN", "pt_BR", "es_MX", "it_IT", "nl_NL", "zh_TW", "en_GB",
    "ru_RU", "es_AR", "pt_PT", "en-US", "fr-CA",
];

/// Meta's answer to each locale above, for a template approved in the simulator's languages
/// (en_US, en_GB, de, fr, es, es_MX, pt_BR, it, nl; default en_US).
fn expected_language(locale: &str) -> &'static str {
    match locale {
        "de_DE" => "de",
        "fr_FR" | "fr-CA" => "fr",
        "pt_BR" | "pt_PT" => "pt_BR",
        "es_MX" => "es_MX",
        "es_AR" => "es",
        "it_IT" => "it",
        "nl_NL" => "nl",
        "en_GB" => "en_GB",
        _ => "en_US", // ja_JP, en_IN, zh_TW, ru_RU, en-US
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_users_of_any_locale_get_the_code_in_an_approved_language() {
    let stack = Stack::start(4, roomy_sim()).await;
    let workers = stack.workers();
    const N: usize = 1_000;
    let mut ids = Vec::with_capacity(N);
    let mut locale_of = HashMap::new();
    for i in 0..N {
        let locale = LOCALES[i % LOCALES.len()];
        let mut s = Submission::new(
            format!("+1555{:03}{:04}", 400 + i / 8000, 2000 + i % 8000),
            "246810",
            vec![Whatsapp, Sms],
            chrono::Duration::minutes(5),
        );
        s.locale = Some(locale.to_string());
        let id = stack.publisher.publish(s).await.unwrap();
        locale_of.insert(id.clone(), locale);
        ids.push(id);
    }
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    for id in &ids {
        final_is(&statuses, id, "sent", "whatsapp");
    }
    assert!(
        !statuses.iter().any(|s| s["status"] == "fallback"),
        "no user fell back, so the circuit never opened"
    );
    let sends: HashMap<String, String> = stack
        .sim
        .messages()
        .into_iter()
        .filter(|m| m.api == "whatsapp")
        .map(|m| (m.request_id.unwrap(), m.language.unwrap()))
        .collect();
    for id in &ids {
        let locale = locale_of[id];
        assert_eq!(sends[id], expected_language(locale), "{locale}");
    }
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// The worker believes the template is approved in Japanese; Meta (the simulator) does not.
/// The first Japanese user's send is refused (132001) and goes again at once in the default
/// language, one try as the runtime counts; the next Japanese user gets the default language
/// straight away, and the WhatsApp channel stays healthy for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_language_meta_refuses_goes_again_at_once_in_the_default_language() {
    let stack = Stack::start(2, roomy_sim()).await;
    let mut approved = stack.sim.template_languages().to_vec();
    approved.push("ja".into());
    let whatsapp = Worker::start(
        &stack.t.kafka,
        test_config(),
        open_limits(),
        PhoneHasher::new(HASH_KEY),
        whatsapp_client_with(&stack.sim, approved),
    );
    let sms = stack.worker(Sms, test_config());
    let mut ids = Vec::new();
    for phone in ["+15551240001", "+15551240002"] {
        let mut s = Submission::new(
            phone,
            "135791",
            vec![Whatsapp, Sms],
            chrono::Duration::minutes(5),
        );
        s.locale = Some("ja_JP".into());
        ids.push(stack.publisher.publish(s).await.unwrap());
        // One after the other: the second must find the language held back.
        let statuses = stack.statuses_until_final(&ids, WITHIN).await;
        let fin = exactly_one_final(&statuses, ids.last().unwrap());
        assert_eq!(
            (
                fin["status"].as_str(),
                fin["channel"].as_str(),
                fin["tries"].as_u64()
            ),
            (Some("sent"), Some("whatsapp"), Some(1))
        );
    }
    let tries = |phone: &str| -> Vec<(String, String)> {
        stack
            .sim
            .messages()
            .into_iter()
            .filter(|m| m.to == phone)
            .map(|m| (m.language.unwrap_or_default(), m.outcome))
            .collect()
    };
    assert_eq!(
        tries("+15551240001"),
        vec![
            ("ja".to_string(), "132001".to_string()),
            ("en_US".to_string(), "accepted".to_string())
        ]
    );
    assert_eq!(
        tries("+15551240002"),
        vec![("en_US".to_string(), "accepted".to_string())]
    );
    whatsapp.stop().await.unwrap();
    sms.stop().await.unwrap();
}

/// Meta's 100 and Twilio's 21602 say our payload is wrong, not the user's request: the request
/// falls back, then fails on the last channel, and nothing goes to the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_the_provider_refuses_falls_back_and_is_never_dead_lettered() {
    let stack = Stack::start(2, roomy_sim()).await;
    let workers = stack.workers();
    let id = stack
        .publish("+15551230100", "864209", &[Whatsapp, Sms])
        .await;
    let statuses = stack
        .statuses_until_final(std::slice::from_ref(&id), WITHIN)
        .await;
    assert_eq!(
        story(&statuses, &id),
        vec![
            ("fallback".into(), "whatsapp".into()),
            ("failed".into(), "sms".into())
        ]
    );
    let fallback = statuses.iter().find(|s| s["status"] == "fallback").unwrap();
    assert_eq!(fallback["error"]["code"], "100");
    assert_eq!(fallback["error"]["category"], "channel_broken");
    let failed = exactly_one_final(&statuses, &id);
    assert_eq!(failed["error"]["code"], "21602");
    assert_eq!(failed["error"]["category"], "channel_broken");
    let dead = read_messages(
        &stack.t.kafka.brokers,
        &stack.t.topics.dead_letter(),
        0,
        Duration::from_secs(2),
    )
    .await;
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    for w in workers {
        w.stop().await.unwrap();
    }
}

/// Meta lets 10 messages a second through; the worker was told 100. Meta answers 130429 over
/// the rate: the worker slows its sender rate down and tries again within each code's life,
/// without spending the request's tries, so every code goes out on WhatsApp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_slows_the_worker_down_and_every_code_goes_out() {
    let sim = SimConfig {
        whatsapp_rate: 10,
        whatsapp_burst: 5,
        ..roomy_sim()
    };
    let stack = Stack::start(2, sim).await;
    let mut config = test_config();
    config.limits = Some(otp_worker::LimitsPatch::all_of(&LimitsConfig {
        sender_per_second: 100,
        sender_burst: 20,
        recipient_period: None,
    }));
    let whatsapp = stack.worker(Whatsapp, config);
    let mut ids = Vec::new();
    for i in 0..60 {
        let phone = format!("+1555250{:04}", 2000 + i);
        ids.push(stack.publish(&phone, "975310", &[Whatsapp]).await);
    }
    let statuses = stack.statuses_until_final(&ids, WITHIN).await;
    for id in &ids {
        final_is(&statuses, id, "sent", "whatsapp");
    }
    let stats = stack.sim.stats();
    assert_eq!(stats.accepted, 60);
    assert!(
        stats.rate_limit_violations.contains_key("whatsapp_sender"),
        "the worker met Meta's window: {stats:?}"
    );
    whatsapp.stop().await.unwrap();
}

/// Two codes for one user back to back, and a worker with no per-recipient limit of its own:
/// Meta answers the second with 131056 (pair rate). It waits for the user's window and goes
/// out on WhatsApp, instead of burning its retries inside the window and falling back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_limit_waits_for_the_users_window() {
    let sim = SimConfig {
        whatsapp_pair_period: Duration::from_secs(2),
        ..roomy_sim()
    };
    let stack = Stack::start(2, sim).await;
    let workers = stack.workers();
    let phone = "+15551260001";
    let first = stack.publish(phone, "111111", &[Whatsapp, Sms]).await;
    let second = stack.publish(phone, "222222", &[Whatsapp, Sms]).await;
    let statuses = stack
        .statuses_until_final(&[first.clone(), second.clone()], WITHIN)
        .await;
    for id in [&first, &second] {
        final_is(&statuses, id, "sent", "whatsapp");
    }
    let outcomes: Vec<String> = stack
        .sim
        .messages()
        .into_iter()
        .filter(|m| m.to == phone)
        .map(|m| m.outcome)
        .collect();
    assert_eq!(outcomes, vec!["accepted", "131056", "accepted"]);
    for w in workers {
        w.stop().await.unwrap();
    }
}
