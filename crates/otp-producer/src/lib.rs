//! What login systems use to put a code request on Kafka.
//!
//! Three ways in, one path out: the [`CodeRequestPublisher`] library (from `otp-kafka`, where
//! the workers' fallbacks use it too) is what the HTTP ingress ([`ingress`]) and the
//! `otp send` command call. Every way validates with `otp_events` before anything reaches
//! Kafka, and returns only after the broker acknowledged (`acks=all`, idempotent producer).
//!
//! With `default-features = false` this crate is only the library a login system links: the
//! publisher, its settings, credentials and errors, and the contract (`otp_events`), with no
//! HTTP server, flag parser, log subscriber or metrics exporter. The `service` feature (on by
//! default) adds the ingress and the binary.

#[cfg(feature = "service")]
pub mod cli;
#[cfg(feature = "service")]
pub mod ingress;

pub use otp_events;
pub use otp_kafka::{
    CodeRequestPublisher, Credentials, KafkaArgs, PublishError, PublisherConfig, HEADER_KEY_ID,
};

/// The README's example is compiled, so it stays the one that works (with the feature's
/// dependencies at hand: a login system adds `chrono` for `Submission`'s code life).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "service"))]
pub struct ReadmeDoctests;
