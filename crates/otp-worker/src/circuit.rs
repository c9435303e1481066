//! A circuit breaker per channel: a broken channel (expired token, locked account, failed
//! authentication) must not turn into thousands of failed sends.
//!
//! After `failures_to_open` consecutive channel-broken answers the circuit opens: for
//! `cool_down` nothing is sent and every request falls back at once. Then one probe is let
//! through (half-open): success closes the circuit, another channel-broken answer opens it
//! again. A probe whose answer never comes back (its task was abandoned on a revoke, or it
//! panicked) stops holding the circuit after `probe_timeout`: the next request probes. State
//! A provider can also accept every send and fail them all later (a locked account, a
//! sender flagged for spam): those failures arrive as channel signals from the receipts
//! ingress ([`Circuit::signal`]). Accepted sends would reset a consecutive count between
//! them, so signals are counted on their own: `failures_to_open` of them within
//! `signal_window` open the circuit whatever the API answered meanwhile. State
//! changes are logged once at error level, exported as the gauge
//! `otp_channel_circuit_state` (0 closed, 1 half-open, 2 open) and counted.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive channel-broken answers that open the circuit.
    #[serde(default = "default_failures_to_open")]
    pub failures_to_open: u32,
    /// How long an open circuit sends nothing before one probe.
    #[serde(default = "default_cool_down", with = "humantime_serde")]
    pub cool_down: Duration,
    /// How long a probe may go unanswered before another request may probe; keep it above the
    /// provider client's request timeout.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Channel-broken signals (failed receipts, the provider's system errors) open the circuit
    /// when `failures_to_open` of them arrive within this window.
    #[serde(default = "default_signal_window", with = "humantime_serde")]
    pub signal_window: Duration,
}

fn default_failures_to_open() -> u32 {
    5
}
fn default_cool_down() -> Duration {
    Duration::from_secs(30)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_signal_window() -> Duration {
    Duration::from_secs(60)
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failures_to_open: default_failures_to_open(),
            cool_down: default_cool_down(),
            probe_timeout: default_probe_timeout(),
            signal_window: default_signal_window(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        consecutive: u32,
    },
    Open {
        until: Instant,
    },
    /// `probing`: since when a probe is out, if one is.
    HalfOpen {
        probing: Option<Instant>,
    },
}

/// May this send go to the provider?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Send,
    /// The circuit is open: fall back without sending.
    Refuse,
}

/// How a send went, as far as the circuit cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Healthy,
    ChannelBroken,
    /// Transient trouble, or a recipient's refusal: says nothing about the channel's
    /// configuration, so it neither counts nor forgives a channel failure.
    Unknown,
}

pub struct Circuit {
    channel: &'static str,
    config: CircuitConfig,
    state: Mutex<State>,
    /// When the recent channel-broken signals came, at most `failures_to_open` of them.
    signals: Mutex<VecDeque<Instant>>,
}

impl Circuit {
    pub fn new(channel: &'static str, config: CircuitConfig) -> Self {
        metrics::gauge!("otp_channel_circuit_state", "channel" => channel).set(0.0);
        // Every series from the start, so dashboards and `increase()` alerts see zero, not
        // nothing, until the first change.
        for to in ["open", "half_open", "closed"] {
            metrics::counter!("otp_channel_circuit_transitions_total", "channel" => channel, "to" => to)
                .absolute(0);
        }
        Self {
            channel,
            config,
            state: Mutex::new(State::Closed { consecutive: 0 }),
            signals: Mutex::new(VecDeque::new()),
        }
    }

    pub fn admit(&self) -> Admission {
        let mut state = self.state.lock().expect("circuit lock");
        match *state {
            State::Closed { .. } => Admission::Send,
            State::Open { until } if Instant::now() < until => Admission::Refuse,
            State::Open { .. } => {
                let probing = Some(Instant::now());
                self.transition(&mut state, State::HalfOpen { probing });
                Admission::Send
            }
            State::HalfOpen {
                probing: Some(since),
            } if since.elapsed() < self.config.probe_timeout => Admission::Refuse,
            State::HalfOpen { .. } => {
                *state = State::HalfOpen {
                    probing: Some(Instant::now()),
                };
                Admission::Send
            }
        }
    }

    pub fn record(&self, verdict: Verdict) {
        let mut state = self.state.lock().expect("circuit lock");
        let next = match (*state, verdict) {
            (State::Closed { .. }, Verdict::Healthy) => State::Closed { consecutive: 0 },
            (State::Closed { consecutive }, Verdict::ChannelBroken) => {
                if consecutive + 1 >= self.config.failures_to_open {
                    State::Open {
                        until: Instant::now() + self.config.cool_down,
                    }
                } else {
                    State::Closed {
                        consecutive: consecutive + 1,
                    }
                }
            }
            (State::HalfOpen { .. }, Verdict::Healthy) => State::Closed { consecutive: 0 },
            (State::HalfOpen { .. }, Verdict::ChannelBroken) => State::Open {
                until: Instant::now() + self.config.cool_down,
            },
            // The probe learned nothing: let the next request probe.
            (State::HalfOpen { .. }, Verdict::Unknown) => State::HalfOpen { probing: None },
            (current, _) => current,
        };
        self.transition(&mut state, next);
    }

