//! The lock table: who holds which key, in which mode, who waits for it and in what order.
//!
//! Pure and synchronous: no I/O, no clock reads (callers pass `now`), no async. The
//! server wraps one table in a mutex; every front end talks to the same table.
//!
//! Rules (docs/PROTOCOL.md, "Lock semantics", is the user-facing statement):
//! - An owner is `(connection, handle)`. A request names keys and one mode; all its keys
//!   are granted together or not at all, with one fencing token from a server-wide
//!   counter that only goes up.
//! - Per-key FIFO without barging: a request may be granted on a key only if it is
//!   compatible with every other holder and with every request queued ahead of it.
//! - Re-locking a key in the mode you hold it is a new grant with a new token. Asking for
//!   exclusive while holding shared is an upgrade: it queues at the front of the key and
//!   waits for the other holders only. Asking for shared while holding exclusive is a
//!   downgrade and never waits.
//! - A request that would wait is refused with [`TableError::Deadlock`] if waiting would
//!   close a cycle in the wait-for graph. Waits only start at enqueue time, so checking
//!   there keeps the graph acyclic.
//! - A waiter is generic payload `W` (the server stores how to reply); it comes back in a
//!   [`Wakeup`] when its request is granted, times out or is cancelled.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pklock_proto::{CycleStep, Mode};

use keys::{KeyMap, KeyState};

mod keys;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub type ConnId = u64;
pub type Key = Arc<str>;
type RequestId = u64;

/// Who holds or waits: an owner handle chosen by the client on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub conn: ConnId,
    pub handle: u64,
}

/// Bounds that keep one client from exhausting the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Held (key, owner) locks plus the new keys that queued requests ask for.
    pub max_locks: usize,
    /// Requests waiting at once, server-wide.
    pub max_waiters: usize,
    /// Keys in one request.
    pub max_keys: usize,
    /// Bytes in one key.
    pub max_key_len: usize,
    /// How long a dead connection's locks stay unavailable (Chubby's lock-delay).
    pub lock_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_locks: 10_000_000,
            max_waiters: 1_000_000,
            max_keys: 1024,
            max_key_len: 1024,
            lock_delay: Duration::ZERO,
        }
    }
}

/// One lock request.
#[derive(Debug, Clone, Copy)]
pub struct LockRequest<'a> {
    pub owner: Owner,
    pub keys: &'a [String],
    pub mode: Mode,
    /// `Some(ZERO)` tries once; `None` waits as long as it takes.
    pub wait: Option<Duration>,
}

/// What `lock` did right away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    Granted { token: u64 },
    /// A try-lock (wait 0) that could not be granted at once.
    Busy,
    /// Waiting; the answer comes later as a [`Wakeup`].
    Queued,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    Granted { token: u64 },
    TimedOut,
    /// Withdrawn by an unlock or release of its own owner.
    Cancelled,
}

/// A waiter whose wait ended, handed back so its requester can be answered.
#[derive(Debug)]
pub struct Wakeup<W> {
    pub waiter: W,
    pub end: WaitEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("deadlock: waiting would close a cycle: {}", describe_cycle(.0))]
    Deadlock(Vec<CycleStep>),
    #[error("too many locks: the server is at its limit of {limit}")]
    TooManyLocks { limit: usize },
    #[error("too many waiters: the server is at its limit of {limit} waiting requests")]
    TooManyWaiters { limit: usize },
    #[error("too many keys: {count} in one request, the limit is {limit}")]
    TooManyKeys { count: usize, limit: usize },
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("owner {handle} on this connection already has a lock request waiting")]
    OwnerBusy { handle: u64 },
}

fn describe_cycle(cycle: &[CycleStep]) -> String {
    cycle
        .iter()
        .map(|s| format!("connection {} owner {} waits for {:?}", s.connection, s.owner, s.key))
        .collect::<Vec<_>>()
        .join(", held or awaited by ")
}

/// What `unlock` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unlocked {
    pub released: Vec<String>,
    pub not_held: Vec<String>,
    pub cancelled: bool,
}

