//! The delivery logic shared by every channel.
//!
//! A channel (WhatsApp, SMS) is one [`ChannelClient`]: its providers, each sending one message
//! and classifying the answer with its error table (`otp_events::provider_errors`).
//! Everything else is here and is the same for both:
//!
//! - `pipeline`: the data path of one message, decode → guard → limit → send → classify →
//!   retry, then *settle*: the one place its outcome is written to Kafka;
//! - `decide`: the decisions of that path as pure functions, tested without a broker;
//! - `guards`: the in-memory state those decisions are asked against (`limits`, `dedup`,
//!   `routes`, `circuit`: health per provider and country, both counting over a `tally`),
//!   runnable without a broker or a provider; `retry`: the retry policy;
//! - `fleet_counts`: the abuse rules' admissions shared with the whole fleet;
//! - `conversion`: the share of codes users entered, per number range and country, that
//!   refuses pumped ranges and teaches the routes;
//! - `letting_go`: no new send for a partition being revoked or a worker stopping;
//! - `progress`: how far a message got, so that a panic still leaves it exactly one ending;
//! - `runtime`: the worker as a consumer-group member (`otp_kafka::group`), one task per
//!   message, positions that follow what finished;
//! - [`cli`]: the flags, config loading and `main` that both worker binaries share.
//!
//! Nothing here knows WhatsApp, SMS or how Kafka is polled.

pub mod channel;
mod circuit;
pub mod cli;
mod config;
mod conversion;
mod decide;
mod dedup;
mod fleet_counts;
mod guards;
mod letting_go;
mod limits;
mod outcomes;
mod pipeline;
mod progress;
mod retry;
mod routes;
mod runtime;
mod tally;

pub use channel::{ChannelClient, SendOutcome};
pub use circuit::CircuitConfig;
pub use config::{ConfirmationConfig, WorkerConfig};
pub use conversion::{ConversionConfig, ConversionMode, ConversionRule};
pub use limits::{AbuseConfig, LimitsConfig, LimitsPatch, WindowRule};
pub use retry::RetryConfig;
pub use routes::{RouteStep, RoutesConfig};
pub use runtime::{run, WorkerSetup};

/// The per-message path up to and after the send, without I/O, for `benches/hot_path.rs`.
/// Not an API: nothing outside this crate's benchmark uses it.
#[doc(hidden)]
pub mod hot_path {
    pub use crate::circuit::Health;
    pub use crate::conversion::Conversion;
    pub use crate::decide::At;
    pub use crate::dedup::Dedup;
    pub use crate::guards::Guards;
    pub use crate::limits::{Attempt, Limiter};
    pub use crate::routes::Routes;
}
