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
