//! The lock table: who holds which key, in which mode, who waits for it and in what order.
//!
//! Pure and synchronous: no I/O, no clock reads (callers pass `now`), no async. The
//! server wraps one table in a mutex; every front end talks to the same table.
//!
//! Rules (docs/PROTOCOL.md, "Lock semantics", is the user-facing statement):
//! - An owner is `(connection, handle)`. A request names keys and one mode; all its keys
//!   are granted together or not at all, with one fencing token from a counter that only
//!   goes up (and starts above every token of an earlier run: [`LockTable::start_tokens_after`]).
//! - Per-key FIFO without barging: a request may be granted on a key only if it is
//!   compatible with every other holder and with every request queued ahead of it.
//! - Re-locking a key in the mode you hold it is a new grant with a new token. Asking for
//!   exclusive while holding shared is an upgrade: it queues at the front of the key and
//!   waits for the other holders only. Asking for shared while holding exclusive is a
//!   downgrade and never waits.
//! - A request that would wait is refused with [`TableError::Deadlock`] if waiting would
//!   close a cycle in the wait-for graph. Waits only start at enqueue time, so checking
//!   there keeps the graph acyclic. The search has a budget; past it the wait is refused
//!   with [`TableError::DeadlockSearchLimit`] rather than stalling the server.
//! - A waiter is generic payload `W` (the server stores how to reply); it comes back in a
//!   [`Wakeup`] when its request is granted, times out, is cancelled or the table shuts down.
//!
//! Work per operation is bounded by the operation's own size, never by how many others
//! hold or wait for the same keys: see `keys.rs` for the O(1)/O(log n) questions and
//! `grant.rs` for how waiters are parked so that a release looks only at requests it
//! may actually unblock.
//!
//! Layout: this file has the types and the operations; `grant.rs` decides and makes
//! grants, `deadlock.rs` searches the wait-for graph, `deadlines.rs` ends waits and
//! lock-delays on time, `release.rs` releases what a connection or owner holds in
//! slices, `snapshot.rs` serves `locks` and `stat`, `keys.rs` holds per-key state.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use pklock_proto::{CycleStep, Mode};

use keys::KeyMap;

mod deadlines;
mod deadlock;
mod grant;
mod image;
mod keys;
mod release;
mod slots;
mod snapshot;
mod values;

pub use image::{HoldImage, RawImage, RebuildError, TableImage, WaitImage};
pub use release::{Release, SLICE};
pub use snapshot::{HolderView, KeyView, Page, TableStats, WaiterView};
pub use values::{ValueId, NO_VALUE};

use values::Values;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub type ConnId = u64;
/// A key name, shared by the indexes that name it (one word, where `Arc<str>` takes two).
pub type Key = arcstr::ArcStr;
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
    /// Estimated bytes of the table (keys, holders, waiters); see [`LockTable::memory`].
    pub max_memory: usize,
    /// Requests waiting at once, server-wide.
    pub max_waiters: usize,
    /// Requests waiting at once on one connection: also bounds the work of ending them
    /// all, in one step, when it goes.
    pub max_waiters_per_connection: usize,
    /// Keys in one request.
    pub max_keys: usize,
    /// Bytes in one key.
    pub max_key_len: usize,
    /// Steps (owners visited plus edges followed) one deadlock search may take.
    pub deadlock_budget: usize,
    /// How long a dead connection's locks stay unavailable (Chubby's lock-delay).
    pub lock_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_locks: 10_000_000,
            max_memory: 4 << 30,
            max_waiters: 1_000_000,
            max_waiters_per_connection: 10_000,
            max_keys: 1024,
            max_key_len: 1024,
            deadlock_budget: 100_000,
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
    /// For shared requests: a lock value (eLock's value locks). Shared holders of a key
    /// all hold the same value; a shared request with another value conflicts. `None`
    /// is plain shared, a value of its own.
    pub value: Option<&'a str>,
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
    /// The table stopped granting ([`LockTable::shut_down`]).
    ShuttingDown,
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
    #[error("the deadlock check for this wait needed more than its budget of {budget} steps, so the wait is refused; retry, or try with wait 0")]
    DeadlockSearchLimit { budget: usize },
    #[error("too many locks: the server is at its limit of {limit}")]
    TooManyLocks { limit: usize },
    #[error("out of lock memory: the lock table would exceed its limit of {limit} bytes (--max-memory)")]
    MemoryLimit { limit: usize },
    #[error("too many waiters: the server is at its limit of {limit} waiting requests")]
    TooManyWaiters { limit: usize },
    #[error("too many waiters: this connection is at its limit of {limit} waiting requests (--max-waiters-per-connection)")]
    TooManyWaitersOnConnection { limit: usize },
    #[error("too many keys: {count} in one request, the limit is {limit}")]
    TooManyKeys { count: usize, limit: usize },
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("owner {handle} on this connection already has a lock request waiting")]
    OwnerBusy { handle: u64 },
    #[error("the server is shutting down and grants no more locks")]
    ShuttingDown,
    #[error("this owner holds the key with another value; unlock it first")]
    ValueConflict,
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
    /// The lock value of a shared hold ([`NO_VALUE`] for plain ones).
    value: ValueId,
    /// Where the key is in its owner's `held_keys`, so that an unlock takes it out in
    /// O(1) (a lingering holder's owner state is gone, and with it the meaning of this).
    listed_at: u32,
}

