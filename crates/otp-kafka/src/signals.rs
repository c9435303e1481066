//! A listener on `otp.channel-signals`: what the providers said about a channel's health
//! outside a send's answer (see `otp_events::ChannelSignal`).
//!
//! Every worker reads every partition of the topic from its end ([`crate::broadcast`]): a
//! signal is news for the whole fleet, and a signal older than the worker's start describes a
//! past it did not see.

use crate::broadcast::{self, StartAt, Writers};
use crate::KafkaArgs;
use otp_events::{Channel, ChannelSignal, Role, CHANNEL_SIGNAL_SCHEMA};
use tokio::task::JoinHandle;

/// Start listening; `on_signal` gets each signal about `channel`. Abort the handle to stop.
pub fn listen(
    kafka: &KafkaArgs,
    channel: Channel,
    on_signal: impl Fn(&ChannelSignal) + Send + 'static,
) -> JoinHandle<()> {
    let topic = kafka.topics().channel_signals();
    let name = format!("otp-{channel}-signals");
    // From the tracker (a failed receipt of one of our sends), or the ingress (a provider's
    // system-level error).
    let writers = Writers {
        roles: &[Role::Tracker, Role::Ingress],
        label: "signals",
    };
    broadcast::listen(kafka, topic, &name, StartAt::End, writers, move |payload| {
        let signal = serde_json::from_slice::<ChannelSignal>(payload)
            .ok()
            .filter(|s| s.schema == CHANNEL_SIGNAL_SCHEMA);
        match signal {
            Some(s) if s.channel == channel => {
                metrics::counter!("otp_channel_signals_received_total", "channel" => channel.as_str(), "kind" => s.kind.as_str())
                    .increment(1);
                tracing::warn!(%channel, kind = s.kind.as_str(), code = %s.code, "the provider signalled trouble on the channel");
                on_signal(&s);
            }
            Some(_) => {}
            None => {
                metrics::counter!("otp_channel_signals_unreadable_total").increment(1);
            }
        }
    })
}
