//! Starting and stopping a tansu broker process.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "tansu (a Kafka-compatible broker) is needed by the integration tests. \
Install it with `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql` \
(about 10 minutes, once per machine), or run `scripts/test`, which installs it when missing. \
Set TANSU_BIN to use a binary elsewhere.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// SQLite in a temporary directory: survives a broker restart.
    Sqlite,
    /// In memory: fastest, lost on restart.
    Memory,
}

/// A running tansu broker; killed on drop.
pub struct TansuBroker {
    child: Mutex<Option<Child>>,
    port: u16,
    storage: Storage,
    dir: tempfile::TempDir,
    /// The address put in metadata, when clients reach the broker through something else
    /// (a TLS proxy); its own listener otherwise.
    advertised: Option<String>,
}

/// One broker per test binary, started on first use.
pub fn shared_broker() -> &'static TansuBroker {
    static BROKER: OnceLock<TansuBroker> = OnceLock::new();
    BROKER.get_or_init(|| TansuBroker::start(Storage::Sqlite))
}

impl TansuBroker {
    pub fn start(storage: Storage) -> Self {
        Self::start_advertising(storage, None)
    }

    /// A broker that tells clients to connect to `public` (host:port) instead of its own
    /// listener: the address of a proxy in front of it.
    pub fn start_behind(storage: Storage, public: &str) -> Self {
        Self::start_advertising(storage, Some(public.to_string()))
    }

    fn start_advertising(storage: Storage, advertised: Option<String>) -> Self {
        // The SQLite store goes on tmpfs when there is one: right after a build the disk is
        // busy writing back, and SQLite's fsyncs then stall the broker for seconds.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir for tansu");
        let port = free_port();
        let broker = Self {
            child: Mutex::new(None),
            port,
            storage,
            dir,
            advertised,
        };
        broker.launch();
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Kill the broker process (SIGKILL), as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and store.
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }

    /// The end of the broker's log, for a failing test to show.
    pub fn log_tail(&self, bytes: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log[log.len().saturating_sub(bytes)..].to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn launch(&self) {
        let bin = tansu_binary();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self
            .advertised
            .as_ref()
            .map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let storage = match self.storage {
            // tansu reads the part after `sqlite://` as relative unless it starts with `//`.
            Storage::Sqlite => format!("sqlite:///{}/tansu.db", self.dir.path().display()),
            Storage::Memory => "memory://tansu/".to_string(),
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("tansu log file");
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            .arg("--storage-engine")
            .arg(&storage)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_kept(cmd).expect("spawn tansu");
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    /// Ready = it answers a metadata request on its own listener.
    fn wait_ready(&self, within: Duration) {
        let client = || -> BaseConsumer {
            ClientConfig::new()
                .set("bootstrap.servers", self.bootstrap())
                .set("log_level", "0")
                .create()
                .expect("metadata client")
        };
        let consumer = client();
        let deadline = Instant::now() + within;
        loop {
            // Behind a proxy the broker advertises an address that is not up yet, and
            // librdkafka, having heard of it, can drop the bootstrap connection before its
            // own metadata request is answered: ask in Kafka's protocol directly instead.
            let answered = match &self.advertised {
                Some(_) => answers_metadata(&self.bootstrap(), Duration::from_secs(2)),
                None => consumer
                    .fetch_metadata(None, Duration::from_millis(500))
                    .is_ok(),
            };
            if answered {
                return;
            }
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "tansu exited with {status} before answering; its log:\n{}",
                    tail(&self.log_path())
                );
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer a metadata request within {within:?}; its log:\n{}",
                tail(&self.log_path())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the broker at `addr` answers a Metadata request (v0, all topics) within
/// `within`, asked over a plain TCP connection in Kafka's wire format.
fn answers_metadata(addr: &str, within: Duration) -> bool {
    use std::io::Write;
    const CORRELATION: i32 = 7;
    let ask = || -> std::io::Result<bool> {
        let socket: std::net::SocketAddr = addr.parse().expect("a socket address");
        let mut stream = std::net::TcpStream::connect_timeout(&socket, within)?;
        stream.set_read_timeout(Some(within))?;
        stream.set_write_timeout(Some(within))?;
        let client_id = b"ready";
        let mut request = Vec::new();
        request.extend_from_slice(&3i16.to_be_bytes()); // Metadata
        request.extend_from_slice(&0i16.to_be_bytes()); // v0
        request.extend_from_slice(&CORRELATION.to_be_bytes());
        request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
        request.extend_from_slice(client_id);
        request.extend_from_slice(&0i32.to_be_bytes()); // no topics named: all of them
        let mut framed = (request.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&request);
        stream.write_all(&framed)?;
        let mut size = [0u8; 4];
        stream.read_exact(&mut size)?;
        let size = i32::from_be_bytes(size);
        if !(4..=16 << 20).contains(&size) {
            return Ok(false);
        }
        let mut response = vec![0u8; size as usize];
        stream.read_exact(&mut response)?;
        Ok(response[..4] == CORRELATION.to_be_bytes())
    };
    ask().unwrap_or(false)
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tansu_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|h| h.join("bin/tansu"));
    on_path
        .into_iter()
        .chain(cargo_home)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn tail(path: &Path) -> String {
    let mut s = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawn `cmd` so that it dies with the test process, however that ends (a panic, an abort, a
/// SIGKILL from outside, where no `Drop` runs): from a thread that lives as long as the
/// process, since the child is killed when its parent *thread* ends (PR_SET_PDEATHSIG is per
/// thread), and spawning from a short-lived test thread would kill a shared broker after the
/// first test. Every process a test starts goes through here.
pub fn spawn_kept(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("tansu-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop never ends before the process.
            })
            .expect("keeper thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap()
        .send((cmd, reply_tx))
        .expect("keeper alive");
    reply_rx.recv().expect("keeper replies")
}
