//! Statistics sharded by key group: every worker owns the statistics of the entities whose key
//! group maps to it, consolidates their deltas across epochs in a write-back buffer, and turns
//! them into writes at each checkpoint, in parallel with every other worker.
//!
//! ```text
//! facts ±1 ─ Combine (per worker, per epoch) ─ exchange by key group ─ Shard ─ flush at checkpoint ─▶ checkpointer
//! ```
//!
//! - **Key groups** (Flink's scheme): `group = mix(entity) % KEY_GROUPS`, `worker = group · W /
//!   KEY_GROUPS`. Every statistic of an entity (all time, months, days, breakdowns, roster rows
//!   of a corporation) lands on one worker. The stored state is one keyspace, so the number of
//!   workers can change between runs: a worker reads what it does not hold from the store.
//! - **Write-back**: a shard folds every complete epoch into its pending deltas and writes
//!   nothing until the checkpointer asks for a checkpoint (see [`Checkpoints`]); a statistic
//!   touched by many epochs between two checkpoints is written once.
//! - **Blind writes**: only all-time rows are read before they are written, because the
//!   all-time leaderboard index moves with their old value. Those reads hit a bounded cache of
//!   the rows as last flushed ([`AllTimeCache`]); misses are one batched `multi_get` per flush.
//!   Every other statistic is written as a merge operand (a delta), never read.
//!
//! Why the combiner and the shard are hand-written operators rather than differential's
//! `consolidate` and `arrange`: a killmail fans out into ~160 statistics whose difference type
//! is a 160-byte `Stats`; a per-epoch hash combiner keeps that fan-out out of differential's
//! sorted update batches (issue 4 replaced `explode` + `consolidate` with it, commit c9e3d1b,
//! when the profile showed the sort and memmove of the exploded updates on top), and the
//! shard's state must live in the store (RocksDB) and be flushed at checkpoints, where an
//! arrangement would keep an in-memory trace growing with history. Measured with the sharded
//! engine (`benches/replay.sh`, 100k killmails, 2 workers): dropping the combiner and sending
//! every contribution straight to the shards ran 7,691/s against 7,077/s (within this
//! machine's noise) at 2,084 MiB against 1,814 MiB peak RSS, so the combiner stays.
//!
//! A flush emits its writes in the store's key order: RocksDB's memtable skip list inserts
//! next to its previous position cheaply, while hash order makes every insert search (1.9x
//! the replay rate at 100k; the checkpointer fell from 26% of the CPU profile to 13%).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::aggregate::{StatOp, Writes};
use crate::checkpoint::{DeltaMap, SinkItem};
use crate::deltas::{prefetch, PREFETCH_AHEAD};
use crate::keys::{Dim, RankKey, StatKey};
use crate::model::EntityKey;
use crate::stats::Stats;
use crate::store::{StateStore, StoreError};
use crate::wake::Wakers;

/// The fixed number of key groups. Changing it changes nothing stored (keys are not prefixed
/// by group); it only bounds how finely statistics can be spread over workers or processes.
pub const KEY_GROUPS: u32 = 4096;

/// A stable 64-bit mix (splitmix64's finalizer): the same on every build and platform, so
/// every process of a cluster and every later run agree on who owns what.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key group of an entity: a stable 64-bit mix of its kind and id.
pub fn key_group(e: EntityKey) -> u32 {
    (mix64(e.id ^ ((e.kind as u64) << 56)) % KEY_GROUPS as u64) as u32
}

/// The worker (of `workers`) that owns key group `group`: contiguous ranges of groups.
///
/// Ranges nest: with `P` processes of `W` workers each (timely numbers worker `w` of process
/// `p` as `p·W + w`), the process that owns a group is `owner(group, P)` whatever `W` is, so
/// changing the workers per process moves no statistic between processes' stores.
pub fn owner(group: u32, workers: usize) -> usize {
    (group as usize * workers) / KEY_GROUPS as usize
}

/// The worker (of `workers`) that owns an entity's statistics.
pub fn entity_owner(e: EntityKey, workers: usize) -> usize {
    owner(key_group(e), workers)
}

/// The worker (of `workers`) that owns a killmail's upsert state: contiguous ranges of a
/// stable mix of its id, nesting like [`owner`] (the process is `killmail_owner(id, P)`).
pub fn killmail_owner(id: u64, workers: usize) -> usize {
    ((mix64(id) as u128 * workers as u128) >> 64) as usize
}

