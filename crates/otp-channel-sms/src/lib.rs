//! The SMS channel: one Twilio Messages API client (form-encoded, basic auth) with a message
//! body per locale, and the error table that classifies Twilio's answers. The runtime that
//! consumes, retries and falls back is `otp-worker`'s; this crate knows nothing about Kafka.

mod cli;
mod client;
mod config;

pub use cli::WorkerCli;
pub use client::SmsClient;
pub use config::{default_limits, SmsArgs};
