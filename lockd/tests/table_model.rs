//! Property test: random operation sequences run through the lock table and through a
//! small, deliberately naive reference model; after every step they must agree on the
//! outcome, on which waiters were woken and how, on who holds what, and on queue order.
//! Exclusivity is checked on the table's own snapshot, and tokens must only grow.
//!
//! The model recomputes everything from scratch: it grants by repeatedly scanning every
//! waiting request until nothing changes, and detects deadlock on the full wait-for
//! graph (every incompatible holder and every incompatible waiter ahead), so it checks
//! the table's incremental processing and its pruned deadlock search.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lockd::table::{Acquired, LockRequest, LockTable, Limits, Owner, TableError, WaitEnd};
use pklock_proto::Mode;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Wait {
    Try,
    Secs(u64),
    Forever,
}

#[derive(Debug, Clone)]
enum Op {
    Lock { owner: Owner, keys: Vec<String>, mode: Mode, wait: Wait },
    Unlock { owner: Owner, keys: Vec<String> },
    ReleaseOwner { owner: Owner },
    Disconnect { conn: u64 },
    Advance { secs: u64 },
}

fn owner() -> impl Strategy<Value = Owner> {
    (0..3u64, 0..2u64).prop_map(|(conn, handle)| Owner { conn, handle })
}

fn keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec((0..3u8).prop_map(|k| format!("k{k}")), 1..3)
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![Just(Mode::Exclusive), Just(Mode::Shared)];
    let wait = prop_oneof![Just(Wait::Try), (1..4u64).prop_map(Wait::Secs), Just(Wait::Forever)];
    prop_oneof![
        6 => (owner(), keys(), mode, wait).prop_map(|(owner, keys, mode, wait)| Op::Lock { owner, keys, mode, wait }),
        3 => (owner(), keys()).prop_map(|(owner, keys)| Op::Unlock { owner, keys }),
        1 => owner().prop_map(|owner| Op::ReleaseOwner { owner }),
        1 => (0..3u64).prop_map(|conn| Op::Disconnect { conn }),
        1 => (1..3u64).prop_map(|secs| Op::Advance { secs }),
    ]
}

/// What one step produced, in a form both sides can state.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Granted,
    Busy,
    Queued,
    Deadlock,
    OwnerBusy,
    Other,
}

#[derive(Debug, Clone)]
struct ModelRequest {
    id: usize,
    owner: Owner,
    mode: Mode,
    keys: Vec<String>,
    upgrades: BTreeSet<String>,
    queued_on: Vec<String>,
    deadline: Option<u64>,
}

#[derive(Default)]
struct Model {
    holders: BTreeMap<String, Vec<(Owner, Mode)>>,
    /// Waiting requests in arrival order.
    waiting: Vec<ModelRequest>,
    now: u64,
}

impl Model {
    fn held_mode(&self, owner: Owner, key: &str) -> Option<Mode> {
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
                if *o != req.owner && !m.compatible_with(req.mode) {
                    out.insert(*o);
                }
            }
            for ahead in self.order(key).into_iter().take_while(|r| r.id != req.id) {
                if !ahead.mode.compatible_with(req.mode) {
                    out.insert(ahead.owner);
                }
            }
        }
        out
    }

    fn grantable(&self, req: &ModelRequest) -> bool {
        self.blockers(req).is_empty()
    }

    fn grant(&mut self, owner: Owner, mode: Mode, keys: &[String]) {
        for key in keys {
            let hs = self.holders.entry(key.clone()).or_default();
            hs.retain(|(o, _)| *o != owner);
            hs.push((owner, mode));
        }
    }

    /// Grants until nothing more is grantable.
    fn settle(&mut self, woken: &mut Vec<(usize, &'static str)>) {
        while let Some(i) = (0..self.waiting.len()).find(|&i| self.grantable(&self.waiting[i])) {
            let req = self.waiting.remove(i);
            self.grant(req.owner, req.mode, &req.keys);
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
            Op::Lock { owner, keys, mode, wait } => {
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
                    mode: *mode,
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
                        Some(m) if m == *mode => {}
                        Some(Mode::Shared) => {
                            req.upgrades.insert(k.clone());
                            req.queued_on.push(k.clone());
                        }
                        Some(Mode::Exclusive) => {}
                    }
                }
                self.waiting.push(req.clone());
                if self.grantable(&req) {
                    self.waiting.pop();
                    self.grant(*owner, *mode, &unique);
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
            Op::Disconnect { conn } => {
                self.waiting.retain(|r| r.owner.conn != *conn);
                for hs in self.holders.values_mut() {
                    hs.retain(|(o, _)| o.conn != *conn);
                }
                self.holders.retain(|_, hs| !hs.is_empty());
                self.settle(woken);
                Outcome::Other
            }
            Op::Advance { secs } => {
                self.now += secs;
                let now = self.now;
                let (expired, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|r| r.deadline.is_some_and(|d| d <= now));
                self.waiting = kept;
                woken.extend(expired.into_iter().map(|r| (r.id, "timed out")));
                self.settle(woken);
                Outcome::Other
            }
        }
    }
}

fn run_table(table: &mut LockTable<usize>, start: Instant, clock: &mut u64, id: usize, op: &Op, woken: &mut Vec<(usize, &'static str)>, last_token: &mut u64) -> Outcome {
    let mut wakeups = Vec::new();
    let now = start + Duration::from_secs(*clock);
    let outcome = match op {
        Op::Lock { owner, keys, mode, wait } => {
            let wait = match wait {
                Wait::Try => Some(Duration::ZERO),
                Wait::Secs(s) => Some(Duration::from_secs(*s)),
                Wait::Forever => None,
            };
            match table.lock(LockRequest { owner: *owner, keys, mode: *mode, wait }, now, || id, &mut wakeups) {
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
        Op::Disconnect { conn } => {
            table.release_connection(*conn, true, now, &mut wakeups);
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
        };
        woken.push((w.waiter, how));
    }
    outcome
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn table_agrees_with_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
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
            prop_assert_eq!(got, want, "outcome of step {} {:?}", id, op);
            table_woken.sort();
            model_woken.sort();
            prop_assert_eq!(&table_woken, &model_woken, "wakeups of step {} {:?}", id, op);

            let (views, _) = table.snapshot("", usize::MAX);
            let mut table_holders = BTreeMap::new();
            for v in &views {
                let exclusive = v.holders.iter().filter(|h| h.mode == Mode::Exclusive).count();
                prop_assert!(exclusive == 0 || v.holders.len() == 1, "exclusivity broken on {}: {:?}", v.key, v.holders);
                let mut hs: Vec<(Owner, Mode)> = v.holders.iter().map(|h| (h.owner, h.mode)).collect();
                hs.sort_by_key(|(o, _)| *o);
                if !hs.is_empty() {
                    table_holders.insert(v.key.clone(), hs);
                }
                let table_queue: Vec<Owner> = v.waiters.iter().map(|w| w.owner).collect();
                let model_queue: Vec<Owner> = model.order(&v.key).iter().map(|r| r.owner).collect();
                prop_assert_eq!(table_queue, model_queue, "queue of {} after step {}", v.key, id);
            }
            let mut model_holders = model.holders.clone();
            for hs in model_holders.values_mut() {
                hs.sort_by_key(|(o, _)| *o);
            }
            prop_assert_eq!(table_holders, model_holders, "holders after step {} {:?}", id, op);
            prop_assert_eq!(table.stats().waiters, model.waiting.len());
        }
    }
}
