//! `PkLockClient`, the PHP class: argument checking and conversion at the PHP boundary; the
//! work is done by the process-wide session for the object's server address (or node list).
//!
//! Each object is its own lock owner (its own owner handle on the shared connection), so
//! two objects in one process conflict exactly as two processes do.

use std::path::PathBuf;
use std::time::Duration;

use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendCallable, ZendHashTable, Zval};
use pklock_proto::auth::AuthKey;
use pklock_proto::Mode;

use crate::connection::Timeouts;
use crate::error::{quote_keys, ClientError};
use crate::ini;
use crate::json::{self, entries, php_type_name, EntryKey, Path};
use crate::nodes::{self, NodeOrder};
use crate::session::{self, new_owner, OwnerId, Target};

/// Longest wait accepted, in seconds (about 31 years: "as long as it takes" is `null`).
const MAX_WAIT: f64 = 1e9;

/// A client of lockd. Constructing needs no server; the first call connects (one socket per
/// process and server address or node list, shared by all objects, kept across requests).
#[php_class]
pub struct PkLockClient {
    target: Target,
    /// `host:port` (or the list of them), for messages.
    addr: String,
    /// Which session (connection) this object uses: see [`Target::session_key`].
    session_key: String,
    owner: OwnerId,
}

#[php_impl]
impl PkLockClient {
    /// `$host` is a host, or the nodes of a lockd cluster as `host:port,host:port,...`
    /// (`[v6]:port` for IPv6; `$port` serves entries without one). When null: the
    /// `pklock.servers` INI setting (a list like `$host`), or if that is empty
    /// `pklock.default_host`; `$port` defaults to `pklock.default_port`. `$options`:
    /// `connect_timeout` and `io_timeout` (seconds, defaults from INI), `auth_key` (string,
    /// default `pklock.auth_key`; null for none), `tls` (bool), `tls_ca` (PEM file of the CA
    /// to trust instead of the system's), `tls_verify` (bool; false is for tests only);
    /// `node_order` ('host', 'random' or 'list': how a node list is tried, default
    /// `pklock.node_order`); the TLS ones default to INI.
    pub fn __construct(host: Option<String>, port: Option<i64>, options: Option<&ZendHashTable>) -> PhpResult<Self> {
        let port = port.unwrap_or_else(ini::default_port);
        let port = u16::try_from(port)
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| argument_error("__construct", 2, "port", "must be between 1 and 65535"))?;
        let nodes = match (host, ini::servers()) {
            (None, Some(servers)) => nodes::parse(&servers, port).map_err(|problem| {
                ClientError::value_error(format!("PkLockClient::__construct(): the pklock.servers setting {problem}"))
            })?,
            (host, _) => nodes::parse(&host.unwrap_or_else(ini::default_host), port)
                .map_err(|problem| argument_error("__construct", 1, "host", &problem.to_string()))?,
        };
        // Only a list has an order: a single lockd's clients never read the setting.
        let node_order = match nodes.len() {
            1 => NodeOrder::Host,
            _ => NodeOrder::parse(&ini::node_order()).ok_or_else(|| {
                ClientError::value_error(format!(
                    "PkLockClient::__construct(): the pklock.node_order setting must be {}",
                    NodeOrder::CHOICES
                ))
            })?,
        };
        let mut target = Target {
            nodes,
            node_order,
            timeouts: Timeouts { connect: ini::connect_timeout(), io: ini::io_timeout() },
            auth_key: ini::auth_key(),
            tls: ini::tls(),
        };
        if let Some(options) = options {
            apply_options(&mut target, options)?;
        }
        Ok(PkLockClient { addr: target.addr(), session_key: target.session_key(), target, owner: new_owner() })
    }

    /// Takes the lock on `$keys` (all of them or none). True when granted, false when `$wait`
    /// seconds ran out (0 tries once; null waits as long as it takes).
    #[php(defaults(wait = 30.0, shared = false))]
    pub fn lock(&self, keys: &Zval, wait: Option<f64>, shared: bool) -> PhpResult<bool> {
        let keys = keys_argument("lock", keys)?;
        let wait = wait_argument("lock", 2, wait)?;
        Ok(self.take(keys, wait, shared)?.is_some())
    }

    /// Releases those of `$keys` this object holds. True when it held every one of them.
    /// Does not wait for the server's reply: a problem shows up on the next call.
    pub fn unlock(&self, keys: &Zval) -> PhpResult<bool> {
        let keys = keys_argument("unlock", keys)?;
        Ok(self.session(|session, owner| session.unlock(owner, &self.target, keys))?)
    }

    /// Releases every lock this object holds.
    pub fn unlock_all(&self) -> PhpResult<()> {
        Ok(self.session(|session, owner| session.unlock_all(owner, &self.target))?)
    }

    /// The fencing token of the lock this object holds on `$key`, or null. Throws
    /// PkLockLostException when its locks were lost with the connection.
    pub fn token(&self, key: &str) -> PhpResult<Option<i64>> {
        let token = self.session(|session, owner| session.token(owner, key))?;
        Ok(token.map(|token| i64::try_from(token).expect("lockd's tokens stay below PHP_INT_MAX")))
    }

    /// Whether lockd confirms that this object still holds `$key` (with the token it was
    /// granted). False, without asking, when this object holds no lock on `$key`.
    pub fn is_held(&self, key: &str) -> PhpResult<bool> {
        Ok(self.session(|session, owner| session.is_held(owner, &self.target, key))?)
    }

    /// Locks `$keys`, runs `$fn`, always unlocks, and returns what `$fn` returned. Throws
    /// PkLockTimeoutException when `$wait` runs out.
    #[php(defaults(wait = 30.0, shared = false))]
    pub fn synchronized(&self, keys: &Zval, r#fn: ZendCallable, wait: Option<f64>, shared: bool) -> PhpResult<Zval> {
        let keys = keys_argument("synchronized", keys)?;
        let wait = wait_argument("synchronized", 3, wait)?;
        if self.take(keys.clone(), wait, shared)?.is_none() {
            let wait = wait.expect("only a bounded wait runs out");
            return Err(ClientError::WaitRanOut { keys: quote_keys(&keys), wait }.into());
        }
        let outcome = r#fn.try_call(vec![]);
        let unlocked = self.session(|session, owner| session.unlock(owner, &self.target, keys));
        match outcome {
            // The exception `$fn` threw is pending and propagates; nothing else is thrown.
            Err(_) => Err(ClientError::PhpExceptionPending.into()),
            Ok(value) => {
                unlocked?;
                Ok(value)
            }
        }
    }

    /// Sends any lockd command and returns its result, PHP values mapped to JSON and back.
    /// `$timeout` (seconds) defaults to the `io_timeout` option.
    pub fn rpc(&self, command: &str, parameters: Option<&ZendHashTable>, timeout: Option<f64>) -> PhpResult<Zval> {
        if command.is_empty() {
            return Err(argument_error("rpc", 1, "command", "must not be empty").into());
        }
        let mut parameters = match parameters {
            Some(parameters) => json::to_json_object(parameters, &Path::argument("parameters"))?,
            None => serde_json::Value::Object(Default::default()),
        };
        guard_shared_connection(command, &mut parameters)?;
        let timeout = match timeout {
            None => default_rpc_timeout(command, &parameters, self.target.timeouts.io),
            Some(seconds) => Some(
                positive_seconds(seconds)
                    .ok_or_else(|| argument_error("rpc", 3, "timeout", "must be a number of seconds above 0"))?,
            ),
        };
        let reply = self.session(|session, owner| session.rpc(owner, &self.target, command, &parameters, timeout))?;
        json::reply_result_to_php(&reply)
            .map_err(|e| ClientError::UndecodableResult { addr: self.addr.clone(), detail: e.to_string() }.into())
    }

    /// Whether this process has a live connection to this object's server (never connects).
    pub fn is_connected(&self) -> bool {
        self.session(|session, _| session.is_connected())
    }

    /// Releases this object's locks and closes the process's connection to the server unless
    /// other objects hold locks through it. The object stays usable (it reconnects).
    pub fn close(&self) {
        self.session(|session, owner| session.close(owner));
    }
}

