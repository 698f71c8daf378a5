//! Vanished host: a client in a network namespace of its own takes a lock, then its host
//! "vanishes": its end of the veth link goes down, so nothing it sends or is sent arrives,
//! and no FIN or RST ever tells lockd. lockd must find the dead connection through TCP
//! keepalive / TCP_USER_TIMEOUT and release the lock within the bound its flags set, both
//! when the connection was idle and when lockd had unacknowledged data in flight to it.
//!
//! lockd and both clients live in two namespaces the test creates (lockd's, reached by
//! the second client over loopback, and the vanishing client's), so the host's own network
//! is never touched. Needs root and iproute2 (`ip`, `ss`); elsewhere each test prints why
//! it skips and passes.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::netns::{self, in_netns, ip};
use common::Client;
use serde_json::json;

/// Short keepalive settings, so the test takes seconds: keepalive declares an idle peer dead
/// after idle + interval x count = 1 + 1 x 2 s, and TCP_USER_TIMEOUT one that leaves data
/// unacknowledged for 3 s (it also caps the keepalive probing at 3 s).
const KEEPALIVE_FLAGS: [&str; 8] = ["--keepalive-idle", "1", "--keepalive-interval", "1", "--keepalive-count", "2", "--user-timeout", "3"];
const BOUND: Duration = Duration::from_secs(3);
/// Beyond the bound: the retransmission timer's ticks, a busy test machine.
const SLACK: Duration = Duration::from_secs(2);
/// Before this, the release cannot have come from keepalive (no probe was even sent): the
/// test would be measuring something else, such as a reset the link change caused.
const NOT_BEFORE: Duration = Duration::from_millis(900);

const SERVER_IP: &str = "10.213.47.1";
const CLIENT_IP: &str = "10.213.47.2";
const PORT: u16 = 11300;

/// Namespaces of this process get distinct names, so the tests can run in parallel.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces joined by a veth pair, with lockd running in the first. Dropping it
/// (also when a test fails) stops lockd and deletes both namespaces, and with them the
/// veth pair.
struct Net {
    server_ns: String,
    client_ns: String,
    client_if: String,
    lockd: Option<Child>,
}

