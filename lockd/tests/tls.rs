//! TLS on the native listener (--tls-cert/--tls-key), against a CA made here with rcgen:
//! locking over TLS, grants written to a TLS waiter, refusal of plain and untrusting clients,
//! the handshake timeout, and the certificate errors that stop lockd from starting.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Client, TestServer, REPLY_TIMEOUT};
use lockd::tls::TlsSetupError;
use lockd::Config;
use pklock_proto::frame;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const HANDSHAKE_TIMEOUT: &str = "0.5";

/// A CA and a server certificate it signed for 127.0.0.1, as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).unwrap();

        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Named apart, so that a client trusting another one cannot even match the issuer.
        ca_params.distinguished_name.push(DnType::CommonName, dir.file_name().unwrap().to_str().unwrap());
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        std::fs::write(dir.join("server.crt"), server_cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        Pki { dir, ca: ca_cert.der().clone() }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    fn server(&self, extra: &[&str]) -> TestServer {
        let (cert, key) = (self.path("server.crt"), self.path("server.key"));
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key, "--tls-handshake-timeout", HANDSHAKE_TIMEOUT];
        args.extend_from_slice(extra);
        TestServer::with_args(&args)
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// A blocking pklock client over TLS.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    next_id: u64,
}

impl TlsClient {
    /// Connects and completes the handshake, or says why it failed.
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Self, std::io::Error> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut stream = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient { stream, next_id: 0 })
    }

    fn send(&mut self, command: &str, parameters: Value) -> u64 {
        self.next_id += 1;
        let request = json!({"id": self.next_id, "command": command, "parameters": parameters});
        frame::write_frame(&mut self.stream, &request).expect("write");
        self.stream.flush().unwrap();
        self.next_id
    }

    fn recv(&mut self) -> Value {
        let mut payload = Vec::new();
        frame::read_frame(&mut self.stream, usize::MAX, &mut payload).expect("a reply");
        serde_json::from_slice(&payload).expect("reply is JSON")
    }

    fn call(&mut self, command: &str, parameters: Value) -> Value {
        let id = self.send(command, parameters);
        let reply = self.recv();
        assert_eq!(reply["id"], json!(id), "reply matches request");
        assert!(reply.get("error").is_none(), "{command} failed: {reply}");
        reply["result"].clone()
    }
}

#[test]
fn a_tls_client_locks_and_unlocks() {
    let pki = Pki::new();
    let server = pki.server(&[]);
    let mut client = TlsClient::connect(server.addr, pki.client_config()).expect("handshake");
    let locked = client.call("lock", json!({"keys": "k", "owner": 1, "wait": 0}));
    assert_eq!(locked["granted"], json!(true), "{locked}");
    assert!(locked["token"].as_u64().is_some());
    let unlocked = client.call("unlock", json!({"keys": "k", "owner": 1}));
    assert_eq!(unlocked["released"], json!(["k"]), "{unlocked}");
}

