//! The workers of a load run, each its own process (`otp worker <channel>`, the binaries'
//! code), so that their CPU time and memory are their own and can be read from /proc.

use anyhow::{bail, Context};
use otp_events::Channel;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// What every worker of the run is given.
pub struct FleetSpec<'a> {
    pub brokers: &'a str,
    pub topic_prefix: &'a str,
    pub sim_url: &'a str,
    pub log_filter: &'a str,
    /// The worker's TOML settings, the same for every channel but `[limits]`.
    pub config_toml: &'a dyn Fn(Channel) -> String,
    /// Where configs and the workers' logs go.
    pub dir: &'a Path,
    /// The run's phone hash key, which the workers must share with the publisher.
    pub hash_key: &'a str,
    /// The run's sealing keys, likewise.
    pub seal_keys: &'a str,
    /// The run's fallback-proof key, shared by its workers.
    pub fallback_key: &'a str,
}

pub struct WorkerProcess {
    pub channel: Channel,
    child: Child,
    pid: u32,
    metrics: SocketAddr,
    pub log: PathBuf,
}

/// CPU and memory of one worker process, read from /proc.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Resident set now, and its peak over the process's life (VmHWM).
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl WorkerProcess {
    pub async fn start(spec: &FleetSpec<'_>, channel: Channel) -> anyhow::Result<Self> {
        let config = spec.dir.join(format!("{channel}-worker.toml"));
        std::fs::write(&config, (spec.config_toml)(channel))?;
        let log = spec.dir.join(format!("{channel}-worker.log"));
        let metrics = free_port()?;
        let exe = std::env::current_exe().context("locate the otp executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg(channel.as_str())
            .args(["--brokers", spec.brokers])
            .args(["--topic-prefix", spec.topic_prefix])
            .arg("--config")
            .arg(&config)
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--api-base-url", spec.sim_url])
            .env("RUST_LOG", spec.log_filter)
            .env("OTP_PHONE_HASH_KEY", spec.hash_key)
            .env("OTP_SEAL_KEYS", spec.seal_keys)
            .env("OTP_FALLBACK_KEY", spec.fallback_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        match channel {
            Channel::Whatsapp => cmd
                .args(["--phone-number-id", "1055500000"])
                .env("OTP_WHATSAPP_TOKEN", "sim-token"),
            Channel::Sms => cmd
                .args(["--account-sid", "ACsim", "--from", "+15557654321"])
                .env("OTP_SMS_AUTH_TOKEN", "sim-auth-token"),
        };
        let child = cmd.spawn().context("start a worker process")?;
        let pid = child.id().context("the worker exited at once")?;
        Ok(Self {
            channel,
            child,
            pid,
            metrics,
            log,
        })
    }

    /// One value of the worker's `/metrics` (summed over label sets), None until it serves.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.metrics);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                .filter(|l| matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces) start at field 3.
        let after = &stat[stat.rfind(')').context("malformed /proc stat")? + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = |key: &str| -> u64 {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        Ok(Usage {
            cpu_seconds: ticks / hz,
            rss_bytes: kb("VmRSS:") * 1024,
            peak_rss_bytes: kb("VmHWM:") * 1024,
        })
    }

    /// SIGTERM, then wait for a clean exit (drain, commit, leave the group).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the worker did not stop within 60 s of SIGTERM")??;
        if !status.success() {
            bail!(
                "the {} worker exited with {status}; see {}",
                self.channel,
                self.log.display()
            );
        }
        Ok(())
    }
}

/// Wait until the workers of each channel together own all `partitions` of its topic, so
/// measuring does not include joining the group.
pub async fn wait_assigned(
    workers: &mut [WorkerProcess],
    partitions: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for channel in [Channel::Whatsapp, Channel::Sms] {
            let mut owned = 0.0;
            let mut present = false;
            for w in workers.iter().filter(|w| w.channel == channel) {
                present = true;
                owned += w.metric("otp_assigned_partitions").await.unwrap_or(0.0);
            }
            all &= !present || owned as i32 == partitions;
        }
        if all {
            return Ok(());
        }
        for w in workers.iter_mut() {
            if let Some(status) = w.child.try_wait()? {
                bail!(
                    "the {} worker exited with {status}; see {}",
                    w.channel,
                    w.log.display()
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the workers did not own every partition within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
