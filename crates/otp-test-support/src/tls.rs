//! A Kafka that speaks only TLS, with its own certificate authority: what every managed Kafka
//! looks like to our clients.
//!
//! tansu 0.6 takes `--cert` and `--key` but does not use them (its listener stays plaintext),
//! so the TLS is terminated by a proxy in this process: tansu listens on a private loopback
//! port and advertises the proxy's address, so that every connection a client opens (the
//! bootstrap, then the partition leaders and the group coordinator named in metadata) goes
//! through TLS. The proxy refuses anything that is not a TLS handshake for its certificate,
//! which only the CA written beside it ([`TlsKafka::ca_location`]) verifies.

use crate::broker::{free_port, Storage, TansuBroker};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// A tansu broker reachable only through TLS on [`TlsKafka::bootstrap`]; stopped on drop.
pub struct TlsKafka {
    broker: TansuBroker,
    port: u16,
    dir: tempfile::TempDir,
    /// Ends the proxy's thread (its connections with it).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsKafka {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the test CA");
        let server = write_certificates(dir.path());
        let port = free_port();
        let public = format!("127.0.0.1:{port}");
        let broker = TansuBroker::start_behind(Storage::Sqlite, &public);
        let upstream: SocketAddr = broker.bootstrap().parse().expect("tansu's address");
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the TLS proxy's port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        // Its own thread and runtime: tests of any flavour (or none) can hold one.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = Arc::new(server);
        std::thread::Builder::new()
            .name("tls-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the TLS proxy's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("the TLS proxy's listener");
                    tokio::select! {
                        () = serve(listener, config, upstream) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("the TLS proxy's thread");
        Self {
            broker,
            port,
            dir,
            stop: Some(stop),
        }
    }

    /// The only address clients are given: TLS.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that signed the proxy's certificate.
    pub fn ca_location(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The librdkafka settings a client needs here, as an operator passes them
    /// (`--kafka-opt NAME=VALUE`).
    pub fn client_opts(&self) -> Vec<(String, String)> {
        [
            ("security.protocol", "SSL".to_string()),
            ("ssl.ca.location", self.ca_location().display().to_string()),
            // librdkafka's default since 2.0 (the broker's name is checked against the
            // certificate); stated so that the test fails if it were turned off.
            ("ssl.endpoint.identification.algorithm", "https".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The broker's own log, for a failing test to show.
    pub fn log_tail(&self, bytes: usize) -> String {
        self.broker.log_tail(bytes)
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A CA, and a certificate it signed for `localhost` and `127.0.0.1`; writes `ca.pem` and
/// returns the proxy's server config.
fn write_certificates(dir: &Path) -> rustls::ServerConfig {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "otp-pipeline test CA");
    let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let key = KeyPair::generate().expect("a server key");
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("the server certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("the proxy's TLS config")
}

/// Accept TLS, then copy both ways between the client and tansu until either side closes.
async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client that does not finish its handshake in time is dropped.
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(client));
            let Ok(Ok(mut tls)) = handshake.await else {
                return;
            };
            let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = broker.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
        });
    }
}