/// Counters and sizes for `stat`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableStats {
    pub locks: usize,
    pub keys: usize,
    pub waiters: usize,
    pub grants: u64,
    pub timeouts: u64,
    pub deadlocks: u64,
}

/// A read-only view of one key for `locks`.
#[derive(Debug)]
pub struct KeyView {
    pub key: String,
    pub holders: Vec<HolderView>,
    pub waiters: Vec<WaiterView>,
}

#[derive(Debug)]
pub struct HolderView {
    pub owner: Owner,
    pub mode: Mode,
    pub since: Instant,
    pub token: u64,
    pub lingering: bool,
}

#[derive(Debug)]
pub struct WaiterView {
    pub owner: Owner,
    pub mode: Mode,
    pub since: Instant,
    pub deadline: Option<Instant>,
}

#[derive(Debug)]
struct Holder {
    owner: Owner,
    mode: Mode,
    token: u64,
    /// Nanoseconds from the table's epoch to the grant (half the size of an `Instant`,
    /// and there is one of these per held lock).
    since: u64,
    /// A dead connection's lock, kept until the lock-delay runs out. It blocks everyone.
    lingering: bool,
}

impl Holder {
    fn blocks(&self, mode: Mode) -> bool {
        self.lingering || !self.mode.compatible_with(mode)
    }
}

#[derive(Debug)]
struct Pending<W> {
    owner: Owner,
    mode: Mode,
    /// Every key of the request; all get the grant.
    keys: Vec<Key>,
    /// The keys on which it waits in a queue (new keys and upgrades).
    queued_on: Vec<Key>,
    /// How many of `keys` the owner does not hold yet (counted against `max_locks`).
    new_keys: usize,
    since: Instant,
    deadline: Option<Instant>,
    waiter: W,
}

#[derive(Debug, Default)]
struct OwnerState {
    held: HashSet<Key>,
    pending: Option<RequestId>,
}

#[derive(Debug, Default)]
struct ConnState {
    owners: HashMap<u64, OwnerState>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    Wait(RequestId),
    Linger { key: Key, token: u64 },
}

/// The lock table. `W` is what the caller needs to answer a waiter later.
#[derive(Debug)]
pub struct LockTable<W> {
    limits: Limits,
    keys: KeyMap,
    conns: HashMap<ConnId, ConnState>,
    pending: HashMap<RequestId, Pending<W>>,
    deadlines: BinaryHeap<Reverse<(Instant, Deadline)>>,
    lingering: usize,
    next_request: RequestId,
    last_token: u64,
    /// Held (key, owner) pairs, lingering ones included.
    held: usize,
    /// New keys asked for by queued requests.
    reserved: usize,
    grants: u64,
    timeouts: u64,
    deadlocks: u64,
    /// The first `now` the table was given; holders' grant times count from it.
    epoch: Option<Instant>,
}

impl<W> LockTable<W> {
    pub fn new(limits: Limits) -> Self {
        LockTable {
            limits,
            keys: KeyMap::default(),
            conns: HashMap::default(),
            pending: HashMap::default(),
            deadlines: BinaryHeap::new(),
            lingering: 0,
            next_request: 0,
            last_token: 0,
            held: 0,
            reserved: 0,
            grants: 0,
            timeouts: 0,
            deadlocks: 0,
            epoch: None,
        }
    }

    /// Asks for `req.keys` in `req.mode`. `waiter` is called only if the request queues.
    /// Grants that the request makes possible for others (a downgrade lets shared
    /// waiters in) are appended to `woken`. A wait too long to represent as a deadline
    /// waits as long as it takes.
    pub fn lock(
        &mut self,
        req: LockRequest<'_>,
        now: Instant,
        waiter: impl FnOnce() -> W,
        woken: &mut Vec<Wakeup<W>>,
    ) -> Result<Acquired, TableError> {
        let acquired = self.try_lock(req, now, waiter, woken);
        // A refused or busy request must not leave an empty owner record behind.
        self.forget_if_idle(req.owner);
        acquired
    }

