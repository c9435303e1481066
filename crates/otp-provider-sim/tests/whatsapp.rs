//! The simulated WhatsApp Cloud API against Meta's documentation: error statuses per code,
//! status webhooks (with and without `biz_opaque_callback_data`), system-level error
//! webhooks, and Meta's retries.

mod common;

use common::{hooks, sim, stats_until, whatsapp_send, Receiver};
use std::time::Duration;

const APP_SECRET: &[u8] = b"sim-app-secret";

fn webhook_url(r: &Receiver) -> Option<String> {
    Some(format!("{}/webhooks/whatsapp", r.base))
}

#[tokio::test]
async fn every_whatsapp_error_comes_with_metas_http_status() {
    // Staged: 0190 is 190 (401), 0026 is 131026 (400), 0500 is 131000 (500).
    let s = sim(|_| {}).await;
    for (to, status, code) in [
        ("15551230190", 401, 190),
        ("15551230026", 400, 131026),
        ("15551230500", 500, 131000),
    ] {
        let (http, body) = whatsapp_send(&s, to, "r").await;
        assert_eq!((http, body["error"]["code"].as_i64()), (status, Some(code)));
        assert_eq!(
            body["error"]["message"].as_str().unwrap().split(' ').next(),
            Some(format!("(#{code})").as_str())
        );
        assert_eq!(body["error"]["error_data"]["messaging_product"], "whatsapp");
    }

    // Random mix: 131005 (access denied) is 403, 3 (capability) is 500.
    for (code, status) in [(131005, 403), (3, 500), (0, 401), (200, 403), (131056, 400)] {
        let s = sim(|c| c.whatsapp_errors = vec![(code, 1.0)]).await;
        let (http, body) = whatsapp_send(&s, "15551239001", "r").await;
        assert_eq!((http, body["error"]["code"].as_i64()), (status, Some(code)));
    }

    // Outage: the code's own status (131000 is 500; the 401 asked for is Meta's for 190, not
    // for 131000, and is not what Meta would answer).
    let s = sim(|_| {}).await;
    s.set_whatsapp_outage(Some((401, 131000)));
    let (http, body) = whatsapp_send(&s, "15551239002", "r").await;
    assert_eq!((http, body["error"]["code"].as_i64()), (500, Some(131000)));
    s.set_whatsapp_outage(None);
    assert_eq!(whatsapp_send(&s, "15551239002", "r").await.0, 200);

    // The sender's throughput: 130429 is 400.
    let s = sim(|c| {
        c.whatsapp_rate = 1;
        c.whatsapp_burst = 1;
    })
    .await;
    assert_eq!(whatsapp_send(&s, "15551239003", "r").await.0, 200);
    let (http, body) = whatsapp_send(&s, "15551239004", "r").await;
    assert_eq!((http, body["error"]["code"].as_i64()), (400, Some(130429)));
    assert_eq!(
        s.stats().rate_limit_violations.get("whatsapp_sender"),
        Some(&1)
    );
}

