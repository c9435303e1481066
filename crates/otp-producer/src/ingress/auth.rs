//! Who may ask the HTTP ingress to send codes: one API key per login system ("app"), and the
//! app's quotas.
//!
//! Whoever can make the pipeline send codes can run up the SMS bill (SMS pumping) or flood a
//! user, so the ingress is closed by default: every call carries `Authorization: Bearer KEY`.
//! Keys are high-entropy random strings (`otp-producer keys new`); the ingress only holds
//! their SHA-256 digests, read from a TOML file ([`KeyFile`]), and compares the digest of the
//! presented key with every app's in constant time. The app that a request names on Kafka
//! is the key's app, never the body's. Each app has a rate (per second, with a burst) and a
//! daily cap; past either the answer is 429 with `Retry-After`. Quotas are per ingress
//! replica: divide them by the number of replicas.

use chrono::{DateTime, NaiveDate, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The key file: one `[[app]]` table per login system.
///
/// ```toml
/// [[app]]
/// name = "instagram-login"
/// key_sha256 = "9f86d0818..."   # hex SHA-256 of the key; the key itself is never stored
/// per_second = 50               # requests per second, with `burst` at once
/// burst = 100
/// per_day = 1000000             # codes per UTC day
/// disabled = false              # true: 403, e.g. while a leaked key is replaced
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(rename = "app")]
    pub apps: Vec<AppKey>,
}

/// One login system's credential and quotas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppKey {
    /// The app's identifier, stamped on every request it publishes (letters, digits, `.`,
    /// `_`, `-`).
    pub name: String,
    /// Hex SHA-256 of the API key.
    pub key_sha256: String,
    /// Requests per second.
    #[serde(default = "default_per_second")]
    pub per_second: u32,
    /// Requests at once above the rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Codes per UTC day.
    #[serde(default = "default_per_day")]
    pub per_day: u64,
    /// Refuse this app's calls with 403.
    #[serde(default)]
    pub disabled: bool,
}

fn default_per_second() -> u32 {
    100
}
fn default_burst() -> u32 {
    200
}
fn default_per_day() -> u64 {
    1_000_000
}

/// Why a key file was refused: the app and the rule.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("app {app:?}: {rule}")]
    App { app: String, rule: &'static str },
    #[error("the key file lists no app")]
    Empty,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No or unknown credential: 401.
    Unauthenticated,
    /// The app is disabled: 403.
    Disabled,
    /// Over the app's rate or daily cap: 429, retry after this long.
    OverQuota {
        rule: &'static str,
        retry_after: Duration,
    },
}

struct App {
    key: AppKey,
    digest: [u8; 32],
    rate: RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>,
    day: Mutex<(NaiveDate, u64)>,
}

/// The ingress's apps, their keys and quotas.
pub struct Apps {
    apps: Vec<App>,
    clock: DefaultClock,
}