    /// The provider said, outside a send's answer, that the channel is broken.
    pub fn signal(&self) {
        let now = Instant::now();
        let enough = {
            let mut recent = self.signals.lock().expect("circuit signals lock");
            recent.retain(|at| now.duration_since(*at) < self.config.signal_window);
            recent.push_back(now);
            while recent.len() > self.config.failures_to_open as usize {
                recent.pop_front();
            }
            recent.len() >= self.config.failures_to_open as usize
        };
        if !enough {
            return;
        }
        let mut state = self.state.lock().expect("circuit lock");
        if !matches!(*state, State::Open { .. }) {
            self.signals.lock().expect("circuit signals lock").clear();
            let open = State::Open {
                until: now + self.config.cool_down,
            };
            self.transition(&mut state, open);
        }
    }

    fn transition(&self, state: &mut State, next: State) {
        let name = |s: &State| match s {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        };
        let (from, to) = (name(state), name(&next));
        *state = next;
        if from == to {
            return;
        }
        tracing::error!(
            channel = self.channel,
            from,
            to,
            "channel circuit changed state"
        );
        let gauge = match to {
            "closed" => 0.0,
            "half_open" => 1.0,
            _ => 2.0,
        };
        metrics::gauge!("otp_channel_circuit_state", "channel" => self.channel).set(gauge);
        metrics::counter!("otp_channel_circuit_transitions_total", "channel" => self.channel, "to" => to)
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_k_broken_answers_then_probes_once_and_closes() {
        let c = Circuit::new(
            "t",
            CircuitConfig {
                failures_to_open: 3,
                cool_down: Duration::from_millis(50),
                probe_timeout: Duration::from_secs(30),
                signal_window: Duration::from_secs(60),
            },
        );
        for _ in 0..2 {
            assert_eq!(c.admit(), Admission::Send);
            c.record(Verdict::ChannelBroken);
        }
        c.record(Verdict::Healthy);
        for _ in 0..3 {
            assert_eq!(c.admit(), Admission::Send, "a success reset the count");
            c.record(Verdict::ChannelBroken);
        }
        assert_eq!(c.admit(), Admission::Refuse, "open");
        std::thread::sleep(Duration::from_millis(60)); // the cool-down is the behaviour under test
        assert_eq!(c.admit(), Admission::Send, "the probe");
        assert_eq!(c.admit(), Admission::Refuse, "one probe at a time");
        c.record(Verdict::Healthy);
        assert_eq!(c.admit(), Admission::Send, "closed again");
    }

    #[test]
    fn channel_broken_signals_open_it_whatever_the_api_answered_between() {
        let c = Circuit::new(
            "t",
            CircuitConfig {
                failures_to_open: 3,
                signal_window: Duration::from_secs(60),
                ..CircuitConfig::default()
            },
        );
        for _ in 0..2 {
            c.record(Verdict::Healthy); // the API accepts the send ...
            c.signal(); // ... and its receipt says the account is locked
            assert_eq!(c.admit(), Admission::Send);
        }
        c.record(Verdict::Healthy);
        c.signal();
        assert_eq!(c.admit(), Admission::Refuse, "three signals in the window");
    }

    #[test]
    fn signals_older_than_the_window_do_not_count() {
        let c = Circuit::new(
            "t",
            CircuitConfig {
                failures_to_open: 2,
                signal_window: Duration::from_millis(20),
                ..CircuitConfig::default()
            },
        );
        c.signal();
        std::thread::sleep(Duration::from_millis(25)); // the window is the behaviour under test
        c.signal();
        assert_eq!(c.admit(), Admission::Send, "one signal in the window");
        c.signal();
        assert_eq!(c.admit(), Admission::Refuse);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let c = Circuit::new(
            "t",
            CircuitConfig {
                failures_to_open: 1,
                cool_down: Duration::from_millis(10),
                probe_timeout: Duration::from_secs(30),
                signal_window: Duration::from_secs(60),
            },
        );
        c.record(Verdict::ChannelBroken);
        assert_eq!(c.admit(), Admission::Refuse);
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(c.admit(), Admission::Send);
        c.record(Verdict::ChannelBroken);
        assert_eq!(c.admit(), Admission::Refuse);
    }

    #[test]
    fn a_probe_that_never_answers_stops_holding_the_circuit() {
        let c = Circuit::new(
            "t",
            CircuitConfig {
                failures_to_open: 1,
                cool_down: Duration::from_millis(10),
                probe_timeout: Duration::from_millis(30),
                signal_window: Duration::from_secs(60),
            },
        );
        c.record(Verdict::ChannelBroken);
        std::thread::sleep(Duration::from_millis(15)); // the cool-down is the behaviour under test
        assert_eq!(
            c.admit(),
            Admission::Send,
            "the probe, whose task is then aborted"
        );
        assert_eq!(c.admit(), Admission::Refuse, "its answer is awaited");
        std::thread::sleep(Duration::from_millis(35)); // the probe timeout, likewise
        assert_eq!(c.admit(), Admission::Send, "another request probes");
    }
}
