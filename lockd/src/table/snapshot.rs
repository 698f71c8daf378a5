//! Read-only views for `locks` and `stat`. A listing is served page by page from the
//! sorted key index, so its cost is the size of the page, not of the table.

use std::time::{Duration, Instant};

use pklock_proto::Mode;

use super::{LockTable, Owner};

/// Counters and sizes for `stat`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableStats {
    pub locks: usize,
    pub keys: usize,
    pub waiters: usize,
    pub grants: u64,
    pub timeouts: u64,
    pub deadlocks: u64,
    /// Estimated bytes (what `--max-memory` bounds).
    pub memory: usize,
    pub last_token: u64,
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
    /// The lock value of a shared hold that has one.
    pub value: Option<String>,
    pub since: Instant,
    pub token: u64,
    pub lingering: bool,
}

#[derive(Debug)]
pub struct WaiterView {
    pub owner: Owner,
    pub mode: Mode,
    pub value: Option<String>,
    pub since: Instant,
    pub deadline: Option<Instant>,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    pub keys: Vec<KeyView>,
    /// Where the next page starts (pass it as `after`), when more keys may follow.
    pub next: Option<String>,
}

impl<W> LockTable<W> {
    pub fn stats(&self) -> TableStats {
        TableStats {
            locks: self.held,
            keys: self.keys.len(),
            waiters: self.pending.len(),
            grants: self.grants,
            timeouts: self.timeouts,
            deadlocks: self.deadlocks,
            memory: self.memory(),
            last_token: self.last_token,
        }
    }

    /// Keys starting with `prefix` that sort after `after`, in order: at most `limit`
    /// keys, at most `limit` holders and `limit` waiters per key, and the page ends once
    /// it lists `limit` holders and waiters in all, so a page costs O(`limit`) however
    /// crowded the keys are.
    pub fn snapshot(&self, prefix: &str, after: Option<&str>, limit: usize) -> Page {
        self.snapshot_with(prefix, after, limit, |_| None)
    }

    /// [`snapshot`](Self::snapshot), with waits that end outside the table (cluster mode)
    /// told by `deadline_of` their waiter.
    pub fn snapshot_with(&self, prefix: &str, after: Option<&str>, limit: usize, deadline_of: impl Fn(&W) -> Option<Instant>) -> Page {
        let mut keys = Vec::new();
        let mut next = None;
        let mut entries = 0;
        for state in self.keys.range(prefix, after) {
            if keys.len() == limit || entries >= limit {
                next = keys.last().map(|v: &KeyView| v.key.clone());
                break;
            }
            let epoch = self.epoch.unwrap_or_else(Instant::now);
            keys.push(KeyView {
                key: state.key.to_string(),
                holders: state
                    .holders()
                    .take(limit)
                    .map(|h| HolderView {
                        owner: h.owner,
                        mode: h.mode,
                        value: self.values.name(h.value).map(str::to_owned),
                        since: epoch + Duration::from_nanos(h.since),
                        token: h.token,
                        lingering: h.lingering,
                    })
                    .collect(),
                waiters: state
                    .waiters()
                    .take(limit)
                    .map(|rid| {
                        let p = &self.pending[&rid];
                        let value = self.values.name(p.value).map(str::to_owned);
                        WaiterView { owner: p.owner, mode: p.mode, value, since: p.since, deadline: p.deadline.or_else(|| deadline_of(&p.waiter)) }
                    })
                    .collect(),
            });
            let listed = keys.last().expect("just pushed");
            entries += listed.holders.len() + listed.waiters.len();
        }
        Page { keys, next }
    }
}
