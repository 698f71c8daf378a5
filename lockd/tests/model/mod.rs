//! The lock table's reference model: a small, deliberately naive re-statement of the
//! table's rules, and [`check_ops`], which runs an operation sequence through both and
//! panics at the first step where they disagree on the outcome, on which waiters were
//! woken and how, on who holds what, or on queue order. Exclusivity is checked on the
//! table's own snapshot, and tokens must only grow.
//!
//! State by the property test (lockd/tests/table_model.rs, random sequences) and the
//! `table` fuzz target (fuzz/src/table.rs, coverage-guided sequences).
//!
//! The model recomputes everything from scratch: it grants by repeatedly scanning every
//! waiting request until nothing changes, and detects deadlock on the full wait-for
//! graph (every incompatible holder and every incompatible waiter ahead), so it checks
//! the table's incremental processing and its pruned deadlock search.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lockd::table::{Acquired, LockRequest, LockTable, Limits, Owner, TableError, WaitEnd};
use pklock_proto::Mode;

/// How long a lock request may wait: not at all, some seconds, or as long as it takes.
#[derive(Debug, Clone)]
pub enum Wait {
    Try,
    Secs(u64),
    Forever,
}

/// One step of a sequence: what a client (or the clock) does to the table.
#[derive(Debug, Clone)]
pub enum Op {
    /// `value`: a lock value for a shared request (eLock's value locks).
    Lock { owner: Owner, keys: Vec<String>, mode: Mode, value: Option<u8>, wait: Wait },
    Unlock { owner: Owner, keys: Vec<String> },
    ReleaseOwner { owner: Owner },
    /// Every owner of a connection lets go: `dead` when it closed (its waiters are
    /// dropped silently), otherwise a `release_all` without owner (they are told).
    ReleaseConnection { conn: u64, dead: bool },
    Advance { secs: u64 },
}

/// What one step produced, in a form both sides can state.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Granted,
    Busy,
    Queued,
    Deadlock,
    OwnerBusy,
    ValueConflict,
    Other,
}

/// A mode and, for shared, a lock value: two accesses coexist only when both are shared
/// with the same value (none being a value of its own).
type Access = (Mode, Option<u8>);

fn compatible(a: Access, b: Access) -> bool {
    a.0 == Mode::Shared && b.0 == Mode::Shared && a.1 == b.1
}

fn value_name(value: Option<u8>) -> Option<String> {
    value.map(|v| format!("v{v}"))
}

#[derive(Debug, Clone)]
struct ModelRequest {
    id: usize,
    owner: Owner,
    access: Access,
    keys: Vec<String>,
    upgrades: BTreeSet<String>,
    queued_on: Vec<String>,
    deadline: Option<u64>,
}

#[derive(Default)]
struct Model {
    holders: BTreeMap<String, Vec<(Owner, Access)>>,
    /// Waiting requests in arrival order.
    waiting: Vec<ModelRequest>,
    now: u64,
}

impl Model {
    fn held_mode(&self, owner: Owner, key: &str) -> Option<Access> {
        self.holders.get(key)?.iter().find(|(o, _)| *o == owner).map(|(_, m)| *m)
    }

    /// Waiters of `key` in grant order: upgrades first, each group by arrival.
    fn order(&self, key: &str) -> Vec<&ModelRequest> {
        let on_key = |r: &&ModelRequest| r.queued_on.iter().any(|k| k == key);
        let ups = self.waiting.iter().filter(on_key).filter(|r| r.upgrades.contains(key));
        let rest = self.waiting.iter().filter(on_key).filter(|r| !r.upgrades.contains(key));
        ups.chain(rest).collect()
    }

    /// Owners `req` waits for (full edges, no pruning).
    fn blockers(&self, req: &ModelRequest) -> BTreeSet<Owner> {
        let mut out = BTreeSet::new();
        for key in &req.queued_on {
            for (o, m) in self.holders.get(key).into_iter().flatten() {
                if *o != req.owner && !compatible(*m, req.access) {
                    out.insert(*o);
                }
            }
            for ahead in self.order(key).into_iter().take_while(|r| r.id != req.id) {
                if !compatible(ahead.access, req.access) {
                    out.insert(ahead.owner);
                }
            }
        }
        out
    }

