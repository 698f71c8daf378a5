//! The key map's hash slots, grown a few at a time.
//!
//! A hash table grows by moving every entry into a table twice the size, all at once: at
//! 1.8M keys that took 0.3 s under the table lock, during which no client was served
//! (`attack_table.rs`, `a_client_holding_millions_of_locks_…`). Here a full table is set
//! aside instead and its entries move into the bigger one a few buckets per insert, as
//! Redis rehashes its dictionaries; a key is looked up in both until the move is done.

use std::mem;

use hashbrown::HashTable;

/// Buckets of the old table moved per insert: at most 16 rehashed slots, a few µs. The
/// old table has 8/7 buckets per unit of its capacity, so its move ends after 1/14 of that
/// capacity in inserts (both tables' memory is held until then); the new table's spare
/// room (its capacity, at least the old capacity or twice the old entries, less those
/// entries) is at least half the old capacity, so it never fills first.
const MOVED_PER_INSERT: usize = 16;

/// Sets of `u32` slots found by a hash; the caller keeps the hashes' inputs.
#[derive(Debug, Default)]
pub(super) struct Slots {
    table: HashTable<u32>,
    /// A full table being emptied into `table`, and the next of its buckets to move.
    moving: Option<(HashTable<u32>, usize)>,
}

impl Slots {
    pub fn len(&self) -> usize {
        self.table.len() + self.moving.as_ref().map_or(0, |(old, _)| old.len())
    }

    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let found = self.table.find(hash, |&slot| eq(slot));
        found.or_else(|| self.moving.as_ref()?.0.find(hash, |&slot| eq(slot))).copied()
    }

    /// Adds `slot`, which must not be here yet; `rehash` gives any slot's hash.
    pub fn insert(&mut self, hash: u64, slot: u32, rehash: impl Fn(u32) -> u64) {
        self.move_some(&rehash);
        if self.table.len() == self.table.capacity() {
            // Inserting now would make hashbrown rehash the whole table at once.
            self.move_all(&rehash);
            let capacity = (2 * self.table.len()).max(self.table.capacity()).max(16);
            let old = mem::replace(&mut self.table, HashTable::with_capacity(capacity));
            self.moving = Some((old, 0));
        }
        self.table.insert_unique(hash, slot, |&slot| rehash(slot));
    }

    /// Removes `slot`, found by its hash.
    pub fn remove(&mut self, hash: u64, slot: u32) {
        if let Ok(entry) = self.table.find_entry(hash, |&s| s == slot) {
            entry.remove();
        } else if let Some((old, _)) = &mut self.moving {
            if let Ok(entry) = old.find_entry(hash, |&s| s == slot) {
                entry.remove();
            }
        }
    }

    fn move_some(&mut self, rehash: &impl Fn(u32) -> u64) {
        self.move_buckets(MOVED_PER_INSERT, rehash);
    }

    fn move_all(&mut self, rehash: &impl Fn(u32) -> u64) {
        self.move_buckets(usize::MAX, rehash);
    }

    fn move_buckets(&mut self, count: usize, rehash: &impl Fn(u32) -> u64) {
        let Some((old, next)) = &mut self.moving else { return };
        let end = next.saturating_add(count).min(old.num_buckets());
        for bucket in *next..end {
            if let Ok(entry) = old.get_bucket_entry(bucket) {
                let (slot, _) = entry.remove();
                self.table.insert_unique(rehash(slot), slot, |&slot| rehash(slot));
            }
        }
        *next = end;
        if end == old.num_buckets() || old.is_empty() {
            self.moving = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(slot: u32) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(7).hash_one(slot)
    }

    /// Few distinct hashes, so that lookups probe past each other.
    fn hash(slot: u32) -> u64 {
        spread(slot % 1000)
    }

    #[test]
    fn every_slot_is_found_while_the_table_grows_in_steps_and_none_after_removal() {
        let mut slots = Slots::default();
        let mut present = std::collections::HashSet::new();
        let mut grew = 0;
        for slot in 0..100_000u32 {
            slots.insert(hash(slot), slot, hash);
            present.insert(slot);
            grew += usize::from(slots.moving.as_ref().is_some_and(|(_, next)| *next == 0));
            if slot % 7 == 0 {
                slots.remove(hash(slot / 2), slot / 2);
                present.remove(&(slot / 2));
            }
        }
        assert!(grew >= 10, "the table grew {grew} times");
        for slot in 0..100_000u32 {
            assert_eq!(slots.find(hash(slot), |s| s == slot).is_some(), present.contains(&slot), "slot {slot}");
        }
        assert_eq!(slots.len(), present.len());
    }

    #[test]
    fn a_table_filled_up_by_tombstones_moves_in_steps_too() {
        // Nearly full (hashbrown's capacity is 7/8 of its buckets), so that removals leave
        // tombstones: a removed slot amid a run of 16 full buckets cannot become empty.
        let mut slots = Slots::default();
        let mut filled = 0;
        while slots.moving.is_some() || slots.table.capacity() < 50_000 {
            slots.insert(spread(filled), filled, spread);
            filled += 1;
        }
        let window = slots.table.capacity() as u32 - 2;
        for slot in filled..window {
            slots.insert(spread(slot), slot, spread);
        }
        let mut moves = 0;
        // Churn: a window of slots slides along; the count of entries never grows.
        for slot in window..20 * window {
            slots.insert(spread(slot), slot, spread);
            moves += usize::from(slots.moving.as_ref().is_some_and(|(_, next)| *next == 0));
            slots.remove(spread(slot - window), slot - window);
            if let Some((old, _)) = &slots.moving {
                assert!(slots.table.capacity() - slots.table.len() > old.len(), "room for what is left to move");
            }
        }
        assert!(moves >= 1, "the tombstones never filled the table");
        assert!((19 * window..20 * window).all(|slot| slots.find(spread(slot), |s| s == slot) == Some(slot)));
        assert_eq!(slots.len(), window as usize);
    }
}
