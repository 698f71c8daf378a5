//! eLock's line protocol (`--elock-listen`, conventionally port 11400), so that eLock's
//! clients (php-elock-client among them) work against lockd unchanged.
//!
//! Each request is a line (LF or CRLF), each reply `<code> <message>\r\n`; `stats` and
//! `debug` add lines and end with `END`. A request is answered before the next is read,
//! as eLock's clients expect: while a `lock` waits, further lines are only buffered.
//!
//! A connection is a session: one owner in the table, under the session's own connection
//! id, which is also the id `conn_id` reports. When the connection goes, a wait it had is
//! withdrawn at once (never granted to nobody) and its locks stay for the session's
//! `set_timeout` (30 s by default, as eLock; 0 releases at once), so that a client that
//! reconnects can take the session over with `conn_id <id>`.
//!
//! Where eLock's two servers disagree, lockd follows the Erlang original: `unlock` of a
//! key the session does not hold is `403`, and `quit` closes the connection. `quit`
//! also releases the session's locks at once, as the NodeJS server does: a client that
//! says goodbye is not coming back for them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use pklock_proto::Mode;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Notify;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::outbox::Outbox;
use crate::stream::{ClientStream, ReadHalf};
use crate::reply::ReplyStyle;
use crate::state::{State, Waiter};
use crate::table::{Acquired, ConnId, LockRequest, Owner, TableError};

/// How long a disconnected session keeps its locks unless told otherwise (eLock's default).
const DEFAULT_DISPOSE: Duration = Duration::from_millis(30_000);

/// Lines a client may send ahead while its `lock` waits; more close the connection.
const LINES_AHEAD: usize = 64;

/// Keys a `debug` listing shows at most.
const DEBUG_KEYS: usize = 10_000;

/// Every eLock session, connected or waiting to be taken over.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<ConnId, SessionInfo>>,
}

#[derive(Debug)]
struct SessionInfo {
    dispose_after: Duration,
    /// Set while no connection has the session; a new value per disconnect, so that the
    /// expiry of an earlier disconnect cannot end a session taken over since.
    detached: Option<u64>,
}

impl Sessions {
    fn count(&self) -> usize {
        self.map.lock().len()
    }

    /// A connection went away: the session's locks go after its timeout, unless taken over.
    fn detach(self: &Arc<Self>, shared: &Arc<State>, conn: ConnId) {
        static DETACHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let dispose_after = {
            let mut map = self.map.lock();
            let Some(info) = map.get_mut(&conn) else { return };
            if info.dispose_after.is_zero() {
                map.remove(&conn);
                None
            } else {
                let mark = DETACHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info.detached = Some(mark);
                Some((info.dispose_after, mark))
            }
        };
        match dispose_after {
            None => {
                shared.disconnect(conn);
            }
            Some((after, mark)) => {
                let (sessions, shared) = (self.clone(), shared.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let expired = {
                        let mut map = sessions.map.lock();
                        let due = map.get(&conn).is_some_and(|i| i.detached == Some(mark));
                        due.then(|| map.remove(&conn)).is_some()
                    };
                    if expired {
                        let (released, _) = shared.disconnect(conn);
                        info!(session = conn, released, "eLock session expired");
                    }
                });
            }
        }
    }

    /// Takes over detached session `id` for a connection whose own session is `current`.
    fn take_over(&self, current: ConnId, id: ConnId) -> Result<(), &'static str> {
        let mut map = self.map.lock();
        match map.get_mut(&id) {
            Some(info) if info.detached.is_some() => {
                info.detached = None;
                map.remove(&current);
                Ok(())
            }
            Some(_) => Err("403 Cannot take over a session that is still connected"),
            None => Err("403 No such session: it was never issued or has expired"),
        }
    }
}

/// One eLock connection's state.
struct Session {
    conn: ConnId,
    peer: SocketAddr,
    outbox: Arc<Outbox>,
    answered: Arc<Notify>,
}

impl Session {
    fn owner(&self) -> Owner {
        Owner { conn: self.conn, handle: 0 }
    }
}

/// What a request line asks of the connection.
enum Step {
    Reply(String),
    /// The reply comes when the wait ends, through the session's outbox.
    Wait,
    /// Reply, then close.
    Quit(String),
}

