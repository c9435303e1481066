//! The SMS channel: one Twilio Messages API client (form-encoded, basic auth) with a message
//! body per locale, classifying Twilio's answers with `otp_events::provider_errors::SMS`. The
//! runtime that consumes, retries and falls back is `otp-worker`'s; this crate knows nothing
//! about Kafka.

mod cli;
mod client;
mod config;

pub use cli::WorkerCli;
pub use client::SmsClient;
pub use config::{default_limits, SmsArgs};
