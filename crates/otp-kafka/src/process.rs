//! What every binary does around its work: logs, the shutdown signal, and secrets.

use anyhow::Context;

/// Logs to stderr, level from `RUST_LOG` (default info). Colours only on a terminal: a log
/// file or a container's log collector gets plain text that `grep " WARN "` finds.
pub fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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
        let value = value.trim();
        // An empty file is no secret: an HMAC with an empty key would accept forgeries.
        anyhow::ensure!(
            !value.is_empty(),
            "the secret file named by {file_var} is empty"
        );
        return Ok(value.to_string());
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

/// `--check-config`: read the settings (flags and environment), check what can be checked
/// without a broker, a provider or a secret, print "configuration ok" and exit 0; a bad
/// setting fails as it would at start, naming it. For deployment checks: the tests run every
/// docker-compose command with it. Flattened into every service's flags.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct CheckConfig {
    /// Check the settings and exit, without connecting to anything or reading secrets.
    #[arg(long)]
    pub check_config: bool,
}

impl CheckConfig {
    /// When checking: say the settings of `what` are fine, and return true (the caller exits).
    pub fn done(self, what: &str) -> bool {
        if self.check_config {
            println!("{what}: configuration ok");
        }
        self.check_config
    }
}

/// A secret every production service needs: from `name` (or `name_FILE`); without it, the
/// development value in development mode (with a loud warning naming `without`, what its
/// absence gives away), else an error naming the variable, `why` it is needed, and `--dev`.
fn required_secret(
    name: &str,
    mode: DevMode,
    dev_value: &str,
    without: &str,
    why: &str,
) -> anyhow::Result<String> {
    match secret(name) {
        Ok(value) => Ok(value),
        Err(_) if mode.dev => {
            tracing::warn!(
                "DEVELOPMENT MODE (--dev): {name} is not set, so a public development value is \
                 used: {without}; never run like this in production"
            );
            Ok(dev_value.to_string())
        }
        Err(_) => anyhow::bail!(
            "{name} is not set: {why}. Set {name} (or {name}_FILE, a file holding it), or pass \
             --dev (OTP_DEV=1) for local development"
        ),
    }
}

/// The keys that seal codes and phone numbers on Kafka, from `OTP_SEAL_KEYS` (or the file named
/// by `OTP_SEAL_KEYS_FILE`): `id=<64 hex>,id=<64 hex>`, the first sealing. Fails closed.
pub fn keyring(mode: DevMode) -> anyhow::Result<otp_events::Keyring> {
    let name = otp_events::Keyring::ENV;
    let text = required_secret(
        name,
        mode,
        DEV_SEAL_KEYS,
        "codes and numbers on Kafka can be opened by anyone",
        "codes and phone numbers are sealed on Kafka, so no service that reads or writes code \
         requests starts without the keys (`id=<64 hex digits>`, comma-separated; the first \
         seals, any listed key opens)",
    )?;
    otp_events::Keyring::parse(&text).context(name)
}

/// The workers' key for fallback proofs, from `OTP_FALLBACK_KEY` (or `_FILE`): held by workers
/// and the tracker, never by producers. Fails closed.
pub fn fallback_key(mode: DevMode) -> anyhow::Result<otp_events::FallbackKey> {
    let key = required_secret(
        otp_events::FallbackKey::ENV,
        mode,
        "otp-pipeline-development-fallback-key",
        "any producer could forge a fallback proof",
        "workers and the tracker sign the fallbacks they write, so that a producer cannot claim \
         fallback state and skip the abuse rules (a secret of workers and trackers only)",
    )?;
    Ok(otp_events::FallbackKey::new(key.as_bytes()))
}

/// The keys that authenticate internal records, from `OTP_RECORD_KEYS` (or `_FILE`):
/// `role:id=<64 hex>,...`, with a key for every role in `needed` (the role the service writes
/// as, and those whose records it reads). Fails closed.
pub fn record_keys(
    mode: DevMode,
    needed: &[otp_events::Role],
) -> anyhow::Result<otp_events::RecordKeys> {
    let name = otp_events::RecordKeys::ENV;
    let text = required_secret(
        name,
        mode,
        DEV_RECORD_KEYS,
        "anyone who can write an internal topic can make the services act",
        "the services authenticate every internal record (pending confirmations, receipts, \
         abuse admissions, channel signals) by the role that wrote it, so none starts without \
         the keys of the roles it writes and reads (`role:id=<64 hex digits>`, comma-separated; \
         roles worker, tracker, ingress; a role's first key signs)",
    )?;
    let keys = otp_events::RecordKeys::parse(&text).context(name)?;
    keys.require(needed).context(name)?;
    Ok(keys)
}

/// The public development record keys (`--dev` only): every role.
pub const DEV_RECORD_KEYS: &str =
    "worker:dev=101112131415161718191a1b1c1d1e1f101112131415161718191a1b1c1d1e1f,\
tracker:dev=202122232425262728292a2b2c2d2e2f202122232425262728292a2b2c2d2e2f,\
ingress:dev=303132333435363738393a3b3c3d3e3f303132333435363738393a3b3c3d3e3f";

/// The public development keyring (`--dev` only).
pub const DEV_SEAL_KEYS: &str =
    "dev=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The deployment's keyed phone hash, from `OTP_PHONE_HASH_KEY` (or the file named by
/// `OTP_PHONE_HASH_KEY_FILE`). Fails closed.
pub fn phone_hasher(mode: DevMode) -> anyhow::Result<otp_events::PhoneHasher> {
    let key = required_secret(
        otp_events::PhoneHasher::KEY_ENV,
        mode,
        std::str::from_utf8(otp_events::PhoneHasher::DEV_KEY).expect("the development key is text"),
        "phone hashes can be reversed",
        "the phone hash key keys every phone hash, partition key and dedup key, so no service \
         starts without it",
    )?;
    Ok(otp_events::PhoneHasher::new(key.as_bytes()))
}

/// A duration as a flag's default text (`30m`): a default that is a named constant is then
/// stated once, for clap and serde alike. Made once per flag, when the command is built.
pub fn flag_default(d: std::time::Duration) -> &'static str {
    Box::leak(humantime::format_duration(d).to_string().into_boxed_str())
}

/// A flag set's defaults, as declared on its flags, parsed from no arguments and no
/// environment: what a config struct's `Default` is, so that no second list of defaults exists
/// to drift from the first (and a test or an embedding gets the same values on every machine).
/// Panics when a flag has no default (a programming error).
pub fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every flag of a config struct has a default");
    T::from_arg_matches(&matches).expect("the defaults parse into their own struct")
}
