//! Releasing everything a connection or an owner holds, a slice at a time.
//!
//! A client may hold millions of locks (up to `--max-locks`). Releasing them in one step
//! held the table for the whole release, and every other client waited that long (1.54 s
//! for 2M locks: `attack_table.rs`, `a_client_holding_millions_of_locks_…`, run against
//! the old build with `LOCKD_UNDER_TEST`). Now the owners are detached from their connection at once (so
//! nothing more is asked in their name, and their waits end), and their locks go in
//! slices of [`SLICE`] keys; the caller lets others at the table between slices
//! (`State::release` in `state.rs`). Until its slice comes, a key stays held by an owner
//! that no longer exists: others queue for it as for any held key.
//!
//! Slices follow the owners' handles and the keys' sorted order, never a hash map's or
//! a list's history, so every cluster node grants in the same order and hands out the
//! same tokens.

use std::time::Instant;

use super::{ConnId, HashMap, Key, LockTable, Owner, OwnerState, Wakeup};

/// Keys released per slice: about a millisecond of work under the table lock.
pub const SLICE: usize = 1024;

/// A release under way: what [`LockTable::start_release_owner`] and
/// [`LockTable::start_release_connection`] detached and [`LockTable::release_slice`]
/// has not released yet.
#[derive(Debug)]
#[must_use = "the locks stay held until every slice is released"]
pub struct Release {
    /// A connection's many owners, detached at once but taken apart by
    /// [`Release::sort_keys`], outside the lock: visiting a million owners is a step of
    /// tens of milliseconds.
    detached: Option<(ConnId, HashMap<u64, OwnerState>)>,
    /// Owners (sorted by handle, the last released first) and the keys they still hold.
    left: Vec<(Owner, Vec<Key>)>,
    /// Whether the locks linger for the lock-delay instead of going (a dead connection).
    linger: bool,
    sorted: bool,
    released: usize,
    cancelled: usize,
}

impl Release {
    pub fn is_done(&self) -> bool {
        self.detached.is_none() && self.left.is_empty()
    }

    /// (locks released, waiting requests withdrawn) so far.
    pub fn counts(&self) -> (usize, usize) {
        (self.released, self.cancelled)
    }

    /// Puts the owners and their keys in the order all nodes release them in (owners by
    /// handle, the last released first; keys sorted). O(n log n) for n keys and owners:
    /// call it without holding the table's lock.
    pub fn sort_keys(&mut self) {
        if let Some((conn, owners)) = self.detached.take() {
            let held = owners.into_iter().filter(|(_, state)| !state.held_keys.is_empty());
            self.left.extend(held.map(|(handle, state)| (Owner { conn, handle }, state.held_keys)));
        }
        self.left.sort_unstable_by_key(|(owner, _)| std::cmp::Reverse(owner.handle));
        for (_, keys) in &mut self.left {
            keys.sort_unstable();
        }
        self.sorted = true;
    }
}

impl<W> LockTable<W> {
    /// Starts releasing everything `owner` holds; its waiting request is withdrawn now.
    /// A release of at most [`SLICE`] locks is done when this returns.
    pub fn start_release_owner(&mut self, owner: Owner, now: Instant, woken: &mut Vec<Wakeup<W>>) -> Release {
        let detached = self.conns.get_mut(&owner.conn).and_then(|c| c.owners.remove(&owner.handle));
        if self.conns.get(&owner.conn).is_some_and(|c| c.owners.is_empty()) {
            self.conns.remove(&owner.conn);
        }
        self.start_release(detached.map(|state| (owner, state)).into_iter().collect(), false, false, now, woken)
    }

    /// Starts releasing every owner of connection `conn`. With `dead` (the connection
    /// closed or was found dead), its waiters are dropped rather than woken, and with a
    /// lock-delay configured its locks linger until the delay runs out.
    pub fn start_release_connection(&mut self, conn: ConnId, dead: bool, now: Instant, woken: &mut Vec<Wakeup<W>>) -> Release {
        let linger = dead && !self.limits.lock_delay.is_zero();
        let Some(mut state) = self.conns.remove(&conn) else {
            return self.start_release(Vec::new(), linger, dead, now, woken);
        };
        if state.owners.len() <= SLICE {
            let owners = state.owners.into_iter().map(|(handle, state)| (Owner { conn, handle }, state)).collect();
            return self.start_release(owners, linger, dead, now, woken);
        }
        // Many owners: only the waiting ones are visited now (their waits must end before
        // anything is granted to them); the rest is taken apart outside the lock.
        let mut waiting: Vec<u64> = state.waiting.drain().collect();
        waiting.sort_unstable();
        let waiting = waiting.into_iter().map(|handle| (Owner { conn, handle }, std::mem::take(state.owners.get_mut(&handle).expect("a waiting owner"))));
        let mut release = self.start_release(waiting.collect(), linger, dead, now, woken);
        release.detached = Some((conn, state.owners));
        release
    }