impl Apps {
    /// The apps' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.apps.iter().map(|a| a.key.name.as_str())
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: KeyFile = toml::from_str(&text).map_err(|source| KeyFileError::Parse {
            path: shown,
            source,
        })?;
        Self::new(file)
    }

    pub fn new(file: KeyFile) -> Result<Self, KeyFileError> {
        if file.apps.is_empty() {
            return Err(KeyFileError::Empty);
        }
        let mut apps = Vec::new();
        for key in file.apps {
            let bad = |rule| KeyFileError::App {
                app: key.name.clone(),
                rule,
            };
            if !otp_events::is_valid_app(&key.name) {
                return Err(bad("name must be 1 to 64 letters, digits, '.', '_' or '-'"));
            }
            if apps.iter().any(|a: &App| a.key.name == key.name) {
                return Err(bad("name is listed twice"));
            }
            let digest: [u8; 32] = hex::decode(&key.key_sha256)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| bad("key_sha256 must be 64 hex digits (SHA-256 of the key)"))?;
            if apps.iter().any(|a: &App| a.digest == digest) {
                return Err(bad("key_sha256 is another app's key: one key, one app"));
            }
            let (Some(rate), Some(burst)) =
                (NonZeroU32::new(key.per_second), NonZeroU32::new(key.burst))
            else {
                return Err(bad("per_second and burst must be at least 1"));
            };
            apps.push(App {
                rate: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                day: Mutex::new((Utc::now().date_naive(), 0)),
                digest,
                key,
            });
        }
        Ok(Self {
            apps,
            clock: DefaultClock::default(),
        })
    }

    /// The app whose key the `Authorization` header carries, if its quotas allow one more
    /// request now.
    pub fn admit(&self, authorization: Option<&str>, now: DateTime<Utc>) -> Result<&str, Refusal> {
        self.admit_counting(authorization, now, true)
    }

    /// As [`Apps::admit`], for a call that sends no code (a verification outcome): within the
    /// app's rate, and not counted against its codes per day.
    pub fn admit_report(
        &self,
        authorization: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<&str, Refusal> {
        self.admit_counting(authorization, now, false)
    }

    fn admit_counting(
        &self,
        authorization: Option<&str>,
        now: DateTime<Utc>,
        a_code: bool,
    ) -> Result<&str, Refusal> {
        let key = authorization
            .and_then(|h| {
                // The scheme is case-insensitive (RFC 9110).
                let (scheme, key) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(key)
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(Refusal::Unauthenticated)?;
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every app's digest is compared, in constant time, so the answer's timing says
        // nothing about which digest came close.
        let mut found = None;
        for app in &self.apps {
            if otp_events::signature::digests_equal(&app.digest, &presented) {
                found = Some(app);
            }
        }
        let app = found.ok_or(Refusal::Unauthenticated)?;
        if app.key.disabled {
            return Err(Refusal::Disabled);
        }
        if let Err(not_until) = app.rate.check() {
            return Err(Refusal::OverQuota {
                rule: "per_second",
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        if !a_code {
            return Ok(&app.key.name);
        }
        let mut day = app.day.lock().expect("quota lock");
        let today = now.date_naive();
        if day.0 != today {
            *day = (today, 0);
        }
        if day.1 >= app.key.per_day {
            let midnight = today
                .succ_opt()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
                .unwrap_or(now);
            return Err(Refusal::OverQuota {
                rule: "per_day",
                retry_after: (midnight - now).to_std().unwrap_or_default(),
            });
        }
        day.1 += 1;
        Ok(&app.key.name)
    }
}

/// A new API key for `app`: the key to hand to the login system (shown once), and the
/// `[[app]]` entry for the key file, which holds only its digest.
pub fn new_key(app: &str) -> (String, String) {
    let key = format!("otp_{}", hex::encode(rand::random::<[u8; 32]>()));
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let entry = format!(
        "[[app]]\nname = {app:?}\nkey_sha256 = \"{digest}\"\nper_second = {}\nburst = {}\nper_day = {}\n",
        default_per_second(),
        default_burst(),
        default_per_day()
    );
    (key, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The day a UTC timestamp falls on, for tests.
    fn on(day: u32) -> DateTime<Utc> {
        chrono::NaiveDate::from_ymd_opt(2026, 11, day)
            .and_then(|d| d.and_hms_opt(23, 59, 0))
            .map(|t| t.and_utc())
            .expect("a valid date")
    }

    fn apps(entries: &str) -> Apps {
        Apps::new(toml::from_str(entries).unwrap()).unwrap()
    }

    #[test]
    fn a_new_key_authenticates_as_its_app_and_nothing_else_does() {
        let (key, entry) = new_key("login-web");
        let apps = apps(&entry);
        let bearer = format!("Bearer {key}");
        assert_eq!(apps.admit(Some(&bearer), Utc::now()), Ok("login-web"));
        for wrong in [
            None,
            Some("Bearer "),
            Some("Basic abc"),
            Some("Bearer otp_0000"),
        ] {
            assert_eq!(
                apps.admit(wrong, Utc::now()),
                Err(Refusal::Unauthenticated),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn a_disabled_app_is_refused() {
        let (key, entry) = new_key("old-app");
        let apps = apps(&format!("{entry}disabled = true\n"));
        let bearer = format!("Bearer {key}");
        assert_eq!(
            apps.admit(Some(&bearer), Utc::now()),
            Err(Refusal::Disabled)
        );
    }

    #[test]
    fn quotas_refuse_past_the_burst_and_past_the_daily_cap_until_midnight() {
        let (key, _) = new_key("a");
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        let apps = apps(&format!(
            "[[app]]\nname = \"a\"\nkey_sha256 = \"{digest}\"\nper_second = 1\nburst = 2\nper_day = 100\n"
        ));
        let bearer = format!("Bearer {key}");
        assert!(apps.admit(Some(&bearer), on(28)).is_ok());
        assert!(apps.admit(Some(&bearer), on(28)).is_ok());
        match apps.admit(Some(&bearer), on(28)) {
            Err(Refusal::OverQuota { rule, retry_after }) => {
                assert_eq!(rule, "per_second");
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        let daily = apps_with_day_cap(&key, 2);
        assert!(daily.admit(Some(&bearer), on(28)).is_ok());
        assert!(daily.admit(Some(&bearer), on(28)).is_ok());
        assert_eq!(
            daily.admit(Some(&bearer), on(28)),
            Err(Refusal::OverQuota {
                rule: "per_day",
                retry_after: Duration::from_secs(60)
            }),
            "a minute to midnight"
        );
        assert!(daily.admit(Some(&bearer), on(29)).is_ok(), "a new day");
    }

    fn apps_with_day_cap(key: &str, per_day: u64) -> Apps {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        apps(&format!(
            "[[app]]\nname = \"a\"\nkey_sha256 = \"{digest}\"\nper_second = 1000\nburst = 1000\nper_day = {per_day}\n"
        ))
    }

    #[test]
    fn a_bad_key_file_names_the_app_and_the_rule() {
        let cases = [
            (
                "[[app]]\nname = \"a b\"\nkey_sha256 = \"00\"\n",
                "name must be",
            ),
            (
                "[[app]]\nname = \"a\"\nkey_sha256 = \"00\"\n",
                "key_sha256 must be 64 hex digits",
            ),
        ];
        for (text, rule) in cases {
            let e = Apps::new(toml::from_str(text).unwrap())
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(rule), "{e}");
        }
        assert!(matches!(
            Apps::new(KeyFile { apps: vec![] }),
            Err(KeyFileError::Empty)
        ));
    }
}
