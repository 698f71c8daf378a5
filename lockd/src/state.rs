//! The one door to the lock table. Every front end changes the table only through these
//! methods (as mini-redis's `Db` is the only way to its data): each takes the mutex, runs
//! one table operation with the current time, keeps the fencing-token ceiling ahead,
//! drops the mutex, and only then answers the waiters the operation woke and wakes the
//! deadline reaper if it must look sooner. Commands never see the guard.
//!
//! It also keeps what connections share besides the table: the peers' addresses, the
//! names clients gave in `hello`, how to close a connection an admin kicks, counts, and
//! the metrics recorder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::cluster::Node;
use crate::config::Config;
use crate::outbox::ReplySink;
use crate::reply::{encode_lock_outcome, LockOutcome, ReplyStyle};
use crate::telemetry::{self, Telemetry};
use crate::table::{
    Acquired, ConnId, LockRequest, LockTable, Owner, Page, RawImage, RebuildError, Release, TableError, TableImage, TableStats, Unlocked, WaitEnd, Wakeup, SLICE,
};
use crate::tokens::{TokenStore, TokenStoreError};

/// How to answer a waiting lock request once its wait ends.
#[derive(Debug)]
pub struct Waiter {
    /// Where the answer goes: the requesting connection's outbox, or its cluster session.
    pub sink: Arc<dyn ReplySink>,
    /// The request's id, echoed in the reply.
    pub id: Value,
    pub style: ReplyStyle,
    /// Told once the reply went out, for line protocols that read no further request
    /// until the answer to this one is on its way.
    pub answered: Option<Arc<Notify>>,
    /// Cluster mode: when the wait ends (ms since the Unix epoch), so that whichever node
    /// serves the session can end it (see [`crate::mutation::Mutation::TimeOut`]).
    pub ends_at_ms: Option<u64>,
}

#[derive(Debug)]
struct Guarded {
    locks: LockTable<Waiter>,
    tokens: TokenStore,
}

/// Runs `work` (long, blocking) so that it does not hold up the other tasks of the
/// tokio worker thread it is called on: the worker hands its tasks and its turn at the
/// I/O driver to another thread meanwhile. Without that, the other workers may all be
/// asleep and nobody reads the sockets until `work` is done: a second's stall for every
/// client while a client's million locks go. Elsewhere (no runtime, or a single-thread
/// one, as in tests) `work` simply runs.
fn off_the_runtime<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A connected client, as others (`locks`, the logs, `kick`) may ask about it.
#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    /// What the client called itself in `hello` (pklock.so: "pklock.so/VERSION pid PID").
    client: Option<String>,
    /// Cancelled by `kick`; set by the connections that close when it is (native ones).
    kick: Option<CancellationToken>,
}

/// The longest client name kept: enough for a name, a version and a pid.
const MAX_CLIENT_NAME: usize = 200;

#[derive(Debug)]
pub struct State {
    pub config: Config,
    table: Mutex<Guarded>,
    /// Long steps at the table (ending a connection's many waits, a release's slices) take
    /// turns here first, off the runtime, so that a request waits behind one of them at
    /// most instead of behind every connection that closed at the same moment.
    bulk_turn: Mutex<()>,
    /// More than [`SLICE`] requests wait server-wide (else no connection can have more):
    /// only then does a closing connection weigh its first step.
    many_waiters: AtomicBool,
    peers: Mutex<HashMap<ConnId, Peer>>,
    pub started: Instant,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    /// Woken when the earliest deadline moved closer, so the reaper can sleep less.
    deadline_moved: Notify,
    /// Cluster mode: this node (set once it joined).
    cluster: OnceLock<Arc<Node>>,
    /// `--metrics-listen`: the installed recorder.
    telemetry: OnceLock<Telemetry>,
}

impl State {
    pub fn new(config: Config) -> Result<Self, TokenStoreError> {
        let mut locks = LockTable::new(config.limits());
        let (tokens, start_after) = TokenStore::open(config.state_dir.as_deref())?;
        // A cluster node's tokens come from the log alone (every node must issue the same).
        if !config.cluster.enabled() {
            locks.start_tokens_after(start_after);
        }
        Ok(State {
            config,
            table: Mutex::new(Guarded { locks, tokens }),
            bulk_turn: Mutex::new(()),
            many_waiters: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            deadline_moved: Notify::new(),
            cluster: OnceLock::new(),
            telemetry: OnceLock::new(),
        })
    }