    fn try_lock(
        &mut self,
        req: LockRequest<'_>,
        now: Instant,
        waiter: impl FnOnce() -> W,
        woken: &mut Vec<Wakeup<W>>,
    ) -> Result<Acquired, TableError> {
        // Worked out before anything changes, so nothing can fail half-way.
        let deadline = req.wait.and_then(|w| now.checked_add(w));
        let keys = self.validate_keys(req.keys)?;
        let owner_state = self.conns.entry(req.owner.conn).or_default().owners.entry(req.owner.handle).or_default();
        if owner_state.pending.is_some() {
            return Err(TableError::OwnerBusy { handle: req.owner.handle });
        }

        let mut new_keys = 0;
        let mut queued_on = Vec::new();
        let mut upgrades = Vec::new();
        let mut downgrades = Vec::new();
        for key in &keys {
            match self.held_mode(req.owner, key) {
                None => {
                    new_keys += 1;
                    queued_on.push(key.clone());
                }
                Some(held) if held == req.mode => {}
                Some(Mode::Shared) => {
                    upgrades.push(key.clone());
                    queued_on.push(key.clone());
                }
                Some(Mode::Exclusive) => downgrades.push(key.clone()),
            }
        }
        if self.held + self.reserved + new_keys > self.limits.max_locks {
            return Err(TableError::TooManyLocks { limit: self.limits.max_locks });
        }

        let grantable_now = queued_on.iter().all(|key| {
            let state = self.keys.get(key);
            let upgrading = upgrades.contains(key);
            state.is_none_or(|s| {
                !s.holders.iter().any(|h| h.owner != req.owner && h.blocks(req.mode))
                    && (if upgrading { !s.has_upgrades() } else { self.queue_admits(s, req.mode) })
            })
        });
        if grantable_now {
            let token = self.apply_grant(req.owner, req.mode, &keys, now);
            self.process(downgrades, now, woken);
            return Ok(Acquired::Granted { token });
        }
        if req.wait == Some(Duration::ZERO) {
            return Ok(Acquired::Busy);
        }
        if self.pending.len() >= self.limits.max_waiters {
            return Err(TableError::TooManyWaiters { limit: self.limits.max_waiters });
        }

        self.next_request += 1;
        let rid = self.next_request;
        for key in &queued_on {
            self.keys.get_or_insert(key).push_waiter(rid, upgrades.contains(key));
        }
        self.pending.insert(
            rid,
            Pending { owner: req.owner, mode: req.mode, keys, queued_on, new_keys, since: now, deadline, waiter: waiter() },
        );
        // Only an owner that holds something can be waited for, so only then can its
        // wait close a cycle (the common first lock of a request skips the search).
        let holds_something = self.owner(req.owner).is_some_and(|o| !o.held.is_empty());
        if let Some(cycle) = holds_something.then(|| self.find_cycle(rid)).flatten() {
            self.deadlocks += 1;
            let undone = self.take_pending(rid);
            self.process(undone.queued_on, now, woken);
            return Err(TableError::Deadlock(cycle));
        }
        self.reserved += new_keys;
        self.owner_mut(req.owner).pending = Some(rid);
        if let Some(at) = deadline {
            self.push_deadline(at, Deadline::Wait(rid));
        }
        Ok(Acquired::Queued)
    }

