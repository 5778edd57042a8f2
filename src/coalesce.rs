//! Work coalesced per group, with one drainer per group.
//!
//! Under a sustained load new work (a head to pull, a head to announce)
//! arrives faster than one piece completes. Doing each in turn leaves the
//! node further behind with every arrival; instead a group (a bucket) has
//! at most one drainer running, and while it runs only the newest value of
//! each key waits: a newer head contains the older ones.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

/// The newest value per key, per group, waiting for the group's drainer.
pub(crate) struct Coalesced<G, K, V> {
    groups: Mutex<HashMap<G, BTreeMap<K, V>>>,
}

impl<G, K, V> Default for Coalesced<G, K, V> {
    fn default() -> Self {
        Self {
            groups: Mutex::new(HashMap::new()),
        }
    }
}

impl<G: Hash + Eq + Copy, K: Ord, V> Coalesced<G, K, V> {
    /// Note `value` as the newest of `key` in `group`; true when the caller
    /// must start the group's drainer (none is running).
    pub(crate) fn offer(&self, group: G, key: K, value: V) -> bool {
        let mut all = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let start = !all.contains_key(&group);
        all.entry(group).or_default().insert(key, value);
        start
    }

    /// The next value for the group's drainer, or `None`: then nothing
    /// waits and the drainer ends (the next offer starts a new one).
    pub(crate) fn next(&self, group: &G) -> Option<(K, V)> {
        let mut all = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let next = all.get_mut(group)?.pop_first();
        if next.is_none() {
            all.remove(group);
        }
        next
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
}