/// A key a request waits on in a queue: a key it does not hold, or an upgrade.
#[derive(Debug)]
struct Wait {
    key: Key,
    upgrade: bool,
}

#[derive(Debug)]
struct Pending<W> {
    owner: Owner,
    mode: Mode,
    value: ValueId,
    /// Every key of the request; all get the grant.
    keys: Vec<Key>,
    /// The keys on which it waits in a queue.
    queued_on: Vec<Wait>,
    /// Which of `queued_on` it is parked on (see `grant.rs`).
    parked_on: usize,
    /// How many of `keys` the owner does not hold yet (counted against `max_locks`).
    new_keys: usize,
    since: Instant,
    deadline: Option<Instant>,
    waiter: W,
}

#[derive(Debug, Default)]
struct OwnerState {
    /// The keys the owner holds, each once, in no particular order: each holder knows its
    /// place ([`Holder::listed_at`]), so an unlock swaps the last entry into the gap.
    /// A list costs 8 bytes per lock, about half of a hash set's.
    held_keys: Vec<Key>,
    pending: Option<RequestId>,
}

#[derive(Debug, Default)]
struct ConnState {
    owners: HashMap<u64, OwnerState>,
    /// The owners with a waiting request, so that they are found without visiting every
    /// owner when the connection goes.
    waiting: HashSet<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    Wait(RequestId),
    Linger { key: Key, owner: Owner },
}

/// Estimated bytes per item, for `--max-memory`: the record itself plus what indexes it.
const KEY_BYTES: usize = std::mem::size_of::<keys::KeyState>() + 64;
const HOLDER_BYTES: usize = std::mem::size_of::<Holder>() + 32;
const REQUEST_BYTES: usize = 256;
const WAIT_BYTES: usize = 96;

/// The lock table. `W` is what the caller needs to answer a waiter later.
#[derive(Debug)]
pub struct LockTable<W> {
    limits: Limits,
    keys: KeyMap,
    values: Values,
    conns: HashMap<ConnId, ConnState>,
    /// Boxed: when the map doubles, it moves 16 bytes per request rather than 200 (a
    /// stall of 240–880 ms at 917 504 waiters, every client waiting: `attack_table.rs`).
    pending: HashMap<RequestId, Box<Pending<W>>>,
    deadlines: BinaryHeap<Reverse<(Instant, Deadline)>>,
    lingering: usize,
    next_request: RequestId,
    last_token: u64,
    /// Held (key, owner) pairs, lingering ones included.
    held: usize,
    /// New keys asked for by queued requests.
    reserved: usize,
    /// Keys named by queued requests (for the memory estimate).
    pending_keys: usize,
    grants: u64,
    timeouts: u64,
    deadlocks: u64,
    /// Set by `shut_down`: nothing is granted any more.
    closed: bool,
    /// The first `now` the table was given; holders' grant times count from it.
    epoch: Option<Instant>,
}

impl<W> LockTable<W> {
    pub fn new(limits: Limits) -> Self {
        LockTable {
            limits,
            keys: KeyMap::default(),
            values: Values::default(),
            conns: HashMap::default(),
            pending: HashMap::default(),
            deadlines: BinaryHeap::new(),
            lingering: 0,
            next_request: 0,
            last_token: 0,
            held: 0,
            reserved: 0,
            pending_keys: 0,
            grants: 0,
            timeouts: 0,
            deadlocks: 0,
            closed: false,
            epoch: None,
        }
    }

