use super::*;

const S: Duration = Duration::from_secs(1);

fn config() -> ConversionConfig {
    ConversionConfig {
        per_range: Some(ConversionRule {
            min_requests: 10,
            floor: 0.2,
        }),
        window: Duration::from_secs(600),
        grace: Duration::from_secs(60),
        ..ConversionConfig::default()
    }
}

fn about<'a>(request: &'a str, range: &'a str) -> About<'a> {
    About {
        request,
        app: Some("shop"),
        range,
        country: Some("GB"),
    }
}

/// `n` requests to `range`, admitted at `at`, the first `verified` of them entered.
fn traffic(c: &Conversion, range: &str, n: usize, verified: usize, at: Instant) {
    for i in 0..n {
        let request = format!("shop/{range}-{i}");
        c.admitted(&about(&request, range), at);
        if i < verified {
            // Unknown to a conversion that is off.
            let _ = c.verified(&request, Some("shop"), at + S);
        }
    }
}

#[test]
fn a_range_below_the_floor_is_refused_while_its_neighbour_converts() {
    let t0 = Instant::now();
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    traffic(&c, "pumped", 10, 1, t0); // 10 %
    traffic(&c, "real", 10, 7, t0); // 70 %
                                    // Not judged before the grace has passed.
    assert_eq!(c.refuses(&about("shop/x", "pumped"), t0 + 59 * S), None);
    let later = t0 + 61 * S;
    assert_eq!(
        c.refuses(&about("shop/x", "pumped"), later),
        Some(Scope::Range)
    );
    assert_eq!(c.refuses(&about("shop/y", "real"), later), None);
    // Nine judged requests are not enough volume, whatever their conversion.
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    traffic(&c, "quiet", 9, 0, t0);
    traffic(&c, "real", 10, 7, t0);
    assert_eq!(c.refuses(&about("shop/z", "quiet"), later), None);
    // Exactly at the floor (2 of 10) is not below it.
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    traffic(&c, "edge", 10, 2, t0);
    assert_eq!(c.refuses(&about("shop/z", "edge"), later), None);
}

#[test]
fn an_app_that_reports_nothing_and_requests_before_listening_are_never_judged() {
    let t0 = Instant::now();
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    for i in 0..30 {
        let request = format!("silent/{i}");
        let a = About {
            app: Some("silent"),
            ..about(&request, "r")
        };
        c.admitted(&a, t0);
    }
    assert_eq!(c.refuses(&about("shop/x", "r"), t0 + 120 * S), None);

    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    traffic(&c, "early", 20, 0, t0);
    traffic(&c, "later", 1, 1, t0);
    c.listening(t0 + S);
    assert_eq!(c.refuses(&about("shop/x", "early"), t0 + 120 * S), None);
}

#[test]
fn dry_run_refuses_nothing_allow_lists_and_other_channels_pass() {
    let t0 = Instant::now();
    let later = t0 + 61 * S;
    let pumped = |config: &ConversionConfig, channel, allowed: Vec<String>| {
        let c = Conversion::new(config, channel, allowed);
        c.listening(t0);
        traffic(&c, "pumped", 20, 0, t0);
        traffic(&c, "real", 1, 1, t0);
        c.refuses(&about("shop/x", "pumped"), later)
    };
    assert_eq!(pumped(&config(), Channel::Sms, vec![]), Some(Scope::Range));
    let dry = ConversionConfig {
        mode: ConversionMode::DryRun,
        ..config()
    };
    assert_eq!(pumped(&dry, Channel::Sms, vec![]), None);
    assert_eq!(pumped(&config(), Channel::Whatsapp, vec![]), None);
    assert_eq!(pumped(&config(), Channel::Sms, vec!["pumped".into()]), None);
    let country = ConversionConfig {
        allow_countries: vec!["GB".into()],
        ..config()
    };
    assert_eq!(pumped(&country, Channel::Sms, vec![]), None);
    let off = ConversionConfig {
        mode: ConversionMode::Off,
        ..config()
    };
    assert_eq!(pumped(&off, Channel::Sms, vec![]), None);
}

#[test]
fn a_country_rule_judges_the_whole_country() {
    let t0 = Instant::now();
    let config = ConversionConfig {
        per_range: None,
        per_country: Some(ConversionRule {
            min_requests: 20,
            floor: 0.5,
        }),
        ..config()
    };
    let c = Conversion::new(&config, Channel::Sms, vec![]);
    c.listening(t0);
    traffic(&c, "a", 10, 2, t0);
    traffic(&c, "b", 10, 2, t0);
    assert_eq!(
        c.refuses(&about("shop/x", "c"), t0 + 61 * S),
        Some(Scope::Country)
    );
}

#[test]
fn judged_requests_leave_the_window_and_the_range_opens_again() {
    let t0 = Instant::now();
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    traffic(&c, "pumped", 10, 0, t0);
    traffic(&c, "real", 1, 1, t0 + 300 * S);
    assert!(c
        .refuses(&about("shop/x", "pumped"), t0 + 599 * S)
        .is_some());
    assert_eq!(c.refuses(&about("shop/x", "pumped"), t0 + 600 * S), None);
    assert!(c.lock().requests.len() <= 1, "forgotten after the window");
}