/// Serves one eLock client connection until it closes, quits or the server shuts down.
/// `slot` is the connection's place under `--max-clients`, given back when it closes.
pub async fn serve(shared: Arc<State>, sessions: Arc<Sessions>, slot: OwnedSemaphorePermit, stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let (reader, writer) = ClientStream::from(stream).into_split();
    let max_line = 2 * shared.config.max_key_length + 256;
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(max_line));
    let conn = shared.connect(peer);
    sessions.map.lock().insert(conn, SessionInfo { dispose_after: DEFAULT_DISPOSE, detached: None });
    let mut session = Session { conn, peer, outbox: Arc::new(Outbox::new(writer)), answered: Arc::new(Notify::new()) };
    let mut ahead: VecDeque<String> = VecDeque::new();
    let why = loop {
        let line = match ahead.pop_front() {
            Some(line) => line,
            None => match next_line(&mut lines, &shutdown).await {
                Ok(line) => line,
                Err(why) => {
                    if why == "line too long" {
                        session.outbox.send(b"400 Line too long\r\n");
                    }
                    break why;
                }
            },
        };
        let step = handle(&shared, &sessions, &mut session, &line);
        match step {
            Step::Reply(text) => {
                session.outbox.send(text.as_bytes());
            }
            Step::Quit(text) => {
                session.outbox.send(text.as_bytes());
                shared.release_owner(session.owner());
                break "quit";
            }
            Step::Wait => {
                // Read on while waiting, to notice a client that goes away, but answer
                // nothing else until the lock's own answer is out.
                let ended = loop {
                    tokio::select! {
                        _ = session.answered.notified() => break None,
                        line = next_line(&mut lines, &shutdown) => match line {
                            Ok(line) if ahead.len() < LINES_AHEAD => ahead.push_back(line),
                            Ok(_) => break Some("too many lines sent during a wait"),
                            Err(why) => break Some(why),
                        },
                    }
                };
                if let Some(why) = ended {
                    break why;
                }
            }
        }
        if session.outbox.has_queued() {
            tokio::select! {
                flushed = session.outbox.flush() => if flushed.is_err() { break "write error" },
                _ = shutdown.cancelled() => break "server shutting down",
            }
        }
    };
    // A wait the client can no longer hear about is withdrawn, never granted to nobody.
    shared.withdraw(session.owner());
    if why != "quit" {
        sessions.detach(&shared, session.conn);
    } else {
        sessions.map.lock().remove(&session.conn);
        shared.disconnect(session.conn);
    }
    drop(slot);
    debug!(session = session.conn, peer = %session.peer, reason = why, "eLock connection closed");
}

async fn next_line(lines: &mut FramedRead<ReadHalf, LinesCodec>, shutdown: &CancellationToken) -> Result<String, &'static str> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err("server shutting down"),
        line = lines.next() => match line {
            None => Err("closed by client"),
            Some(Ok(line)) => Ok(line),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => Err("line too long"),
            Some(Err(LinesCodecError::Io(_))) => Err("read error or a line that is not UTF-8"),
        },
    }
}

fn handle(shared: &State, sessions: &Sessions, session: &mut Session, line: &str) -> Step {
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = |text: String| Step::Reply(format!("{text}\r\n"));
    match words[..] {
        ["lock", key] => lock(shared, session, key, None, Some(Duration::ZERO)),
        ["lock", key, wait] => match parse_wait(wait) {
            Ok(wait) => lock(shared, session, key, None, wait),
            Err(e) => reply(e),
        },
        ["lock_value", key, value] => lock(shared, session, key, Some(value), Some(Duration::ZERO)),
        ["lock_value", key, value, wait] => match parse_wait(wait) {
            Ok(wait) => lock(shared, session, key, Some(value), wait),
            Err(e) => reply(e),
        },
        ["unlock", key] => {
            let done = shared.unlock(session.owner(), &[key.to_owned()]);
            if done.released.is_empty() {
                reply("403 Not locked by this session".into())
            } else {
                reply("200 Unlocked".into())
            }
        }
        ["unlock_all"] => {
            shared.release_owner(session.owner());
            reply("200 OK".into())
        }
        ["set_timeout", millis] => match millis.parse::<u64>() {
            Ok(ms) => {
                if let Some(info) = sessions.map.lock().get_mut(&session.conn) {
                    info.dispose_after = Duration::from_millis(ms);
                }
                reply("200 Timeout set".into())
            }
            Err(_) => reply(format!("400 Not a number of milliseconds: {millis}")),
        },
        ["conn_id"] => reply(format!("200 {}", session.conn)),
        ["conn_id", id] => match id.parse::<ConnId>() {
            Ok(id) if id == session.conn => reply("200 Resumed".into()),
            Ok(id) => {
                if shared.holds_anything(session.owner()) {
                    return reply("403 Cannot take over a session: this one already holds locks".into());
                }
                match sessions.take_over(session.conn, id) {
                    Ok(()) => {
                        shared.disconnect(session.conn);
                        session.conn = id;
                        reply("200 Resumed".into())
                    }
                    Err(text) => reply(text.into()),
                }
            }
            Err(_) => reply(format!("400 Not a session id: {id}")),
        },
        ["stats"] => {
            let clients = sessions.count();
            let locks = shared.stats().keys;
            reply(format!("200 STATS\r\nSTAT clients {clients}\r\nSTAT locks {locks}\r\nSTAT monitoring {clients}\r\nEND"))
        }
        ["debug"] => reply(debug_listing(shared, sessions)),
        ["quit"] => Step::Quit("200 Bye\r\n".into()),
        [] => reply("400 Empty command".into()),
        [command, ..] => reply(format!("400 Unknown command or wrong arguments: {command}")),
    }
}

