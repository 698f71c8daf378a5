//! MediaWiki's LockServerDaemon protocol (`--mediawiki-listen`), so that LSLockManager
//! works against lockd unchanged.
//!
//! One request per line, `session:signature:COMMAND:TYPE:v1|v2|...`, one reply line each,
//! in order (several lines in one packet each get their reply, unlike the original). Every
//! request is signed with the shared key in either form MediaWiki has used:
//! `hash_hmac('sha1', "session\ncommand\ntype\nvalues", key)` with a 32-character session,
//! or `sha1(session . command . type . values . key)` with a 31- or 32-character one.
//! Requests never wait (`CANT_ACQUIRE` at once) and are all-or-nothing.
//!
//! Locks belong to the session, not to the TCP connection: a session is one owner in the
//! table (a connection id of its own), shared by every connection that names it. When the
//! last connection using a session closes, its locks stay for `--mediawiki-lock-timeout`
//! seconds; a request from that session within that time keeps them, otherwise they go,
//! on a timer of their own (the original purged only when other traffic arrived).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use pklock_proto::auth::AuthKey;
use pklock_proto::Mode;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::LineConnection;
use crate::state::State;
use crate::table::{Acquired, ConnId, LockRequest, Owner, TableError};

/// A resource value is a base-36 SHA-1: 31 characters.
const VALUE_LEN: usize = 31;

/// Sessions one connection may use; more are refused with `BAD_SESSION`, so a client
/// cannot fill the server with session records.
const SESSIONS_PER_CONNECTION: usize = 64;

/// The sessions of every MediaWiki connection.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

#[derive(Debug)]
struct Session {
    /// The table's connection id that owns this session's locks.
    conn: ConnId,
    /// Open connections that have used the session.
    users: usize,
    /// Bumped by every request, so an expiry timer knows the session was used since.
    generation: u64,
}

impl Sessions {
    /// The session's owner, created on first use; the request renews it.
    fn enter(&self, shared: &State, name: &str, peer: SocketAddr, first_use_here: bool) -> Owner {
        let mut map = self.map.lock();
        let session = map.entry(name.to_owned()).or_insert_with(|| Session { conn: shared.connect(peer), users: 0, generation: 0 });
        session.generation += 1;
        if first_use_here {
            session.users += 1;
        }
        Owner { conn: session.conn, handle: 0 }
    }

    /// A connection that used `names` closed: sessions nobody else uses now expire after
    /// `timeout` unless a request renews them first.
    fn leave(self: &Arc<Self>, shared: &Arc<State>, names: HashSet<String>, timeout: std::time::Duration) {
        let mut map = self.map.lock();
        for name in names {
            let Some(session) = map.get_mut(&name) else { continue };
            session.users -= 1;
            if session.users > 0 {
                continue;
            }
            let generation = session.generation;
            let (sessions, shared) = (self.clone(), shared.clone());
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                sessions.expire(&shared, &name, generation);
            });
        }
    }

    fn expire(&self, shared: &State, name: &str, generation: u64) {
        let conn = {
            let mut map = self.map.lock();
            match map.get(name) {
                Some(s) if s.users == 0 && s.generation == generation => map.remove(name).map(|s| s.conn),
                _ => None,
            }
        };
        if let Some(conn) = conn {
            let (released, _) = shared.disconnect(conn);
            if released > 0 {
                info!(session = name, released, "mediawiki session expired; its locks were released");
            }
        }
    }
}

/// Serves one MediaWiki client connection until it closes or the server shuts down.
/// `slot` is the connection's place under `--max-clients`, given back when it closes.
pub async fn serve(shared: Arc<State>, sessions: Arc<Sessions>, slot: OwnedSemaphorePermit, stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let key = shared.config.mediawiki_auth_key().expect("--mediawiki-listen requires a key").clone();
    let mut used: HashSet<String> = HashSet::new();
    let mut conn = LineConnection::new(stream, shared.config.max_frame);
    let why = conn
        .serve_lines(&shutdown, |line| {
            let reply = match handle(&shared, &sessions, &key, peer, &mut used, line) {
                Ok(reply) | Err(reply) => reply,
            };
            format!("{reply}\n")
        })
        .await;
    drop(slot);
    debug!(%peer, reason = why, "mediawiki connection closed");
    sessions.leave(&shared, used, shared.config.mediawiki_lock_timeout);
}