    /// Releases `keys` held by `owner`; if the owner is waiting for any of them, that
    /// request is withdrawn too (its waiter comes back with [`WaitEnd::Cancelled`]).
    pub fn unlock(&mut self, owner: Owner, keys: &[String], now: Instant, woken: &mut Vec<Wakeup<W>>) -> Unlocked {
        let mut result = Unlocked::default();
        let mut dirty = Vec::new();
        if let Some(rid) = self.owner(owner).and_then(|o| o.pending) {
            let awaited: HashSet<&str> = self.pending[&rid].keys.iter().map(|k| &**k).collect();
            let withdraw = keys.iter().any(|k| awaited.contains(k.as_str()));
            if withdraw {
                let cancelled = self.cancel(rid);
                dirty.extend(cancelled.queued_on);
                woken.push(Wakeup { waiter: cancelled.waiter, end: WaitEnd::Cancelled });
                result.cancelled = true;
            }
        }
        for key in keys {
            let held = self.owner_mut_if_exists(owner).and_then(|o| o.held.take(key.as_str()));
            match held {
                Some(key_arc) => {
                    self.drop_holder(&key_arc, owner);
                    dirty.push(key_arc);
                    result.released.push(key.clone());
                }
                None => result.not_held.push(key.clone()),
            }
        }
        self.forget_if_idle(owner);
        self.process(dirty, now, woken);
        result
    }

    /// Releases everything `owner` holds and withdraws its waiting request.
    /// Returns (locks released, requests withdrawn).
    pub fn release_owner(&mut self, owner: Owner, now: Instant, woken: &mut Vec<Wakeup<W>>) -> (usize, usize) {
        let Some(state) = self.conns.get_mut(&owner.conn).and_then(|c| c.owners.remove(&owner.handle)) else {
            return (0, 0);
        };
        let (released, cancelled, dirty) = self.release_owner_state(owner, state, false, woken);
        self.process(dirty, now, woken);
        (released, cancelled)
    }

    /// Releases every owner of a connection. With `dead` (the connection closed or was
    /// found dead), waiters of the connection are dropped rather than woken, and with a
    /// lock-delay configured its locks linger until the delay runs out.
    pub fn release_connection(&mut self, conn: ConnId, dead: bool, now: Instant, woken: &mut Vec<Wakeup<W>>) -> (usize, usize) {
        let Some(state) = self.conns.remove(&conn) else {
            return (0, 0);
        };
        let linger = dead && !self.limits.lock_delay.is_zero();
        let (mut released, mut cancelled, mut dirty) = (0, 0, Vec::new());
        for (handle, owner_state) in state.owners {
            let owner = Owner { conn, handle };
            let mut own_woken = Vec::new();
            let (r, c, d) = self.release_owner_state(owner, owner_state, linger, &mut own_woken);
            if !dead {
                woken.append(&mut own_woken);
            }
            released += r;
            cancelled += c;
            dirty.extend(d);
        }
        if linger {
            for key in &dirty {
                for h in self.keys.get_mut(key).into_iter().flat_map(|s| s.holders.iter_mut()) {
                    if h.owner.conn == conn && !h.lingering {
                        h.lingering = true;
                        self.lingering += 1;
                        let token = h.token;
                        self.deadlines.push(Reverse((now + self.limits.lock_delay, Deadline::Linger { key: key.clone(), token })));
                    }
                }
            }
        }
        self.process(dirty, now, woken);
        (released, cancelled)
    }

