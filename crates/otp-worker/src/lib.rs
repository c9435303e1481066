//! The delivery runtime shared by every channel.
//!
//! A channel (WhatsApp, SMS) is one [`ChannelClient`]: send one message, classify the answer
//! with its [`ErrorTable`]. Everything else is here and is the same for both:
//!
//! - [`runtime`]: consume with a consumer group, many messages in flight, commit what is
//!   finished, hand partitions over cleanly, drain on shutdown;
//! - [`pipeline`]: the data path of one message, decode → guard → limit → send → classify →
//!   report / fall back / retry;
//! - [`limits`], [`retry`], [`dedup`]: the guards and the retry policy;
//! - [`report`]: statuses, dead letters and fallbacks written to Kafka;
//! - [`observe`], [`cli`]: metrics endpoints and what the binaries share.
//!
//! Nothing here knows WhatsApp or SMS.

pub mod channel;
pub mod circuit;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dedup;
pub mod limits;
pub mod observe;
pub mod offsets;
pub mod pipeline;
pub mod report;
pub mod retry;
pub mod runtime;

pub use channel::{ChannelClient, ErrorClass, ErrorTable, SendFailure, SendOutcome};
pub use config::{ConfirmationConfig, WorkerConfig};
pub use limits::{AbuseConfig, LimitsConfig, WindowRule};
pub use runtime::{run, WorkerSetup};
