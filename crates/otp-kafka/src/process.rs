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

/// The deployment's keyed phone hash (`OTP_PHONE_HASH_KEY`), warning when it is the public
/// development key.
pub fn phone_hasher() -> otp_events::PhoneHasher {
    let (hasher, dev_key) = otp_events::PhoneHasher::from_env();
    if dev_key {
        tracing::warn!("OTP_PHONE_HASH_KEY is not set: using the public development key");
    }
    hasher
}