    fn start_release(&mut self, owners: Vec<(Owner, OwnerState)>, linger: bool, dead: bool, now: Instant, woken: &mut Vec<Wakeup<W>>) -> Release {
        // Neither the waits' ends nor a small release depend on the owners' order (`process`
        // sorts what it looks at); a big one is sorted by `sort_keys`, outside the lock.
        let mut release = Release { detached: None, left: Vec::with_capacity(owners.len()), linger, sorted: false, released: 0, cancelled: 0 };
        let mut dirty = Vec::new();
        for (owner, state) in owners {
            if let Some(rid) = state.pending {
                let req = self.cancel(rid);
                dirty.extend(req.queued_on.into_iter().map(|w| w.key));
                if !dead {
                    woken.push(Wakeup { waiter: req.waiter, end: super::WaitEnd::Cancelled });
                }
                release.cancelled += 1;
            }
            if !state.held_keys.is_empty() {
                release.left.push((owner, state.held_keys));
            }
        }
        // A small release goes at once, in any order: `process` sorts what it looks at.
        if release.left.iter().map(|(_, keys)| keys.len()).sum::<usize>() <= SLICE {
            for (owner, keys) in std::mem::take(&mut release.left) {
                release.released += keys.len();
                self.release_keys(owner, keys, linger, now, &mut dirty);
            }
        }
        self.process(dirty, now, woken);
        release
    }

    /// Releases the next slice of `release` (after [`Release::sort_keys`]).
    pub fn release_slice(&mut self, release: &mut Release, now: Instant, woken: &mut Vec<Wakeup<W>>) {
        assert!(release.sorted, "slices follow the sorted keys");
        let mut dirty = Vec::new();
        while dirty.len() < SLICE {
            let Some((owner, keys)) = release.left.last_mut() else { break };
            let owner = *owner;
            let slice = keys.split_off(keys.len().saturating_sub(SLICE - dirty.len()));
            if keys.is_empty() {
                release.left.pop();
            }
            release.released += slice.len();
            self.release_keys(owner, slice, release.linger, now, &mut dirty);
        }
        self.process(dirty, now, woken);
    }

    /// Releases (or with `linger`, keeps lingering) `keys` of a detached owner; adds them
    /// to `dirty`.
    fn release_keys(&mut self, owner: Owner, keys: Vec<Key>, linger: bool, now: Instant, dirty: &mut Vec<Key>) {
        for key in keys {
            if linger {
                if self.keys.get_mut(&key).and_then(|s| s.set_lingering(owner)).is_some() {
                    self.lingering += 1;
                    self.push_deadline(now + self.limits.lock_delay, super::Deadline::Linger { key: key.clone(), owner });
                }
            } else {
                self.drop_holder(&key, owner);
            }
            dirty.push(key);
        }
    }

    /// Releases everything `owner` holds and withdraws its waiting request, all in one
    /// step. Returns (locks released, requests withdrawn).
    pub fn release_owner(&mut self, owner: Owner, now: Instant, woken: &mut Vec<Wakeup<W>>) -> (usize, usize) {
        let release = self.start_release_owner(owner, now, woken);
        self.finish_release(release, now, woken)
    }

    /// [`LockTable::start_release_connection`] and every slice, in one step.
    pub fn release_connection(&mut self, conn: ConnId, dead: bool, now: Instant, woken: &mut Vec<Wakeup<W>>) -> (usize, usize) {
        let release = self.start_release_connection(conn, dead, now, woken);
        self.finish_release(release, now, woken)
    }

    fn finish_release(&mut self, mut release: Release, now: Instant, woken: &mut Vec<Wakeup<W>>) -> (usize, usize) {
        release.sort_keys();
        while !release.is_done() {
            self.release_slice(&mut release, now, woken);
        }
        release.counts()
    }
}
