//! A table as data, for cluster snapshots: every hold with its token and every waiting
//! request in queue order. [`LockTable::rebuild`] makes an equal table from one through
//! the ordinary operations (holds in token order), then queues the waits as they were, so the
//! rebuilt table takes the same decisions and issues the same next tokens as the one
//! imaged; only grant times and counters start again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pklock_proto::Mode;
use serde::{Deserialize, Serialize};

use super::{Acquired, ConnId, Key, LockRequest, LockTable, Limits, Owner, Pending, RequestId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableImage<V> {
    pub last_token: u64,
    /// Ordered by token.
    pub holds: Vec<HoldImage>,
    /// In queue order.
    pub waits: Vec<WaitImage<V>>,
}

/// The keys one owner holds under one token (one grant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldImage {
    pub conn: ConnId,
    pub handle: u64,
    pub keys: Vec<String>,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitImage<V> {
    pub conn: ConnId,
    pub handle: u64,
    pub keys: Vec<String>,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The key it is parked on (see `grant.rs`): which of its keys a change must touch
    /// before it is looked at again decides the order of grants, so it is kept.
    pub parked_on: String,
    pub waiter: V,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("the image holds lingering locks (a lock-delay), which a rebuild cannot recreate")]
    Lingering,
    #[error("hold of token {token} was not granted again: {outcome}")]
    HoldRefused { token: u64, outcome: String },
    #[error("a waiting request of connection {conn} owner {handle} did not queue again: {outcome}")]
    WaitNotQueued { conn: ConnId, handle: u64, outcome: String },
}

/// A table's content copied as it lies, cheaply (keys are shared strings): what a
/// snapshot needs under the table lock. [`finish`](Self::finish) puts it in order after.
/// Imaging a 1M-lock table in one piece held the lock 243–251 ms, copying it 34–40 ms
/// (`a_snapshot_of_a_million_locks_stalls_nobody` in `lockd/tests/cluster_attack.rs`).
#[derive(Debug)]
pub struct RawImage<V> {
    last_token: u64,
    holders: Vec<RawHolder>,
    waits: Vec<(RequestId, RawWait<V>)>,
}

/// One (key, holder) pair; holders with the same owner and token are one grant.
#[derive(Debug)]
struct RawHolder {
    owner: Owner,
    token: u64,
    key: Key,
    mode: Mode,
    value: Option<String>,
}

#[derive(Debug)]
struct RawWait<V> {
    owner: Owner,
    keys: Vec<Key>,
    mode: Mode,
    value: Option<String>,
    parked_on: Key,
    waiter: V,
}

impl<V> RawImage<V> {
    /// The image, in the order [`LockTable::rebuild`] needs: holds by token, each hold's
    /// keys sorted, waits in queue order.
    pub fn finish(self) -> TableImage<V> {
        let mut grants: HashMap<(Owner, u64), HoldImage> = HashMap::new();
        for RawHolder { owner, token, key, mode, value } in self.holders {
            let hold = grants.entry((owner, token)).or_insert_with(|| HoldImage {
                conn: owner.conn,
                handle: owner.handle,
                keys: Vec::new(),
                mode,
                value,
                token,
            });
            hold.keys.push(key.to_string());
        }
        let mut holds: Vec<HoldImage> = grants.into_values().collect();
        holds.sort_by_key(|h| h.token);
        for hold in &mut holds {
            hold.keys.sort_unstable();
        }
        let mut waits = self.waits;
        waits.sort_by_key(|(rid, _)| *rid);
        let waits = waits
            .into_iter()
            .map(|(_, w)| WaitImage {
                conn: w.owner.conn,
                handle: w.owner.handle,
                keys: w.keys.iter().map(|k| k.to_string()).collect(),
                mode: w.mode,
                value: w.value,
                parked_on: w.parked_on.to_string(),
                waiter: w.waiter,
            })
            .collect();
        TableImage { last_token: self.last_token, holds, waits }
    }
}

impl<W> LockTable<W> {
    /// This table as data; `waiter` says what to keep of each waiter.
    pub fn image<V>(&self, waiter: impl FnMut(&W) -> V) -> Result<TableImage<V>, RebuildError> {
        self.raw_image(waiter).map(RawImage::finish)
    }

