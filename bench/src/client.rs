//! Blocking clients for the servers under test: lockd (or the nodes of a lockd cluster)
//! over its wire format (through pklock-proto's types and frame functions), redis-server
//! doing the usual Redis lock recipe (`SET key token NX PX ttl`, released by a
//! compare-and-delete Lua script), and etcd's own lock API (in [`crate::etcd`]).
//! One request in flight per connection, like a PHP worker; pipelining only where the
//! benchmark fills a server with locks.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pklock_proto::frame::{encode_into, read_frame};
use pklock_proto::{ErrorBody, Keys, LockParams, LockResult, Mode, PingResult, RequestOut, StatResult, UnlockParams, UnlockResult, DEFAULT_MAX_FRAME};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use redis::IntoConnectionInfo;
use serde::{Deserialize, Serialize};

use crate::etcd::EtcdConn;

/// Which server, and where.
#[derive(Debug, Clone)]
pub enum Server {
    /// One lockd, or the nodes of a lockd cluster (connections spread over them).
    Lockd(Vec<SocketAddr>),
    Redis(SocketAddr),
    /// etcd's lock API, on the client URLs of the etcd members (connections spread over them).
    Etcd(Vec<String>),
}

impl Server {
    pub fn name(&self) -> &'static str {
        match self {
            Server::Lockd(_) => "lockd",
            Server::Redis(_) => "redis",
            Server::Etcd(_) => "etcd",
        }
    }

    /// Connection number `i`: a new connection that takes and releases locks the
    /// server's way, to node (or member) `i` modulo their number.
    pub fn locker(&self, i: usize, redis_ttl: Duration, retry_delay: Duration) -> Result<Box<dyn Locker>> {
        Ok(match self {
            Server::Lockd(nodes) => Box::new(LockdConn::connect(nodes[i % nodes.len()])?),
            Server::Redis(addr) => Box::new(RedisConn::connect(*addr, redis_ttl, retry_delay)?),
            Server::Etcd(members) => Box::new(EtcdConn::connect(&members[i % members.len()])?),
        })
    }
}

/// Take a lock, waiting as long as it takes, and release it.
pub trait Locker: Send {
    fn lock(&mut self, key: &str) -> Result<()>;
    fn unlock(&mut self, key: &str) -> Result<()>;
    fn ping(&mut self) -> Result<()>;
    /// Sends lock requests for `keys` in batches without waiting for each reply, and
    /// checks that all were granted. The locks stay held while the connection lives.
    fn lock_many(&mut self, keys: &[String]) -> Result<()>;
    /// The server's resident memory in bytes and how many clients it counts.
    fn memory_and_clients(&mut self) -> Result<(u64, u64)>;
}

/// How many requests `lock_many` sends before reading their replies.
const BATCH: usize = 512;

// ---------------------------------------------------------------------------------------
// lockd

/// `ReplyIn` with the result left unparsed until the reply is known to be the one
/// awaited, so the client spends little CPU per reply (it shares the machine with the
/// server being measured).
#[derive(Deserialize)]
struct Reply<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<ErrorBody>,
}

/// One connection to lockd, owner 0.
///
/// Like pklock.so, `unlock` sends its request and does not wait: its reply is read and
/// checked by the next call. A lock+unlock pair thus costs one round trip, as it does
/// from PHP. Replies are matched by id: the server holds such an unlock's reply back
/// until the next reply, and the grant of a lock that had to wait may overtake it.
pub struct LockdConn {
    /// Reads are buffered; writes go straight to the socket (one descriptor per
    /// connection, so 10k connections fit in the usual limits).
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
    payload: Vec<u8>,
    next_id: u64,
    /// The id of an unlock sent without waiting whose reply is not read yet.
    unlock_unread: Option<u64>,
    /// Replies read while looking for another one, with their ids (at most the grant
    /// that overtook an unlock's reply).
    early: Vec<(u64, Vec<u8>)>,
}

impl LockdConn {
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to lockd at {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(LockdConn { stream: BufReader::new(stream), out: Vec::new(), payload: Vec::new(), next_id: 0, unlock_unread: None, early: Vec::new() })
    }

    /// Appends a request to the output buffer and returns its id; `flush` sends it.
    fn queue<P: Serialize>(&mut self, command: &str, parameters: P) -> Result<u64> {
        self.next_id += 1;
        encode_into(&mut self.out, &RequestOut { id: self.next_id, command, parameters })?;
        Ok(self.next_id)
    }

