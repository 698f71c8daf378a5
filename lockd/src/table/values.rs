//! Lock values (eLock's value locks): shared holders of a key all hold the same value, and
//! another value conflicts. Values are interned to small ids, which fit in the padding of
//! a holder record, so plain locks pay nothing for the feature; an id is freed when the
//! last holder or waiter of that value goes.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

/// An interned value; [`NO_VALUE`] for plain locks.
pub type ValueId = u32;

pub const NO_VALUE: ValueId = 0;

#[derive(Debug, Default)]
pub(super) struct Values {
    ids: HashMap<Arc<str>, ValueId, RandomState>,
    /// Name and reference count of each id in use.
    names: HashMap<ValueId, (Arc<str>, usize), RandomState>,
    free: Vec<ValueId>,
    next: ValueId,
}

impl Values {
    /// The id of `name`, with one more reference.
    pub fn acquire(&mut self, name: Option<&str>) -> ValueId {
        let Some(name) = name else { return NO_VALUE };
        if let Some(&id) = self.ids.get(name) {
            self.retain(id);
            return id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        let name: Arc<str> = name.into();
        self.ids.insert(name.clone(), id);
        self.names.insert(id, (name, 1));
        id
    }

    pub fn retain(&mut self, id: ValueId) {
        if id != NO_VALUE {
            self.names.get_mut(&id).expect("a value in use").1 += 1;
        }
    }

    pub fn release(&mut self, id: ValueId) {
        if id == NO_VALUE {
            return;
        }
        let entry = self.names.get_mut(&id).expect("a value in use");
        entry.1 -= 1;
        if entry.1 == 0 {
            let (name, _) = self.names.remove(&id).expect("just seen");
            self.ids.remove(&name);
            self.free.push(id);
        }
    }

    pub fn name(&self, id: ValueId) -> Option<&str> {
        self.names.get(&id).map(|(name, _)| &**name)
    }

    /// Values in use, for tests that check ids are given back.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.names.len()
    }
}
