//! Granting: whether a request may have its keys, making grants, and finding the waiters
//! a change lets in.
//!
//! Parking keeps a release from costing more than the waiters it can actually let in.
//! Every waiting request is parked on one key that blocks it. When something on a key
//! changes (a holder leaves, a waiter leaves, a lock is downgraded), only the requests
//! parked on that key are looked at, in queue order: each is granted, or moves to
//! another key that still blocks it, or is blocked right there, which means everyone
//! parked behind it on that key is blocked too, so the look stops. A request that waits
//! for K and L, blocked by L, therefore costs nothing when K changes, however many such
//! requests there are.

use std::time::Instant;

use pklock_proto::Mode;

use super::{Key, LockTable, Owner, RequestId, ValueId, Wait, WaitEnd, Wakeup};

impl<W> LockTable<W> {
    /// The first of `waits` (as a request `rid` in `mode` with `value`) that blocks it.
    pub(super) fn first_blocked(&self, rid: RequestId, mode: Mode, value: ValueId, waits: &[Wait]) -> Option<usize> {
        waits.iter().position(|w| {
            self.keys
                .get(&w.key)
                .is_some_and(|s| s.holders_block(mode, value, w.upgrade) || s.queue_blocks(rid, mode, value, w.upgrade))
        })
    }

    /// Gives `owner` all of `keys` in `mode` under a new token.
    pub(super) fn apply_grant(&mut self, owner: Owner, mode: Mode, value: ValueId, keys: &[Key], now: Instant) -> u64 {
        self.last_token += 1;
        let token = self.last_token;
        self.grants += 1;
        let epoch = *self.epoch.get_or_insert(now);
        let since = u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut added = Vec::new();
        let listed = self.owner(owner).map_or(0, |o| o.held_keys.len());
        for key in keys {
            let state = self.keys.get_or_insert(key);
            match state.regrant(owner, mode, value, token, since) {
                Some(old) => self.values.release(old),
                None => {
                    let listed_at = u32::try_from(listed + added.len()).expect("an owner holds fewer than 2^32 locks");
                    state.push_holder(super::Holder { owner, mode, token, since, lingering: false, value, listed_at });
                    added.push(key.clone());
                }
            }
            self.values.retain(value);
        }
        self.held += added.len();
        self.owner_mut(owner).held_keys.extend(added);
        token
    }

    /// Grants whatever has become grantable through changes on `dirty` keys, and forgets
    /// keys nobody holds or waits for. See the module comment for why this only looks at
    /// requests parked on those keys.
    ///
    /// Keys are looked at in an order that depends only on which keys changed (not on
    /// hash-map iteration, which differs between tables), so that the grants one change
    /// makes get their tokens in the same order in every copy of a table: cluster nodes,
    /// and a table rebuilt from a snapshot.
    pub(super) fn process(&mut self, mut dirty: Vec<Key>, now: Instant, woken: &mut Vec<Wakeup<W>>) {
        dirty.sort_unstable_by(|a, b| b.cmp(a));
        dirty.dedup();
        while let Some(key) = dirty.pop() {
            let mut after = None;
            while let Some(place) = self.keys.get(&key).and_then(|s| s.next_parked(after)) {
                after = Some(place);
                let rid = place.1;
                let req = &self.pending[&rid];
                let blocked = self.first_blocked(rid, req.mode, req.value, &req.queued_on).map(|i| (i, *req.queued_on[i].key == *key));
                match blocked {
                    None => self.grant_waiting(rid, now, woken, &mut dirty),
                    Some((_, true)) => break,
                    Some((i, false)) => self.repark(rid, i),
                }
            }
            self.keys.remove_if_idle(&key);
        }
        self.compact_deadlines();
    }

    fn repark(&mut self, rid: RequestId, to: usize) {
        let req = self.pending.get_mut(&rid).expect("a parked request is pending");
        let from = std::mem::replace(&mut req.parked_on, to);
        let (old, new) = (&req.queued_on[from], &req.queued_on[to]);
        if let Some(s) = self.keys.get_mut(&old.key) {
            s.unpark(rid, old.upgrade);
        }
        self.keys.get_or_insert(&new.key).park(rid, new.upgrade);
    }

    fn grant_waiting(&mut self, rid: RequestId, now: Instant, woken: &mut Vec<Wakeup<W>>, dirty: &mut Vec<Key>) {
        // Held across take_pending, which gives up the request's own reference.
        let value = self.pending[&rid].value;
        self.values.retain(value);
        let req = self.take_pending(rid);
        self.reserved -= req.new_keys;
        self.owner_mut(req.owner).pending = None;
        let token = self.apply_grant(req.owner, req.mode, req.value, &req.keys, now);
        self.values.release(value);
        // Keys it held exclusively but asked for shared were just downgraded, which can
        // let shared waiters in there. (Granting never unblocks anyone on the keys it
        // queued on: whoever its wait kept out, its hold keeps out.)
        if req.mode == Mode::Shared && req.keys.len() > req.queued_on.len() {
            let queued: super::HashSet<&str> = req.queued_on.iter().map(|w| &*w.key).collect();
            dirty.extend(req.keys.iter().filter(|k| !queued.contains(&***k)).cloned());
        }
        woken.push(Wakeup { waiter: req.waiter, end: WaitEnd::Granted { token } });
    }
}