/// Seconds to wait: a number >= 0 (eLock sends whole seconds; fractions work too).
fn parse_wait(text: &str) -> Result<Option<Duration>, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))),
        _ => Err(format!("400 Not a number of seconds: {text}")),
    }
}

/// `lock` (exclusive) or, with a value, `lock_value` (shared by the holders of that value).
fn lock(shared: &State, session: &Session, key: &str, value: Option<&str>, wait: Option<Duration>) -> Step {
    let keys = [key.to_owned()];
    let mode = if value.is_some() { Mode::Shared } else { Mode::Exclusive };
    let request = LockRequest { owner: session.owner(), keys: &keys, mode, wait, value };
    let waiter = || Waiter { sink: session.outbox.clone(), id: Value::Null, style: ReplyStyle::ELock, answered: Some(session.answered.clone()), ends_at_ms: None };
    let text = match shared.lock(request, waiter) {
        Ok(Acquired::Queued) => return Step::Wait,
        Ok(Acquired::Granted { .. }) => "200 Lock acquired".to_string(),
        Ok(Acquired::Busy) => "409 Lock is unavailable".to_string(),
        Err(TableError::ValueConflict) => "409 This session holds the key with another value".to_string(),
        Err(TableError::Deadlock(cycle)) => {
            let steps: Vec<String> = cycle.iter().map(|s| format!("#{} => {}", s.connection, s.key)).collect();
            format!("423 Deadlock: {} = #{}", steps.join(" = "), session.conn)
        }
        Err(TableError::ShuttingDown) => "503 The server is shutting down".to_string(),
        Err(TableError::BadKey(why)) => format!("400 Bad key: {why}"),
        Err(e) => format!("503 {e}"),
    };
    Step::Reply(format!("{text}\r\n"))
}

/// `debug`: the sessions, then every locked key with its holders, then every waiting
/// request, as NodeJS eLock lists them.
fn debug_listing(shared: &State, sessions: &Sessions) -> String {
    let mut out = String::from("200 DEBUG\r\n");
    {
        let map = sessions.map.lock();
        let mut ids: Vec<&ConnId> = map.keys().collect();
        ids.sort();
        for id in ids {
            let info = &map[id];
            let json = serde_json::json!({"id": id, "disposeTimeout": info.dispose_after.as_millis() as u64, "detached": info.detached.is_some()});
            out.push_str(&format!("SESSION {json}\r\n"));
        }
    }
    let page = shared.snapshot("", None, DEBUG_KEYS);
    let mut requests = Vec::new();
    for key in &page.keys {
        if !key.holders.is_empty() {
            let owners: Vec<String> = key.holders.iter().map(|h| format!("#{}", h.owner.conn)).collect();
            let value = key.holders[0].value.as_ref().map_or_else(String::new, |v| format!(" ({v})"));
            out.push_str(&format!("LOCK {} {}{value}\r\n", key.key, owners.join(", ")));
        }
        requests.extend(key.waiters.iter().map(|w| format!("REQUEST #{} {}\r\n", w.owner.conn, key.key)));
    }
    out.extend(requests);
    out.push_str("END");
    out
}
