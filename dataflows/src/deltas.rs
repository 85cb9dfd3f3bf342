//! Deltas summed per statistic: the combiner's per-epoch sums and a shard's write-back buffer.
//!
//! A [`DeltaMap`] is an arena of `(StatKey, Stats)` entries in insertion order, indexed by a
//! hash table of 16-byte slots (the key's hash and the entry's position). A full-statistics
//! epoch sums hundreds of thousands of 192-byte entries per worker: in a hash map of the entries
//! themselves every growth rehashed and moved them all, and with the kernel zeroing the fresh
//! pages that was 12–15% of the replay's CPU profile. Here a growth moves 16-byte slots, and the
//! arena grows by `realloc` (a page remap for large blocks, no copy). Iteration is in insertion
//! order, so what a map emits does not depend on hashing.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::keys::StatKey;
use crate::stats::Stats;

/// Deltas by statistic, summed with [`Stats::merge`].
#[derive(Clone, Debug, Default)]
pub struct DeltaMap {
    index: HashTable<(u64, u32)>,
    entries: Vec<(StatKey, Stats)>,
}

/// How many entries ahead a pass in store order (random in memory) asks for: far enough to
/// hide a load from memory behind the work on the entries in between.
pub const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to start loading entry `i` of `entries` (if there is one) into its cache, for
/// a pass that visits a map's entries in store order rather than in memory order: each entry
/// there is a load from memory otherwise (on a replay, the first touch of an entry in the
/// RocksDB batch was 80% of building it). A hint: it changes no value, and never faults.
#[inline(always)]
pub fn prefetch(entries: &[(StatKey, Stats)], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(entry) = entries.get(i) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const BYTES: usize = std::mem::size_of::<(StatKey, Stats)>();
        let start = (entry as *const (StatKey, Stats)).cast::<i8>();
        // Every cache line the entry overlaps (it is 16-byte aligned, not 64).
        let mut at = 0;
        while at < BYTES + 63 {
            // SAFETY: a prefetch only hints the cache; it reads nothing and cannot fault, and
            // SSE (which has it) is part of every x86-64 CPU.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(at.min(BYTES - 1))) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (entries, i);
}

fn hash(key: &StatKey) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

impl DeltaMap {
    /// An empty map with room for `n` statistics.
    pub fn with_capacity(n: usize) -> Self {
        DeltaMap {
            index: HashTable::with_capacity(n),
            entries: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many statistics it holds room for without growing.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Takes every entry out, in insertion order, and keeps the map's memory for reuse.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (StatKey, Stats)> {
        self.index.clear();
        self.entries.drain(..)
    }

    /// Adds `delta` to the statistic `key`.
    pub fn merge(&mut self, key: StatKey, delta: &Stats) {
        self.merge_hashed(hash(&key), key, delta);
    }

    /// [`DeltaMap::merge`] of a key whose hash is `h`.
    fn merge_hashed(&mut self, h: u64, key: StatKey, delta: &Stats) {
        let entries = &mut self.entries;
        let found = self
            .index
            .find(h, |&(slot_hash, i)| {
                slot_hash == h && entries[i as usize].0 == key
            })
            .map(|&(_, i)| i as usize);
        match found {
            Some(i) => entries[i].1.merge(delta),
            None => {
                let i = u32::try_from(entries.len()).expect("fewer than 2^32 statistics");
                entries.push((key, *delta));
                self.index
                    .insert_unique(h, (h, i), |&(slot_hash, _)| slot_hash);
            }
        }
    }

    /// Appends an entry for `key`, which must not be in the map yet (checked in debug builds):
    /// a list of values rather than sums.
    pub fn push(&mut self, key: StatKey, value: Stats) {
        debug_assert!(self.get(&key).is_none(), "{key:?} is in the map");
        let h = hash(&key);
        let i = u32::try_from(self.entries.len()).expect("fewer than 2^32 statistics");
        self.entries.push((key, value));
        self.index
            .insert_unique(h, (h, i), |&(slot_hash, _)| slot_hash);
    }

    /// Replaces the value at position `i` (of [`DeltaMap::entries`]).
    pub fn set_value(&mut self, i: usize, value: Stats) {
        self.entries[i].1 = value;
    }

    /// Adds every delta of `deltas`, as [`DeltaMap::merge`] one by one would.
    ///
    /// In chunks, in two passes: the first looks every key of a chunk up by its hash alone
    /// and asks for the entry found; the second compares keys and adds. In a map of hundreds
    /// of thousands of entries each lookup and each entry is a load from memory: one by one,
    /// every merge waited for its entry (the comparison that confirms it) before the next
    /// lookup could start, and that wait was most of a replay's summing.
    pub fn merge_all(&mut self, deltas: &[(StatKey, Stats)]) {
        const CHUNK: usize = 32;
        // Per key of a chunk: its hash, and the position of the first entry with that hash.
        let mut found = [(0u64, u32::MAX); CHUNK];
        for chunk in deltas.chunks(CHUNK) {
            for (slot, (key, _)) in found.iter_mut().zip(chunk) {
                let h = hash(key);
                // The first entry with the same 64-bit hash: almost always the key's own
                // (the second pass checks).
                *slot = match self.index.find(h, |&(slot_hash, _)| slot_hash == h) {
                    Some(&(_, i)) => {
                        prefetch(&self.entries, i as usize);
                        (h, i)
                    }
                    None => (h, u32::MAX),
                };
            }
            for (&(h, i), (key, delta)) in found.iter().zip(chunk) {
                match self.entries.get_mut(i as usize) {
                    Some(entry) if entry.0 == *key => entry.1.merge(delta),
                    // New (perhaps earlier in this chunk), or another key of the same hash.
                    _ => self.merge_hashed(h, *key, delta),
                }
            }
        }
    }

    /// Adds every delta of `other`, which is left empty (its memory kept for reuse).
    pub fn absorb(&mut self, other: &mut DeltaMap) {
        self.merge_all(&other.entries);
        other.drain();
    }

    /// Sums `self` and `other` into the larger of the two and returns the other, emptied.
    pub fn sum_with(&mut self, mut other: DeltaMap) -> DeltaMap {
        if other.len() > self.len() {
            std::mem::swap(self, &mut other);
        }
        self.absorb(&mut other);
        other
    }

    /// The summed delta of `key`, if it was touched.
    pub fn get(&self, key: &StatKey) -> Option<&Stats> {
        let h = hash(key);
        self.index
            .find(h, |&(slot_hash, i)| {
                slot_hash == h && self.entries[i as usize].0 == *key
            })
            .map(|&(_, i)| &self.entries[i as usize].1)
    }

    /// The summed delta of `key`, to change in place.
    pub fn get_mut(&mut self, key: &StatKey) -> Option<&mut Stats> {
        let h = hash(key);
        let entries = &mut self.entries;
        let i = self
            .index
            .find(h, |&(slot_hash, i)| {
                slot_hash == h && entries[i as usize].0 == *key
            })
            .map(|&(_, i)| i as usize)?;
        Some(&mut entries[i].1)
    }

    /// Makes room for `n` more statistics.
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
        self.index.reserve(n, |&(slot_hash, _)| slot_hash);
    }

    /// Keeps only the statistics `keep` accepts (in the same order), and rebuilds the index.
    pub fn retain(&mut self, mut keep: impl FnMut(&StatKey) -> bool) {
        self.entries.retain(|(k, _)| keep(k));
        self.index.clear();
        for (i, (k, _)) in self.entries.iter().enumerate() {
            let h = hash(k);
            self.index
                .insert_unique(h, (h, i as u32), |&(slot_hash, _)| slot_hash);
        }
    }

    /// Empties the map, keeping its memory.
    pub fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
    }

    /// The statistics and their deltas, in the order they were first touched.
    pub fn iter(&self) -> impl Iterator<Item = (&StatKey, &Stats)> {
        self.entries.iter().map(|(k, d)| (k, d))
    }

    /// The statistics and their deltas as a slice, in the order they were first touched.
    pub fn entries(&self) -> &[(StatKey, Stats)] {
        &self.entries
    }
}

