//! The groups one core hosts, by id, with a map's interface: a lookup is an index into a
//! table of pointers, not a search.
//!
//! At tens of thousands of groups a core looks up a cold group several times per operation
//! (each message, each ready state, each persisted batch, each tick). In a `BTreeMap` with
//! the groups inside its nodes, the search's key loads were most of `handle_message`'s own
//! time at 16 384 groups (perf: 56 %, the stall on the node's keys), since the nodes, holding
//! the groups themselves, spread the keys over megabytes. Group ids are dense (vShard + 1,
//! the metadata group 0), so the table is a vector of boxes indexed by id, small enough to
//! stay in cache (8 bytes per id); an id past `DENSE_IDS` (none today) goes to a
//! `BTreeMap`. Iteration is in id order, as the map's was: the simulator replays exactly.

use std::collections::BTreeMap;

use crate::ids::GroupId;

/// Ids below this live in the vector (its size follows the largest such id hosted: at most
/// 2 MiB of pointers).
const DENSE_IDS: u64 = 1 << 18;

/// One core's groups, in id order.
pub struct GroupTable<G> {
    /// `dense[id]` holds the group with that id, with its id (for `iter`).
    dense: Vec<Option<Box<(GroupId, G)>>>,
    sparse: BTreeMap<GroupId, Box<(GroupId, G)>>,
    len: usize,
}

impl<G> Default for GroupTable<G> {
    fn default() -> Self {
        GroupTable::new()
    }
}

impl<G> GroupTable<G> {
    pub fn new() -> GroupTable<G> {
        GroupTable {
            dense: Vec::new(),
            sparse: BTreeMap::new(),
            len: 0,
        }
    }

    fn slot(&self, id: GroupId) -> Option<&(GroupId, G)> {
        if id.0 < DENSE_IDS {
            self.dense.get(id.0 as usize)?.as_deref()
        } else {
            self.sparse.get(&id).map(|b| &**b)
        }
    }

    fn slot_mut(&mut self, id: GroupId) -> Option<&mut (GroupId, G)> {
        if id.0 < DENSE_IDS {
            self.dense.get_mut(id.0 as usize)?.as_deref_mut()
        } else {
            self.sparse.get_mut(&id).map(|b| &mut **b)
        }
    }

    pub fn get(&self, id: &GroupId) -> Option<&G> {
        self.slot(*id).map(|(_, g)| g)
    }

    pub fn get_mut(&mut self, id: &GroupId) -> Option<&mut G> {
        self.slot_mut(*id).map(|(_, g)| g)
    }

    pub fn contains_key(&self, id: &GroupId) -> bool {
        self.slot(*id).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts `group` under `id`; the group it replaces, if any.
    pub fn insert(&mut self, id: GroupId, group: G) -> Option<G> {
        let entry = Box::new((id, group));
        let old = if id.0 < DENSE_IDS {
            let at = id.0 as usize;
            if self.dense.len() <= at {
                self.dense.resize_with(at + 1, || None);
            }
            self.dense[at].replace(entry)
        } else {
            self.sparse.insert(id, entry)
        };
        if old.is_none() {
            self.len += 1;
        }
        old.map(|b| b.1)
    }

    /// The group under `id`, put there first as `G::default()` if there was none.
    pub fn get_or_insert_default(&mut self, id: GroupId) -> &mut G
    where
        G: Default,
    {
        if !self.contains_key(&id) {
            self.insert(id, G::default());
        }
        self.get_mut(&id).expect("just inserted")
    }

    pub fn remove(&mut self, id: &GroupId) -> Option<G> {
        let old = if id.0 < DENSE_IDS {
            let old = self.dense.get_mut(id.0 as usize)?.take();
            // Keep the vector no longer than its last group needs.
            while self.dense.last().is_some_and(Option::is_none) {
                self.dense.pop();
            }
            old
        } else {
            self.sparse.remove(id)
        };
        if old.is_some() {
            self.len -= 1;
        }
        old.map(|b| b.1)
    }

    /// Every group with its id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&GroupId, &G)> + '_ {
        self.dense
            .iter()
            .filter_map(|s| s.as_deref())
            .chain(self.sparse.values().map(|b| &**b))
            .map(|(id, g)| (id, g))
    }

    /// Every group with its id, in id order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&GroupId, &mut G)> + '_ {
        self.dense
            .iter_mut()
            .filter_map(|s| s.as_deref_mut())
            .chain(self.sparse.values_mut().map(|b| &mut **b))
            .map(|(id, g)| (&*id, g))
    }

    pub fn keys(&self) -> impl Iterator<Item = &GroupId> + '_ {
        self.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl Iterator<Item = &G> + '_ {
        self.iter().map(|(_, g)| g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_behaves_as_an_ordered_map_on_both_sides_of_the_dense_range() {
        let mut table = GroupTable::new();
        let mut map = BTreeMap::new();
        let ids = [
            5,
            0,
            DENSE_IDS + 7,
            3,
            DENSE_IDS,
            5,
            1 << 40,
            2,
            DENSE_IDS - 1,
        ];
        for (n, id) in ids.into_iter().enumerate() {
            assert_eq!(
                table.insert(GroupId(id), n),
                map.insert(GroupId(id), n),
                "insert {id}"
            );
            assert_eq!(table.len(), map.len());
        }
        let listed = |t: &GroupTable<usize>| t.iter().map(|(i, v)| (*i, *v)).collect::<Vec<_>>();
        let expected =
            |m: &BTreeMap<GroupId, usize>| m.iter().map(|(i, v)| (*i, *v)).collect::<Vec<_>>();
        assert_eq!(listed(&table), expected(&map));
        for id in [5, DENSE_IDS - 1, DENSE_IDS + 7, 99, 1 << 40, DENSE_IDS + 1] {
            assert_eq!(table.remove(&GroupId(id)), map.remove(&GroupId(id)), "{id}");
            assert_eq!(table.len(), map.len());
            assert!(!table.contains_key(&GroupId(id)));
        }
        assert_eq!(listed(&table), expected(&map));
        for (_, v) in table.iter_mut() {
            *v += 100;
        }
        assert_eq!(table.get(&GroupId(2)), Some(&107));
        assert_eq!(*table.get_or_insert_default(GroupId(2)), 107);
        assert_eq!(*table.get_or_insert_default(GroupId(4)), 0);
        assert!(table.remove(&GroupId(4)).is_some());
        *table.get_mut(&GroupId(0)).unwrap() = 1;
        assert_eq!(
            table.values().copied().collect::<Vec<_>>(),
            [1, 107, 103, 104]
        );
        assert_eq!(
            table.keys().map(|k| k.0).collect::<Vec<_>>(),
            [0, 2, 3, DENSE_IDS]
        );
        // Removing the last dense group shrinks the vector back.
        for id in [0, 2, 3] {
            table.remove(&GroupId(id));
        }
        assert!(table.dense.is_empty());
        assert_eq!(table.len(), 1);
        assert!(table.remove(&GroupId(DENSE_IDS)).is_some());
        assert!(table.is_empty());
    }
}
