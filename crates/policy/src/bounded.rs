//! A concurrent map with a hard cap on entries, for every table keyed by source.
//!
//! A flood from millions of spoofed addresses must not grow memory without bound, nor make a
//! new source stall or allocate, so each per-source table is capped and evicts in constant time.
//! The map is split into shards, each a mutex around a dense vector of entries (allocated to the
//! shard's cap up front) and an index from key to position (sized so it never grows or rehashes
//! out of place). When an insert finds its shard full it picks entries at random and the newcomer
//! takes the place of the first that is expired or worth less than itself, or else of the least
//! valuable of [`SAMPLES`], as each value judges its own worth: a table holding a few valuable
//! entries among many cheap ones almost never samples only valuable ones, so the cheap go
//! first. Proven state (built on what a forged packet cannot produce) outranks any amount of
//! unproven evidence and is never evicted for an unproven newcomer: when every sample is proven
//! and worth more than the newcomer, the newcomer is turned away instead.

use crate::time::Timestamp;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// What a bounded table needs to know about its values to evict well.
pub(crate) trait Expiring {
    /// True when the entry carries no information any more and may be dropped.
    fn expired(&self, now: Timestamp) -> bool;
    /// How much keeping the entry is worth within its class (proven or not); the lowest of a
    /// sample goes first when a shard is full.
    fn worth(&self, now: Timestamp) -> u64;
    /// True when the entry rests on what a forged packet cannot produce (an authentication,
    /// credentials answering a challenge the source was sent, an operator's word): it outranks
    /// every unproven entry and is never evicted to make room for one.
    fn proven(&self, _now: Timestamp) -> bool {
        false
    }
}

/// An entry's standing when a full shard looks for a victim: proven first, then worth.
type Standing = (bool, u64);

fn standing(value: &impl Expiring, now: Timestamp) -> Standing {
    (value.proven(now), value.worth(now))
}

const SHARDS: usize = 64;

/// Entries a full shard looks at to choose one to evict. Each costs a cache miss or two on a
/// large table, so few: an entry is evicted only when every other entry of its sample is worth
/// as much, so one of the valuable 1% of a shard goes with a chance of 1e-8 each time it is
/// sampled, and a sample holds none of the cheapest half of the shard with a chance of 3%.
pub(crate) const SAMPLES: usize = 5;

struct Slot<K, V> {
    key: K,
    value: V,
}

/// One shard: entries in a dense vector (so a random position is a random entry) and an index
/// from key to position.
struct Shard<K, V> {
    index: HashMap<K, usize>,
    slots: Vec<Slot<K, V>>,
    /// xorshift state for sampling: keyed at random per map, so a sender cannot tell which
    /// entries a full shard will look at.
    rng: u64,
}