    /// Cluster mode: this node, once it joined. Connection ids then start at the node's
    /// first session id, so a connection's id is its session's.
    pub fn join_cluster(&self, node: Arc<Node>) {
        self.next_conn.store(crate::cluster::log::first_session_of(node.me) + 1, Ordering::Relaxed);
        let _ = self.cluster.set(node);
    }

    pub fn cluster(&self) -> Option<&Arc<Node>> {
        self.cluster.get()
    }

    /// `--metrics-listen`: from now on requests are timed.
    pub fn enable_telemetry(&self, telemetry: Telemetry) {
        let _ = self.telemetry.set(telemetry);
    }

    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.get()
    }

    /// Runs one table operation: the pattern every method below shares.
    fn apply<R>(&self, op: impl FnOnce(&mut LockTable<Waiter>, Instant, &mut Vec<Wakeup<Waiter>>) -> R) -> R {
        let mut woken = Vec::new();
        let (result, sooner) = {
            let mut guarded = self.table.lock();
            let before = guarded.locks.next_deadline();
            let result = op(&mut guarded.locks, Instant::now(), &mut woken);
            let last_token = guarded.locks.last_token();
            if let Err(e) = guarded.tokens.keep_ahead_of(last_token) {
                // Tokens stay above the clock-based floor; only the disk-backed guarantee
                // is weakened, and it is retried on every grant.
                error!(error = %e, "fencing tokens may pass the recorded ceiling");
            }
            let many_waiters = guarded.locks.waiter_count() > SLICE;
            if many_waiters != self.many_waiters.load(Ordering::Relaxed) {
                self.many_waiters.store(many_waiters, Ordering::Relaxed);
            }
            let after = guarded.locks.next_deadline();
            (result, after.is_some_and(|a| before.is_none_or(|b| a < b)))
        };
        if sooner {
            self.deadline_moved.notify_one();
        }
        self.deliver(woken);
        result
    }

    /// Takes keys for an owner, or queues the request (`waiter` says how to answer it).
    pub fn lock(&self, request: LockRequest<'_>, waiter: impl FnOnce() -> Waiter) -> Result<Acquired, TableError> {
        self.apply(|t, now, woken| t.lock(request, now, waiter, woken))
    }

    /// Releases keys of an owner and withdraws its wait for any of them.
    pub fn unlock(&self, owner: Owner, keys: &[String]) -> Unlocked {
        self.apply(|t, now, woken| t.unlock(owner, keys, now, woken))
    }

    /// Ends `owner`'s wait as timed out if `is_it` recognises it (cluster mode, where the
    /// node serving the session times waits).
    pub fn time_out(&self, owner: Owner, is_it: impl FnOnce(&Waiter) -> bool) -> bool {
        self.apply(|t, now, woken| t.time_out(owner, is_it, now, woken))
    }

    /// Runs `visit` on the waiting requests of connection `conn`'s owners.
    pub fn visit_waiters(&self, conn: ConnId, mut visit: impl FnMut(Owner, &Waiter)) {
        self.table.lock().locks.waiters_of(conn).for_each(|(owner, waiter)| visit(owner, waiter));
    }

    /// Releases everything of a cluster session that closed or expired; its own waiters
    /// are dropped, not answered (nobody is there to hear it).
    pub fn release_session(&self, conn: ConnId) -> (usize, usize) {
        self.release_all_of(conn, true, |_| {})
    }

    /// The table as data (cluster snapshots), copied under the lock and put in order by
    /// [`RawImage::finish`] after it; `waiter` says what to keep of each waiter.
    pub fn raw_image<V>(&self, waiter: impl FnMut(&Waiter) -> V) -> Result<RawImage<V>, RebuildError> {
        self.table.lock().locks.raw_image(waiter)
    }

    /// Replaces the table with one rebuilt from `image` (a cluster node loading a snapshot).
    pub fn restore<V>(&self, image: TableImage<V>, waiter: impl FnMut(ConnId, V) -> Waiter) -> Result<(), RebuildError> {
        let rebuilt = LockTable::rebuild(self.config.limits(), image, Instant::now(), waiter)?;
        let replaced = std::mem::replace(&mut self.table.lock().locks, rebuilt);
        // Freed after the lock: a node whose watch fell behind reloads while holding a
        // table as large as the new one.
        drop(replaced);
        Ok(())
    }

    /// Makes every token from now on greater than `token` (cluster mode derives a floor
    /// from the log's revisions).
    pub fn raise_token_floor(&self, token: u64) {
        self.table.lock().locks.start_tokens_after(token);
    }

    /// Withdraws the waiting request of an owner, if it has one, keeping what it holds.
    pub fn withdraw(&self, owner: Owner) -> bool {
        self.apply(|t, now, woken| t.withdraw(owner, now, woken))
    }

    /// Releases everything of one owner: (released, cancelled).
    pub fn release_owner(&self, owner: Owner) -> (usize, usize) {
        // An owner waits for one request at most: its first step is short.
        self.release(false, |t, now, woken| t.start_release_owner(owner, now, woken), |_| {})
    }

    /// Releases everything of every owner of a live connection: (released, cancelled).
    pub fn release_connection(&self, conn: ConnId) -> (usize, usize) {
        self.release_all_of(conn, false, |_| {})
    }

    /// Releases everything of connection `conn` (`dead`: it is gone, and so are its waiters).
    fn release_all_of(&self, conn: ConnId, dead: bool, released: impl Fn(usize)) -> (usize, usize) {
        let start = |t: &mut LockTable<Waiter>, now, woken: &mut Vec<Wakeup<Waiter>>| t.start_release_connection(conn, dead, now, woken);
        // Its waits all end in the first step (up to --max-waiters-per-connection of them).
        let many_waits = |t: &LockTable<Waiter>| t.waits_on(conn) > SLICE;
        if !self.many_waiters.load(Ordering::Relaxed) {
            return self.release(false, start, released);
        }
        // Found without waiting for the table on the runtime: when many connections close
        // at once, a worker waiting there holds up every task queued behind it.
        match self.table.try_lock().map(|guarded| many_waits(&guarded.locks)) {
            Some(false) => self.release(false, start, released),
            _ => off_the_runtime(|| {
                let long_first_step = many_waits(&self.table.lock().locks);
                self.release(long_first_step, start, released)
            }),
        }
    }

    /// Runs a release that `start` begins, one slice of locks per turn at the table, so
    /// that a client holding a million locks does not hold up everyone else while they
    /// go (see `table/release.rs`). parking_lot's mutex hands itself to a thread that has
    /// waited for more than about half a millisecond, so between two slices the others
    /// get their turn. A `long_first_step`, and every slice, takes its turn in `bulk_turn`
    /// off the runtime. `released` hears how many locks each turn released, under the
    /// lock. Returns (locks released, requests withdrawn).
    fn release(
        &self,
        long_first_step: bool,
        start: impl FnOnce(&mut LockTable<Waiter>, Instant, &mut Vec<Wakeup<Waiter>>) -> Release,
        released: impl Fn(usize),
    ) -> (usize, usize) {
        let first_step = || {
            self.apply(|t, now, woken| {
                let release = start(t, now, woken);
                released(release.counts().0);
                release
            })
        };
        let mut release = if long_first_step {
            off_the_runtime(|| {
                let _turn = self.bulk_turn.lock();
                first_step()
            })
        } else {
            first_step()
        };
        if !release.is_done() {
            off_the_runtime(|| {
                release.sort_keys();
                while !release.is_done() {
                    let _turn = self.bulk_turn.lock();
                    self.apply(|t, now, woken| {
                        let before = release.counts().0;
                        t.release_slice(&mut release, now, woken);
                        released(release.counts().0 - before);
                    });
                }
            });
        }
        release.counts()
    }

    /// Ends waits and lock-delays that are due; returns when the next one is.
    pub fn expire_due(&self) -> Option<Instant> {
        self.expire_at(Instant::now())
    }

    /// Ends waits and lock-delays due by `at` (a time in the future lets tests and fuzz
    /// targets skip ahead); returns when the next one is.
    pub fn expire_at(&self, at: Instant) -> Option<Instant> {
        let step = || self.apply(|t, _, woken| (t.expire_step(at, woken), t.next_deadline()));
        let (more, next) = step();
        if !more {
            return next;
        }
        // Many came due at once: the other steps, with others at the table between them,
        // run where the runtime can do without this thread (as a release's slices do).
        off_the_runtime(|| loop {
            let (more, next) = step();
            if !more {
                return next;
            }
        })
    }

    /// Resolves when a deadline earlier than any before was added.
    pub async fn deadline_moved(&self) {
        self.deadline_moved.notified().await;
    }

    /// Stops granting: every waiting request is answered `shutting_down` now, before
    /// connections close and release their locks (which then can grant nothing).
    pub fn shut_down(&self) {
        self.apply(|t, _, woken| t.shut_down(woken));
    }

    /// Whether `owner` holds any lock.
    pub fn holds_anything(&self, owner: Owner) -> bool {
        self.table.lock().locks.holds_anything(owner)
    }

    pub fn check(&self, key: &str, token: u64) -> bool {
        self.table.lock().locks.check(key, token)
    }

    pub fn snapshot(&self, prefix: &str, after: Option<&str>, limit: usize) -> Page {
        // A cluster node's waits end by the clock of the node serving them.
        let (now, unix_now_ms) = (Instant::now(), crate::cluster::unix_ms());
        let deadline_of = |w: &Waiter| w.ends_at_ms.map(|at| now + Duration::from_millis(at.saturating_sub(unix_now_ms)));
        self.table.lock().locks.snapshot_with(prefix, after, limit, deadline_of)
    }

    pub fn stats(&self) -> TableStats {
        self.table.lock().locks.stats()
    }

    /// Registers a new connection and returns its id.
    pub fn connect(&self, peer: SocketAddr) -> ConnId {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.peers.lock().insert(conn, Peer { addr: peer, client: None, kick: None });
        self.connections.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::CONNECTIONS_OPENED).increment(1);
        conn
    }

    /// Makes connection `conn` kickable: the token is cancelled when an admin kicks it.
    pub fn kick_signal(&self, conn: ConnId) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some(peer) = self.peers.lock().get_mut(&conn) {
            peer.kick = Some(token.clone());
        }
        token
    }

    /// Tells connection `conn` to close (its locks go as with any close). False when no
    /// kickable connection has that id.
    pub fn kick(&self, conn: ConnId) -> bool {
        let peers = self.peers.lock();
        let Some(kick) = peers.get(&conn).and_then(|p| p.kick.as_ref()) else { return false };
        kick.cancel();
        true
    }

    /// Forgets a connection that ended: releases all its owners' locks (or keeps them
    /// lingering for `--lock-delay`) and answers the waiters that this grants. A cluster
    /// node only forgets it.
    pub fn disconnect(&self, conn: ConnId) -> (usize, usize) {
        // A cluster node's table changes only through the log (see `cluster::Node::disconnected`).
        let released = if self.cluster().is_some() {
            (0, 0)
        } else {
            // Counted before the waiters it grants hear of it.
            let counted = |released: usize| metrics::counter!(telemetry::DISCONNECT_RELEASED).increment(released as u64);
            self.release_all_of(conn, true, counted)
        };
        self.peers.lock().remove(&conn);
        self.connections.fetch_sub(1, Ordering::Relaxed);
        released
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn peer(&self, conn: ConnId) -> String {
        self.peers.lock().get(&conn).map_or_else(|| "gone".to_string(), |p| p.addr.to_string())
    }

    /// Remembers the name the client gave in `hello`, cut to [`MAX_CLIENT_NAME`] bytes.
    pub fn set_client(&self, conn: ConnId, name: &str) {
        let end = (0..=name.len().min(MAX_CLIENT_NAME)).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
        if let Some(peer) = self.peers.lock().get_mut(&conn) {
            peer.client = Some(name[..end].to_owned());
        }
    }

    /// The name the client gave in `hello`, if it gave one.
    pub fn client(&self, conn: ConnId) -> Option<String> {
        self.peers.lock().get(&conn).and_then(|p| p.client.clone())
    }

    /// Sends each woken waiter its reply, straight onto its socket. A waiter whose
    /// connection has gone loses nothing: that connection's cleanup releases whatever it
    /// was just granted.
    fn deliver(&self, woken: Vec<Wakeup<Waiter>>) {
        let mut frame = Vec::new();
        for Wakeup { waiter, end } in woken {
            frame.clear();
            let outcome = match end {
                WaitEnd::Granted { token } => LockOutcome::Granted { token },
                WaitEnd::TimedOut => LockOutcome::TimedOut,
                WaitEnd::Cancelled => LockOutcome::Cancelled,
                WaitEnd::ShuttingDown => LockOutcome::ShuttingDown,
            };
            encode_lock_outcome(&mut frame, &waiter.id, waiter.style, outcome);
            if !frame.is_empty() {
                waiter.sink.deliver(&waiter.id, &frame);
            }
            if let Some(answered) = waiter.answered {
                answered.notify_one();
            }
        }
    }
}
