//! A map that keeps at most `capacity` entries and forgets the oldest
//! insertion first: the small caches of decrypted chunks and of checked
//! blob outboards. A capacity of 0 keeps nothing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    capacity: usize,
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Copy, V: Clone> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Change the capacity; drops every entry.
    pub(crate) fn reset(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.map.clear();
        self.order.clear();
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).cloned()
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &K) {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_nothing_at_zero() {
        let mut m = BoundedMap::new(2);
        m.insert(1, 'a');
        m.insert(2, 'b');
        m.insert(3, 'c');
        assert_eq!(
            (m.get(&1), m.get(&2), m.get(&3)),
            (None, Some('b'), Some('c'))
        );
        m.remove(&2);
        m.insert(4, 'd');
        assert!(m.contains(&3) && m.contains(&4));
        m.reset(0);
        m.insert(5, 'e');
        assert!(!m.contains(&5));
    }
}
