//! A cluster on loopback for tests: etcd members (Debian's `etcd-server`) and lockd nodes
//! on ports picked free, data in a temporary directory, everything killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{free_port, LockdProcess};

/// Whether etcd is installed; tests that need it say why they skip otherwise.
pub fn etcd_available() -> bool {
    let found = Command::new("etcd").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server etcd-client)");
    }
    found
}

pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    child: Option<Child>,
}

pub struct Etcd {
    pub members: Vec<EtcdMember>,
    dir: PathBuf,
    initial_cluster: String,
    /// Clients speak TLS and must show a certificate (files in `dir`, see `make_pki`).
    tls: bool,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster takes writes.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, false)
    }

    /// One member that speaks only TLS to clients and requires their certificates.
    pub fn start_tls() -> Self {
        Self::start_with(1, true)
    }

    fn start_with(n: usize, tls: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("pklock-etcd-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        if tls {
            make_pki(&dir);
        }
        let scheme = if tls { "https" } else { "http" };
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("e{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let initial_cluster = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut etcd = Etcd { members, dir, initial_cluster, tls };
        for i in 0..n {
            etcd.start_member(i);
        }
        etcd.wait_writable();
        etcd
    }

    /// (Re)starts member `i` with its data directory as it was.
    pub fn start_member(&mut self, i: usize) {
        let data = self.dir.join(&self.members[i].name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.members[i].name))).unwrap();
        let tls_args = self.tls_args(&["--cert-file", "--key-file", "--trusted-ca-file"], &["server.crt", "server.key", "ca.crt"]);
        let m = &mut self.members[i];
        let child = Command::new("etcd")
            .args(&tls_args)
            .args(if self.tls { &["--client-cert-auth"][..] } else { &[] })
            .args(["--name", &m.name, "--data-dir", data.to_str().unwrap()])
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            // Slow enough that two busy cores do not cause elections.
            .args(["--heartbeat-interval", "200", "--election-timeout", "2000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        m.child = Some(child);
    }

    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `etcd://...` for lockd's --cluster.
    pub fn url(&self) -> String {
        let hosts: Vec<&str> = self.members.iter().map(|m| m.client_url.split("://").nth(1).unwrap()).collect();
        format!("etcd://{}", hosts.join(","))
    }

    fn endpoints(&self) -> String {
        self.members.iter().filter(|m| m.child.is_some()).map(|m| m.client_url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Runs etcdctl against the live members; its output, or None if it failed.
    pub fn etcdctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints(), "--command-timeout", "3s"])
            .args(self.tls_args(&["--cacert", "--cert", "--key"], &["ca.crt", "client.crt", "client.key"]))
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn wait_writable(&self) {
        let start = Instant::now();
        while self.etcdctl(&["put", "/pklock-test/ready", "1"]).is_none() {
            assert!(start.elapsed() < Duration::from_secs(60), "etcd did not start taking writes");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `flags[i] = dir/files[i]` when the cluster speaks TLS; nothing otherwise.
    fn tls_args(&self, flags: &[&str], files: &[&str]) -> Vec<String> {
        if !self.tls {
            return Vec::new();
        }
        flags.iter().zip(files).flat_map(|(flag, file)| [flag.to_string(), self.file(file)]).collect()
    }

    /// A file of the cluster's directory (certificates: ca.crt, client.crt, client.key).
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// The index of the current leader.
    pub fn leader(&self) -> usize {
        let start = Instant::now();
        loop {
            if let Some(text) = self.etcdctl(&["endpoint", "status", "-w", "json"]) {
                let statuses: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                for status in statuses.as_array().into_iter().flatten() {
                    let id = &status["Status"]["header"]["member_id"];
                    if *id == status["Status"]["leader"] {
                        let endpoint = status["Endpoint"].as_str().unwrap_or_default();
                        return self.members.iter().position(|m| m.client_url == endpoint).expect("a member");
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no etcd leader");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as PEM
/// files in `dir`.
fn make_pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    for (name, names) in [("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()]), ("client", vec!["lockd".to_owned()])] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// A lockd node of the cluster at `etcd`, under `prefix`.
pub fn node(etcd: &Etcd, prefix: &str, ttl_seconds: u64) -> LockdProcess {
    node_on(free_port(), etcd, prefix, ttl_seconds)
}

pub fn node_on(port: u16, etcd: &Etcd, prefix: &str, ttl_seconds: u64) -> LockdProcess {
    node_with(port, etcd, prefix, ttl_seconds, &[])
}

/// A node with more options (e.g. `--snapshot-every`).
pub fn node_with(port: u16, etcd: &Etcd, prefix: &str, ttl_seconds: u64, more: &[&str]) -> LockdProcess {
    node_via(port, &etcd.url(), prefix, ttl_seconds, more)
}

/// A node that reaches etcd at `url` (e.g. through a [`FreezableProxy`]).
pub fn node_via(port: u16, url: &str, prefix: &str, ttl_seconds: u64, more: &[&str]) -> LockdProcess {
    let (ttl, url) = (ttl_seconds.to_string(), url.to_owned());
    let mut args = vec!["--cluster", &url, "--cluster-prefix", prefix, "--session-ttl", &ttl];
    args.extend_from_slice(more);
    LockdProcess::spawn_on(port, &args)
}

/// Starts a node that must refuse to join the cluster: how it exited and what it wrote.
/// Bounded: a node that joins instead is stopped after 20 s (`timeout`'s status 124).
pub fn node_refusal(etcd: &Etcd, prefix: &str, more: &[&str]) -> (std::process::ExitStatus, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let out = Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_lockd"), "--listen", &listen, "--cluster", &etcd.url(), "--cluster-prefix", prefix])
        .args(more)
        .stdin(Stdio::null())
        .output()
        .expect("run lockd under timeout");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A prefix of its own for each test, so tests can share an etcd.
pub fn prefix(test: &str) -> String {
    format!("/pklock-test/{test}-{}", free_port())
}

/// A TCP proxy that can be frozen: while frozen it forwards nothing either way (and new
/// connections wait), as a network partition between a node and etcd would.
pub struct FreezableProxy {
    pub addr: std::net::SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableProxy {
    pub fn to(upstream: &str) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let upstream = upstream.split("://").last().unwrap().to_owned();
        let flag = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            while flag.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    while flag.load(Ordering::Relaxed) {
                                        std::thread::sleep(Duration::from_millis(10));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        FreezableProxy { addr, frozen }
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TCP proxy whose answers are late: what the client sends goes on at once, what the
/// server sends back reaches the client `delay` later (in order), as with an etcd that
/// takes that long to answer. etcd acts on each request when it gets it.
pub struct SlowProxy {
    pub addr: std::net::SocketAddr,
}

impl SlowProxy {
    pub fn to(upstream: &str, delay: Duration) -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpStream};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = upstream.split("://").last().unwrap().to_owned();
        // Copies `from` to `to` until either end closes; `late` holds each chunk back.
        fn pipe(mut from: TcpStream, to: TcpStream, late: Option<Duration>) {
            let (chunks, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
            let mut writer = to.try_clone().unwrap();
            let delivery = std::thread::spawn(move || {
                for (at, chunk) in due {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    if writer.write_all(&chunk).is_err() {
                        break;
                    }
                }
            });
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if chunks.send((Instant::now() + late.unwrap_or_default(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            drop(chunks);
            let _ = delivery.join();
            let _ = to.shutdown(Shutdown::Both);
        }
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c, s, None));
                std::thread::spawn(move || pipe(server, client, Some(delay)));
            }
        });
        SlowProxy { addr }
    }
}
