//! Per-key state and the map that holds it, laid out for memory and for bounded work.
//!
//! Memory: a held lock is the table's biggest cost at a million locks, so each key is one
//! record in a slab found through a 4-byte slot, its first holder is stored inline, and
//! everything a busy key needs (its further holders and their index, lingering counts,
//! and in a box of its own its wait queue) lives in a box allocated only while the key
//! is busy. The record is 64 bytes.
//!
//! Work: every question the granting code asks of a key (does a holder block this mode?
//! is anyone incompatible queued ahead of this request? which holder is this owner's?) is
//! answered in O(1) or O(log n), never by walking the holders or the queue, so no
//! request's cost depends on how many other clients hold or wait for the same key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use foldhash::fast::RandomState;
use pklock_proto::Mode;
use slab::Slab;
use std::hash::BuildHasher;

use super::slots::Slots;
use super::{Holder, Key, Owner, RequestId, ValueId};

/// The class of an exclusive request in a queue (values of shared requests are below it).
const EXCLUSIVE: ValueId = ValueId::MAX;

/// Holders are found by scanning up to this many; a key with more gets an index.
const INDEX_FROM: usize = 8;

#[derive(Debug)]
pub(super) struct KeyState {
    pub key: Key,
    /// Holder 0. Holders 1.. are `busy.more`; there are none while this is `None`.
    first: Option<Holder>,
    busy: Option<Box<Busy>>,
}

/// What a key needs only while it has waiters, more than one holder or lingering holders.
#[derive(Debug, Default)]
struct Busy {
    /// The holders after the first, in order (holder `i` is `more[i - 1]`).
    more: Vec<Holder>,
    /// Holders of a dead connection kept until the lock-delay runs out; they block all.
    lingering: usize,
    /// Owner and token → holder position, once there are many holders.
    index: Option<Box<HolderIndex>>,
    /// Boxed apart, so that a key with a few shared holders and nobody waiting stays small.
    waiting: Option<Box<Waiting>>,
}

/// A key's wait queue.
#[derive(Debug, Default)]
struct Waiting {
    /// Upgrades wait ahead of everyone else, in arrival order.
    upgrades: Vec<RequestId>,
    /// Other waiters in arrival order (request ids grow with arrival), with their class:
    /// [`EXCLUSIVE`], or the value of a shared request (0 for plain shared).
    queue: BTreeMap<RequestId, ValueId>,
    /// The exclusive requests in `queue`: a shared request is admitted past the queue
    /// only when none of these is ahead of it...
    exclusive: BTreeSet<RequestId>,
    /// ...and no shared request of another value: the shared requests by value, and the
    /// first of each value, in arrival order.
    shared: HashMap<ValueId, BTreeSet<RequestId>, RandomState>,
    heads: BTreeSet<(RequestId, ValueId)>,
    /// Requests whose grant is held up here. Every waiting request is parked on one key
    /// that blocks it and is looked at again only when that key changes. Ordered like the
    /// queue: upgrades (`false`) first, then by arrival.
    parked: BTreeSet<(bool, RequestId)>,
}

#[derive(Debug, Default)]
struct HolderIndex {
    by_owner: HashMap<Owner, usize, RandomState>,
    by_token: HashMap<u64, usize, RandomState>,
}

impl Busy {
    fn is_empty(&self) -> bool {
        self.more.is_empty() && self.lingering == 0 && self.index.is_none() && self.waiting.is_none()
    }
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.upgrades.is_empty() && self.queue.is_empty()
    }
}

impl KeyState {
    fn new(key: Key) -> Self {
        KeyState { key, first: None, busy: None }
    }

    pub fn is_idle(&self) -> bool {
        self.first.is_none() && self.busy.is_none()
    }

    // --- holders -----------------------------------------------------------------------

