//! What login systems use to put a code request on Kafka.
//!
//! Three ways in, one path out: the [`CodeRequestPublisher`] library is what the HTTP ingress
//! ([`ingress`]) and the `otp send` command call, and what workers call to hand a request on
//! to its next channel. Every way validates with `otp_events` before anything reaches Kafka,
//! and returns only after the broker acknowledged (`acks=all`, idempotent producer).
//!
//! [`kafka`] holds the connection settings every binary shares (`--brokers`, passthrough of
//! librdkafka options for secured clusters) and [`admin`] creates the topics.

pub mod admin;
pub mod ingress;
pub mod kafka;
mod publisher;
pub mod session;

pub use publisher::{CodeRequestPublisher, PublishError, PublisherConfig};