impl Net {
    /// Builds the namespaces and starts lockd, or says why this machine cannot.
    fn create() -> Result<Net, String> {
        netns::usable()?;
        let tag = format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut net = Net { server_ns: format!("pklock-vh-{tag}-s"), client_ns: format!("pklock-vh-{tag}-c"), client_if: "vh-client".into(), lockd: None };
        // The first namespace tells whether this machine allows them at all (a container
        // without CAP_SYS_ADMIN does not); after that, a failure is the test's.
        ip(&["netns", "add", &net.server_ns]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
        let must = |result: Result<(), String>| result.unwrap_or_else(|e| panic!("setting up the namespaces: {e}"));
        must(ip(&["netns", "add", &net.client_ns]));
        must(ip(&["link", "add", "vh-server", "netns", &net.server_ns, "type", "veth", "peer", "name", &net.client_if, "netns", &net.client_ns]));
        must(ip(&["-n", &net.server_ns, "addr", "add", &format!("{SERVER_IP}/30"), "dev", "vh-server"]));
        must(ip(&["-n", &net.client_ns, "addr", "add", &format!("{CLIENT_IP}/30"), "dev", &net.client_if]));
        for (ns, dev) in [(&net.server_ns, "vh-server"), (&net.client_ns, net.client_if.as_str()), (&net.server_ns, "lo")] {
            must(ip(&["-n", ns, "link", "set", dev, "up"]));
        }
        // `ip netns exec` execs lockd itself, so the child is lockd.
        let lockd = Command::new("ip")
            .args(["netns", "exec", &net.server_ns, env!("CARGO_BIN_EXE_lockd")])
            .args(["--listen", &format!("{SERVER_IP}:{PORT}"), "--listen", &format!("127.0.0.1:{PORT}")])
            .args(["--allow", &format!("{CLIENT_IP}/32"), "--allow", "127.0.0.0/8", "--log-level", "warn"])
            // The veth address is not loopback, but only this test's namespace reaches it.
            .arg("--insecure-no-auth")
            .args(KEEPALIVE_FLAGS)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn lockd in its namespace");
        net.lockd = Some(lockd);
        let loopback: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
        in_netns(&net.server_ns, move || {
            let start = Instant::now();
            while TcpStream::connect_timeout(&loopback, Duration::from_millis(200)).is_err() {
                assert!(start.elapsed() < Duration::from_secs(10), "lockd did not start listening in its namespace");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(net)
    }

    /// A client on the far side of the veth link, in the client namespace.
    fn far_client(&self) -> Client {
        let addr: SocketAddr = format!("{SERVER_IP}:{PORT}").parse().unwrap();
        in_netns(&self.client_ns, move || Client::connect(addr))
    }

    /// A client on lockd's own loopback, unaffected by the link.
    fn local_client(&self) -> Client {
        let addr: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
        in_netns(&self.server_ns, move || Client::connect(addr))
    }

    /// The client's host vanishes: from now on it sends nothing (not an ACK, not a
    /// keepalive answer, not a reset), its sockets stay open, and lockd's side of the link
    /// stays up, as when a host dies behind a switch. (A blackhole route in the client's
    /// namespace does this; link down would also take lockd's carrier away and turn the
    /// loss into local drops, which TCP retries on another schedule.)
    fn pull_the_cable(&self) {
        ip(&["-n", &self.client_ns, "route", "add", "blackhole", &format!("{SERVER_IP}/32")]).expect("blackhole route");
    }

    /// Bytes lockd has sent to the far client that it has not acknowledged (ss's Send-Q).
    fn unacknowledged_to_far_client(&self) -> u64 {
        let out = Command::new("ip").args(["netns", "exec", &self.server_ns, "ss", "-Htn", "state", "established"]).output().expect("run ss");
        assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Columns: Recv-Q Send-Q Local:Port Peer:Port
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.len() >= 4 && cols[2] == format!("{SERVER_IP}:{PORT}") && cols[3].starts_with(&format!("{CLIENT_IP}:")))
            .unwrap_or_else(|| panic!("no connection from the far client in ss:\n{text}"))[1]
            .parse()
            .unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut lockd) = self.lockd.take() {
            let _ = lockd.kill();
            let _ = lockd.wait();
        }
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Writes past the test harness's output capture, so a skip is seen in `make test`.
fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "vanished_host::{test}: SKIPPED: {why}");
}

/// `witness` asks for `key` (waiting longer than any bound) and returns how long after
/// `vanished` it was granted.
fn granted_after(witness: &mut Client, key: &str, vanished: Instant) -> Duration {
    let wait = BOUND + SLACK + Duration::from_secs(10);
    witness.send("lock", json!({"keys": key, "wait": wait.as_secs()}));
    let reply = witness.try_recv(wait + Duration::from_secs(5)).expect("a reply to the witness's lock");
    assert_eq!(reply["result"]["granted"], json!(true), "the vanished client's lock was never released: {reply}");
    vanished.elapsed()
}

fn assert_released_within_bound(took: Duration) {
    assert!(took <= BOUND + SLACK, "released {took:?} after the host vanished; the bound is {BOUND:?} (+ {SLACK:?} slack)");
    assert!(took >= NOT_BEFORE, "released after only {took:?}: that was not keepalive finding a vanished host");
}

#[test]
fn an_idle_vanished_client_loses_its_lock_within_the_keepalive_bound() {
    let net = match Net::create() {
        Ok(net) => net,
        Err(why) => return skip("an_idle_vanished_client_loses_its_lock_within_the_keepalive_bound", &why),
    };
    let mut far = net.far_client();
    far.lock("idle", 0);
    let mut witness = net.local_client();

    net.pull_the_cable();
    let vanished = Instant::now();
    let took = granted_after(&mut witness, "idle", vanished);
    let _ = writeln!(std::io::stderr(), "vanished_host: idle connection: lock released {took:?} after the client host vanished");
    assert_released_within_bound(took);
}

#[test]
fn a_vanished_client_with_data_in_flight_loses_its_lock_within_the_user_timeout() {
    let net = match Net::create() {
        Ok(net) => net,
        Err(why) => return skip("a_vanished_client_with_data_in_flight_loses_its_lock_within_the_user_timeout", &why),
    };
    let mut far = net.far_client();
    let mut witness = net.local_client();
    far.lock("held", 0);
    witness.lock("busy", 0);
    // The far client queues for "busy"; once its host is gone, the witness's unlock makes
    // lockd send it the grant, which nobody will ever acknowledge.
    far.send("lock", json!({"keys": "busy", "owner": 1}));
    let start = Instant::now();
    while witness.call("stat", json!({}))["waiters"] != json!(1) {
        assert!(start.elapsed() < Duration::from_secs(5), "the far client's wait never reached lockd");
        std::thread::sleep(Duration::from_millis(10));
    }

    net.pull_the_cable();
    witness.call("unlock", json!({"keys": "busy"}));
    let vanished = Instant::now();
    // lockd may queue the grant for the far connection's own task to write: poll briefly.
    while net.unacknowledged_to_far_client() == 0 {
        assert!(vanished.elapsed() < Duration::from_secs(1), "lockd never sent the vanished client its grant");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = granted_after(&mut witness, "held", vanished);
    let _ = writeln!(std::io::stderr(), "vanished_host: data in flight: lock released {took:?} after the client host vanished");
    assert_released_within_bound(took);
}
