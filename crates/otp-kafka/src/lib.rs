//! The Kafka plumbing every otp binary shares, in one place.
//!
//! - [`KafkaArgs`]: where the brokers are, and any librdkafka property an operator passes
//!   through (TLS, SASL) on top of each role's defaults;
//! - [`session`]: an idempotent producer that replaces itself when broken ([`producer`]:
//!   librdkafka's, with a future per message and a thread that sleeps until reports come);
//! - [`CodeRequestPublisher`]: a code request validated, keyed by phone hash and acknowledged
//!   (`acks=all`); what login systems publish with and what workers hand fallbacks on with;
//! - [`writer`]: the one place a worker or the tracker writes its decisions (statuses,
//!   fallbacks, dead letters, pending confirmations), each retried until acknowledged;
//! - [`group`]: the consumer-group runner (poll thread, rebalance bridge, in-flight bound,
//!   offset ledger, commits, drain) that the worker and the tracker implement;
//! - [`signals`]: a fleet-wide listener on the providers' channel signals;
//! - [`admin`]: topic creation; [`observe`]: `/metrics` and health; [`process`]: logging,
//!   signals and secrets for the binaries.
//!
//! Nothing here knows a channel or a provider.
//!
//! Without the `service` feature (on by default) only the publisher is built, with its
//! settings ([`KafkaArgs`], [`KafkaRole`]) and producer session: the library a login system
//! links, with no HTTP server, flag parser, log subscriber or metrics exporter.

#[cfg(feature = "service")]
pub mod admin;
#[cfg(feature = "service")]
pub mod broadcast;
#[cfg(feature = "service")]
pub mod group;
#[cfg(feature = "service")]
pub mod observe;
#[cfg(feature = "service")]
pub mod process;
pub mod producer;
mod publisher;
#[cfg(feature = "service")]
pub mod records;
pub mod session;
mod settings;
#[cfg(feature = "service")]
pub mod signals;
#[cfg(feature = "service")]
pub mod writer;

pub use publisher::{
    CodeRequestPublisher, Credentials, PublishError, PublisherConfig, DEFAULT_ACK_TIMEOUT,
    HEADER_KEY_ID,
};
pub use settings::{KafkaArgs, KafkaRole, ENV_PASSTHROUGH_PREFIX};