    /// Makes every token from now on greater than `token` (the highest an earlier run of
    /// the server may have issued).
    pub fn start_tokens_after(&mut self, token: u64) {
        self.last_token = self.last_token.max(token);
    }

    /// The last fencing token issued.
    pub fn last_token(&self) -> u64 {
        self.last_token
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
        // The request's own reference keeps the value's id while it is looked at.
        let value = self.values.acquire(req.value.filter(|_| req.mode == Mode::Shared));
        let acquired = self.try_lock(req, value, now, waiter, woken);
        self.values.release(value);
        // A refused or busy request must not leave an empty owner record behind.
        self.forget_if_idle(req.owner);
        acquired
    }

    fn try_lock(
        &mut self,
        req: LockRequest<'_>,
        value: ValueId,
        now: Instant,
        waiter: impl FnOnce() -> W,
        woken: &mut Vec<Wakeup<W>>,
    ) -> Result<Acquired, TableError> {
        // Worked out before anything changes, so nothing can fail half-way.
        let deadline = req.wait.and_then(|w| now.checked_add(w));
        let keys = self.validate_keys(req.keys)?;
        if self.closed {
            return Err(TableError::ShuttingDown);
        }
        if self.owner(req.owner).is_some_and(|o| o.pending.is_some()) {
            return Err(TableError::OwnerBusy { handle: req.owner.handle });
        }

        let (queued_on, downgrades) = self.classify(req.owner, &keys, req.mode, value)?;
        let new_keys = queued_on.iter().filter(|w| !w.upgrade).count();
        if self.held + self.reserved + new_keys > self.limits.max_locks {
            return Err(TableError::TooManyLocks { limit: self.limits.max_locks });
        }
        let new_key_bytes: usize = keys.iter().filter(|k| self.keys.get(k).is_none()).map(|k| KEY_BYTES + k.len()).sum();
        self.check_memory(new_key_bytes + new_keys * HOLDER_BYTES)?;

        // The id it gets if it queues; every request queued now is ahead of it.
        let rid = self.next_request + 1;
        let blocked_on = self.first_blocked(rid, req.mode, value, &queued_on);
        let Some(parked_on) = blocked_on else {
            let token = self.apply_grant(req.owner, req.mode, value, &keys, now);
            self.process(downgrades, now, woken);
            return Ok(Acquired::Granted { token });
        };
        if req.wait == Some(Duration::ZERO) {
            return Ok(Acquired::Busy);
        }
        if self.pending.len() >= self.limits.max_waiters {
            return Err(TableError::TooManyWaiters { limit: self.limits.max_waiters });
        }
        if self.conns.get(&req.owner.conn).is_some_and(|c| c.waiting.len() >= self.limits.max_waiters_per_connection) {
            return Err(TableError::TooManyWaitersOnConnection { limit: self.limits.max_waiters_per_connection });
        }
        self.check_memory(new_key_bytes + new_keys * HOLDER_BYTES + REQUEST_BYTES + keys.len() * WAIT_BYTES)?;

        let pending = Pending { owner: req.owner, mode: req.mode, value, keys, queued_on, parked_on, new_keys, since: now, deadline, waiter: waiter() };
        self.enqueue(rid, pending);
        // Only an owner that holds something can be waited for, so only then can its
        // wait close a cycle (the common first lock of a request skips the search).
        if self.holds_anything(req.owner) {
            let refusal = match self.find_cycle(rid) {
                Ok(None) => None,
                Ok(Some(cycle)) => {
                    self.deadlocks += 1;
                    Some(TableError::Deadlock(cycle))
                }
                Err(budget) => Some(TableError::DeadlockSearchLimit { budget }),
            };
            if let Some(refusal) = refusal {
                let undone = self.cancel(rid);
                self.process(undone.queued_on.into_iter().map(|w| w.key).collect(), now, woken);
                return Err(refusal);
            }
        }
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
            if keys.iter().any(|k| awaited.contains(k.as_str())) {
                let cancelled = self.cancel(rid);
                dirty.extend(cancelled.queued_on.into_iter().map(|w| w.key));
                woken.push(Wakeup { waiter: cancelled.waiter, end: WaitEnd::Cancelled });
                result.cancelled = true;
            }
        }
        for key in keys {
            let held = self.keys.get(key).filter(|s| s.holder(owner).is_some()).map(|s| s.key.clone());
            match held {
                Some(key_arc) => {
                    let holder = self.drop_holder(&key_arc, owner).expect("just found");
                    self.unlist(owner, holder.listed_at);
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

    /// Withdraws `owner`'s waiting request, if any (its waiter comes back with
    /// [`WaitEnd::Cancelled`]); what it holds stays held.
    pub fn withdraw(&mut self, owner: Owner, now: Instant, woken: &mut Vec<Wakeup<W>>) -> bool {
        let Some(rid) = self.owner(owner).and_then(|o| o.pending) else {
            return false;
        };
        let cancelled = self.cancel(rid);
        self.forget_if_idle(owner);
        woken.push(Wakeup { waiter: cancelled.waiter, end: WaitEnd::Cancelled });
        self.process(cancelled.queued_on.into_iter().map(|w| w.key).collect(), now, woken);
        true
    }

    /// Stops granting for good: every waiting request comes back with
    /// [`WaitEnd::ShuttingDown`] and later requests are refused. Releases that follow
    /// (connections closing) then grant nothing, so no client is told it got a lock
    /// that the shutdown is about to take away.
    pub fn shut_down(&mut self, woken: &mut Vec<Wakeup<W>>) {
        self.closed = true;
        let waiting: Vec<RequestId> = self.pending.keys().copied().collect();
        for rid in waiting {
            let req = self.cancel(rid);
            self.forget_if_idle(req.owner);
            woken.push(Wakeup { waiter: req.waiter, end: WaitEnd::ShuttingDown });
        }
    }

    /// The waiting requests of connection `conn`'s owners, with their waiters.
    pub fn waiters_of(&self, conn: ConnId) -> impl Iterator<Item = (Owner, &W)> {
        let owners = self.conns.get(&conn).into_iter().flat_map(|c| &c.owners);
        owners.filter_map(move |(&handle, o)| Some((Owner { conn, handle }, &self.pending[&o.pending?].waiter)))
    }

    /// How many requests wait, server-wide.
    pub fn waiter_count(&self) -> usize {
        self.pending.len()
    }

    /// How many of connection `conn`'s owners wait: what ending its waits in one step costs.
    pub fn waits_on(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.waiting.len())
    }

    /// Whether `owner` holds any lock.
    pub fn holds_anything(&self, owner: Owner) -> bool {
        self.owner(owner).is_some_and(|o| !o.held_keys.is_empty())
    }

    /// Whether `token` belongs to a live holder of `key` (a fencing check).
    pub fn check(&self, key: &str, token: u64) -> bool {
        self.keys.get(key).is_some_and(|s| s.has_token(token))
    }

    /// The token of `owner`'s lock on `key`, if it holds one.
    #[cfg(test)]
    fn token_of(&self, owner: Owner, key: &str) -> Option<u64> {
        self.keys.get(key)?.holder(owner).map(|h| h.token)
    }

    /// Estimated bytes the table uses (what `--max-memory` bounds): every key with its
    /// name, every held lock, every waiting request and the keys it names.
    pub fn memory(&self) -> usize {
        self.keys.len() * KEY_BYTES
            + self.keys.name_bytes()
            + (self.held + self.reserved) * HOLDER_BYTES
            + self.pending.len() * REQUEST_BYTES
            + self.pending_keys * WAIT_BYTES
    }

    // -----------------------------------------------------------------------------------

    fn check_memory(&self, more: usize) -> Result<(), TableError> {
        if self.memory() + more > self.limits.max_memory {
            return Err(TableError::MemoryLimit { limit: self.limits.max_memory });
        }
        Ok(())
    }

    fn validate_keys(&self, keys: &[String]) -> Result<Vec<Key>, TableError> {
        if keys.is_empty() {
            return Err(TableError::BadKey("a lock request needs at least one key".into()));
        }
        if keys.len() > self.limits.max_keys {
            return Err(TableError::TooManyKeys { count: keys.len(), limit: self.limits.max_keys });
        }
        let mut seen: HashSet<&str> = HashSet::with_capacity_and_hasher(keys.len(), Default::default());
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
            if seen.insert(key) {
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

    fn owner_mut_if_exists(&mut self, owner: Owner) -> Option<&mut OwnerState> {
        self.conns.get_mut(&owner.conn)?.owners.get_mut(&owner.handle)
    }

    /// Drops the record of an owner that holds nothing and waits for nothing: a
    /// long-lived connection sees a new owner per PHP object, and records must not pile up.
    fn forget_if_idle(&mut self, owner: Owner) {
        if let Some(conn) = self.conns.get_mut(&owner.conn) {
            if conn.owners.get(&owner.handle).is_some_and(|o| o.held_keys.is_empty() && o.pending.is_none()) {
                conn.owners.remove(&owner.handle);
            }
            if conn.owners.is_empty() {
                self.conns.remove(&owner.conn);
            }
        }
    }

    /// Takes entry `at` out of `owner`'s held list; the last entry moves into its place.
    fn unlist(&mut self, owner: Owner, at: u32) {
        let list = &mut self.owner_mut(owner).held_keys;
        list.swap_remove(at as usize);
        if let Some(moved) = list.get(at as usize).cloned() {
            self.keys.get_mut(&moved).expect("a listed key is held").relist(owner, at);
        }
    }

    /// Sorts a request's keys by what the owner already holds: the keys it must wait for
    /// in a queue (new ones, and upgrades), and the keys it holds exclusive but asks for
    /// shared (downgrades, which never wait).
    fn classify(&self, owner: Owner, keys: &[Key], mode: Mode, value: ValueId) -> Result<(Vec<Wait>, Vec<Key>), TableError> {
        let mut queued_on = Vec::new();
        let mut downgrades = Vec::new();
        for key in keys {
            match (self.held_mode(owner, key), mode) {
                (None, _) => queued_on.push(Wait { key: key.clone(), upgrade: false }),
                (Some((Mode::Exclusive, _)), Mode::Exclusive) => {}
                (Some((Mode::Shared, held)), Mode::Shared) if held == value => {}
                (Some((Mode::Shared, _)), Mode::Shared) => return Err(TableError::ValueConflict),
                (Some((Mode::Shared, _)), Mode::Exclusive) => queued_on.push(Wait { key: key.clone(), upgrade: true }),
                (Some((Mode::Exclusive, _)), Mode::Shared) => downgrades.push(key.clone()),
            }
        }
        Ok((queued_on, downgrades))
    }

    /// Puts a request in the queues of the keys it waits on, parked on `parked_on`, as
    /// `rid` (the newest request). [`LockTable::cancel`] undoes it.
    fn enqueue(&mut self, rid: RequestId, req: Pending<W>) {
        self.next_request = rid;
        for wait in &req.queued_on {
            self.keys.get_or_insert(&wait.key).push_waiter(rid, req.mode, req.value, wait.upgrade);
        }
        let parked = &req.queued_on[req.parked_on];
        self.keys.get_or_insert(&parked.key).park(rid, parked.upgrade);
        self.pending_keys += req.keys.len();
        self.values.retain(req.value);
        self.reserved += req.new_keys;
        self.owner_mut(req.owner).pending = Some(rid);
        self.conns.get_mut(&req.owner.conn).expect("just made").waiting.insert(req.owner.handle);
        self.pending.insert(rid, Box::new(req));
    }

    fn held_mode(&self, owner: Owner, key: &str) -> Option<(Mode, ValueId)> {
        self.keys.get(key)?.holder(owner).map(|h| (h.mode, h.value))
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

    /// Takes a request out of the queues. Its reference to its value goes with it, so a
    /// caller that grants it must take the holders' references first.
    fn take_pending(&mut self, rid: RequestId) -> Pending<W> {
        let req = *self.pending.remove(&rid).expect("pending request");
        if let Some(conn) = self.conns.get_mut(&req.owner.conn) {
            conn.waiting.remove(&req.owner.handle);
        }
        self.pending_keys -= req.keys.len();
        self.values.release(req.value);
        for wait in &req.queued_on {
            if let Some(state) = self.keys.get_mut(&wait.key) {
                state.remove_waiter(rid);
            }
        }
        req
    }

    /// Removes `owner`'s live hold on `key`, if it has one, and returns it.
    fn drop_holder(&mut self, key: &Key, owner: Owner) -> Option<Holder> {
        let state = self.keys.get_mut(key)?;
        state.holder(owner)?;
        let holder = state.remove_holder(owner).expect("just found");
        self.values.release(holder.value);
        self.held -= 1;
        Some(holder)
    }
}

#[cfg(test)]
mod tests;