    fn grantable(&self, req: &ModelRequest) -> bool {
        self.blockers(req).is_empty()
    }

    fn grant(&mut self, owner: Owner, access: Access, keys: &[String]) {
        for key in keys {
            let hs = self.holders.entry(key.clone()).or_default();
            hs.retain(|(o, _)| *o != owner);
            hs.push((owner, access));
        }
    }

    /// Grants until nothing more is grantable.
    fn settle(&mut self, woken: &mut Vec<(usize, &'static str)>) {
        while let Some(i) = (0..self.waiting.len()).find(|&i| self.grantable(&self.waiting[i])) {
            let req = self.waiting.remove(i);
            self.grant(req.owner, req.access, &req.keys);
            woken.push((req.id, "granted"));
        }
    }

    fn release(&mut self, owner: Owner, key: &str) -> bool {
        let Some(hs) = self.holders.get_mut(key) else { return false };
        let before = hs.len();
        hs.retain(|(o, _)| *o != owner);
        let released = hs.len() < before;
        if hs.is_empty() {
            self.holders.remove(key);
        }
        released
    }

    fn pending_of(&self, owner: Owner) -> Option<usize> {
        self.waiting.iter().position(|r| r.owner == owner)
    }

    fn reaches(&self, from: Owner, target: Owner, seen: &mut BTreeSet<Owner>) -> bool {
        if !seen.insert(from) {
            return false;
        }
        let Some(i) = self.pending_of(from) else { return false };
        self.blockers(&self.waiting[i]).into_iter().any(|b| b == target || self.reaches(b, target, seen))
    }

    fn apply(&mut self, id: usize, op: &Op, woken: &mut Vec<(usize, &'static str)>) -> Outcome {
        match op {
            Op::Lock { owner, keys, mode, value, wait } => {
                let access = (*mode, value.filter(|_| *mode == Mode::Shared));
                if self.pending_of(*owner).is_some() {
                    return Outcome::OwnerBusy;
                }
                let mut unique: Vec<String> = Vec::new();
                for k in keys {
                    if !unique.contains(k) {
                        unique.push(k.clone());
                    }
                }
                let mut req = ModelRequest {
                    id,
                    owner: *owner,
                    access,
                    keys: unique.clone(),
                    upgrades: BTreeSet::new(),
                    queued_on: Vec::new(),
                    deadline: match wait {
                        Wait::Secs(s) => Some(self.now + s),
                        _ => None,
                    },
                };
                for k in &unique {
                    match self.held_mode(*owner, k) {
                        None => req.queued_on.push(k.clone()),
                        Some(held) if held == access => {}
                        Some((Mode::Shared, _)) if *mode == Mode::Shared => return Outcome::ValueConflict,
                        Some((Mode::Shared, _)) => {
                            req.upgrades.insert(k.clone());
                            req.queued_on.push(k.clone());
                        }
                        Some((Mode::Exclusive, _)) => {}
                    }
                }
                self.waiting.push(req.clone());
                if self.grantable(&req) {
                    self.waiting.pop();
                    self.grant(*owner, access, &unique);
                    self.settle(woken);
                    return Outcome::Granted;
                }
                if matches!(wait, Wait::Try) {
                    self.waiting.pop();
                    return Outcome::Busy;
                }
                if self.blockers(&req).into_iter().any(|b| b == *owner || self.reaches(b, *owner, &mut BTreeSet::new())) {
                    self.waiting.pop();
                    self.settle(woken);
                    return Outcome::Deadlock;
                }
                Outcome::Queued
            }
            Op::Unlock { owner, keys } => {
                if let Some(i) = self.pending_of(*owner) {
                    if self.waiting[i].keys.iter().any(|k| keys.contains(k)) {
                        let r = self.waiting.remove(i);
                        woken.push((r.id, "cancelled"));
                    }
                }
                for k in keys {
                    self.release(*owner, k);
                }
                self.settle(woken);
                Outcome::Other
            }
            Op::ReleaseOwner { owner } => {
                if let Some(i) = self.pending_of(*owner) {
                    let r = self.waiting.remove(i);
                    woken.push((r.id, "cancelled"));
                }
                let keys: Vec<String> = self.holders.keys().cloned().collect();
                for k in keys {
                    self.release(*owner, &k);
                }
                self.settle(woken);
                Outcome::Other
            }
            Op::ReleaseConnection { conn, dead } => {
                let (gone, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|r| r.owner.conn == *conn);
                self.waiting = kept;
                if !dead {
                    woken.extend(gone.into_iter().map(|r| (r.id, "cancelled")));
                }
                for hs in self.holders.values_mut() {
                    hs.retain(|(o, _)| o.conn != *conn);
                }
                self.holders.retain(|_, hs| !hs.is_empty());
                self.settle(woken);
                Outcome::Other
            }
            Op::Advance { secs } => {
                self.now += secs;
                // Waits end in deadline order, and what ends at one moment is granted
                // before the next moment's deadlines: as an on-time server would.
                while let Some(due) = self.waiting.iter().filter_map(|r| r.deadline).filter(|&d| d <= self.now).min() {
                    let (expired, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|r| r.deadline == Some(due));
                    self.waiting = kept;
                    woken.extend(expired.into_iter().map(|r| (r.id, "timed out")));
                    self.settle(woken);
                }
                Outcome::Other
            }
        }
    }
}

fn run_table(table: &mut LockTable<usize>, start: Instant, clock: &mut u64, id: usize, op: &Op, woken: &mut Vec<(usize, &'static str)>, last_token: &mut u64) -> Outcome {
    let mut wakeups = Vec::new();
    let now = start + Duration::from_secs(*clock);
    let outcome = match op {
        Op::Lock { owner, keys, mode, value, wait } => {
            let wait = match wait {
                Wait::Try => Some(Duration::ZERO),
                Wait::Secs(s) => Some(Duration::from_secs(*s)),
                Wait::Forever => None,
            };
            let value = value_name(*value);
            match table.lock(LockRequest { owner: *owner, keys, mode: *mode, wait, value: value.as_deref() }, now, || id, &mut wakeups) {
                Ok(Acquired::Granted { token }) => {
                    assert!(token > *last_token, "token {token} after {last_token}");
                    *last_token = token;
                    Outcome::Granted
                }
                Ok(Acquired::Busy) => Outcome::Busy,
                Ok(Acquired::Queued) => Outcome::Queued,
                Err(TableError::Deadlock(cycle)) => {
                    assert_eq!(cycle.first().map(|s| (s.connection, s.owner)), Some((owner.conn, owner.handle)), "the cycle starts at the refused owner");
                    Outcome::Deadlock
                }
                Err(TableError::OwnerBusy { .. }) => Outcome::OwnerBusy,
                Err(TableError::ValueConflict) => Outcome::ValueConflict,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        Op::Unlock { owner, keys } => {
            table.unlock(*owner, keys, now, &mut wakeups);
            Outcome::Other
        }
        Op::ReleaseOwner { owner } => {
            table.release_owner(*owner, now, &mut wakeups);
            Outcome::Other
        }
        Op::ReleaseConnection { conn, dead } => {
            table.release_connection(*conn, *dead, now, &mut wakeups);
            Outcome::Other
        }
        Op::Advance { secs } => {
            *clock += secs;
            table.expire(start + Duration::from_secs(*clock), &mut wakeups);
            Outcome::Other
        }
    };
    for w in wakeups {
        let how = match w.end {
            WaitEnd::Granted { token } => {
                assert!(token > *last_token, "token {token} after {last_token}");
                *last_token = token;
                "granted"
            }
            WaitEnd::TimedOut => "timed out",
            WaitEnd::Cancelled => "cancelled",
            WaitEnd::ShuttingDown => unreachable!("the model never shuts the table down"),
        };
        woken.push((w.waiter, how));
    }
    outcome
}

/// Runs `ops` through a fresh table and a fresh model, panicking at the first step where
/// they disagree.
pub fn check_ops(ops: &[Op]) {
    let mut table = LockTable::<usize>::new(Limits::default());
    let mut model = Model::default();
    let start = Instant::now();
    let mut clock = 0;
    let mut last_token = 0;
    for (id, op) in ops.iter().enumerate() {
        let mut table_woken = Vec::new();
        let mut model_woken = Vec::new();
        let got = run_table(&mut table, start, &mut clock, id, op, &mut table_woken, &mut last_token);
        let want = model.apply(id, op, &mut model_woken);
        assert_eq!(got, want, "outcome of step {id} {op:?}");
        table_woken.sort();
        model_woken.sort();
        assert_eq!(table_woken, model_woken, "wakeups of step {id} {op:?}");

        let views = table.snapshot("", None, usize::MAX).keys;
        let mut table_holders = BTreeMap::new();
        for v in &views {
            let exclusive = v.holders.iter().filter(|h| h.mode == Mode::Exclusive).count();
            assert!(exclusive == 0 || v.holders.len() == 1, "exclusivity broken on {}: {:?}", v.key, v.holders);
            let values: BTreeSet<&Option<String>> = v.holders.iter().map(|h| &h.value).collect();
            assert!(values.len() <= 1, "shared holders of {} with different values: {:?}", v.key, v.holders);
            let mut hs: Vec<(Owner, Mode, Option<String>)> = v.holders.iter().map(|h| (h.owner, h.mode, h.value.clone())).collect();
            hs.sort_by_key(|(o, _, _)| *o);
            if !hs.is_empty() {
                table_holders.insert(v.key.clone(), hs);
            }
            let table_queue: Vec<Owner> = v.waiters.iter().map(|w| w.owner).collect();
            let model_queue: Vec<Owner> = model.order(&v.key).iter().map(|r| r.owner).collect();
            assert_eq!(table_queue, model_queue, "queue of {} after step {id}", v.key);
        }
        let mut model_holders: BTreeMap<String, Vec<(Owner, Mode, Option<String>)>> = BTreeMap::new();
        for (key, hs) in &model.holders {
            let mut hs: Vec<_> = hs.iter().map(|(o, (m, v))| (*o, *m, value_name(*v))).collect();
            hs.sort_by_key(|(o, _, _)| *o);
            model_holders.insert(key.clone(), hs);
        }
        assert_eq!(table_holders, model_holders, "holders after step {id} {op:?}");
        assert_eq!(table.stats().waiters, model.waiting.len(), "waiters after step {id} {op:?}");
    }
}

/// Runs `ops[..split]` through a table, rebuilds a second table from its image, then runs
/// the rest through both: they must decide, grant, token and queue alike. Waits must be
/// `Try` or `Forever` (a rebuilt table keeps no deadlines: cluster nodes time waits).
#[allow(dead_code)] // table_model.rs uses it; the fuzz target that shares this module does not
pub fn check_rebuild(ops: &[Op], split: usize) {
    let start = Instant::now();
    let (mut clock, mut last_token) = (0, 0);
    let mut original = LockTable::<usize>::new(Limits::default());
    let (before, after) = ops.split_at(split.min(ops.len()));
    for (id, op) in before.iter().enumerate() {
        run_table(&mut original, start, &mut clock, id, op, &mut Vec::new(), &mut last_token);
    }
    let image = original.image(|&w| w).expect("no lingering locks without a lock-delay");
    let mut rebuilt = LockTable::rebuild(Limits::default(), image.clone(), start, |_, w| w).expect("an image rebuilds");
    assert_eq!(rebuilt.image(|&w| w).unwrap(), image, "the rebuilt table images the same");
    let (mut clock_b, mut last_token_b) = (clock, last_token);
    for (i, op) in after.iter().enumerate() {
        let id = split + i;
        let (mut woken_a, mut woken_b) = (Vec::new(), Vec::new());
        let a = run_table(&mut original, start, &mut clock, id, op, &mut woken_a, &mut last_token);
        let b = run_table(&mut rebuilt, start, &mut clock_b, id, op, &mut woken_b, &mut last_token_b);
        assert_eq!(a, b, "outcome of step {id} {op:?}");
        woken_a.sort();
        woken_b.sort();
        assert_eq!(woken_a, woken_b, "wakeups of step {id} {op:?}");
        assert_eq!(original.image(|&w| w).unwrap(), rebuilt.image(|&w| w).unwrap(), "tables after step {id} {op:?}");
    }
}
