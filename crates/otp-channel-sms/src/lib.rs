//! The SMS channel: one client per provider (Twilio's Messages API, form-encoded; Vonage's
//! Messages API, JSON), each classifying its answers with its table in
//! `otp_events::provider_errors`, sharing the message text per locale. The runtime that routes,
//! consumes, retries, fails over and falls back is `otp-worker`'s; this crate knows nothing
//! about Kafka.

mod cli;
mod client;
mod config;
mod senders;
mod text;
mod twilio;
mod vonage;

pub use cli::WorkerCli;
pub use client::SmsClient;
pub use config::{default_limits, SmsArgs, TwilioArgs, VonageArgs};
pub use text::Texts;
pub use twilio::TwilioClient;
pub use vonage::VonageClient;

#[cfg(test)]
mod tests {
    /// The README's error-class tables are the ones the code applies.
    #[test]
    fn the_readme_lists_the_error_classes_as_applied() {
        let readme = include_str!("../README.md");
        for table in [
            &otp_events::provider_errors::TWILIO,
            &otp_events::provider_errors::VONAGE,
        ] {
            let markdown = table.markdown();
            assert!(
                readme.contains(&markdown),
                "put this in README.md:\n{markdown}"
            );
        }
    }
}