impl PkLockClient {
    /// Runs `f` on this object's session. `f` must not create PHP values or call PHP code: a
    /// bailout (fatal error) inside would leave the process state borrowed for good.
    fn session<R>(&self, f: impl FnOnce(&mut session::Session, OwnerId) -> R) -> R {
        session::with_session(&self.session_key, &self.target, |session| f(session, self.owner))
    }

    fn take(&self, keys: Vec<String>, wait: Option<f64>, shared: bool) -> Result<Option<u64>, ClientError> {
        let mode = if shared { Mode::Shared } else { Mode::Exclusive };
        self.session(|session, owner| session.lock(owner, &self.target, keys, mode, wait))
    }
}

impl Drop for PkLockClient {
    /// Releases what the object still holds. In a forked child the session forgets the
    /// parent's state first, so an inherited object releases nothing of the parent's.
    fn drop(&mut self) {
        session::with_existing_session(&self.session_key, |session| session.forget_owner(self.owner));
    }
}

/// `PkLockClient::lock(): Argument #1 ($keys) must ...`, as PHP words its own.
fn argument_message(method: &str, position: usize, name: &str, problem: &str) -> String {
    format!("PkLockClient::{method}(): Argument #{position} (${name}) {problem}")
}

fn argument_error(method: &str, position: usize, name: &str, problem: &str) -> ClientError {
    ClientError::value_error(argument_message(method, position, name, problem))
}

