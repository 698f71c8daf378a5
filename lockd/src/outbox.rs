//! The sending side of a connection, shared by everyone who has something to tell it.
//!
//! A connection's own task writes its replies here, and so does whichever task ends one
//! of its waits: the grant goes straight onto the waiter's socket from the releasing
//! task, without waking the waiter's task first (handoff latency is one hop). Bytes go
//! out at once when nothing is queued and the socket takes them; the rest queue in order
//! and the connection's task flushes them when the socket is writable again.
//!
//! The queue is bounded by what feeds it: the connection's own replies come in batches
//! of at most `SEND_AT` bytes plus one reply, and its task reads no more requests until
//! the queue is empty; grants come only for waits the connection started while it was
//! still being read, each at most the size of the request's id (already held in the
//! lock table while it waited).

use std::io;
use parking_lot::Mutex;
use serde_json::Value;

use tokio::sync::Notify;

use crate::stream::WriteHalf;

/// Where the answer to a wait goes when it ends on another task: a connection's
/// [`Outbox`], or in cluster mode a session, which may be between connections.
pub trait ReplySink: Send + Sync + std::fmt::Debug {
    /// `frame` answers request `id`.
    fn deliver(&self, id: &Value, frame: &[u8]);
}

impl ReplySink for Outbox {
    fn deliver(&self, _id: &Value, frame: &[u8]) {
        self.send_from_other(frame);
    }
}

#[derive(Debug)]
pub struct Outbox {
    socket: WriteHalf,
    /// Bytes not written yet because the socket was full; always sent before newer ones.
    queued: Mutex<Vec<u8>>,
    /// Tells the connection's task that bytes were queued by someone else.
    queued_by_other: Notify,
}

impl Outbox {
    pub fn new(socket: WriteHalf) -> Self {
        Outbox { socket, queued: Mutex::new(Vec::new()), queued_by_other: Notify::new() }
    }

    /// Sends `bytes` now if the socket takes them, queueing what it does not. A broken
    /// socket drops them: the connection's reader sees the break and closes.
    pub fn send(&self, bytes: &[u8]) -> SendOutcome {
        let mut queued = self.queued.lock();
        if queued.is_empty() {
            match self.socket.try_write(bytes) {
                Ok(n) if n == bytes.len() => return SendOutcome::Sent,
                Ok(n) => queued.extend_from_slice(&bytes[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => queued.extend_from_slice(bytes),
                Err(_) => return SendOutcome::Sent,
            }
        } else {
            queued.extend_from_slice(bytes);
        }
        SendOutcome::Queued
    }

    /// [`send`](Self::send) from another connection's task: wakes this connection's task
    /// if bytes had to queue.
    pub fn send_from_other(&self, bytes: &[u8]) {
        if self.send(bytes) == SendOutcome::Queued {
            self.queued_by_other.notify_one();
        }
    }

    /// Resolves when another task queued bytes that need flushing.
    pub async fn queued_by_other(&self) {
        self.queued_by_other.notified().await;
    }

    pub fn has_queued(&self) -> bool {
        !self.queued.lock().is_empty()
    }

    /// Writes queued bytes until none are left.
    pub async fn flush(&self) -> io::Result<()> {
        loop {
            self.socket.writable().await?;
            let mut queued = self.queued.lock();
            if queued.is_empty() {
                return Ok(());
            }
            match self.socket.try_write(&queued) {
                Ok(n) => {
                    queued.drain(..n);
                    if queued.is_empty() {
                        if queued.capacity() > KEEP_QUEUE {
                            *queued = Vec::new();
                        }
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A queue that grew past this (a slow reader of a big `locks` listing) is given back.
const KEEP_QUEUE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Sent,
    Queued,
}
