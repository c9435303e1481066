//! What login systems use to put a code request on Kafka.
//!
//! Three ways in, one path out: the [`CodeRequestPublisher`] library (from `otp-kafka`, where
//! the workers' fallbacks use it too) is what the HTTP ingress ([`ingress`]) and the
//! `otp send` command call. Every way validates with `otp_events` before anything reaches
//! Kafka, and returns only after the broker acknowledged (`acks=all`, idempotent producer).

pub mod cli;
pub mod ingress;

pub use otp_kafka::{
    CodeRequestPublisher, KafkaArgs, PublishError, PublisherConfig, HEADER_KEY_ID,
};