    /// What [`image`](Self::image) copies from the table (see [`RawImage`]).
    pub fn raw_image<V>(&self, mut waiter: impl FnMut(&W) -> V) -> Result<RawImage<V>, RebuildError> {
        let mut holders = Vec::with_capacity(self.held);
        for state in self.keys.all() {
            for holder in state.holders() {
                if holder.lingering {
                    return Err(RebuildError::Lingering);
                }
                let value = self.values.name(holder.value).map(str::to_owned);
                holders.push(RawHolder { owner: holder.owner, token: holder.token, key: state.key.clone(), mode: holder.mode, value });
            }
        }
        let waits = self
            .pending
            .iter()
            .map(|(&rid, p)| {
                let value = self.values.name(p.value).map(str::to_owned);
                let parked_on = p.queued_on[p.parked_on].key.clone();
                (rid, RawWait { owner: p.owner, keys: p.keys.clone(), mode: p.mode, value, parked_on, waiter: waiter(&p.waiter) })
            })
            .collect();
        Ok(RawImage { last_token: self.last_token, holders, waits })
    }

    /// A table equal to the one `image` was taken of; `waiter` turns each kept waiter back
    /// into one.
    pub fn rebuild<V>(limits: Limits, image: TableImage<V>, now: Instant, mut waiter: impl FnMut(ConnId, V) -> W) -> Result<Self, RebuildError> {
        let mut table = LockTable::new(limits);
        let mut woken = Vec::new();
        for hold in image.holds {
            table.start_tokens_after(hold.token - 1);
            let owner = Owner { conn: hold.conn, handle: hold.handle };
            let request = LockRequest { owner, keys: &hold.keys, mode: hold.mode, wait: Some(Duration::ZERO), value: hold.value.as_deref() };
            match table.lock(request, now, || unreachable!("a try-lock never queues"), &mut woken) {
                Ok(Acquired::Granted { token }) if token == hold.token => {}
                outcome => return Err(RebuildError::HoldRefused { token: hold.token, outcome: format!("{outcome:?}") }),
            }
        }
        // Waits are queued as they were, not asked for again: asking in queue order
        // could grant one that an upgrade queued later (but ahead of it) kept waiting.
        for wait in image.waits {
            let refused = |outcome: String| RebuildError::WaitNotQueued { conn: wait.conn, handle: wait.handle, outcome };
            let owner = Owner { conn: wait.conn, handle: wait.handle };
            let keys = table.validate_keys(&wait.keys).map_err(|e| refused(e.to_string()))?;
            // The request's own reference keeps the value's id until the queue has one.
            let value = table.values.acquire(wait.value.as_deref().filter(|_| wait.mode == Mode::Shared));
            let queued_on = match table.classify(owner, &keys, wait.mode, value) {
                Ok((queued_on, _downgrades)) => queued_on,
                Err(e) => {
                    table.values.release(value);
                    return Err(refused(e.to_string()));
                }
            };
            let Some(parked_on) = queued_on.iter().position(|w| *w.key == *wait.parked_on) else {
                table.values.release(value);
                return Err(refused(format!("it does not queue on {:?}, where it was parked", wait.parked_on)));
            };
            let new_keys = queued_on.iter().filter(|w| !w.upgrade).count();
            let rid = table.next_request + 1;
            let waiter = waiter(wait.conn, wait.waiter);
            let pending = Pending { owner, mode: wait.mode, value, keys, queued_on, parked_on, new_keys, since: now, deadline: None, waiter };
            table.enqueue(rid, pending);
            table.values.release(value);
        }
        // Where a request is parked, it is blocked (the invariant `grant.rs` keeps).
        for (&rid, req) in &table.pending {
            let parked = &req.queued_on[req.parked_on];
            if table.first_blocked(rid, req.mode, req.value, std::slice::from_ref(parked)).is_none() {
                let Owner { conn, handle } = req.owner;
                return Err(RebuildError::WaitNotQueued { conn, handle, outcome: format!("nothing blocks it on {:?}", parked.key) });
            }
        }
        debug_assert!(woken.is_empty(), "a rebuild wakes nobody");
        table.start_tokens_after(image.last_token);
        Ok(table)
    }
}