/// `$keys`: a non-empty string, or a non-empty array of them. (The length limit is the
/// server's: a key too long is its `bad_key` error.)
fn keys_argument(method: &str, keys: &Zval) -> Result<Vec<String>, ClientError> {
    let keys = keys.dereference();
    if let Some(array) = keys.array() {
        if array.is_empty() {
            return Err(argument_error(method, 1, "keys", "must not be an empty array"));
        }
        let mut keys: Vec<String> = Vec::with_capacity(array.len());
        for (index, (_, key)) in entries(array, &Path::argument("keys"))?.into_iter().enumerate() {
            let key = one_key(method, key.dereference(), Some(index))?;
            // A key named twice is one key (as lockd counts it), so unlock(['a', 'a']) of a
            // held 'a' is true.
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    } else if keys.is_string() {
        one_key(method, keys, None).map(|key| vec![key])
    } else {
        let problem = format!("must be of type string|array, {} given", php_type_name(keys));
        Err(ClientError::type_error(argument_message(method, 1, "keys", &problem)))
    }
}

/// One key of `$keys` (`index`: its place in an array, for messages).
fn one_key(method: &str, key: &Zval, index: Option<usize>) -> Result<String, ClientError> {
    let text = key.str();
    if let Some(key) = text.filter(|key| !key.is_empty()) {
        return Ok(key.to_owned());
    }
    let place = index.map(|index| format!(" at index {index}")).unwrap_or_default();
    match text {
        Some(_) => Err(argument_error(method, 1, "keys", &format!("must not contain an empty key{place}"))),
        None if key.is_string() => Err(argument_error(method, 1, "keys", &format!("must be valid UTF-8{place}"))),
        None => {
            let problem = format!("must contain only strings, {} given{place}", php_type_name(key));
            Err(ClientError::type_error(argument_message(method, 1, "keys", &problem)))
        }
    }
}

fn wait_argument(method: &str, position: usize, wait: Option<f64>) -> Result<Option<f64>, ClientError> {
    match wait {
        Some(seconds) if !(0.0..=MAX_WAIT).contains(&seconds) => Err(argument_error(
            method,
            position,
            "wait",
            "must be a number of seconds from 0 to 1e9, or null to wait as long as it takes",
        )),
        wait => Ok(wait),
    }
}

fn positive_seconds(seconds: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(seconds).ok().filter(|d| !d.is_zero())
}

fn apply_options(target: &mut Target, options: &ZendHashTable) -> Result<(), ClientError> {
    let option_error =
        |name: &str, problem: &str| argument_error("__construct", 3, "options", &format!("['{name}'] {problem}"));
    for (name, value) in entries(options, &Path::argument("options"))? {
        let name = match name {
            EntryKey::Index(index) => index.to_string(),
            EntryKey::Name(name) => name,
        };
        let value = value.dereference();
        let number = value.double().or_else(|| value.long().map(|int| int as f64));
        let seconds = || {
            number.and_then(positive_seconds).ok_or_else(|| option_error(&name, "must be a number of seconds above 0"))
        };
        let flag = || value.bool().ok_or_else(|| option_error(&name, "must be a bool"));
        match name.as_str() {
            "connect_timeout" => target.timeouts.connect = seconds()?,
            "io_timeout" => target.timeouts.io = seconds()?,
            "auth_key" if value.is_null() => target.auth_key = None,
            "auth_key" => {
                let key = value.str().ok_or_else(|| option_error(&name, "must be a string or null"))?;
                target.auth_key = Some(AuthKey::new(key).map_err(|_| option_error(&name, "must not be empty"))?);
            }
            "tls" => target.tls.enabled = flag()?,
            "tls_ca" => {
                let path = value.str().filter(|path| !path.is_empty());
                target.tls.ca = Some(PathBuf::from(path.ok_or_else(|| option_error(&name, "must be a file name"))?));
            }
            "tls_verify" => target.tls.verify = flag()?,
            "node_order" => {
                let order = value.str().and_then(NodeOrder::parse);
                target.node_order =
                    order.ok_or_else(|| option_error(&name, &format!("must be {}", NodeOrder::CHOICES)))?;
            }
            _ => {
                return Err(option_error(
                    &name,
                    "is not an option (known: connect_timeout, io_timeout, auth_key, tls, tls_ca, tls_verify, node_order)",
                ))
            }
        }
    }
    Ok(())
}

/// How long `rpc()` waits for a reply when the caller does not say: `io` for most
/// commands; for `lock`, its own server-side `wait` on top (no limit when it waits as long
/// as it takes), as `lock()` does, so a long wait is not mistaken for a dead server.
fn default_rpc_timeout(command: &str, parameters: &serde_json::Value, io: Duration) -> Option<Duration> {
    if command != "lock" {
        return Some(io);
    }
    match parameters.get("wait") {
        None | Some(serde_json::Value::Null) => None,
        Some(wait) => match wait.as_f64() {
            // A wait too long to represent is as long as it takes, for lockd too.
            Some(seconds) if seconds >= 0.0 => Duration::try_from_secs_f64(seconds).ok().and_then(|w| io.checked_add(w)),
            // Anything else lockd refuses at once.
            _ => Some(io),
        },
    }
}

/// Every object of the process shares one connection, so `rpc()` must not change it for
/// the others: `hello` would re-authenticate it, `defer_reply` would hold back the reply
/// `rpc()` waits for, and a `release_all` without an owner would release every object's
/// locks behind their backs (it is given owner 0, whose locks `rpc()` takes by default).
fn guard_shared_connection(command: &str, parameters: &mut serde_json::Value) -> Result<(), PhpException> {
    if command == "hello" {
        return Err(argument_error(
            "rpc",
            1,
            "command",
            "must not be 'hello': the process's connection is shared; pass auth_key in the constructor options",
        )
        .into());
    }
    let map = parameters.as_object_mut().expect("parameters are a JSON object");
    if map.contains_key("defer_reply") {
        return Err(argument_error("rpc", 2, "parameters", "must not set defer_reply: rpc() waits for its reply").into());
    }
    if command == "release_all" {
        map.entry("owner").or_insert(serde_json::Value::from(0));
    }
    Ok(())
}