#[test]
fn a_grant_reaches_a_waiting_tls_client() {
    let pki = Pki::new();
    let server = pki.server(&[]);
    let mut holder = TlsClient::connect(server.addr, pki.client_config()).unwrap();
    let mut waiter = TlsClient::connect(server.addr, pki.client_config()).unwrap();
    let held = holder.call("lock", json!({"keys": "k", "owner": 1, "wait": 0}));
    let waiting = waiter.send("lock", json!({"keys": "k", "owner": 2, "wait": 30}));
    // The wait is queued once the holder sees it in `locks`.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while holder.call("locks", json!({"prefix": "k"}))["keys"][0]["waiters"].as_array().is_none_or(Vec::is_empty) {
        assert!(Instant::now() < deadline, "the waiter never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    holder.call("unlock", json!({"keys": "k", "owner": 1}));
    let granted = waiter.recv();
    assert_eq!(granted["id"], json!(waiting));
    assert_eq!(granted["result"]["granted"], json!(true), "{granted}");
    assert!(granted["result"]["token"].as_u64() > held["token"].as_u64());
}

#[test]
fn a_tls_client_that_does_not_read_stops_being_read_and_others_carry_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let server = pki.server(&[]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(pki.client_config()).connect(name, tcp).await.unwrap();
        let (mut from_server, mut to_server) = tokio::io::split(tls);
        const BATCH: usize = 1000;
        let mut batch = Vec::new();
        for id in 0..BATCH {
            frame::encode_into(&mut batch, &json!({"id": id, "command": "ping"})).unwrap();
        }
        // Send pings, reading nothing, until the server stops taking them.
        let mut sent = 0;
        while let Ok(written) = tokio::time::timeout(Duration::from_millis(500), to_server.write_all(&batch)).await {
            written.unwrap();
            sent += BATCH;
            assert!(sent < 10_000_000, "the server never stopped reading");
        }
        let pki_config = pki.client_config();
        let addr = server.addr;
        let bystander = tokio::task::spawn_blocking(move || TlsClient::connect(addr, pki_config).unwrap().call("ping", json!({})));
        assert_eq!(bystander.await.unwrap()["pong"], json!(true), "others carry on");
        // Every reply comes through the bridge, whole and in order (while the client sends what
        // its TLS session still buffers).
        let replies = async {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            for expected in 0..sent {
                let end = loop {
                    if let Some(end) = frame::decode(&buf, usize::MAX).unwrap() {
                        break end;
                    }
                    let read = tokio::time::timeout(REPLY_TIMEOUT, from_server.read(&mut chunk)).await;
                    let n = read.unwrap_or_else(|_| panic!("reply {expected} of {sent} did not come")).unwrap();
                    assert!(n > 0, "closed after {expected} of {sent} replies");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let reply: Value = serde_json::from_slice(&buf[frame::HEADER_LEN..end]).unwrap();
                assert_eq!(reply["id"], json!(expected % BATCH), "{reply}");
                buf.drain(..end);
            }
        };
        let (flushed, ()) = tokio::join!(to_server.flush(), replies);
        flushed.unwrap();
    });
}

#[test]
fn a_plain_client_on_a_tls_listener_is_told_and_closed() {
    let pki = Pki::new();
    let server = pki.server(&[]);
    let mut plain = Client::connect(server.addr);
    plain.send("ping", json!({}));
    let reply = plain.recv();
    assert_eq!(reply["error"]["code"], json!("bad_request"), "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("speaks TLS only"), "{reply}");
    assert!(plain.is_closed_by_server());
}

#[test]
fn a_client_that_trusts_another_ca_fails_the_handshake() {
    let pki = Pki::new();
    let server = pki.server(&[]);
    let err = TlsClient::connect(server.addr, Pki::new().client_config()).err().expect("handshake refused");
    let cause = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(cause, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))),
        "{err}"
    );
    // The server carries on.
    let mut good = TlsClient::connect(server.addr, pki.client_config()).unwrap();
    assert_eq!(good.call("ping", json!({}))["pong"], json!(true));
}

