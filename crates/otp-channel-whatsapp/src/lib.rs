//! The WhatsApp channel: one Cloud API client that sends the code as an authentication
//! template, classifying Meta's answers with `otp_events::provider_errors::WHATSAPP`. The
//! runtime that consumes, retries and falls back is `otp-worker`'s; this crate knows nothing
//! about Kafka.

mod cli;
mod client;
mod config;
mod language;

pub use cli::WorkerCli;
pub use client::WhatsappClient;
pub use config::{default_limits, WhatsappArgs};

#[cfg(test)]
mod tests {
    /// The README's error-class table is the one the code applies.
    #[test]
    fn the_readme_lists_the_error_classes_as_applied() {
        let table = otp_events::provider_errors::WHATSAPP.markdown();
        let readme = include_str!("../README.md");
        assert!(readme.contains(&table), "put this in README.md:\n{table}");
    }
}