#[tokio::test]
async fn a_failed_status_leaves_out_the_callback_data_by_default() {
    let mut r = Receiver::start(&[]).await;
    let s = sim(|c| c.whatsapp_webhook_url = webhook_url(&r)).await;
    // 1031: accepted, `sent`, then `failed` 131031 (account locked).
    let (http, _) = whatsapp_send(&s, "15551231031", "req-1031").await;
    assert_eq!(http, 200);

    let sent = r.next().await;
    let status = &sent.json()["entry"][0]["changes"][0]["value"]["statuses"][0];
    assert_eq!(status["status"], "sent");
    assert_eq!(status["biz_opaque_callback_data"], "req-1031");
    assert!(otp_events::signature::meta_signature_valid(
        APP_SECRET,
        &sent.body,
        sent.headers["x-hub-signature-256"].to_str().unwrap()
    ));

    let failed = r.next().await;
    let status = &failed.json()["entry"][0]["changes"][0]["value"]["statuses"][0];
    assert_eq!(status["status"], "failed");
    assert_eq!(status["errors"][0]["code"], 131031);
    assert_eq!(status["errors"][0]["title"], "Account has been locked");
    assert!(status.get("biz_opaque_callback_data").is_none(), "{status}");
    assert_eq!(
        status["id"],
        sent.json()["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
    );
}

#[tokio::test]
async fn the_flag_puts_the_callback_data_on_failed_statuses() {
    let mut r = Receiver::start(&[]).await;
    let s = sim(|c| {
        c.whatsapp_webhook_url = webhook_url(&r);
        c.whatsapp_failed_without_callback_data = false;
    })
    .await;
    assert_eq!(whatsapp_send(&s, "15551232026", "req-2026").await.0, 200);
    let statuses: Vec<_> = [r.next().await, r.next().await]
        .iter()
        .map(|h| h.json()["entry"][0]["changes"][0]["value"]["statuses"][0].clone())
        .collect();
    assert_eq!(statuses[1]["status"], "failed");
    assert_eq!(statuses[1]["errors"][0]["code"], 131026);
    assert_eq!(statuses[1]["biz_opaque_callback_data"], "req-2026");
}

#[tokio::test]
async fn a_system_error_webhook_goes_to_the_app_signed() {
    let mut r = Receiver::start(&[]).await;
    let s = sim(|c| c.whatsapp_webhook_url = webhook_url(&r)).await;

    assert!(s.whatsapp_system_error(130429));
    let hook = r.next().await;
    assert!(hook.uri.ends_with("/webhooks/whatsapp"));
    assert!(otp_events::signature::meta_signature_valid(
        APP_SECRET,
        &hook.body,
        hook.headers["x-hub-signature-256"].to_str().unwrap()
    ));
    let body = hook.json();
    assert_eq!(body["object"], "whatsapp_business_account");
    let change = &body["entry"][0]["changes"][0];
    assert_eq!(change["field"], "messages");
    assert!(change["value"].get("statuses").is_none());
    let error = &change["value"]["errors"][0];
    assert_eq!(error["code"], 130429);
    assert_eq!(error["title"], "Rate limit hit");
    assert!(error["message"].is_string());
    assert!(error["error_data"]["details"].is_string());

    // The control route does the same.
    let answer = common::client()
        .post(format!("{}/sim/whatsapp/system-errors", s.base_url()))
        .json(&serde_json::json!({"code": 131031}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let hook = r.next().await;
    assert_eq!(
        hook.json()["entry"][0]["changes"][0]["value"]["errors"][0]["code"],
        131031
    );

    // Without a webhook URL there is nowhere to send it.
    let bare = sim(|_| {}).await;
    assert!(!bare.whatsapp_system_error(131031));
}

#[tokio::test]
async fn meta_retries_a_webhook_not_answered_200() {
    // The receiver fails the first two calls (500, then 503) and takes the third.
    let mut r = Receiver::start(&[500, 503]).await;
    let s = sim(|c| c.whatsapp_webhook_url = webhook_url(&r)).await;
    assert_eq!(whatsapp_send(&s, "15551230404", "req-404").await.0, 200);

    let calls = [r.next().await, r.next().await, r.next().await];
    assert!(
        calls.iter().all(|c| c.body == calls[0].body),
        "the same webhook, again"
    );
    let stats = stats_until(&s, |st| hooks(st, "whatsapp", "delivered") == 1).await;
    assert_eq!(hooks(&stats, "whatsapp", "attempts"), 3);
    assert_eq!(hooks(&stats, "whatsapp", "retried"), 2);
    assert_eq!(hooks(&stats, "whatsapp", "given_up"), 0);
    // 0404 reports `sent` only: nothing more comes.
    assert!(r.another_within(Duration::from_millis(300)).await.is_none());
}
