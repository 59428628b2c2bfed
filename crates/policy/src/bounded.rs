//! A concurrent map with a hard cap on entries, for every table keyed by source.
//!
//! A flood from millions of spoofed addresses must not grow memory without bound, so each
//! per-source table is capped. The map is split into shards, each a mutex around a `HashMap`
//! with its share of the cap. When an insert finds its shard full, the shard first drops what
//! has expired; if that frees too little, it evicts the least valuable eighth of its entries
//! (as each value judges its own worth), so the cost of eviction is amortised over many inserts.

use crate::time::Timestamp;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// What a bounded table needs to know about its values to evict well.
pub(crate) trait Expiring {
    /// True when the entry carries no information any more and may be dropped.
    fn expired(&self, now: Timestamp) -> bool;
    /// How much keeping the entry is worth; the lowest go first when a shard is full.
    fn worth(&self, now: Timestamp) -> u64;
}

const SHARDS: usize = 64;

pub(crate) struct BoundedMap<K, V> {
    shards: Box<[Mutex<HashMap<K, V>>]>,
    shard_cap: usize,
    hasher: RandomState,
    len: AtomicUsize,
    evictions: AtomicU64,
}

impl<K: Hash + Eq + Clone, V: Expiring> BoundedMap<K, V> {
    /// A map holding at most about `cap` entries (rounded up to a multiple of the shard count).
    pub fn new(cap: usize) -> Self {
        let shard_cap = cap.div_ceil(SHARDS).max(1);
        BoundedMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shard_cap,
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, HashMap<K, V>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the entry for `key` if there is one that has not expired.
    pub fn get<R>(&self, key: &K, now: Timestamp, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some(value) if !value.expired(now) => Some(f(value)),
            Some(_) => {
                shard.remove(key);
                self.len.fetch_sub(1, Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    /// Runs `f` on the entry for `key` if there is one that has not expired, leaving an expired
    /// one for [`BoundedMap::sweep_with`] to report.
    pub fn get_live<R>(&self, key: &K, now: Timestamp, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        match self.shard(key).get_mut(key) {
            Some(value) if !value.expired(now) => Some(f(value)),
            _ => None,
        }
    }

    /// Runs `f` on the entry for `key`, creating it with `make` first if it is absent or expired.
    pub fn upsert<R>(
        &self,
        key: K,
        now: Timestamp,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let mut shard = self.shard(&key);
        if let Some(value) = shard.get_mut(&key) {
            if value.expired(now) {
                *value = make();
            }
            return f(value);
        }
        if shard.len() >= self.shard_cap {
            self.make_room(&mut shard, now);
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        f(shard.entry(key).or_insert_with(make))
    }

    /// Removes the entry for `key`, returning it.
    pub fn remove(&self, key: &K) -> Option<V> {
        let removed = self.shard(key).remove(key);
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Drops every expired entry.
    pub fn sweep(&self, now: Timestamp) {
        self.sweep_with(now, |_, _| ());
    }

    /// Drops every expired entry, handing each to `expired`.
    pub fn sweep_with(&self, now: Timestamp, mut expired: impl FnMut(&K, V)) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            for (key, value) in shard.extract_if(|_, value| value.expired(now)) {
                expired(&key, value);
            }
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Keeps only the entries whose key passes `keep` (a scan of every shard: for rare
    /// operator actions, not the packet path).
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|key, _| keep(key));
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Entries held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Live entries evicted to stay under the cap since the map was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Visits every live entry (for listings; takes each shard's lock in turn).
    pub fn for_each(&self, now: Timestamp, mut f: impl FnMut(&K, &V)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard
                .iter()
                .filter(|(_, value)| !value.expired(now))
                .for_each(|(key, value)| f(key, value));
        }
    }

    fn make_room(&self, shard: &mut HashMap<K, V>, now: Timestamp) {
        let before = shard.len();
        shard.retain(|_, value| !value.expired(now));
        let target = self.shard_cap - self.shard_cap.div_ceil(8);
        if shard.len() > target {
            let mut worths: Vec<u64> = shard.values().map(|value| value.worth(now)).collect();
            let excess = shard.len() - target;
            let (_, &mut threshold, _) = worths.select_nth_unstable(excess - 1);
            let mut to_evict = excess;
            shard.retain(|_, value| {
                if to_evict > 0 && value.worth(now) <= threshold {
                    to_evict -= 1;
                    false
                } else {
                    true
                }
            });
            self.evictions
                .fetch_add((excess - to_evict) as u64, Ordering::Relaxed);
        }
        self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry worth its number, expiring at a fixed time.
    struct Entry {
        worth: u64,
        expires: u64,
    }

    impl Expiring for Entry {
        fn expired(&self, now: Timestamp) -> bool {
            now.as_millis() >= self.expires
        }
        fn worth(&self, _now: Timestamp) -> u64 {
            self.worth
        }
    }

    #[test]
    fn never_holds_more_than_its_cap_under_a_million_distinct_keys() {
        let map = BoundedMap::new(1_024);
        let now = Timestamp::ZERO;
        for key in 0..1_000_000u32 {
            map.upsert(
                key,
                now,
                || Entry {
                    worth: 1,
                    expires: u64::MAX,
                },
                |_| (),
            );
        }
        assert!(map.len() <= 1_024, "len {}", map.len());
        assert!(map.evictions() >= 1_000_000 - 1_024);
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let map = BoundedMap::new(64); // one entry per shard
        let now = Timestamp::from_millis(10);
        map.upsert(
            1u32,
            now,
            || Entry {
                worth: 100,
                expires: 5,
            },
            |_| (),
        );
        for key in 2..200u32 {
            map.upsert(
                key,
                now,
                || Entry {
                    worth: 100,
                    expires: u64::MAX,
                },
                |_| (),
            );
        }
        assert!(map.get(&1, now, |_| ()).is_none());
    }

    #[test]
    fn valuable_entries_survive_a_flood_of_cheap_ones() {
        let map = BoundedMap::new(6_400);
        let now = Timestamp::ZERO;
        for key in 0..100u32 {
            map.upsert(
                key,
                now,
                || Entry {
                    worth: 1_000,
                    expires: u64::MAX,
                },
                |_| (),
            );
        }
        for key in 100..1_000_000u32 {
            map.upsert(
                key,
                now,
                || Entry {
                    worth: 1,
                    expires: u64::MAX,
                },
                |_| (),
            );
        }
        let kept = (0..100u32)
            .filter(|key| map.get(key, now, |_| ()).is_some())
            .count();
        assert_eq!(kept, 100);
    }

    #[test]
    fn sweep_removes_expired_and_keeps_count_right() {
        let map = BoundedMap::new(6_400);
        for key in 0..50u32 {
            map.upsert(
                key,
                Timestamp::ZERO,
                || Entry {
                    worth: 1,
                    expires: u64::from(key),
                },
                |_| (),
            );
        }
        map.sweep(Timestamp::from_millis(25));
        assert_eq!(map.len(), 24, "keys 0 to 25 had expired at 25 ms");
    }
}
