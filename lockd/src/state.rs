//! What every connection shares: the one lock table, the peers' addresses, counters, and
//! how a waiter is answered when its wait ends on another connection's task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use std::sync::Arc;

use pklock_proto::frame::encode_into;
use pklock_proto::{ErrorBody, ErrorReply, LegacyLockResult, LockResult, ResultReply};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use crate::config::Config;
use crate::outbox::Outbox;
use crate::table::{ConnId, LockTable, WaitEnd, Wakeup};

/// How to answer a waiting lock request once its wait ends.
#[derive(Debug)]
pub struct Waiter {
    /// The requesting connection's sending side.
    pub outbox: Arc<Outbox>,
    /// The request's id, echoed in the reply.
    pub id: Value,
    pub style: ReplyStyle,
}

/// pkLockServer's clients expect `{"status": "ok"}` for a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStyle {
    Native,
    PkLockServer,
}

#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    table: Mutex<LockTable<Waiter>>,
    peers: Mutex<HashMap<ConnId, SocketAddr>>,
    pub started: Instant,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    /// Woken when a wait with a deadline starts, so the reaper can sleep less.
    pub deadline_added: Notify,
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let table = LockTable::new(config.limits());
        Shared {
            config,
            table: Mutex::new(table),
            peers: Mutex::new(HashMap::new()),
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            deadline_added: Notify::new(),
        }
    }

    /// The lock table. Hold the guard briefly and deliver wakeups after dropping it.
    pub fn table(&self) -> MutexGuard<'_, LockTable<Waiter>> {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // that matters more than stopping the whole server would, so keep serving.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection and returns its id.
    pub fn connect(&self, peer: SocketAddr) -> ConnId {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).insert(conn, peer);
        self.connections.fetch_add(1, Ordering::Relaxed);
        conn
    }

    /// Forgets a connection that ended: releases all its owners' locks and answers the
    /// waiters that this grants.
    pub fn disconnect(&self, conn: ConnId) -> (usize, usize) {
        let mut woken = Vec::new();
        let released = self.table().release_connection(conn, true, Instant::now(), &mut woken);
        self.deliver(woken);
        if !self.config.lock_delay.is_zero() && released.0 > 0 {
            // Its locks now linger until a deadline the reaper must learn about.
            self.deadline_added.notify_one();
        }
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&conn);
        self.connections.fetch_sub(1, Ordering::Relaxed);
        released
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn peer(&self, conn: ConnId) -> String {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&conn)
            .map_or_else(|| "gone".to_string(), ToString::to_string)
    }

    /// Sends each woken waiter its reply, straight onto its socket. A waiter whose
    /// connection has gone loses nothing: that connection's cleanup releases whatever it
    /// was just granted.
    pub fn deliver(&self, woken: Vec<Wakeup<Waiter>>) {
        let mut frame = Vec::new();
        for Wakeup { waiter, end } in woken {
            frame.clear();
            match (waiter.style, end) {
                (ReplyStyle::Native, WaitEnd::Granted { token }) => {
                    encode_result(&mut frame, &waiter.id, &LockResult { granted: true, token: Some(token) })
                }
                (ReplyStyle::Native, WaitEnd::TimedOut | WaitEnd::Cancelled) => {
                    encode_result(&mut frame, &waiter.id, &LockResult { granted: false, token: None })
                }
                (ReplyStyle::PkLockServer, WaitEnd::Granted { .. }) => {
                    encode_result(&mut frame, &waiter.id, &LegacyLockResult { status: "ok".into() })
                }
                // pkLockServer had no server-side wait; a lockName request that adds one
                // is told when it runs out.
                (ReplyStyle::PkLockServer, WaitEnd::TimedOut) => {
                    encode_result(&mut frame, &waiter.id, &LegacyLockResult { status: "timeout".into() })
                }
                // pkLockServer never answered a withdrawn request; its clients stop
                // listening for it before they withdraw it.
                (ReplyStyle::PkLockServer, WaitEnd::Cancelled) => continue,
            }
            waiter.outbox.send_from_other(&frame);
        }
    }
}

/// Appends `{"id": id, "result": result}` as a frame.
pub fn encode_result<R: Serialize>(out: &mut Vec<u8>, id: &Value, result: &R) {
    encode_into(out, &ResultReply { id, result }).expect("replies are always serializable");
}

/// Appends `{"id": id, "error": error}` as a frame.
pub fn encode_error(out: &mut Vec<u8>, id: &Value, error: &ErrorBody) {
    encode_into(out, &ErrorReply { id, error }).expect("errors are always serializable");
}