/// The checkpoint the checkpointer asks for: every epoch below `target` is to be flushed.
///
/// The checkpointer raises the target only when the previous checkpoint is durable, to the
/// least frontier every worker reported, so a checkpoint covers every epoch completed while
/// the previous one was being written (group commit: the slower the store, the more each
/// checkpoint coalesces).
///
/// A request wakes the shards (they do not poll for it): an idle kmflow spends no CPU here.
#[derive(Debug)]
pub struct Checkpoints {
    target: AtomicU64,
    /// The shards' operators, activated (from the checkpointer's thread) on every request.
    shards: Wakers,
    /// Emptied maps (of written checkpoints, and maps summed into others), which the
    /// combiners take for their next epochs.
    spare: std::sync::Mutex<Vec<DeltaMap>>,
}

/// The emptied maps kept for reuse hold room for at most this many statistics in all
/// (~100 MiB: two epochs of a full-statistics replay on 2 workers).
const SPARE_ENTRIES: usize = 1 << 19;

impl Checkpoints {
    /// `start`: the first epoch of this run (nothing below it is flushed again).
    pub fn new(start: u64) -> Self {
        Checkpoints {
            target: AtomicU64::new(start),
            shards: Default::default(),
            spare: Default::default(),
        }
    }

    /// Keeps the maps of a written checkpoint's `writes` for the combiners' next epochs: a map
    /// the size of an epoch is tens of megabytes, and a fresh one is first touched page by
    /// page (the kernel zeroing each), which was a fifth of the largest killmail's CPU.
    pub fn recycle(&self, writes: Writes) {
        self.keep(writes.into_maps());
    }

    /// Keeps emptied `maps` for reuse, within [`SPARE_ENTRIES`].
    pub fn keep(&self, maps: impl IntoIterator<Item = DeltaMap>) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let mut room = SPARE_ENTRIES.saturating_sub(spare.iter().map(DeltaMap::capacity).sum());
        for mut map in maps {
            if map.capacity() > 0 && map.capacity() <= room {
                room -= map.capacity();
                // Every caller's maps are emptied already; clearing a large index again would
                // rewrite all of its control bytes for nothing.
                if !map.is_empty() {
                    map.drain();
                }
                spare.push(map);
            }
        }
    }

    /// An empty map for an epoch's deltas with room for `n` statistics: the smallest recycled
    /// one that has it, else the largest recycled one (it grows), else a new one.
    pub fn map(&self, n: usize) -> DeltaMap {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = (0..spare.len())
            .filter(|&i| spare[i].capacity() >= n)
            .min_by_key(|&i| spare[i].capacity());
        let pick = fits.or_else(|| (0..spare.len()).max_by_key(|&i| spare[i].capacity()));
        match pick {
            Some(i) => spare.swap_remove(i),
            None => DeltaMap::with_capacity(n),
        }
    }

    /// Every epoch below this is to be flushed.
    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Acquire)
    }

    /// Asks for a checkpoint of every epoch below `target` (never lowers it), and wakes the
    /// shards. A shard whose worker has stopped cannot be woken, which is fine.
    pub fn request(&self, target: u64) {
        if self.target.fetch_max(target, Ordering::AcqRel) < target {
            self.shards.wake();
        }
    }
}

/// One shard's writes for one checkpoint.
#[derive(Debug)]
pub struct ShardFlush {
    pub worker: usize,
    /// The checkpoint target: the writes cover every epoch below it.
    pub through: u64,
    pub writes: Writes,
}

/// The all-time rows a shard last flushed, by key: the old values its leaderboard moves need.
/// Bounded; an evicted row is read from the store again when next flushed. Kept as a
/// [`DeltaMap`] (rows in an arena, a hash index of 16-byte slots): as a hash map of the rows
/// themselves, each growth moved every cached row, a tenth of the largest killmail's work.
pub struct AllTimeCache {
    rows: DeltaMap,
    capacity: usize,
}