    fn flush(&mut self) -> Result<()> {
        self.stream.get_mut().write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads the reply to request `id`, keeping any other reply that comes first for
    /// the call that awaits it.
    fn recv<R: DeserializeOwned>(&mut self, id: u64) -> Result<R> {
        if let Some(i) = self.early.iter().position(|(early, _)| *early == id) {
            let (_, payload) = self.early.swap_remove(i);
            let reply: Reply<'_> = serde_json::from_slice(&payload).context("reading a lockd reply")?;
            return typed(reply, &payload);
        }
        loop {
            read_frame(&mut self.stream, DEFAULT_MAX_FRAME, &mut self.payload)?;
            let reply: Reply<'_> = serde_json::from_slice(&self.payload).context("reading a lockd reply")?;
            match reply.id {
                Some(got) if got == id => return typed(reply, &self.payload),
                Some(got) => self.early.push((got, std::mem::take(&mut self.payload))),
                // Only errors about the connection itself (too_many_clients, a frame
                // the server could not read) have no id.
                None => bail!("lockd: {}", String::from_utf8_lossy(&self.payload)),
            }
        }
    }

    fn call<P: Serialize, R: DeserializeOwned>(&mut self, command: &str, parameters: P) -> Result<R> {
        let id = self.queue(command, parameters)?;
        self.flush()?;
        self.read_deferred_unlock()?;
        self.recv(id)
    }

    /// Reads and checks the reply of an unlock sent without waiting.
    fn read_deferred_unlock(&mut self) -> Result<()> {
        if let Some(id) = self.unlock_unread.take() {
            self.recv_unlocked(id)?;
        }
        Ok(())
    }

    /// Sends a lock request that waits as long as it takes; `recv_grant` reads its
    /// answer, given the id this returns.
    pub fn send_lock(&mut self, key: &str) -> Result<u64> {
        let id = self.queue("lock", lock_params(key))?;
        self.flush()?;
        Ok(id)
    }

    pub fn recv_grant(&mut self, id: u64) -> Result<()> {
        let r: LockResult = self.recv(id)?;
        if !r.granted {
            bail!("lockd did not grant a lock that waits forever");
        }
        Ok(())
    }

    /// Sends an unlock and returns its id; with `defer_reply` the server may hold its
    /// reply back until the next one (only for a caller that will not wait for it, as
    /// `Locker::unlock`).
    pub fn send_unlock(&mut self, key: &str, defer_reply: bool) -> Result<u64> {
        let id = self.queue("unlock", UnlockParams { keys: Keys(vec![key.to_owned()]), owner: 0, defer_reply })?;
        self.flush()?;
        Ok(id)
    }

    pub fn recv_unlocked(&mut self, id: u64) -> Result<()> {
        let r: UnlockResult = self.recv(id)?;
        if r.released.is_empty() {
            bail!("lockd says the key was not held: {:?}", r.not_held);
        }
        Ok(())
    }

    pub fn stat(&mut self) -> Result<StatResult> {
        self.call("stat", serde_json::Map::new())
    }
}

/// The result of `reply` (read from `payload`, matched by id), typed, or the server's
/// refusal.
fn typed<R: DeserializeOwned>(reply: Reply<'_>, payload: &[u8]) -> Result<R> {
    match (reply.result, reply.error) {
        (Some(result), _) => serde_json::from_str(result.get()).with_context(|| format!("reading a lockd reply: {}", String::from_utf8_lossy(payload))),
        (None, Some(e)) => bail!("lockd refused: {} ({})", e.message, e.code.as_str()),
        (None, None) => bail!("lockd reply without result or error: {}", String::from_utf8_lossy(payload)),
    }
}

fn lock_params(key: &str) -> LockParams {
    LockParams { keys: Keys(vec![key.to_owned()]), mode: Mode::Exclusive, wait: None, owner: 0, value: None }
}

impl Locker for LockdConn {
    fn lock(&mut self, key: &str) -> Result<()> {
        let id = self.send_lock(key)?;
        self.read_deferred_unlock()?;
        self.recv_grant(id)
    }

    fn unlock(&mut self, key: &str) -> Result<()> {
        self.read_deferred_unlock()?;
        self.unlock_unread = Some(self.send_unlock(key, true)?);
        Ok(())
    }

    fn ping(&mut self) -> Result<()> {
        let _: PingResult = self.call("ping", serde_json::Map::new())?;
        Ok(())
    }

    fn lock_many(&mut self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(BATCH) {
            let first = self.next_id + 1;
            for key in batch {
                self.queue("lock", LockParams { wait: Some(0.0), ..lock_params(key) })?;
            }
            self.flush()?;
            for (id, key) in (first..).zip(batch) {
                let r: LockResult = self.recv(id)?;
                if !r.granted {
                    bail!("lockd: {key} was busy");
                }
            }
        }
        Ok(())
    }

