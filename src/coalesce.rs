//! Work coalesced per group, with one drainer per group.
//!
//! Under a sustained load new work (a head to pull, a head to announce)
//! arrives faster than one piece completes. Doing each in turn leaves the
//! node further behind with every arrival; instead a group (a bucket) has
//! at most one drainer running, and while it runs only the newest value of
//! each key waits: a newer head contains the older ones. The drainer takes
//! the keys in turn: a key that always has a new value waiting (a peer that
//! announces faster than a pull takes) must not starve the others.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::ops::Bound;
use std::sync::Mutex;

/// The newest value per key, per group, waiting for the group's drainer.
pub(crate) struct Coalesced<G, K, V> {
    groups: Mutex<HashMap<G, Group<K, V>>>,
}

/// One group's waiting values and the key its drainer took last.
struct Group<K, V> {
    waiting: BTreeMap<K, V>,
    last: Option<K>,
}

impl<K, V> Default for Group<K, V> {
    fn default() -> Self {
        Self {
            waiting: BTreeMap::new(),
            last: None,
        }
    }
}

impl<G, K, V> Default for Coalesced<G, K, V> {
    fn default() -> Self {
        Self {
            groups: Mutex::new(HashMap::new()),
        }
    }
}

impl<G: Hash + Eq + Copy, K: Ord + Clone, V> Coalesced<G, K, V> {
    /// Note `value` as the newest of `key` in `group`; true when the caller
    /// must start the group's drainer (none is running).
    pub(crate) fn offer(&self, group: G, key: K, value: V) -> bool {
        let mut all = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let start = !all.contains_key(&group);
        all.entry(group).or_default().waiting.insert(key, value);
        start
    }

    /// The next value for the group's drainer (the first key after the one
    /// it took last, wrapping around), or `None`: then nothing waits and
    /// the drainer ends (the next offer starts a new one).
    pub(crate) fn next(&self, group: &G) -> Option<(K, V)> {
        let mut all = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let g = all.get_mut(group)?;
        let after = match &g.last {
            Some(last) => g
                .waiting
                .range((Bound::Excluded(last), Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone()),
            None => None,
        };
        let key = after.or_else(|| g.waiting.keys().next().cloned());
        let Some(key) = key else {
            all.remove(group);
            return None;
        };
        let value = g.waiting.remove(&key).expect("the key was just found");
        g.last = Some(key.clone());
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_drainer_per_group_sees_only_the_newest_value_of_each_key() {
        let c: Coalesced<u8, u8, u32> = Coalesced::default();
        assert!(c.offer(1, 0, 10), "the first offer starts a drainer");
        assert!(!c.offer(1, 0, 11), "one is running");
        assert!(!c.offer(1, 5, 50));
        assert!(c.offer(2, 0, 20), "another group has its own");
        assert_eq!(c.next(&1), Some((0, 11)));
        assert_eq!(c.next(&1), Some((5, 50)));
        assert_eq!(c.next(&1), None);
        assert!(
            c.offer(1, 0, 12),
            "the drainer ended: the next offer starts one"
        );
        assert_eq!(c.next(&2), Some((0, 20)));
    }

    #[test]
    fn a_key_that_always_has_a_value_waiting_does_not_starve_the_others() {
        let c: Coalesced<u8, u8, u32> = Coalesced::default();
        c.offer(1, 0, 0);
        c.offer(1, 1, 100);
        c.offer(1, 2, 200);
        let mut taken = Vec::new();
        for round in 1..=6 {
            let (k, _) = c.next(&1).unwrap();
            taken.push(k);
            // Key 0 announces again while each value is worked on.
            c.offer(1, 0, round);
        }
        assert_eq!(taken, [0, 1, 2, 0, 0, 0], "every key had its turn");
        c.offer(1, 2, 201);
        assert_eq!(c.next(&1), Some((2, 201)), "after 0 comes the next key");
        assert_eq!(c.next(&1), Some((0, 6)));
        assert_eq!(c.next(&1), None);
    }
}