impl AllTimeCache {
    pub fn new(capacity: usize) -> Self {
        AllTimeCache {
            rows: Default::default(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The writes that apply `dirty` (deltas of one shard, coalesced over a checkpoint) to the
/// store as of the previous checkpoint: a merge of every statistic's delta, except all-time
/// rows, which are put (or deleted) with the leaderboard entries that moved. Only all-time
/// rows missing from `cache` are read. `dirty` itself becomes the writes (see [`Writes`]);
/// after a failed read it is handed back unchanged.
///
/// Everything comes out in the order RocksDB keeps it (the `stats` table by key, the
/// day-major `days` table, then the leaderboard index): a memtable insert next to the previous
/// one is cheap (its skip list starts from the last position), in hash order each insert
/// searches.
pub fn plan_flush(
    store: &dyn StateStore,
    cache: &mut AllTimeCache,
    mut dirty: DeltaMap,
) -> Result<Writes, (StoreError, DeltaMap)> {
    let order = store_order(dirty.entries());
    // The leaderboard entries below the floors are not indexed: their changes are left out.
    let floors = store.rank_floors();
    // The all-time rows, in store order: each a load from memory (the entries are in the
    // order they were first touched), so every pass over them asks for the next ones early.
    let all_time_rows: Vec<u32> = order.iter().filter(|p| p.all_time).map(|p| p.at).collect();
    let ahead = |entries: &[(StatKey, Stats)], n: usize| {
        if let Some(&i) = all_time_rows.get(n + PREFETCH_AHEAD) {
            prefetch(entries, i as usize);
        }
    };
    let missing: Vec<StatKey> = (all_time_rows.iter().enumerate())
        .map(|(n, &i)| {
            ahead(dirty.entries(), n);
            dirty.entries()[i as usize].0
        })
        .filter(|k| cache.rows.get(k).is_none())
        .collect();
    let fetched = match store.present_stats(&missing) {
        Ok(f) => f,
        Err(e) => return Err((e, dirty)),
    };
    let in_order = fetched.windows(2).all(|w| w[0].0 < w[1].0);
    if !in_order
        || fetched
            .last()
            .is_some_and(|&(i, _)| i as usize >= missing.len())
    {
        let e = format!(
            "rows read out of order or beyond the {} asked for",
            missing.len()
        );
        return Err((StoreError(e), dirty));
    }
    // The rows read come in the order they were asked for: the order below, where the
    // `n`th row not in the cache is `missing[n]`.
    let mut fetched = fetched.into_iter().peekable();
    let mut missed = 0u32;
    let mut stats = Vec::with_capacity(order.len());
    // Room for the rows read and a put of each of their three leaderboard entries, so neither
    // grows (and rehashes or copies) entry by entry on a large flush.
    cache.rows.reserve(
        missing
            .len()
            .min(cache.capacity.saturating_sub(cache.rows.len())),
    );
    let mut ranks: Vec<(RankKey, bool)> = Vec::with_capacity(3 * missing.len());
    let mut touched_all_time = 0;
    for &Positioned { at: i, all_time } in &order {
        // Only all-time rows need their entries here: the others are merged as they are.
        if !all_time {
            stats.push((i, StatOp::Merge));
            continue;
        }
        ahead(dirty.entries(), touched_all_time);
        let (key, delta) = dirty.entries()[i as usize];
        touched_all_time += 1;
        // One probe of the cache for a row it holds (updated in place), two for one read.
        let (old, new) = match cache.rows.get_mut(&key) {
            Some(row) => {
                let old = *row;
                row.merge(&delta);
                (old, *row)
            }
            None => {
                let old = fetched
                    .next_if(|&(at, _)| at == missed)
                    .map_or_else(Stats::default, |(_, v)| v);
                missed += 1;
                let mut new = old;
                new.merge(&delta);
                cache.rows.push(key, new);
                (old, new)
            }
        };
        if new != old {
            dirty.set_value(i as usize, new);
            stats.push((
                i,
                if new.is_empty() {
                    StatOp::Delete
                } else {
                    StatOp::Put
                },
            ));
            RankKey::changes(key, &old, &new, |r, put| {
                if floors.indexes(&r) {
                    ranks.push((r, put));
                }
            });
        }
    }
    ranks.sort_unstable_by_key(|(r, _)| r.store_order());
    // Keep the cache within its budget (after the flush: every old value above was needed):
    // drop the rows this flush did not touch first, then everything.
    if cache.rows.len() > cache.capacity {
        let mut touched = rustc_hash::FxHashSet::default();
        touched.reserve(touched_all_time);
        touched.extend(
            dirty
                .entries()
                .iter()
                .filter(|(k, _)| k.dim == Dim::All)
                .map(|(k, _)| *k),
        );
        cache.rows.retain(|k| touched.contains(k));
        if cache.rows.len() > cache.capacity {
            cache.rows.clear();
        }
    }
    Ok(Writes::part(dirty, stats, ranks))
}

/// The positions of the non-empty `entries` in the store's order: by table (`stats`, then the
/// day-major `days`), then encoded key. Table and key (at most 31 bytes, zero-padded) are four
/// big-endian words and the length a fifth, so comparing them is comparing the bytes (a key
/// sorts before every longer key it prefixes) in a few integer compares: typed comparisons,
/// which walk the derived orders of `StatKey` and `Dim`, were 13% of a 20,000-attacker
/// killmail's CPU. Sorted by the stable sort (the keys are distinct, so the order is the same),
/// which merges the runs already in order: a killmail's statistics come entity by entity, each
/// kind's entities in the order of its rows, and the unstable sort, which does not use them,
/// took 2.3 ms more on the largest killmail.
fn store_order(entries: &[(StatKey, Stats)]) -> Vec<Positioned> {
    let mut order: Vec<([u64; 4], u64)> = Vec::with_capacity(entries.len());
    for (i, (k, d)) in entries.iter().enumerate() {
        if d.is_empty() {
            continue;
        }
        let (table, key) = k.stored();
        let mut b = [0u8; 32];
        b[0] = table as u8;
        b[1..1 + key.len()].copy_from_slice(&key);
        let word = |j: usize| u64::from_be_bytes(b[8 * j..8 * j + 8].try_into().expect("8 bytes"));
        // Below the length, the all-time flag orders nothing (keys are distinct): it only
        // saves the plan a second pass over the entries, in random order, to find them.
        let all_time = (k.dim == Dim::All) as u64;
        let tail = (key.len() as u64) << 33 | all_time << 32 | i as u64;
        order.push(([word(0), word(1), word(2), word(3)], tail));
    }
    order.sort();
    order
        .into_iter()
        .map(|(_, tail)| Positioned {
            at: tail as u32,
            all_time: tail >> 32 & 1 == 1,
        })
        .collect()
}

/// An entry of a shard's deltas, by position, in the store's order.
#[derive(Clone, Copy)]
struct Positioned {
    at: u32,
    /// An all-time row (put or deleted with its leaderboard entries, not merged).
    all_time: bool,
}

/// How a shard reaches the store and the checkpointer.
pub struct ShardHooks<F> {
    pub store: Arc<dyn StateStore>,
    pub checkpoints: Arc<Checkpoints>,
    /// The first epoch of this run.
    pub start: u64,
    /// All-time rows cached by this shard.
    pub cache_rows: usize,
    /// Receives the shard's writes at each checkpoint.
    pub flush: F,
    /// Called when the store fails a read (the flush is retried).
    pub on_store_error: Box<dyn Fn(&StoreError)>,
}

/// How long a shard waits before retrying a flush whose reads failed.
const FLUSH_RETRY: Duration = Duration::from_millis(200);

/// The sharded statistics operator, as an extension of a stream of per-epoch deltas, each a
/// map of one shard's statistics with the worker that owns them.
pub trait ShardStats<'s> {
    /// Sends each map to the worker that owns its statistics and keeps each worker's share
    /// until the checkpointer's next checkpoint, when the shard hands its writes to
    /// `hooks.flush`. The returned stream carries nothing; its frontier is the epoch this
    /// shard has flushed through, so a probe on it shows what is flushed.
    fn shard_stats<F>(self, hooks: ShardHooks<F>) -> StreamVec<'s, u64, SinkItem>
    where
        F: FnMut(ShardFlush) + 'static;
}

impl<'s> ShardStats<'s> for StreamVec<'s, u64, (usize, DeltaMap)> {
    fn shard_stats<F>(self, hooks: ShardHooks<F>) -> StreamVec<'s, u64, SinkItem>
    where
        F: FnMut(ShardFlush) + 'static,
    {
        let ShardHooks {
            store,
            checkpoints,
            start,
            cache_rows,
            mut flush,
            on_store_error,
        } = hooks;
        let scope = self.scope();
        let worker = scope.index();
        // A map moves whole (between threads of one process, without a copy of its entries).
        let exchange = Exchange::new(|(owner, _): &(usize, DeltaMap)| *owner as u64);
        self.unary_frontier::<CapacityContainerBuilder<Vec<SinkItem>>, _, _, _>(
            exchange,
            "Shard",
            move |cap, info| {
                checkpoints.shards.register(&scope, &info.address);
                let activator = scope.activator_for(info.address);
                let mut held = Some(cap.delayed(&start));
                let mut flushed = start;
                let mut pending: BTreeMap<u64, DeltaMap> = BTreeMap::new();
                let mut cache = AllTimeCache::new(cache_rows);
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        let epoch = *cap.least().expect("a message stamp has a time");
                        for (owner, map) in data.drain(..) {
                            debug_assert_eq!(owner, worker, "exchanged to its owner");
                            match pending.entry(epoch) {
                                Entry::Vacant(e) => {
                                    e.insert(map);
                                }
                                Entry::Occupied(mut e) => {
                                    checkpoints.keep([e.get_mut().sum_with(map)]);
                                }
                            }
                        }
                    });
                    let Some(cap) = held.as_mut() else { return };
                    let target = checkpoints.target();
                    if target > flushed && !frontier.less_than(&target) {
                        let rest = pending.split_off(&target);
                        let mut dirty = DeltaMap::default();
                        for map in std::mem::replace(&mut pending, rest).into_values() {
                            checkpoints.keep([dirty.sum_with(map)]);
                        }
                        match plan_flush(&*store, &mut cache, dirty) {
                            Ok(writes) => {
                                flush(ShardFlush {
                                    worker,
                                    through: target,
                                    writes,
                                });
                                flushed = target;
                                if target == u64::MAX {
                                    held = None;
                                    return;
                                }
                                cap.downgrade(&target);
                            }
                            Err((e, dirty)) => {
                                on_store_error(&e);
                                // Put the deltas back under an epoch below the target and retry.
                                pending.insert(target.saturating_sub(1).max(flushed), dirty);
                                activator.activate_after(FLUSH_RETRY);
                            }
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{StatOp, Write};
    use crate::model::EntityKind;

    /// A flush's writes come out as a plain sort by (table, encoded key) would give them, one
    /// per touched statistic, with the leaderboard entries after the statistics.
    #[test]
    fn writes_come_out_in_store_order() {
        use crate::stats::{Stats, Sums};
        use crate::store::MemoryStore;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for len in [0, 1, 2, 7, 100, 1000] {
            let mut dirty = DeltaMap::default();
            for _ in 0..len {
                let e = EntityKey::new(EntityKind::ALL[next(3) as usize], next(50));
                let dim = match next(6) {
                    0 => Dim::All,
                    1 => Dim::Day(next(40) as i32 - 20),
                    2 => Dim::System(next(9) as u32),
                    3 => Dim::Ship(next(9) as u32),
                    4 => Dim::Share {
                        day: next(4) as i32,
                        system: next(3) as u32,
                        group: next(3) as u32,
                        hour: next(168) as u8,
                    },
                    _ => Dim::MemberDay(next(5) as i32, next(5)),
                };
                let sums = Sums {
                    kills: next(3) as i64,
                    points_destroyed: next(2) as i64,
                    ..Default::default()
                };
                dirty.merge(StatKey::new(e, dim), &Stats::at(sums, 1));
            }
            let touched: Vec<StatKey> = dirty
                .iter()
                .filter(|(_, d)| !d.is_empty())
                .map(|(k, _)| *k)
                .collect();
            // One shard, then three (their parts merged by `Writes::stats`).
            for shards in [1, 3] {
                let mut writes = Writes::default();
                let mut parts: Vec<DeltaMap> = (0..shards).map(|_| DeltaMap::default()).collect();
                for (k, d) in dirty.iter() {
                    parts[entity_owner(k.entity, shards)].merge(*k, d);
                }
                for part in parts {
                    let mut cache = AllTimeCache::new(64);
                    writes.append(
                        plan_flush(&MemoryStore::default(), &mut cache, part).expect("memory"),
                    );
                }
                let order = |w: &Write| -> (u8, Vec<u8>) {
                    match w {
                        Write::Put(k, _) | Write::Merge(k, _) | Write::Delete(k) => {
                            match k.day_major_bytes() {
                                None => (0, k.to_bytes().to_vec()),
                                Some(b) => (1, b.to_vec()),
                            }
                        }
                        Write::RankPut(r) | Write::RankDelete(r) => (2, r.to_bytes().to_vec()),
                    }
                };
                // The shard's own writes, deltas as they are (the store expands a share or a
                // member day into the statistics it adds to).
                let statistics: Vec<Write> = writes
                    .stats()
                    .map(|(op, &k, &v)| match op {
                        StatOp::Merge => Write::Merge(k, v),
                        StatOp::Put => Write::Put(k, v),
                        StatOp::Delete => Write::Delete(k),
                    })
                    .collect();
                let ranks: Vec<Write> = writes.iter().filter(|w| order(w).0 == 2).collect();
                assert_eq!(writes.len(), statistics.len() + ranks.len());
                // In store order: one shard's every write; the `stats` table's of several (the
                // day buckets then come by entity, each part's ranks in its own order).
                let in_order = |keys: Vec<(u8, Vec<u8>)>| {
                    let mut sorted = keys.clone();
                    sorted.sort();
                    assert_eq!(keys, sorted, "{len} statistics, {shards} shards");
                };
                let tables: Vec<u8> = statistics.iter().map(|w| order(w).0).collect();
                assert!(tables.is_sorted(), "the stats table first");
                if shards == 1 {
                    in_order(statistics.iter().map(order).collect());
                    in_order(ranks.iter().map(order).collect());
                } else {
                    in_order(statistics.iter().map(order).filter(|o| o.0 == 0).collect());
                }
                let mut written: Vec<StatKey> = statistics
                    .iter()
                    .map(|w| match w {
                        Write::Put(k, _) | Write::Merge(k, _) | Write::Delete(k) => *k,
                        _ => unreachable!("a statistic"),
                    })
                    .collect();
                let mut expected = touched.clone();
                written.sort();
                expected.sort();
                assert_eq!(written, expected, "one write per touched statistic");
                assert!(len < 100 || !ranks.is_empty(), "leaderboard entries");
            }
        }
    }

    #[test]
    fn key_groups_spread_and_owners_cover_all_workers() {
        for workers in 1..=5 {
            let mut seen = vec![0usize; workers];
            for id in 0..10_000u64 {
                let g = key_group(EntityKey::new(EntityKind::Character, 90_000_000 + id));
                assert!(g < KEY_GROUPS);
                seen[owner(g, workers)] += 1;
            }
            for (w, n) in seen.iter().enumerate() {
                let fair = 10_000 / workers;
                assert!(
                    *n > fair * 8 / 10 && *n < fair * 12 / 10,
                    "{workers}: worker {w} got {n}"
                );
            }
        }
        assert_eq!(owner(KEY_GROUPS - 1, 3), 2);
        assert_eq!(owner(0, 3), 0);
    }

    /// Worker `p·W + w` of a cluster of `P` processes of `W` workers belongs to process `p`:
    /// the owning process of a statistic or a killmail does not depend on `W`.
    #[test]
    fn ownership_nests_processes_and_workers() {
        for processes in 1..=4usize {
            for workers in 1..=4usize {
                for id in 0..5_000u64 {
                    let e = EntityKey::new(EntityKind::Corporation, 98_000_000 + id * 7919);
                    let w = entity_owner(e, processes * workers);
                    assert!(w < processes * workers);
                    assert_eq!(
                        w / workers,
                        entity_owner(e, processes),
                        "{processes}x{workers}"
                    );
                    let k = killmail_owner(id * 104_729, processes * workers);
                    assert!(k < processes * workers);
                    assert_eq!(k / workers, killmail_owner(id * 104_729, processes));
                }
            }
        }
        let spread: Vec<usize> = (0..10_000u64).fold(vec![0; 3], |mut n, id| {
            n[killmail_owner(90_000_000 + id, 3)] += 1;
            n
        });
        assert!(spread.iter().all(|&n| n > 2_700 && n < 3_950), "{spread:?}");
    }
}
