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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::aggregate::Write;
use crate::checkpoint::{DeltaMap, SinkItem};
use crate::keys::{Dim, KeyBytes, RankKey, StatKey};
use crate::model::EntityKey;
use crate::stats::Stats;
use crate::store::{StateStore, StoreError};

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
#[derive(Debug)]
pub struct Checkpoints {
    target: AtomicU64,
}

impl Checkpoints {
    /// `start`: the first epoch of this run (nothing below it is flushed again).
    pub fn new(start: u64) -> Self {
        Checkpoints {
            target: AtomicU64::new(start),
        }
    }

    /// Every epoch below this is to be flushed.
    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Acquire)
    }

    /// Asks for a checkpoint of every epoch below `target` (never lowers it).
    pub fn request(&self, target: u64) {
        self.target.fetch_max(target, Ordering::AcqRel);
    }
}

/// One shard's writes for one checkpoint.
#[derive(Debug)]
pub struct ShardFlush {
    pub worker: usize,
    /// The checkpoint target: the writes cover every epoch below it.
    pub through: u64,
    pub writes: Vec<Write>,
}

/// The all-time rows a shard last flushed, by key: the old values its leaderboard moves need.
/// Bounded; an evicted row is read from the store again when next flushed.
pub struct AllTimeCache {
    rows: rustc_hash::FxHashMap<StatKey, Stats>,
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
/// store as of the previous checkpoint: a merge operand per statistic, and for all-time rows a
/// put (or delete) with the leaderboard entries that moved. Only all-time rows missing from
/// `cache` are read.
pub fn plan_flush(
    store: &dyn StateStore,
    cache: &mut AllTimeCache,
    dirty: &DeltaMap,
) -> Result<Vec<Write>, StoreError> {
    let mut writes = Vec::with_capacity(dirty.len() + dirty.len() / 8);
    let mut ranked: Vec<(StatKey, Stats)> = Vec::new();
    for (&key, &delta) in dirty {
        if delta.is_empty() {
            continue;
        }
        if key.dim == Dim::All {
            ranked.push((key, delta));
        } else {
            writes.push(Write::Merge(key, delta));
        }
    }
    let missing: Vec<StatKey> = ranked
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !cache.rows.contains_key(k))
        .collect();
    let fetched = store.get_stats(&missing)?;
    let mut old_values: rustc_hash::FxHashMap<StatKey, Stats> = missing
        .into_iter()
        .zip(fetched)
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    for (key, delta) in ranked {
        let old = match cache.rows.get(&key) {
            Some(v) => *v,
            None => old_values.remove(&key).unwrap_or_default(),
        };
        let mut new = old;
        new.merge(&delta);
        if new != old {
            if new.is_empty() {
                writes.push(Write::Delete(key));
            } else {
                writes.push(Write::Put(key, new));
            }
            let (was, is) = (RankKey::entries(key, &old), RankKey::entries(key, &new));
            for r in &was {
                if !is.contains(r) {
                    writes.push(Write::RankDelete(*r));
                }
            }
            for r in is {
                if !was.contains(&r) {
                    writes.push(Write::RankPut(r));
                }
            }
        }
        cache.rows.insert(key, new);
    }
    // In the order RocksDB keeps them: a memtable insert next to the previous one is cheap
    // (its skip list starts from the last position), in hash order each insert searches.
    let writes = in_store_order(writes);
    // Keep the cache within its budget (after the flush: every old value above was needed):
    // drop the rows this flush did not touch first, then everything.
    if cache.rows.len() > cache.capacity {
        let touched: rustc_hash::FxHashSet<StatKey> = dirty
            .keys()
            .filter(|k| k.dim == Dim::All)
            .copied()
            .collect();
        cache.rows.retain(|k, _| touched.contains(k));
        if cache.rows.len() > cache.capacity {
            cache.rows.clear();
        }
    }
    Ok(writes)
}

/// `writes` in the order of the store: the `stats` table by key, the day-major `days` table,
/// then the leaderboard index, each by its encoded key (see `keys`). Sorts 40-byte (table,
/// key, index) entries, then permutes the writes in place (as `sort_by_cached_key` does, with
/// no second vector of writes to allocate): `sort_by_cached_key` on typed keys, whose
/// comparisons walk the derived orders of `StatKey` and `Dim`, was 13% of a 20,000-attacker
/// killmail's CPU.
fn in_store_order(mut writes: Vec<Write>) -> Vec<Write> {
    let mut order: Vec<(u8, KeyBytes, u32)> = writes
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (table, key) = match *w {
                Write::Put(k, _) | Write::Merge(k, _) | Write::Delete(k) => {
                    let (table, key) = k.stored();
                    (table as u8, key)
                }
                Write::RankPut(r) | Write::RankDelete(r) => {
                    (2, KeyBytes::from_slice(&r.to_bytes()))
                }
            };
            (table, key, i as u32)
        })
        .collect();
    order.sort_unstable();
    // Position i takes the write first at order[i]; one already moved is followed to where
    // the swaps put it.
    for i in 0..order.len() {
        let mut from = order[i].2;
        while (from as usize) < i {
            from = order[from as usize].2;
        }
        order[i].2 = from;
        writes.swap(i, from as usize);
    }
    writes
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
/// How often an idle shard looks for a new checkpoint target.
const TARGET_POLL: Duration = Duration::from_millis(1);

