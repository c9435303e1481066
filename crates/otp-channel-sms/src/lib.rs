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

#[cfg(test)]
mod tests {
    /// The README's error-class table is the one the code applies.
    #[test]
    fn the_readme_lists_the_error_classes_as_applied() {
        let table = otp_events::provider_errors::SMS.markdown();
        let readme = include_str!("../README.md");
        assert!(readme.contains(&table), "put this in README.md:\n{table}");
    }
}
