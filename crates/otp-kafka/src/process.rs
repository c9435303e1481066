//! What every binary does around its work: logs, the shutdown signal, and secrets.

use anyhow::Context;

/// Logs to stderr, level from `RUST_LOG` (default info).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown signal received");
}

/// Read a secret from env var `name`, or from the file named by `name_FILE`. Never from the
/// command line (visible in `ps`), never logged.
pub fn secret(name: &str) -> anyhow::Result<String> {
    if let Ok(value) = std::env::var(name) {
        if !value.is_empty() {
            return Ok(value);
        }
    }
    let file_var = format!("{name}_FILE");
    if let Ok(path) = std::env::var(&file_var) {
        let value = std::fs::read_to_string(&path)
            .with_context(|| format!("read the secret file named by {file_var}"))?;
        return Ok(value.trim().to_string());
    }
    anyhow::bail!("set {name} or {file_var} (a file holding it)")
}

/// `--dev` / `OTP_DEV`: development mode, the only way a service starts without its secrets.
/// Flattened into every binary's flags.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct DevMode {
    /// Development mode: start without `OTP_PHONE_HASH_KEY`, using a public key (phone hashes
    /// can then be reversed by anyone). Never in production; logged loudly.
    #[arg(long = "dev", env = "OTP_DEV")]
    pub dev: bool,
}

/// The keys that seal codes and phone numbers on Kafka, from `OTP_SEAL_KEYS` (or the file named
/// by `OTP_SEAL_KEYS_FILE`): `id=<64 hex>,id=<64 hex>`, the first sealing. Fails closed like the
/// phone hash key: without keys, only development mode starts, with a public development key.
pub fn keyring(mode: DevMode) -> anyhow::Result<otp_events::Keyring> {
    let name = otp_events::Keyring::ENV;
    match secret(name) {
        Ok(text) => otp_events::Keyring::parse(&text).context(name),
        Err(_) if mode.dev => {
            tracing::warn!(
                "DEVELOPMENT MODE (--dev): {name} is not set, so codes and numbers are sealed on \
                 Kafka with a public development key; never run like this in production"
            );
            Ok(
                otp_events::Keyring::parse(DEV_SEAL_KEYS)
                    .expect("the development keyring is valid"),
            )
        }
        Err(_) => anyhow::bail!(
            "{name} is not set: codes and phone numbers are sealed on Kafka, so no service that \
             reads or writes code requests starts without the keys. Set {name} (or {name}_FILE) \
             to `id=<64 hex digits>` (the first key seals, any listed key opens), or pass --dev \
             for local development"
        ),
    }
}

/// The workers' key for fallback proofs, from `OTP_FALLBACK_KEY` (or `_FILE`): held by workers
/// and the tracker, never by producers. Fails closed like the other secrets.
pub fn fallback_key(mode: DevMode) -> anyhow::Result<otp_events::FallbackKey> {
    let name = otp_events::FallbackKey::ENV;
    match secret(name) {
        Ok(key) => Ok(otp_events::FallbackKey::new(key.as_bytes())),
        Err(_) if mode.dev => {
            tracing::warn!(
                "DEVELOPMENT MODE (--dev): {name} is not set, so fallback proofs use a public \
                 development key and any producer could forge one"
            );
            Ok(otp_events::FallbackKey::new(
                b"otp-pipeline-development-fallback-key",
            ))
        }
        Err(_) => anyhow::bail!(
            "{name} is not set: workers and the tracker sign the fallbacks they write, so that \
             a producer cannot claim fallback state and skip the abuse rules. Set {name} (or \
             {name}_FILE) to a secret shared by workers and trackers only, or pass --dev"
        ),
    }
}

/// The public development keyring (`--dev` only).
pub const DEV_SEAL_KEYS: &str =
    "dev=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The deployment's keyed phone hash, from `OTP_PHONE_HASH_KEY` (or the file named by
/// `OTP_PHONE_HASH_KEY_FILE`). Fails closed: without a key, only development mode starts, with
/// the public development key and a loud warning.
pub fn phone_hasher(mode: DevMode) -> anyhow::Result<otp_events::PhoneHasher> {
    let name = otp_events::PhoneHasher::KEY_ENV;
    match secret(name) {
        Ok(key) => Ok(otp_events::PhoneHasher::new(key.as_bytes())),
        Err(_) if mode.dev => {
            tracing::warn!(
                "DEVELOPMENT MODE (--dev): {name} is not set, so the public development key \
                 is used and phone hashes can be reversed; never run like this in production"
            );
            Ok(otp_events::PhoneHasher::new(
                otp_events::PhoneHasher::DEV_KEY,
            ))
        }
        Err(_) => anyhow::bail!(
            "{name} is not set: the phone hash key keys every phone hash, partition key and \
             dedup key, so no service starts without it. Set {name} (or {name}_FILE, a file \
             holding it) to the deployment's secret, or pass --dev (OTP_DEV=1) for local \
             development with a public key"
        ),
    }
}
