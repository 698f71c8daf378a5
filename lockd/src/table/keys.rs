//! Per-key state and the map that holds it, laid out for memory: a held lock is the
//! table's biggest cost at a million locks, so each key is one boxed record found through
//! an 8-byte slot, its first holder is stored inline, and a wait queue is allocated only
//! while someone waits.

use std::collections::VecDeque;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use smallvec::SmallVec;
use std::hash::BuildHasher;

use super::{Holder, Key, RequestId};

#[derive(Debug)]
pub(super) struct KeyState {
    pub key: Key,
    pub holders: SmallVec<[Holder; 1]>,
    waiters: Option<Box<Waiters>>,
}

#[derive(Debug, Default)]
struct Waiters {
    /// Upgrades wait ahead of everyone else, in arrival order.
    upgrades: Vec<RequestId>,
    /// Other waiters in arrival order. Request ids grow with arrival, so this stays
    /// sorted and a request's place is found by binary search.
    queue: VecDeque<RequestId>,
}

impl KeyState {
    fn new(key: Key) -> Self {
        KeyState { key, holders: SmallVec::new(), waiters: None }
    }

    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_none()
    }

    pub fn has_upgrades(&self) -> bool {
        self.waiters.as_ref().is_some_and(|w| !w.upgrades.is_empty())
    }

    /// The waiters of this key in grant order.
    pub fn waiters(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.waiters.iter().flat_map(|w| w.upgrades.iter().chain(w.queue.iter())).copied()
    }

    /// The waiters ahead of `rid`, nearest first.
    pub fn ahead_of(&self, rid: RequestId) -> impl Iterator<Item = RequestId> + '_ {
        let (upgrades, queue): (&[RequestId], _) = match &self.waiters {
            None => (&[], None),
            Some(w) => match w.upgrades.iter().position(|&r| r == rid) {
                Some(i) => (&w.upgrades[..i], None),
                None => (&w.upgrades[..], Some(w.queue.range(..w.queue.binary_search(&rid).unwrap_or_else(|i| i)))),
            },
        };
        queue.into_iter().flat_map(|q| q.rev()).chain(upgrades.iter().rev()).copied()
    }

    pub fn push_waiter(&mut self, rid: RequestId, upgrade: bool) {
        let w = self.waiters.get_or_insert_with(Box::default);
        if upgrade {
            w.upgrades.push(rid);
        } else {
            w.queue.push_back(rid);
        }
    }

    pub fn remove_waiter(&mut self, rid: RequestId) {
        let Some(w) = &mut self.waiters else { return };
        if let Ok(i) = w.queue.binary_search(&rid) {
            w.queue.remove(i);
        } else {
            w.upgrades.retain(|&r| r != rid);
        }
        if w.upgrades.is_empty() && w.queue.is_empty() {
            self.waiters = None;
        }
    }
}

/// Keys by name. The name lives inside each record, so a slot is one pointer.
#[derive(Debug, Default)]
pub(super) struct KeyMap {
    slots: HashTable<Box<KeyState>>,
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

    pub fn get(&self, key: &str) -> Option<&KeyState> {
        self.slots.find(self.hash(key), |s| *s.key == *key).map(|b| &**b)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut KeyState> {
        let hash = self.hash(key);
        self.slots.find_mut(hash, |s| *s.key == *key).map(|b| &mut **b)
    }

    /// The state of `key`, created empty if it has none.
    pub fn get_or_insert(&mut self, key: &Key) -> &mut KeyState {
        let hash = self.hash(key);
        let hasher = &self.hasher;
        let entry = self.slots.entry(hash, |s| *s.key == **key, |s| hasher.hash_one(&*s.key));
        entry.or_insert_with(|| Box::new(KeyState::new(key.clone()))).into_mut()
    }

    /// Forgets `key` if nobody holds or waits for it.
    pub fn remove_if_idle(&mut self, key: &str) {
        let hash = self.hash(key);
        if let Ok(entry) = self.slots.find_entry(hash, |s| *s.key == *key) {
            if entry.get().is_idle() {
                entry.remove();
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &KeyState> {
        self.slots.iter().map(|b| &**b)
    }
}