impl<K: Hash + Eq + Clone, V: Expiring> Shard<K, V> {
    fn new(cap: usize, seed: u64) -> Self {
        Shard {
            // Twice the cap: a table whose live entries never pass half its capacity rehashes
            // its tombstones in place, so churn at the cap never allocates.
            index: HashMap::with_capacity(cap.saturating_mul(2)),
            slots: Vec::with_capacity(cap),
            rng: seed | 1,
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn position(&self, key: &K) -> Option<usize> {
        self.index.get(key).copied()
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let position = self.position(key)?;
        Some(&mut self.slots[position].value)
    }

    /// Adds an entry for a key that has none.
    fn push(&mut self, key: K, value: V) {
        self.index.insert(key.clone(), self.slots.len());
        self.slots.push(Slot { key, value });
    }

    /// Puts a new entry in the place of the one at `position`, returning that one: the
    /// eviction costs one removal from the index and one insertion, nothing moves.
    fn replace(&mut self, position: usize, key: K, value: V) -> Slot<K, V> {
        self.index.insert(key.clone(), position);
        let old = std::mem::replace(&mut self.slots[position], Slot { key, value });
        self.index.remove(&old.key);
        old
    }

    /// Takes out the entry at `position`; the last entry moves into its place.
    fn take(&mut self, position: usize) -> Slot<K, V> {
        let slot = self.slots.swap_remove(position);
        self.index.remove(&slot.key);
        if let Some(moved) = self.slots.get(position) {
            if let Some(at) = self.index.get_mut(&moved.key) {
                *at = position;
            }
        }
        slot
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let position = self.position(key)?;
        Some(self.take(position).value)
    }

    /// Takes out every entry for which `drop` holds, handing each to `taken`; returns how many.
    fn take_where(
        &mut self,
        mut drop: impl FnMut(&K, &V) -> bool,
        mut taken: impl FnMut(K, V),
    ) -> usize {
        let before = self.slots.len();
        let mut position = 0;
        while position < self.slots.len() {
            let slot = &self.slots[position];
            if drop(&slot.key, &slot.value) {
                let Slot { key, value } = self.take(position);
                taken(key, value);
            } else {
                position += 1;
            }
        }
        before - self.slots.len()
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The first of up to [`SAMPLES`] entries picked at random that is expired or stands lower
    /// than `newcomer`, else the least valuable of them (the first of equals), with its
    /// standing; `None` on an empty shard. Where most entries are worth less than a newcomer
    /// (older bans have less time left), the first pick does: one cache miss, not five. Equals
    /// are not taken at once, so of a flood's entries alike the older go first.
    fn victim(&mut self, now: Timestamp, newcomer: Standing) -> Option<(usize, Standing)> {
        let len = self.slots.len() as u64;
        if len == 0 {
            return None;
        }
        let mut least: Option<(usize, Standing)> = None;
        for _ in 0..SAMPLES {
            let position = (self.random() % len) as usize;
            let value = &self.slots[position].value;
            if value.expired(now) {
                return Some((position, (false, 0)));
            }
            let standing = standing(value, now);
            if standing < newcomer {
                return Some((position, standing));
            }
            if least.is_none_or(|(_, lowest)| standing < lowest) {
                least = Some((position, standing));
            }
        }
        least
    }
}

pub(crate) struct BoundedMap<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    shard_cap: usize,
    hasher: RandomState,
    len: AtomicUsize,
    evictions: AtomicU64,
}

impl<K: Hash + Eq + Clone, V: Expiring> BoundedMap<K, V> {
    /// A map holding at most about `cap` entries (rounded up to a multiple of the shard count).
    pub fn new(cap: usize) -> Self {
        let shard_cap = cap.div_ceil(SHARDS).max(1);
        let hasher = RandomState::new();
        BoundedMap {
            shards: (0..SHARDS)
                .map(|index| Mutex::new(Shard::new(shard_cap, hasher.hash_one(index))))
                .collect(),
            shard_cap,
            hasher,
            len: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K, V>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shards(&self) -> impl Iterator<Item = MutexGuard<'_, Shard<K, V>>> {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the entry for `key` if there is one that has not expired.
    pub fn get<R>(&self, key: &K, now: Timestamp, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut shard = self.shard(key);
        let position = shard.position(key)?;
        let value = &mut shard.slots[position].value;
        if !value.expired(now) {
            return Some(f(value));
        }
        shard.take(position);
        self.len.fetch_sub(1, Ordering::Relaxed);
        None
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
    /// A new entry for a full shard takes the place of the least valuable of a sample, unless
    /// that one is proven and worth more than the new entry (after `f`): then the new entry is
    /// not kept, and counts as evicted.
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
        let mut value = make();
        let result = f(&mut value);
        if shard.len() >= self.shard_cap {
            let newcomer = standing(&value, now);
            let Some((position, victim)) = shard.victim(now, newcomer) else {
                return result;
            };
            let (proven, _) = victim;
            if proven && newcomer < victim {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                return result;
            }
            if !shard.replace(position, key, value).value.expired(now) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            return result;
        }
        shard.push(key, value);
        self.len.fetch_add(1, Ordering::Relaxed);
        result
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
        for mut shard in self.shards() {
            let taken = shard.take_where(
                |_, value| value.expired(now),
                |key, value| expired(&key, value),
            );
            self.len.fetch_sub(taken, Ordering::Relaxed);
        }
    }

    /// Keeps only the entries whose key passes `keep` (a scan of every shard: for rare
    /// operator actions, not the packet path).
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        for mut shard in self.shards() {
            let taken = shard.take_where(|key, _| !keep(key), |_, _| ());
            self.len.fetch_sub(taken, Ordering::Relaxed);
        }
    }

    /// Entries held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Live entries evicted (or new ones turned away) to stay under the cap since the map was
    /// made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Visits every live entry (for listings; takes each shard's lock in turn).
    pub fn for_each(&self, now: Timestamp, mut f: impl FnMut(&K, &V)) {
        for shard in self.shards() {
            shard
                .slots
                .iter()
                .filter(|slot| !slot.value.expired(now))
                .for_each(|slot| f(&slot.key, &slot.value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An entry worth its number, expiring at a fixed time, proven or not.
    #[derive(Debug, Clone, Copy)]
    struct Entry {
        worth: u64,
        expires: u64,
        proven: bool,
    }

    impl Entry {
        fn cheap() -> Self {
            Entry {
                worth: 1,
                expires: u64::MAX,
                proven: false,
            }
        }
        fn proven() -> Self {
            Entry {
                proven: true,
                ..Entry::cheap()
            }
        }
    }

    impl Expiring for Entry {
        fn expired(&self, now: Timestamp) -> bool {
            now.as_millis() >= self.expires
        }
        fn worth(&self, _now: Timestamp) -> u64 {
            self.worth
        }
        fn proven(&self, _now: Timestamp) -> bool {
            self.proven
        }
    }

    fn put(map: &BoundedMap<u32, Entry>, key: u32, entry: Entry, now: Timestamp) {
        map.upsert(key, now, || entry, |_| ());
    }

    fn held(map: &BoundedMap<u32, Entry>, key: u32, now: Timestamp) -> bool {
        map.get_live(&key, now, |_| ()).is_some()
    }

    /// Every shard's index points at its entries, and the count is the entries held.
    fn assert_consistent(map: &BoundedMap<u32, Entry>) {
        let mut total = 0;
        for shard in map.shards() {
            assert!(shard.len() <= map.shard_cap);
            assert_eq!(shard.index.len(), shard.slots.len());
            for (position, slot) in shard.slots.iter().enumerate() {
                assert_eq!(shard.index.get(&slot.key), Some(&position));
            }
            total += shard.len();
        }
        assert_eq!(map.len(), total);
    }

    #[test]
    fn never_holds_more_than_its_cap_under_a_million_distinct_keys() {
        let map = BoundedMap::new(1_024);
        let now = Timestamp::ZERO;
        for key in 0..1_000_000u32 {
            put(&map, key, Entry::cheap(), now);
        }
        assert!(map.len() <= 1_024, "len {}", map.len());
        assert!(map.evictions() >= 1_000_000 - 1_024);
        assert_consistent(&map);
    }

    #[test]
    fn an_expired_entry_goes_before_a_live_one_worth_less() {
        let mut shard = Shard::new(2, 7);
        let expired = Entry {
            worth: 1_000,
            expires: 5,
            proven: true,
        };
        let live = Entry {
            worth: 1,
            ..Entry::cheap()
        };
        shard.push(1u32, live);
        shard.push(2u32, expired);
        let newcomer = (false, 0);
        let (position, _) = shard.victim(Timestamp::from_millis(10), newcomer).unwrap();
        assert_eq!(shard.slots[position].key, 2);
    }

    #[test]
    fn expired_entries_make_room_without_counting_as_evictions() {
        let map = BoundedMap::new(64); // one entry per shard
        let mut key = 0;
        while map.len() < 64 {
            let entry = Entry {
                expires: 5,
                ..Entry::cheap()
            };
            put(&map, key, entry, Timestamp::ZERO);
            key += 1;
        }
        let before = map.evictions();
        put(&map, 1_000_000, Entry::cheap(), Timestamp::from_millis(10));
        assert_eq!(map.evictions(), before, "an expired entry was displaced");
        assert_eq!(map.len(), 64);
        assert_consistent(&map);
    }

    #[test]
    fn valuable_entries_survive_a_flood_of_cheap_ones() {
        let map = BoundedMap::new(6_400);
        let now = Timestamp::ZERO;
        for key in 0..100u32 {
            let entry = Entry {
                worth: 1_000,
                ..Entry::cheap()
            };
            put(&map, key, entry, now);
        }
        for key in 100..1_000_000u32 {
            put(&map, key, Entry::cheap(), now);
        }
        let kept = (0..100u32).filter(|&key| held(&map, key, now)).count();
        assert_eq!(kept, 100);
    }

    #[test]
    fn a_table_full_of_proven_entries_turns_unproven_newcomers_away() {
        let map = BoundedMap::new(256);
        let now = Timestamp::ZERO;
        let mut key = 0;
        while map.len() < 256 {
            put(&map, key, Entry::proven(), now);
            key += 1;
        }
        let proven = key;
        for newcomer in 1_000_000..2_000_000u32 {
            put(&map, newcomer, Entry::cheap(), now);
        }
        let kept = (0..proven).filter(|&key| held(&map, key, now)).count();
        assert_eq!(kept, 256, "every proven entry kept");
        assert!(map.evictions() >= 1_000_000, "newcomers turned away count");
        assert_consistent(&map);
    }

    #[test]
    fn a_proven_newcomer_displaces_a_proven_entry_worth_less() {
        let map = BoundedMap::new(64); // one entry per shard
        let now = Timestamp::ZERO;
        for key in 0..10_000u32 {
            put(&map, key, Entry::proven(), now);
        }
        let worthier = Entry {
            worth: 2,
            ..Entry::proven()
        };
        put(&map, 20_000, worthier, now);
        assert!(held(&map, 20_000, now));
    }

    #[test]
    fn sweep_removes_expired_and_keeps_count_right() {
        let map = BoundedMap::new(6_400);
        for key in 0..50u32 {
            let entry = Entry {
                expires: u64::from(key),
                ..Entry::cheap()
            };
            put(&map, key, entry, Timestamp::ZERO);
        }
        let mut reported = Vec::new();
        map.sweep_with(Timestamp::from_millis(25), |&key, _| reported.push(key));
        reported.sort_unstable();
        assert_eq!(reported, (0..=25).collect::<Vec<_>>());
        assert_eq!(map.len(), 24, "keys 0 to 25 had expired at 25 ms");
        assert_consistent(&map);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put { key: u32, entry: Entry },
        Remove { key: u32 },
        Sweep,
        Retain { modulus: u32 },
        Tick { millis: u64 },
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (0..100u64, 1..2_000u64, any::<bool>()).prop_map(|(worth, life, proven)| Entry {
            worth,
            expires: life,
            proven,
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..2_000u32, entry()).prop_map(|(key, entry)| Op::Put { key, entry }),
            1 => (0..2_000u32).prop_map(|key| Op::Remove { key }),
            1 => Just(Op::Sweep),
            1 => (2..5u32).prop_map(|modulus| Op::Retain { modulus }),
            1 => (0..50u64).prop_map(|millis| Op::Tick { millis }),
        ]
    }

    proptest! {
        /// Whatever happens, the map stays under its cap, its count and index stay true, and
        /// no live proven entry is lost to an unproven newcomer.
        #[test]
        fn invariants_hold_under_any_sequence(ops in prop::collection::vec(op(), 1..600)) {
            let map: BoundedMap<u32, Entry> = BoundedMap::new(128);
            let mut now = 0u64;
            for op in ops {
                let at = Timestamp::from_millis(now);
                match op {
                    Op::Put { key, entry } => {
                        let entry = Entry { expires: now + entry.expires, ..entry };
                        let mut proven_before = Vec::new();
                        map.for_each(at, |&k, e| if e.proven { proven_before.push(k) });
                        put(&map, key, entry, at);
                        if !entry.proven {
                            for k in proven_before {
                                prop_assert!(held(&map, k, at), "proven {k} lost to unproven {key}");
                            }
                        }
                    }
                    Op::Remove { key } => {
                        map.remove(&key);
                        prop_assert!(!held(&map, key, at));
                    }
                    Op::Sweep => map.sweep(at),
                    Op::Retain { modulus } => {
                        map.retain(|key| key % modulus != 0);
                        let mut left = 0;
                        map.for_each(at, |&k, _| left += usize::from(k % modulus == 0));
                        prop_assert_eq!(left, 0);
                    }
                    Op::Tick { millis } => now += millis,
                }
                prop_assert!(map.len() <= map.shard_cap * SHARDS);
                assert_consistent(&map);
            }
        }
    }
}