    /// The holders in order: the first, then `busy.more`.
    pub fn holders(&self) -> impl Iterator<Item = &Holder> + '_ {
        self.first.iter().chain(self.busy.iter().flat_map(|b| b.more.iter()))
    }

    fn holder_count(&self) -> usize {
        usize::from(self.first.is_some()) + self.busy.as_ref().map_or(0, |b| b.more.len())
    }

    fn holder_at(&self, i: usize) -> &Holder {
        match i {
            0 => self.first.as_ref().expect("holder 0"),
            _ => &self.busy.as_ref().expect("holders past the first").more[i - 1],
        }
    }

    fn holder_at_mut(&mut self, i: usize) -> &mut Holder {
        match i {
            0 => self.first.as_mut().expect("holder 0"),
            _ => &mut self.busy.as_mut().expect("holders past the first").more[i - 1],
        }
    }

    /// Removes holder `i`, putting the last holder in its place (`Vec::swap_remove`).
    fn swap_remove_holder(&mut self, i: usize) -> Holder {
        let last = self.busy.as_mut().and_then(|b| b.more.pop());
        match last {
            None => self.first.take().expect("holder 0"),
            Some(last) if i == self.holder_count() => last,
            Some(last) => std::mem::replace(self.holder_at_mut(i), last),
        }
    }

    fn position(&self, owner: Owner) -> Option<usize> {
        match self.busy.as_ref().and_then(|b| b.index.as_ref()) {
            Some(index) => index.by_owner.get(&owner).copied(),
            None => self.holders().position(|h| h.owner == owner),
        }
    }

    /// `owner`'s live (not lingering) hold on this key.
    pub fn holder(&self, owner: Owner) -> Option<&Holder> {
        self.position(owner).map(|i| self.holder_at(i)).filter(|h| !h.lingering)
    }

    /// Gives `owner`'s live hold a new grant (a re-lock or a mode change); `None` when it
    /// holds none.
    /// Returns the value the hold had, if it had one.
    pub fn regrant(&mut self, owner: Owner, mode: Mode, value: ValueId, token: u64, since: u64) -> Option<ValueId> {
        let i = self.position(owner)?;
        let holder = self.holder_at_mut(i);
        if holder.lingering {
            return None;
        }
        let old_token = std::mem::replace(&mut holder.token, token);
        let old_value = std::mem::replace(&mut holder.value, value);
        holder.mode = mode;
        holder.since = since;
        if let Some(index) = self.busy.as_mut().and_then(|b| b.index.as_mut()) {
            index.by_token.remove(&old_token);
            index.by_token.insert(token, i);
        }
        Some(old_value)
    }

    /// Records where this key now sits in `owner`'s held list (see [`Holder::listed_at`]).
    pub fn relist(&mut self, owner: Owner, at: u32) {
        let i = self.position(owner).expect("the owner holds this key");
        self.holder_at_mut(i).listed_at = at;
    }

    /// Whether some live holder has this token.
    pub fn has_token(&self, token: u64) -> bool {
        let found = match self.busy.as_ref().and_then(|b| b.index.as_ref()) {
            Some(index) => index.by_token.get(&token).map(|&i| self.holder_at(i)),
            None => self.holders().find(|h| h.token == token),
        };
        found.is_some_and(|h| h.token == token && !h.lingering)
    }

    pub fn push_holder(&mut self, holder: Holder) {
        let i = self.holder_count();
        let (owner, token) = (holder.owner, holder.token);
        if self.first.is_none() {
            self.first = Some(holder);
        } else {
            let more = &mut self.busy.get_or_insert_with(Box::default).more;
            // Most shared keys have two holders at most; the second then costs one slot,
            // not the four that a vector's first growth makes room for.
            if more.capacity() == 0 {
                more.reserve_exact(1);
            }
            more.push(holder);
        }
        if let Some(index) = self.busy.as_mut().and_then(|b| b.index.as_mut()) {
            index.by_owner.insert(owner, i);
            index.by_token.insert(token, i);
        } else if i + 1 > INDEX_FROM {
            let mut index = HolderIndex::default();
            for (i, h) in self.holders().enumerate() {
                index.by_owner.insert(h.owner, i);
                index.by_token.insert(h.token, i);
            }
            self.busy.get_or_insert_with(Box::default).index = Some(Box::new(index));
        }
    }

    /// Removes `owner`'s holder (live or lingering) and returns it.
    pub fn remove_holder(&mut self, owner: Owner) -> Option<Holder> {
        let i = self.position(owner)?;
        let removed = self.swap_remove_holder(i);
        let count = self.holder_count();
        let moved = (i < count).then(|| self.holder_at(i)).map(|h| (h.owner, h.token));
        if let Some(busy) = self.busy.as_mut() {
            if removed.lingering {
                busy.lingering -= 1;
            }
            if let Some(index) = busy.index.as_mut() {
                index.by_owner.remove(&removed.owner);
                index.by_token.remove(&removed.token);
                if let Some((owner, token)) = moved {
                    index.by_owner.insert(owner, i);
                    index.by_token.insert(token, i);
                }
                if count < INDEX_FROM / 2 {
                    busy.index = None;
                }
            }
        }
        self.drop_busy_if_empty();
        Some(removed)
    }

    /// Marks `owner`'s live holder as lingering; returns its token.
    pub fn set_lingering(&mut self, owner: Owner) -> Option<u64> {
        let i = self.position(owner)?;
        let holder = self.holder_at_mut(i);
        if holder.lingering {
            return None;
        }
        holder.lingering = true;
        let token = holder.token;
        self.busy.get_or_insert_with(Box::default).lingering += 1;
        Some(token)
    }

    /// Whether the holders keep a request in `mode` (with `value`, for shared) out.
    /// `upgrade`: the requester holds the key shared (its own hold does not count).
    /// Exclusive is only ever held alone and shared holders all hold one value, so this
    /// is O(1).
    pub fn holders_block(&self, mode: Mode, value: ValueId, upgrade: bool) -> bool {
        if self.busy.as_ref().is_some_and(|b| b.lingering > 0) {
            return true;
        }
        match mode {
            Mode::Shared => self.first.as_ref().is_some_and(|h| h.mode == Mode::Exclusive || h.value != value),
            Mode::Exclusive => self.holder_count() > usize::from(upgrade),
        }
    }

    // --- waiters -----------------------------------------------------------------------

    fn waiting(&self) -> Option<&Waiting> {
        self.busy.as_ref()?.waiting.as_deref()
    }

    fn waiting_mut(&mut self) -> Option<&mut Waiting> {
        self.busy.as_mut()?.waiting.as_deref_mut()
    }

    fn waiting_or_insert(&mut self) -> &mut Waiting {
        self.busy.get_or_insert_with(Box::default).waiting.get_or_insert_with(Box::default)
    }

    /// Whether requests queued ahead of `rid` keep it out (`rid` need not be queued yet:
    /// a new request is behind everyone).
    pub fn queue_blocks(&self, rid: RequestId, mode: Mode, value: ValueId, upgrade: bool) -> bool {
        let Some(busy) = self.waiting() else { return false };
        let upgrades_ahead = busy.upgrades.iter().take_while(|&&r| r != rid).next().is_some();
        if upgrade || upgrades_ahead {
            return upgrades_ahead;
        }
        match mode {
            Mode::Exclusive => busy.queue.first_key_value().is_some_and(|(&first, _)| first < rid),
            Mode::Shared => {
                // The first request of another value ahead is among the first two heads.
                let other_value_ahead = busy.heads.iter().take(2).find(|(_, v)| *v != value).is_some_and(|&(first, _)| first < rid);
                other_value_ahead || busy.exclusive.first().is_some_and(|&first| first < rid)
            }
        }
    }

    /// The nearest exclusive request in the queue (not an upgrade) ahead of `rid`.
    pub fn nearest_queued_exclusive_ahead(&self, rid: RequestId) -> Option<RequestId> {
        self.waiting()?.exclusive.range(..rid).next_back().copied()
    }

    /// Shared requests queued ahead of `rid` and after `after` (a request in the queue),
    /// whose value is not `value`.
    pub fn other_values_ahead(&self, rid: RequestId, value: ValueId, after: Option<RequestId>) -> impl Iterator<Item = RequestId> + '_ {
        let busy = self.waiting();
        let from = after.map_or(0, |a| a + 1);
        busy.into_iter()
            .flat_map(move |b| b.heads.range(..(rid, 0)).filter(move |(_, v)| *v != value).map(move |(_, v)| &b.shared[v]))
            .flat_map(move |class| class.range(from..rid).copied())
    }

    /// The waiters of this key in grant order.
    pub fn waiters(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.waiting().into_iter().flat_map(|b| b.upgrades.iter().chain(b.queue.keys())).copied()
    }

    /// The waiters ahead of `rid`, nearest first, with whether each is exclusive
    /// (upgrades always are).
    pub fn ahead_of(&self, rid: RequestId) -> impl Iterator<Item = (RequestId, bool)> + '_ {
        let (upgrades, queue): (&[RequestId], _) = match self.waiting() {
            None => (&[], None),
            Some(b) => match b.upgrades.iter().position(|&r| r == rid) {
                Some(i) => (&b.upgrades[..i], None),
                None => (&b.upgrades[..], Some(b.queue.range(..rid))),
            },
        };
        queue
            .into_iter()
            .flat_map(|q| q.rev().map(|(r, class)| (*r, *class == EXCLUSIVE)))
            .chain(upgrades.iter().rev().map(|&r| (r, true)))
    }

    /// The nearest exclusive request queued ahead of `rid` (upgrades are exclusive).
    pub fn nearest_exclusive_ahead(&self, rid: RequestId) -> Option<RequestId> {
        let busy = self.waiting()?;
        match busy.upgrades.iter().position(|&r| r == rid) {
            Some(i) => i.checked_sub(1).map(|j| busy.upgrades[j]),
            None => busy.exclusive.range(..rid).next_back().copied().or_else(|| busy.upgrades.last().copied()),
        }
    }

    pub fn push_waiter(&mut self, rid: RequestId, mode: Mode, value: ValueId, upgrade: bool) {
        let busy = self.waiting_or_insert();
        if upgrade {
            busy.upgrades.push(rid);
        } else if mode == Mode::Exclusive {
            busy.queue.insert(rid, EXCLUSIVE);
            busy.exclusive.insert(rid);
        } else {
            busy.queue.insert(rid, value);
            let class = busy.shared.entry(value).or_default();
            if class.is_empty() {
                busy.heads.insert((rid, value));
            }
            class.insert(rid);
        }
    }

    pub fn remove_waiter(&mut self, rid: RequestId) {
        let Some(busy) = self.waiting_mut() else { return };
        match busy.queue.remove(&rid) {
            Some(EXCLUSIVE) => {
                busy.exclusive.remove(&rid);
            }
            Some(value) => {
                let class = busy.shared.get_mut(&value).expect("a shared waiter's class");
                class.remove(&rid);
                if busy.heads.remove(&(rid, value)) {
                    match class.first() {
                        Some(&next) => {
                            busy.heads.insert((next, value));
                        }
                        None => {
                            busy.shared.remove(&value);
                        }
                    }
                }
            }
            None => busy.upgrades.retain(|&r| r != rid),
        }
        busy.parked.remove(&(false, rid));
        busy.parked.remove(&(true, rid));
        if busy.is_empty() {
            self.busy.as_mut().expect("it has a queue").waiting = None;
            self.drop_busy_if_empty();
        }
    }

    pub fn park(&mut self, rid: RequestId, upgrade: bool) {
        self.waiting_or_insert().parked.insert((!upgrade, rid));
    }

    pub fn unpark(&mut self, rid: RequestId, upgrade: bool) {
        if let Some(busy) = self.waiting_mut() {
            busy.parked.remove(&(!upgrade, rid));
        }
    }

    /// The first request parked here after `after` (in queue order).
    pub fn next_parked(&self, after: Option<(bool, RequestId)>) -> Option<(bool, RequestId)> {
        let busy = self.waiting()?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        busy.parked.range((from, Bound::Unbounded)).next().copied()
    }

    fn drop_busy_if_empty(&mut self) {
        if self.busy.as_ref().is_some_and(|b| b.is_empty()) {
            self.busy = None;
        }
    }
}

