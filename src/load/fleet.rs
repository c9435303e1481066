//! The services of a load run, each its own process (`otp worker <channel>`, and with
//! receipts `otp receipts serve` and `otp receipts track`: the binaries' code), so that their
//! CPU time and memory are their own and can be read from /proc.

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
    /// The run's record keys (`OTP_RECORD_KEYS`), every role's, shared by its services.
    pub record_keys: &'a str,
}

/// What a process of the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker(Channel),
    /// The receipts ingress (`otp receipts serve`): the providers' webhooks.
    Ingress,
    /// The confirmation tracker (`otp receipts track`).
    Tracker,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Worker(channel) => write!(f, "{channel} worker"),
            Role::Ingress => f.write_str("receipts ingress"),
            Role::Tracker => f.write_str("tracker"),
        }
    }
}

pub struct ServiceProcess {
    pub role: Role,
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

impl ServiceProcess {
    /// A delivery worker; with `status_callback` (receipts on), the SMS worker asks for
    /// status callbacks there.
    pub fn worker(
        spec: &FleetSpec<'_>,
        channel: Channel,
        instance: u16,
        status_callback: Option<&str>,
    ) -> anyhow::Result<Self> {
        let config = spec.dir.join(format!("{channel}-worker.toml"));
        std::fs::write(&config, (spec.config_toml)(channel))?;
        let mut cmd = command(spec, &["worker", channel.as_str()])?;
        cmd.arg("--config")
            .arg(&config)
            .args(["--api-base-url", spec.sim_url])
            .env("OTP_FALLBACK_KEY", spec.fallback_key);
        match channel {
            Channel::Whatsapp => cmd
                .args(["--phone-number-id", "1055500000"])
                .env("OTP_WHATSAPP_TOKEN", "sim-token"),
            Channel::Sms => cmd
                .args(["--account-sid", "ACsim", "--from", "+15557654321"])
                .args(status_callback.map(|url| format!("--status-callback-url={url}")))
                .env("OTP_SMS_AUTH_TOKEN", "sim-auth-token"),
        };
        let log = match instance {
            1 => format!("{channel}-worker.log"),
            n => format!("{channel}-worker-{n}.log"),
        };
        Self::spawn(spec, cmd, Role::Worker(channel), &log)
    }

    /// The receipts ingress, listening on `listen` (its public URL too), with the
    /// simulator's webhook secrets.
    pub fn ingress(spec: &FleetSpec<'_>, listen: SocketAddr) -> anyhow::Result<Self> {
        let secrets = crate::stack::sim_webhook_secrets();
        let mut cmd = command(spec, &["receipts", "serve"])?;
        cmd.args(["--listen", &listen.to_string()])
            .args(["--public-url", &format!("http://{listen}")]);
        for (name, value) in [
            ("OTP_WHATSAPP_APP_SECRET", secrets.whatsapp_app_secret),
            ("OTP_WHATSAPP_VERIFY_TOKEN", secrets.whatsapp_verify_token),
            ("OTP_SMS_AUTH_TOKEN", secrets.sms_auth_token),
        ] {
            cmd.env(name, value.unwrap_or_default());
        }
        Self::spawn(spec, cmd, Role::Ingress, "receipts-ingress.log")
    }

    /// The confirmation tracker.
    pub fn tracker(spec: &FleetSpec<'_>) -> anyhow::Result<Self> {
        let mut cmd = command(spec, &["receipts", "track"])?;
        cmd.env("OTP_FALLBACK_KEY", spec.fallback_key);
        Self::spawn(spec, cmd, Role::Tracker, "tracker.log")
    }

    fn spawn(
        spec: &FleetSpec<'_>,
        mut cmd: Command,
        role: Role,
        log: &str,
    ) -> anyhow::Result<Self> {
        let log = spec.dir.join(log);
        let metrics = free_port()?;
        cmd.args(["--metrics-listen", &metrics.to_string()])
            .stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn().with_context(|| format!("start the {role}"))?;
        let pid = child
            .id()
            .with_context(|| format!("the {role} exited at once"))?;
        Ok(Self {
            role,
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
            .with_context(|| format!("the {} did not stop within 60 s of SIGTERM", self.role))??;
        if !status.success() {
            bail!(
                "the {} exited with {status}; see {}",
                self.role,
                self.log.display()
            );
        }
        Ok(())
    }

    /// Whether it is ready to measure: a group member owns its share of the partitions (and
    /// a tracker has read them back); the ingress answers its metrics.
    async fn ready(&self) -> Option<f64> {
        match self.role {
            Role::Worker(_) => self.metric("otp_assigned_partitions").await,
            Role::Tracker => {
                let catching_up = self.metric("otp_tracker_partitions_catching_up").await?;
                let owned = self.metric("otp_assigned_partitions").await?;
                (catching_up == 0.0).then_some(owned)
            }
            Role::Ingress => self.metric("otp_webhooks_total").await,
        }
    }
}

/// `otp <args>` (this very executable) as the run starts its services: its logs to a file,
/// its keys from the run.
fn command(spec: &FleetSpec<'_>, args: &[&str]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("locate the otp executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .args(["--brokers", spec.brokers])
        .args(["--topic-prefix", spec.topic_prefix])
        .env("RUST_LOG", spec.log_filter)
        .env("OTP_PHONE_HASH_KEY", spec.hash_key)
        .env("OTP_SEAL_KEYS", spec.seal_keys)
        .env("OTP_RECORD_KEYS", spec.record_keys)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Wait until the members of each group together own all `partitions` of its topic (and the
/// ingress serves), so measuring does not include joining the groups.
pub async fn wait_ready(
    services: &mut [ServiceProcess],
    partitions: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let groups = [
        Role::Worker(Channel::Whatsapp),
        Role::Worker(Channel::Sms),
        Role::Tracker,
        Role::Ingress,
    ];
    loop {
        let mut all = true;
        for role in groups {
            let mut owned = 0.0;
            let mut present = false;
            for s in services.iter().filter(|s| s.role == role) {
                present = true;
                match s.ready().await {
                    Some(n) => owned += n,
                    None => all = false,
                }
            }
            all &= !present || role == Role::Ingress || owned as i32 == partitions;
        }
        if all {
            return Ok(());
        }
        for s in services.iter_mut() {
            if let Some(status) = s.child.try_wait()? {
                bail!(
                    "the {} exited with {status}; see {}",
                    s.role,
                    s.log.display()
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the services were not ready (every partition owned) within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