/// The sharded statistics operator, as an extension of a stream of per-epoch deltas.
pub trait ShardStats<'s> {
    /// Exchanges the deltas by key group and keeps each worker's share until the checkpointer's
    /// next checkpoint, when the shard hands its writes to `hooks.flush`. The returned stream
    /// carries nothing; its frontier is the epoch this shard has flushed through, so a probe
    /// on it shows what is flushed.
    fn shard_stats<F>(self, hooks: ShardHooks<F>) -> StreamVec<'s, u64, SinkItem>
    where
        F: FnMut(ShardFlush) + 'static;
}

impl<'s> ShardStats<'s> for StreamVec<'s, u64, (StatKey, Stats)> {
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
        let (worker, peers) = (scope.index(), scope.peers());
        let exchange = Exchange::new(move |(k, _): &(StatKey, Stats)| {
            owner(key_group(k.entity), peers) as u64
        });
        self.unary_frontier::<CapacityContainerBuilder<Vec<SinkItem>>, _, _, _>(
            exchange,
            "Shard",
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut held = Some(cap.delayed(&start));
                let mut flushed = start;
                let mut pending: BTreeMap<u64, DeltaMap> = BTreeMap::new();
                let mut cache = AllTimeCache::new(cache_rows);
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        let epoch = *cap.least().expect("a message stamp has a time");
                        let map = pending.entry(epoch).or_default();
                        for (key, delta) in data.drain(..) {
                            map.merge(key, &delta);
                        }
                    });
                    let Some(cap) = held.as_mut() else { return };
                    let target = checkpoints.target();
                    if target > flushed && !frontier.less_than(&target) {
                        let rest = pending.split_off(&target);
                        // The largest epoch's map takes in the others.
                        let mut maps: Vec<DeltaMap> = std::mem::replace(&mut pending, rest)
                            .into_values()
                            .collect();
                        maps.sort_by_key(|m| std::cmp::Reverse(m.len()));
                        let mut maps = maps.into_iter();
                        let mut dirty = maps.next().unwrap_or_default();
                        for map in maps {
                            dirty.absorb(map);
                        }
                        match plan_flush(&*store, &mut cache, &dirty) {
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
                            Err(e) => {
                                on_store_error(&e);
                                // Put the deltas back under an epoch below the target and retry.
                                pending.insert(target.saturating_sub(1).max(flushed), dirty);
                                activator.activate_after(FLUSH_RETRY);
                                return;
                            }
                        }
                    }
                    activator.activate_after(TARGET_POLL);
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EntityKind;

    /// The in-place permutation gives what a plain sort by (table, encoded key) gives.
    #[test]
    fn writes_come_out_in_store_order() {
        use crate::keys::Metric;
        use crate::stats::Stats;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for len in [0, 1, 2, 7, 100, 1000] {
            let writes: Vec<Write> = (0..len)
                .map(|_| {
                    let e = EntityKey::new(EntityKind::ALL[next(3) as usize], next(50));
                    let dim = match next(4) {
                        0 => Dim::All,
                        1 => Dim::Day(next(40) as i32 - 20),
                        2 => Dim::System(next(9) as u32),
                        _ => Dim::MemberDay(next(5) as i32, next(5)),
                    };
                    let k = StatKey::new(e, dim);
                    match next(5) {
                        0 => Write::Put(k, Stats::default()),
                        1 => Write::Merge(k, Stats::default()),
                        2 => Write::Delete(k),
                        r => {
                            let rank = RankKey {
                                kind: e.kind,
                                window: 0,
                                metric: Metric::Kills,
                                value: next(4) as i128,
                                id: e.id,
                            };
                            if r == 3 {
                                Write::RankPut(rank)
                            } else {
                                Write::RankDelete(rank)
                            }
                        }
                    }
                })
                .collect();
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
            let mut expected = writes.clone();
            expected.sort_by_key(order);
            let got = in_store_order(writes);
            let keys = |v: &[Write]| v.iter().map(order).collect::<Vec<_>>();
            assert_eq!(keys(&got), keys(&expected), "{len} writes");
            let mut a: Vec<String> = got.iter().map(|w| format!("{w:?}")).collect();
            let mut b: Vec<String> = expected.iter().map(|w| format!("{w:?}")).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "the same writes");
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