#[test]
fn a_handshake_that_never_completes_is_closed_and_frees_its_slot() {
    let pki = Pki::new();
    let server = pki.server(&["--max-clients", "2"]);
    // One client sends nothing, the other the start of a ClientHello.
    let silent = TcpStream::connect(server.addr).unwrap();
    let mut partial = TcpStream::connect(server.addr).unwrap();
    partial.write_all(&[0x16, 0x03, 0x01]).unwrap();
    for mut stalled in [silent, partial] {
        let started = Instant::now();
        stalled.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match stalled.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // a TLS alert may come first
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("not closed within {REPLY_TIMEOUT:?}: {e}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    }
    // Both slots are free again.
    let mut clients: Vec<TlsClient> =
        (0..2).map(|_| TlsClient::connect(server.addr, pki.client_config()).expect("a free slot")).collect();
    for client in &mut clients {
        assert_eq!(client.call("ping", json!({}))["pong"], json!(true));
    }
}

#[test]
fn a_tls_client_over_the_client_limit_is_closed_without_a_plain_frame() {
    let pki = Pki::new();
    let server = pki.server(&["--max-clients", "1"]);
    let mut first = TlsClient::connect(server.addr, pki.client_config()).unwrap();
    assert_eq!(first.call("ping", json!({}))["pong"], json!(true));
    let err = TlsClient::connect(server.addr, pki.client_config()).err().expect("over the limit");
    // Closed with the ClientHello unread, so usually reset; a plain frame would be InvalidData.
    assert!(matches!(err.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset), "closed, not answered in plain text: {err}");
}

#[test]
fn certificate_problems_stop_the_server_with_a_clear_error() {
    let pki = Pki::new();
    let other = Pki::new();
    let missing = pki.path("missing.pem");
    let (cert, key, other_key) = (pki.path("server.crt"), pki.path("server.key"), other.path("server.key"));
    let setup = |cert: &str, key: &str| {
        Config::parse_from(["lockd", "--tls-cert", cert, "--tls-key", key]).tls.acceptor().err().expect("refused")
    };

    let err = setup(&missing, &key);
    assert!(matches!(err, TlsSetupError::Read { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!("cannot read --tls-cert {missing}")), "{err}");
    let err = setup(&key, &key);
    assert!(matches!(err, TlsSetupError::NoCertificate(_)), "{err}");
    let err = setup(&cert, &cert);
    assert!(matches!(err, TlsSetupError::NoKey(_)), "{err}");
    let err = setup(&cert, &other_key);
    assert!(matches!(err, TlsSetupError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("is not the private key of the certificate"), "{err}");

    assert!(Config::try_parse_from(["lockd", "--tls-cert", &cert]).is_err(), "--tls-cert needs --tls-key");
    assert!(Config::parse_from(["lockd"]).tls.acceptor().unwrap().is_none(), "plain TCP by default");
}

#[test]
fn sighup_puts_a_renewed_certificate_on_new_connections_and_keeps_open_ones() {
    let (old, renewed) = (Pki::new(), Pki::new());
    let log = old.dir.join("lockd.log");
    let (cert, key) = (old.path("server.crt"), old.path("server.key"));
    let mut lockd = common::process::LockdProcess::spawn_logging_to(std::fs::File::create(&log).unwrap(), "info", &["--tls-cert", &cert, "--tls-key", &key]);
    let mut before = TlsClient::connect(lockd.addr, old.client_config()).expect("handshake with the old certificate");
    assert_eq!(before.call("lock", json!({"keys": "k", "owner": 1, "wait": 0}))["granted"], json!(true));

    std::fs::copy(renewed.path("server.crt"), &cert).unwrap();
    std::fs::copy(renewed.path("server.key"), &key).unwrap();
    assert!(std::process::Command::new("kill").args(["-HUP", &lockd.child.id().to_string()]).status().unwrap().success());
    let start = Instant::now();
    let reloaded = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("SIGHUP: settings reloaded")) {
            break line.to_owned();
        }
        assert!(lockd.child.try_wait().unwrap().is_none(), "lockd died of SIGHUP:\n{text}");
        assert!(start.elapsed() < Duration::from_secs(10), "no reload line:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(reloaded.contains("TLS certificate and key"), "{reloaded}");

    TlsClient::connect(lockd.addr, renewed.client_config()).expect("new connections get the renewed certificate");
    assert!(TlsClient::connect(lockd.addr, old.client_config()).is_err(), "and no longer the old one");
    let locks = before.call("locks", json!({}));
    assert_eq!(locks["keys"][0]["key"], json!("k"), "the open connection keeps its lock: {locks}");
    assert!(lockd.stop_with("TERM").success());
}