/// Runs one request line; the reply (success or error code) either way.
fn handle(
    shared: &State,
    sessions: &Sessions,
    key: &AuthKey,
    peer: SocketAddr,
    used: &mut HashSet<String>,
    line: &str,
) -> Result<String, String> {
    let fields: Vec<&str> = line.split(':').collect();
    let [session, signature, command, kind, values] = fields[..] else {
        return Err("BAD_FORMAT".into());
    };
    if !matches!(session.len(), 31 | 32) {
        return Err("BAD_SESSION".into());
    }
    if !signed(key, session, signature, command, kind, values) {
        return Err("BAD_KEY".into());
    }
    let first_use_here = !used.contains(session);
    if first_use_here && used.len() >= SESSIONS_PER_CONNECTION {
        return Err("BAD_SESSION".into());
    }
    let values: Vec<String> = if values.is_empty() { Vec::new() } else { values.split('|').map(str::to_owned).collect() };
    let mode = || match kind {
        "SH" => Ok(Mode::Shared),
        "EX" => Ok(Mode::Exclusive),
        _ => Err("BAD_TYPE".to_string()),
    };
    let check_values = || {
        if values.is_empty() || values.iter().any(|v| v.len() != VALUE_LEN) {
            return Err("BAD_FORMAT".to_string());
        }
        Ok(())
    };
    match command {
        "ACQUIRE" => {
            let mode = mode()?;
            check_values()?;
            let owner = enter(shared, sessions, session, peer, used, first_use_here);
            let request = LockRequest { owner, keys: &values, mode, wait: Some(std::time::Duration::ZERO), value: None };
            match shared.lock(request, || unreachable!("a request that never waits never queues")) {
                Ok(Acquired::Granted { .. }) => Ok("ACQUIRED".into()),
                Ok(Acquired::Busy) | Err(TableError::ShuttingDown) => Err("CANT_ACQUIRE".into()),
                Ok(Acquired::Queued) => unreachable!("wait 0 never queues"),
                Err(TableError::BadKey(_)) => Err("BAD_FORMAT".into()),
                Err(_) => Err("TOO_MANY_LOCKS".into()),
            }
        }
        "RELEASE" => {
            mode()?;
            check_values()?;
            if values.len() > shared.config.max_keys {
                return Err("TOO_MANY_LOCKS".into());
            }
            let owner = enter(shared, sessions, session, peer, used, first_use_here);
            shared.unlock(owner, &values);
            Ok("RELEASED".into())
        }
        "RELEASE_ALL" => {
            let owner = enter(shared, sessions, session, peer, used, first_use_here);
            shared.release_owner(owner);
            Ok("RELEASED_ALL".into())
        }
        "STAT" => Ok(format!("{}:{}", shared.started.elapsed().as_secs(), crate::cmd::resident_bytes())),
        _ => Err("BAD_COMMAND".into()),
    }
}

fn enter(shared: &State, sessions: &Sessions, session: &str, peer: SocketAddr, used: &mut HashSet<String>, first_use_here: bool) -> Owner {
    if first_use_here {
        used.insert(session.to_owned());
    }
    sessions.enter(shared, session, peer, first_use_here)
}

/// Whether `signature` signs the request in one of the forms MediaWiki has used.
fn signed(key: &AuthKey, session: &str, signature: &str, command: &str, kind: &str, values: &str) -> bool {
    let secret = key.secret_bytes();
    let given = signature.as_bytes();
    let mut ok = subtle::Choice::from(0);
    if session.len() == 32 {
        let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(format!("{session}\n{command}\n{kind}\n{values}").as_bytes());
        ok |= hex(&mac.finalize().into_bytes()).as_bytes().ct_eq(given);
    }
    let mut sha = Sha1::new();
    for part in [session.as_bytes(), command.as_bytes(), kind.as_bytes(), values.as_bytes(), secret] {
        sha.update(part);
    }
    ok |= hex(&sha.finalize()).as_bytes().ct_eq(given);
    ok.into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_signature_forms_are_accepted_and_anything_else_refused() {
        let key = AuthKey::new("secret").unwrap();
        let session = "0123456789abcdef0123456789abcdef";
        let value = "8bn1fvddot61d2cuuqrxrkplwyhmjmq";
        assert!(signed(&key, session, "1a2351c90561e42b5ea0bc720ecf957e765e3c69", "ACQUIRE", "EX", value));
        assert!(signed(&key, session, "838eb21a0f6372b8534730e246e024b8d7252e0a", "RELEASE_ALL", "", ""));
        let old = "0000000000000000000000000000000";
        assert!(signed(&key, old, "c6a226ee90040db66121abc60bcb79f835ab8fd3", "ACQUIRE", "EX", value));
        assert!(!signed(&key, session, "1a2351c90561e42b5ea0bc720ecf957e765e3c69", "ACQUIRE", "SH", value));
        assert!(!signed(&AuthKey::new("other").unwrap(), session, "1a2351c90561e42b5ea0bc720ecf957e765e3c69", "ACQUIRE", "EX", value));
        assert!(!signed(&key, session, "", "ACQUIRE", "EX", value));
    }
}