/// Deltas on their way into maps (a combiner's, one per shard), summed with
/// [`DeltaMap::merge_all`] in chunks rather than one by one.
#[derive(Debug, Default)]
pub struct Summing {
    buffers: Vec<Vec<(StatKey, Stats)>>,
}

impl Summing {
    /// How many deltas are held for a map before they are summed into it.
    const HELD: usize = 256;

    /// Adds `delta` to statistic `key` of `maps[to]` (at the latest by [`Summing::finish`]).
    #[inline]
    pub fn add(&mut self, maps: &mut [DeltaMap], to: usize, key: StatKey, delta: Stats) {
        if self.buffers.len() < maps.len() {
            self.buffers.resize_with(maps.len(), Vec::new);
        }
        let held = &mut self.buffers[to];
        held.push((key, delta));
        if held.len() == Self::HELD {
            maps[to].merge_all(held);
            held.clear();
        }
    }

    /// Sums every delta still held into its map.
    pub fn finish(&mut self, maps: &mut [DeltaMap]) {
        for (map, held) in maps.iter_mut().zip(&mut self.buffers) {
            map.merge_all(held);
            held.clear();
        }
    }
}

impl IntoIterator for DeltaMap {
    type Item = (StatKey, Stats);
    type IntoIter = std::vec::IntoIter<(StatKey, Stats)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a DeltaMap {
    type Item = (&'a StatKey, &'a Stats);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (StatKey, Stats)>,
        fn(&'a (StatKey, Stats)) -> (&'a StatKey, &'a Stats),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, d)| (k, d))
    }
}

impl FromIterator<(StatKey, Stats)> for DeltaMap {
    fn from_iter<I: IntoIterator<Item = (StatKey, Stats)>>(iter: I) -> Self {
        let mut map = DeltaMap::default();
        for (k, d) in iter {
            map.merge(k, &d);
        }
        map
    }
}

/// A map crosses processes (a cluster's exchange) as its entries; the index is rebuilt.
impl serde::Serialize for DeltaMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.entries)
    }
}