/// Keys by name. The records sit side by side in a slab and a hash slot is a record's
/// 4-byte position there: a boxed record would cost an 8-byte slot plus the allocator's
/// header and size-class rounding, per key. The name lives inside each record. A sorted
/// index of the names serves `locks` listings page by page.
#[derive(Debug, Default)]
pub(super) struct KeyMap {
    records: Slab<KeyState>,
    slots: Slots,
    sorted: BTreeSet<Key>,
    /// Sum of the names' lengths, for the memory estimate.
    name_bytes: usize,
    /// Seeded per process, so clients cannot choose keys that collide.
    hasher: RandomState,
}

impl KeyMap {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn name_bytes(&self) -> usize {
        self.name_bytes
    }

    fn find(&self, key: &str) -> Option<usize> {
        let records = &self.records;
        self.slots.find(self.hash(key), |id| *records[id as usize].key == *key).map(|id| id as usize)
    }

    /// Every key, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &KeyState> + '_ {
        self.records.iter().map(|(_, state)| state)
    }

    pub fn get(&self, key: &str) -> Option<&KeyState> {
        self.find(key).map(|id| &self.records[id])
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut KeyState> {
        self.find(key).map(|id| &mut self.records[id])
    }

    /// The state of `key`, created empty if it has none.
    pub fn get_or_insert(&mut self, key: &Key) -> &mut KeyState {
        let id = match self.find(key) {
            Some(id) => id,
            None => {
                let id = self.records.insert(KeyState::new(key.clone()));
                let slot = u32::try_from(id).expect("fewer than 2^32 keys (each takes over 100 bytes)");
                let (records, hasher) = (&self.records, &self.hasher);
                self.slots.insert(self.hash(key), slot, |id| hasher.hash_one(&*records[id as usize].key));
                self.sorted.insert(key.clone());
                self.name_bytes += key.len();
                id
            }
        };
        &mut self.records[id]
    }

    /// Forgets `key` if nobody holds or waits for it.
    pub fn remove_if_idle(&mut self, key: &str) {
        let hash = self.hash(key);
        let records = &self.records;
        if let Some(id) = self.slots.find(hash, |id| *records[id as usize].key == *key) {
            if records[id as usize].is_idle() {
                self.slots.remove(hash, id);
                let state = self.records.remove(id as usize);
                self.sorted.remove(&state.key);
                self.name_bytes -= state.key.len();
            }
        }
    }

    /// Keys starting with `prefix` and sorting after `after`, in order.
    pub fn range<'a>(&'a self, prefix: &'a str, after: Option<&str>) -> impl Iterator<Item = &'a KeyState> + 'a {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.sorted
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(move |k| k.starts_with(prefix))
            .filter_map(move |k| self.get(k))
    }
}
