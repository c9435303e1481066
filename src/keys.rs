//! `otp keys init`: the development secrets of the compose stack, generated in one command.
//!
//! `docker compose` reads `.env` beside `docker-compose.yml`: this writes it with a fresh
//! phone-hash key, sealing key, fallback-proof key and record keys (every role's), the path of
//! the HTTP ingress's API key file and the receipts' public URL, and writes under `secrets/`
//! that key file (one app, `demo`, whose key is printed once: the file holds only its digest)
//! and placeholder provider tokens for the `live` profile (never written over: a real token
//! may be there). The keys are not overwritten unless asked: the keys of a stack that has
//! written to Kafka open its sealed records. The files are
//! development secrets (`.env` and `secrets/` are in `.gitignore`); production takes its
//! secrets from its own store (docs/production.md).

use anyhow::Context;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Where docker-compose.yml is: `.env` and `secrets/` are written beside it.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Replace files that exist (their keys are lost: what they sealed no longer opens).
    #[arg(long)]
    pub force: bool,
}

/// The files written, and the demo app's API key (shown once).
pub struct Written {
    pub files: Vec<PathBuf>,
    pub api_key: String,
}

/// The variables `.env` sets: every one that docker-compose.yml requires (`${NAME:?...}`).
pub const ENV_NAMES: [&str; 6] = [
    "OTP_PHONE_HASH_KEY",
    "OTP_SEAL_KEYS",
    "OTP_FALLBACK_KEY",
    "OTP_RECORD_KEYS",
    "OTP_API_KEYS_FILE",
    "OTP_RECEIPTS_PUBLIC_URL",
];

pub fn init(args: &InitArgs) -> anyhow::Result<Written> {
    let env_path = args.dir.join(".env");
    let secrets = args.dir.join("secrets");
    let api_keys = secrets.join("api-keys.toml");
    let tokens = [
        secrets.join("otp_whatsapp_token"),
        secrets.join("otp_sms_auth_token"),
    ];
    if !args.force {
        for path in [&env_path, &api_keys] {
            anyhow::ensure!(
                !path.exists(),
                "{} exists: keep it (its keys open what the stack sealed), or pass --force",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(&secrets).with_context(|| format!("create {}", secrets.display()))?;
    let hex32 = || hex::encode(rand::random::<[u8; 32]>());
    let (_, seal_keys) = otp_events::Keyring::generate("dev1");
    let (_, record_keys) = otp_events::RecordKeys::generate();
    let (api_key, entry) = otp_producer::ingress::auth::new_key("demo");
    let env = format!(
        "# Development secrets for docker-compose.yml, from `otp keys init` ({}).\n\
         # Never for production: docs/production.md.\n\
         OTP_PHONE_HASH_KEY={}\n\
         OTP_SEAL_KEYS={seal_keys}\n\
         OTP_FALLBACK_KEY={}\n\
         OTP_RECORD_KEYS={record_keys}\n\
         OTP_API_KEYS_FILE=./secrets/api-keys.toml\n\
         OTP_RECEIPTS_PUBLIC_URL=http://127.0.0.1:9500\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        hex32(),
        hex32(),
    );
    // Compose reads .env itself: nothing mounts it, so only its owner reads it.
    write(&env_path, &env, 0o600)?;
    write(&api_keys, &entry, 0o644)?;
    let mut files = vec![env_path, api_keys];
    for token in tokens {
        // The live profile's provider tokens: placeholders to replace with the real ones,
        // never written over (a real token may be there already).
        if !token.exists() {
            write(&token, "replace-with-the-provider-token\n", 0o644)?;
            files.push(token);
        }
    }
    Ok(Written { files, api_key })
}

/// Write `text` to `path` with `mode`: 0644 for what a container's user (uid 65534) reads
/// through a bind mount (development secrets on a development machine), 0600 otherwise.
fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("set the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}