    /// Ends the waits whose time ran out and the lock-delays that are over.
    pub fn expire(&mut self, now: Instant, woken: &mut Vec<Wakeup<W>>) {
        let mut dirty = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, deadline)) = self.deadlines.pop().expect("peeked");
            match deadline {
                Deadline::Wait(rid) => {
                    if self.pending.contains_key(&rid) {
                        let expired = self.cancel(rid);
                        self.forget_if_idle(expired.owner);
                        self.timeouts += 1;
                        dirty.extend(expired.queued_on);
                        woken.push(Wakeup { waiter: expired.waiter, end: WaitEnd::TimedOut });
                    }
                }
                Deadline::Linger { key, token } => {
                    if let Some(state) = self.keys.get_mut(&key) {
                        let before = state.holders.len();
                        state.holders.retain(|h| !(h.lingering && h.token == token));
                        let removed = before - state.holders.len();
                        self.held -= removed;
                        self.lingering -= removed;
                        dirty.push(key);
                    }
                }
            }
        }
        self.process(dirty, now, woken);
    }

    /// When `expire` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Whether `token` belongs to a live holder of `key` (a fencing check).
    pub fn check(&self, key: &str, token: u64) -> bool {
        self.keys.get(key).is_some_and(|s| s.holders.iter().any(|h| h.token == token && !h.lingering))
    }

    /// The token of `owner`'s lock on `key`, if it holds one.
    #[cfg(test)]
    fn token_of(&self, owner: Owner, key: &str) -> Option<u64> {
        self.keys.get(key)?.holders.iter().find(|h| h.owner == owner && !h.lingering).map(|h| h.token)
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            locks: self.held,
            keys: self.keys.len(),
            waiters: self.pending.len(),
            grants: self.grants,
            timeouts: self.timeouts,
            deadlocks: self.deadlocks,
        }
    }

    /// Keys starting with `prefix`, sorted, at most `limit` of them; the flag says
    /// whether more matched.
    pub fn snapshot(&self, prefix: &str, limit: usize) -> (Vec<KeyView>, bool) {
        let mut states: Vec<&KeyState> = self.keys.iter().filter(|s| s.key.starts_with(prefix)).collect();
        let truncated = states.len() > limit;
        if truncated {
            states.select_nth_unstable_by(limit, |a, b| a.key.cmp(&b.key));
            states.truncate(limit);
        }
        states.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let views = states
            .into_iter()
            .map(|state| {
                KeyView {
                    key: state.key.to_string(),
                    holders: state
                        .holders
                        .iter()
                        .map(|h| HolderView {
                            owner: h.owner,
                            mode: h.mode,
                            since: self.epoch.expect("set by the first grant") + Duration::from_nanos(h.since),
                            token: h.token,
                            lingering: h.lingering,
                        })
                        .collect(),
                    waiters: state
                        .waiters()
                        .map(|rid| {
                            let p = &self.pending[&rid];
                            WaiterView { owner: p.owner, mode: p.mode, since: p.since, deadline: p.deadline }
                        })
                        .collect(),
                }
            })
            .collect();
        (views, truncated)
    }

    // -----------------------------------------------------------------------------------

    fn validate_keys(&self, keys: &[String]) -> Result<Vec<Key>, TableError> {
        if keys.is_empty() {
            return Err(TableError::BadKey("a lock request needs at least one key".into()));
        }
        if keys.len() > self.limits.max_keys {
            return Err(TableError::TooManyKeys { count: keys.len(), limit: self.limits.max_keys });
        }
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for key in keys {
            if key.is_empty() {
                return Err(TableError::BadKey("keys must not be empty".into()));
            }
            if key.len() > self.limits.max_key_len {
                return Err(TableError::BadKey(format!(
                    "key of {} bytes is longer than the limit of {} bytes",
                    key.len(),
                    self.limits.max_key_len
                )));
            }
            if !out.iter().any(|k| **k == **key) {
                // Share the table's allocation when the key already exists.
                out.push(self.keys.get(key).map_or_else(|| Key::from(key.as_str()), |s| s.key.clone()));
            }
        }
        Ok(out)
    }

    fn owner(&self, owner: Owner) -> Option<&OwnerState> {
        self.conns.get(&owner.conn)?.owners.get(&owner.handle)
    }

    fn owner_mut(&mut self, owner: Owner) -> &mut OwnerState {
        self.conns.entry(owner.conn).or_default().owners.entry(owner.handle).or_default()
    }

    /// Drops the record of an owner that holds nothing and waits for nothing: a
    /// long-lived connection sees a new owner per PHP object, and records must not pile up.
    fn forget_if_idle(&mut self, owner: Owner) {
        if let Some(conn) = self.conns.get_mut(&owner.conn) {
            if conn.owners.get(&owner.handle).is_some_and(|o| o.held.is_empty() && o.pending.is_none()) {
                conn.owners.remove(&owner.handle);
            }
        }
    }

    fn owner_mut_if_exists(&mut self, owner: Owner) -> Option<&mut OwnerState> {
        self.conns.get_mut(&owner.conn)?.owners.get_mut(&owner.handle)
    }

    fn held_mode(&self, owner: Owner, key: &str) -> Option<Mode> {
        self.keys.get(key)?.holders.iter().find(|h| h.owner == owner && !h.lingering).map(|h| h.mode)
    }

    /// Whether a new request in `mode` at the back of this key's queue has nobody
    /// incompatible ahead of it.
    fn queue_admits(&self, state: &KeyState, mode: Mode) -> bool {
        match mode {
            Mode::Exclusive => state.waiters().next().is_none(),
            Mode::Shared => !state.has_upgrades() && state.waiters().all(|r| self.pending[&r].mode == Mode::Shared),
        }
    }

    /// Whether queued request `rid` can be granted on every key it waits on.
    fn grantable(&self, rid: RequestId) -> bool {
        let req = &self.pending[&rid];
        req.queued_on.iter().all(|key| {
            let state = self.keys.get(key).expect("a waiter's key has state");
            !state.holders.iter().any(|h| h.owner != req.owner && h.blocks(req.mode))
                && state.ahead_of(rid).all(|r| req.mode.compatible_with(self.pending[&r].mode))
        })
    }

    /// Gives `owner` all of `keys` in `mode` under a new token.
    fn apply_grant(&mut self, owner: Owner, mode: Mode, keys: &[Key], now: Instant) -> u64 {
        self.last_token += 1;
        let token = self.last_token;
        self.grants += 1;
        let epoch = *self.epoch.get_or_insert(now);
        let since = u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut added = Vec::new();
        for key in keys {
            let state = self.keys.get_or_insert(key);
            match state.holders.iter_mut().find(|h| h.owner == owner && !h.lingering) {
                Some(h) => {
                    h.mode = mode;
                    h.token = token;
                    h.since = since;
                }
                None => {
                    state.holders.push(Holder { owner, mode, token, since, lingering: false });
                    added.push(key.clone());
                }
            }
        }
        self.held += added.len();
        self.owner_mut(owner).held.extend(added);
        token
    }

    /// Removes a queued request from the queues and the owner; its keys may need another look.
    fn cancel(&mut self, rid: RequestId) -> Pending<W> {
        let req = self.take_pending(rid);
        self.reserved -= req.new_keys;
        if let Some(o) = self.owner_mut_if_exists(req.owner) {
            o.pending = None;
        }
        req
    }

    fn take_pending(&mut self, rid: RequestId) -> Pending<W> {
        let req = self.pending.remove(&rid).expect("pending request");
        for key in &req.queued_on {
            if let Some(state) = self.keys.get_mut(key) {
                state.remove_waiter(rid);
            }
        }
        req
    }

    fn drop_holder(&mut self, key: &Key, owner: Owner) {
        if let Some(state) = self.keys.get_mut(key) {
            if let Some(i) = state.holders.iter().position(|h| h.owner == owner && !h.lingering) {
                state.holders.swap_remove(i);
                self.held -= 1;
            }
        }
    }

    /// Releases an owner already detached from its connection. Returns (released,
    /// cancelled, keys to look at again).
    fn release_owner_state(&mut self, owner: Owner, state: OwnerState, linger: bool, woken: &mut Vec<Wakeup<W>>) -> (usize, usize, Vec<Key>) {
        let mut dirty = Vec::new();
        let mut cancelled = 0;
        if let Some(rid) = state.pending {
            let req = self.take_pending(rid);
            self.reserved -= req.new_keys;
            dirty.extend(req.queued_on);
            woken.push(Wakeup { waiter: req.waiter, end: WaitEnd::Cancelled });
            cancelled = 1;
        }
        let released = state.held.len();
        for key in state.held {
            if !linger {
                self.drop_holder(&key, owner);
            }
            dirty.push(key);
        }
        (released, cancelled, dirty)
    }

    /// Grants whatever has become grantable on `dirty` keys, front of each queue first,
    /// and forgets keys nobody holds or waits for.
    fn process(&mut self, mut dirty: Vec<Key>, now: Instant, woken: &mut Vec<Wakeup<W>>) {
        while let Some(key) = dirty.pop() {
            let Some(state) = self.keys.get(&key) else { continue };
            let waiters: Vec<RequestId> = state.waiters().collect();
            let mut exclusive_ahead = false;
            let mut any_ahead = false;
            for rid in waiters {
                let mode = self.pending[&rid].mode;
                if exclusive_ahead || (mode == Mode::Exclusive && any_ahead) {
                    break;
                }
                if self.grantable(rid) {
                    let req = self.take_pending(rid);
                    self.reserved -= req.new_keys;
                    self.owner_mut(req.owner).pending = None;
                    let token = self.apply_grant(req.owner, req.mode, &req.keys, now);
                    // Keys it held but did not queue on may have been downgraded, which
                    // can let shared waiters in there.
                    if req.mode == Mode::Shared {
                        dirty.extend(req.keys.iter().filter(|k| !req.queued_on.contains(k)).cloned());
                    }
                    woken.push(Wakeup { waiter: req.waiter, end: WaitEnd::Granted { token } });
                } else {
                    any_ahead = true;
                    exclusive_ahead |= mode == Mode::Exclusive;
                }
            }
            self.keys.remove_if_idle(&key);
        }
        self.compact_deadlines();
    }

    fn push_deadline(&mut self, at: Instant, what: Deadline) {
        self.deadlines.push(Reverse((at, what)));
    }

    /// Granted or cancelled waits leave their deadline behind; drop them once they
    /// outnumber the live ones, so the heap stays proportional to what is waiting.
    fn compact_deadlines(&mut self) {
        let live = self.pending.len() + self.lingering;
        if self.deadlines.len() > 2 * live + 1024 {
            let pending = &self.pending;
            self.deadlines.retain(|Reverse((_, d))| match d {
                Deadline::Wait(rid) => pending.contains_key(rid),
                Deadline::Linger { .. } => true,
            });
        }
    }

    /// Who `rid` waits for, key by key: incompatible holders, and the incompatible
    /// waiters ahead of it up to the nearest exclusive one (which itself waits for
    /// everything further ahead, so the rest is reached through it).
    fn blockers(&self, rid: RequestId) -> Vec<(Key, Owner)> {
        let req = &self.pending[&rid];
        let mut out = Vec::new();
        for key in &req.queued_on {
            let state = self.keys.get(key).expect("a waiter's key has state");
            for h in &state.holders {
                if h.owner != req.owner && h.blocks(req.mode) {
                    out.push((key.clone(), h.owner));
                }
            }
            for r in state.ahead_of(rid) {
                let other = &self.pending[&r];
                if !req.mode.compatible_with(other.mode) {
                    out.push((key.clone(), other.owner));
                }
                if other.mode == Mode::Exclusive {
                    break;
                }
            }
        }
        out
    }

    /// Depth-first search of the wait-for graph from the owner of `rid`; returns the
    /// cycle through it, if any.
    fn find_cycle(&self, rid: RequestId) -> Option<Vec<CycleStep>> {
        let start = self.pending[&rid].owner;
        let mut visited = HashSet::default();
        // Each frame: an owner, its outgoing edges, and the next edge to follow.
        let mut stack: Vec<(Owner, Vec<(Key, Owner)>, usize)> = vec![(start, self.blockers(rid), 0)];
        visited.insert(start);
        while let Some((_, edges, next)) = stack.last_mut() {
            let Some((_, to)) = edges.get(*next).cloned() else {
                stack.pop();
                continue;
            };
            *next += 1;
            if to == start {
                return Some(
                    stack
                        .iter()
                        .map(|(owner, edges, next)| CycleStep {
                            connection: owner.conn,
                            owner: owner.handle,
                            key: edges[next - 1].0.to_string(),
                        })
                        .collect(),
                );
            }
            if !visited.insert(to) {
                continue;
            }
            if let Some(next_rid) = self.owner(to).and_then(|o| o.pending) {
                stack.push((to, self.blockers(next_rid), 0));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