#[test]
fn a_late_verification_counts_and_a_late_fleet_admission_is_judged() {
    let t0 = Instant::now();
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    let t1 = t0 + 10 * S;
    traffic(&c, "r", 10, 1, t1);
    assert!(c.refuses(&about("shop/x", "r"), t1 + 61 * S).is_some());
    // A user enters a code after the grace: the range converts again.
    assert!(c.verified("shop/r-5", Some("shop"), t1 + 62 * S));
    assert!(
        c.verified("shop/r-5", Some("shop"), t1 + 62 * S),
        "a repeat"
    );
    assert!(c.refuses(&about("shop/x", "r"), t1 + 62 * S).is_none());
    // Unknown, or another app's: not matched.
    assert!(!c.verified("shop/nope", Some("shop"), t1 + 62 * S));
    assert!(!c.verified("shop/r-6", Some("other"), t1 + 62 * S));
    // Another worker's admission, older than requests already judged and read late: judged
    // at once, so the judged ones stay the oldest.
    c.admitted(&about("shop/late-1", "late"), t0 + 5 * S);
    let judged = |c: &Conversion| c.lock().ranges.values().map(|c| c.judged).sum::<u32>();
    assert_eq!(judged(&c), 11);
    // A newer one waits for its grace.
    c.admitted(&about("shop/late-2", "late"), t1 + 30 * S);
    assert_eq!(judged(&c), 11);
    c.tick(t1 + 91 * S);
    assert_eq!(judged(&c), 12);
}

#[test]
fn the_oldest_requests_are_forgotten_past_the_bound_and_leave_the_counts() {
    let t0 = Instant::now();
    let c = Conversion::bounded(&config(), Channel::Sms, vec![], 15);
    c.listening(t0);
    traffic(&c, "old", 10, 0, t0);
    traffic(&c, "real", 1, 1, t0);
    c.tick(t0 + 61 * S);
    assert!(c.refuses(&about("shop/x", "old"), t0 + 61 * S).is_some());
    traffic(&c, "new", 5, 5, t0 + 62 * S);
    assert_eq!(c.lock().requests.len(), 15);
    // One of "old" was forgotten: 9 judged, below the volume.
    assert_eq!(c.refuses(&about("shop/x", "old"), t0 + 63 * S), None);
}

#[test]
fn the_workers_own_sends_are_handed_to_the_routes_when_judged() {
    let t0 = Instant::now();
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    traffic(&c, "r", 2, 1, t0);
    c.sent_through("shop/r-0", Provider::Vonage);
    c.sent_through("shop/r-1", Provider::Twilio);
    assert!(c.tick(t0 + 30 * S).is_empty());
    let mut judged = c.tick(t0 + 61 * S);
    judged.sort_by_key(|j| j.provider.as_str());
    assert_eq!(
        judged,
        vec![
            Judged {
                provider: Provider::Twilio,
                country: "GB".into(),
                verified: false,
                at: t0 + 60 * S,
            },
            Judged {
                provider: Provider::Vonage,
                country: "GB".into(),
                verified: true,
                at: t0 + 60 * S,
            },
        ]
    );
}

#[test]
fn an_outcome_read_before_its_admission_counts_when_the_admission_comes() {
    let t0 = Instant::now();
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    // Read before the fleet's admission: unmatched now, applied later.
    assert!(!c.verified("shop/r-0", Some("shop"), t0 + S));
    traffic(&c, "r", 10, 0, t0);
    traffic(&c, "other", 1, 1, t0 + 2 * S);
    c.tick(t0 + 61 * S);
    let counts = c.lock().ranges.values().copied().collect::<Vec<_>>();
    assert!(
        counts.contains(&Counts {
            judged: 10,
            verified: 1
        }),
        "{counts:?}"
    );
    // Another app's outcome of that key is not applied.
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    assert!(!c.verified("shop/x", Some("bank"), t0 + S));
    c.admitted(&about("shop/x", "r"), t0);
    assert!(!c.lock().requests.values().any(|r| r.verified));
}

#[test]
fn requests_after_an_apps_last_report_are_not_judged() {
    let t0 = Instant::now();
    let c = Conversion::new(&config(), Channel::Sms, vec![]);
    c.listening(t0);
    traffic(&c, "early", 1, 1, t0);
    // The login system stops reporting; 20 more requests to one range are never entered.
    traffic(&c, "r", 20, 0, t0 + 2 * S);
    assert_eq!(c.refuses(&about("shop/x", "r"), t0 + 120 * S), None);
    assert_eq!(c.lock().ranges.values().map(|c| c.judged).sum::<u32>(), 1);
}

#[test]
fn bad_settings_name_the_field() {
    let bad = ConversionConfig {
        per_range: Some(ConversionRule {
            min_requests: 10,
            floor: 1.5,
        }),
        ..config()
    };
    assert_eq!(
        bad.check().unwrap_err(),
        "conversion.per_range.floor must be between 0 and 1"
    );
    let bad = ConversionConfig {
        grace: Duration::from_secs(600),
        ..config()
    };
    assert!(bad.check().unwrap_err().contains("conversion.grace"));
    let bad = ConversionConfig {
        allow_ranges: vec!["+44 20".into()],
        ..config()
    };
    assert!(bad
        .check()
        .unwrap_err()
        .starts_with("conversion.allow_ranges"));
    assert_eq!(config().check(), Ok(()));
}