impl<'de> serde::Deserialize<'de> for DeltaMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<(StatKey, Stats)>::deserialize(deserializer)?;
        Ok(entries.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Dim;
    use crate::model::{EntityKey, EntityKind};
    use crate::stats::Sums;
    use proptest::prelude::*;

    fn key(id: u64, day: i32) -> StatKey {
        StatKey::new(EntityKey::new(EntityKind::Character, id), Dim::Day(day))
    }

    proptest! {
        /// The same sums as a `HashMap` fold, whatever the keys and their order.
        #[test]
        fn sums_like_a_hash_map(updates in proptest::collection::vec((0u64..50, 0i32..4, -3i64..4), 0..400)) {
            let mut map = DeltaMap::default();
            let mut oracle: std::collections::HashMap<StatKey, Stats> = Default::default();
            let updates_again = updates.clone();
            for (id, day, kills) in updates {
                let d = Stats { sums: Sums { kills, ..Default::default() }, ..Default::default() };
                map.merge(key(id, day), &d);
                oracle.entry(key(id, day)).or_default().merge(&d);
            }
            prop_assert_eq!(map.len(), oracle.len());
            for (k, d) in &oracle {
                prop_assert_eq!(map.get(k), Some(d));
            }
            // Summed in chunks (merge_all), the same sums, first touches in the same order.
            let mut chunked = DeltaMap::default();
            let deltas: Vec<(StatKey, Stats)> = updates_again
                .iter()
                .map(|&(id, day, kills)| (key(id, day), Stats { sums: Sums { kills, ..Default::default() }, ..Default::default() }))
                .collect();
            let (first, second) = deltas.split_at(deltas.len() / 2);
            chunked.merge_all(first);
            chunked.merge_all(second);
            prop_assert_eq!(chunked.entries(), map.entries());
            // Changed in place, thinned and grown again (the shards' all-time cache): each
            // key still found, in the same order, with its value.
            let mut cache = map.clone();
            for (k, d) in &oracle {
                if let Some(v) = cache.get_mut(k) {
                    v.merge(d);
                }
            }
            cache.retain(|k| k.entity.id % 2 == 0);
            cache.reserve(10);
            cache.push(key(1_000, 0), Stats::default());
            let kept: Vec<(StatKey, Stats)> = map
                .iter()
                .filter(|(k, _)| k.entity.id % 2 == 0)
                .map(|(k, d)| {
                    let mut twice = *d;
                    twice.merge(d);
                    (*k, twice)
                })
                .chain([(key(1_000, 0), Stats::default())])
                .collect();
            prop_assert_eq!(cache.entries(), &kept[..]);
            for (k, d) in &kept {
                prop_assert_eq!(cache.get(k), Some(d));
            }
            prop_assert!(cache.get(&key(1, 9)).is_none());
            cache.clear();
            prop_assert!(cache.is_empty() && cache.get(&key(1_000, 0)).is_none());
            let firsts: Vec<StatKey> = map.iter().map(|(k, _)| *k).collect();
            let mut dedup = firsts.clone();
            dedup.sort();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), firsts.len());
        }
    }
}