    fn memory_and_clients(&mut self) -> Result<(u64, u64)> {
        let s = self.stat()?;
        Ok((s.memory, s.connections as u64))
    }
}

// ---------------------------------------------------------------------------------------
// redis-server

/// Deletes the key only if it still holds our token (the standard release).
const RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;

/// One connection to redis-server. Tokens are unique per connection and lock.
pub struct RedisConn {
    con: redis::Connection,
    release: redis::Script,
    ttl_ms: u64,
    retry_delay: Duration,
    prefix: String,
    counter: u64,
    token: String,
}

impl RedisConn {
    pub fn connect(addr: SocketAddr, ttl: Duration, retry_delay: Duration) -> Result<Self> {
        let info = redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port())
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let mut con = redis::Client::open(info)?.get_connection().with_context(|| format!("connecting to redis at {addr}"))?;
        let id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut con)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(RedisConn { con, release: redis::Script::new(RELEASE), ttl_ms, retry_delay, prefix: format!("c{id}:"), counter: 0, token: String::new() })
    }

    /// One `SET NX PX` attempt with a fresh token; true if it took the lock.
    pub fn try_lock(&mut self, key: &str) -> Result<bool> {
        self.counter += 1;
        self.token.clear();
        self.token.push_str(&self.prefix);
        self.token.push_str(&self.counter.to_string());
        let ok: Option<String> = redis::cmd("SET").arg(key).arg(&self.token).arg("NX").arg("PX").arg(self.ttl_ms).query(&mut self.con)?;
        Ok(ok.is_some())
    }

    fn info_field(&mut self, section: &str, field: &str) -> Result<u64> {
        let info: String = redis::cmd("INFO").arg(section).query(&mut self.con)?;
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {field} in INFO {section}"))
    }
}

impl Locker for RedisConn {
    /// Retries `SET NX` until it succeeds, sleeping `retry_delay` between tries (Redis
    /// has no queue: a waiter polls).
    fn lock(&mut self, key: &str) -> Result<()> {
        while !self.try_lock(key)? {
            if !self.retry_delay.is_zero() {
                std::thread::sleep(self.retry_delay);
            }
        }
        Ok(())
    }

    fn unlock(&mut self, key: &str) -> Result<()> {
        let deleted: i64 = self.release.key(key).arg(&self.token).invoke(&mut self.con)?;
        if deleted != 1 {
            bail!("redis: {key} had expired or changed hands before release (ttl {} ms too short?)", self.ttl_ms);
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<()> {
        let _: String = redis::cmd("PING").query(&mut self.con)?;
        Ok(())
    }

    fn lock_many(&mut self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.cmd("SET").arg(key).arg(&self.prefix).arg("NX").arg("PX").arg(self.ttl_ms);
            }
            let replies: Vec<Option<String>> = pipe.query(&mut self.con)?;
            if let Some(i) = replies.iter().position(Option::is_none) {
                bail!("redis: {} was busy", batch[i]);
            }
        }
        Ok(())
    }

    fn memory_and_clients(&mut self) -> Result<(u64, u64)> {
        Ok((self.info_field("memory", "used_memory_rss")?, self.info_field("clients", "connected_clients")?))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use pklock_proto::frame::{read_frame, write_frame};
    use pklock_proto::DEFAULT_MAX_FRAME;
    use serde_json::{json, Value};

    use super::{LockdConn, Locker};

    fn read_request(stream: &mut TcpStream) -> Value {
        let mut payload = Vec::new();
        read_frame(stream, DEFAULT_MAX_FRAME, &mut payload).unwrap();
        serde_json::from_slice(&payload).unwrap()
    }

    fn send(stream: &mut TcpStream, reply: Value) {
        write_frame(stream, &reply).unwrap();
    }

    /// The race behind "missing field `released`" in `pairs --keys hot`, made certain: a
    /// fake lockd answers a waiting lock's grant before the held-back reply of the
    /// unlock sent ahead of it. The client must match the replies by id.
    #[test]
    fn a_grant_that_overtakes_a_held_back_unlock_reply_is_matched_by_id() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let first = read_request(&mut s);
            send(&mut s, json!({"id": first["id"], "result": {"granted": true, "token": 1}}));
            let unlock = read_request(&mut s);
            assert_eq!(unlock["parameters"]["defer_reply"], json!(true));
            let second = read_request(&mut s);
            send(&mut s, json!({"id": second["id"], "result": {"granted": true, "token": 2}}));
            send(&mut s, json!({"id": unlock["id"], "result": {"released": ["k"], "not_held": []}}));
            let ping = read_request(&mut s);
            send(&mut s, json!({"id": ping["id"], "result": {"pong": true}}));
        });
        let mut conn = LockdConn::connect(addr).unwrap();
        conn.lock("k").unwrap();
        conn.unlock("k").unwrap();
        conn.lock("k").unwrap();
        conn.ping().unwrap();
        server.join().unwrap();
    }
}
