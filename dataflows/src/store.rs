//! The state the dataflow reads while it runs, and the in-memory implementation used by tests,
//! benches and the embedded demo when no state directory is wanted. The RocksDB
//! implementation is the host's (`kmflow::state`); the oracle tests run against both.
//!
//! The contract (after Materialize's `UpsertStateBackend`):
//! - [`StateStore::multi_get`] **must** return, for each id, the upsert state as of the last
//!   committed epoch, and [`StateStore::get_stats`] the statistics as of the last checkpoint; both
//!   **must** reflect a commit before that commit's epoch is reported by
//!   [`StateStore::committed_epoch`].
//! - Only the checkpointer writes. A commit (see [`crate::checkpoint::CheckpointBatch`]) **must** be applied
//!   atomically: readers see all of it or none of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::aggregate::{window_rank_entries, windows_from_days, StreamClock, Write};
use crate::checkpoint::CheckpointBatch;
use crate::keys::{Dim, RankFloors, RankKey, StatKey};
use crate::model::{DeadLetter, StoredKillmail};
use crate::stats::Stats;

/// A failure of the state store. Its message is shown to operators as is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

/// What the dataflow reads from the state store: the upsert operator its killmails, the
/// statistics shards the all-time rows they do not cache.
pub trait StateStore: Send + Sync + 'static {
    /// The committed upsert state of each id, in the order asked.
    fn multi_get(&self, ids: &[u64]) -> Result<Vec<Option<StoredKillmail>>, StoreError>;
    /// The committed value of each statistic, in the order asked.
    fn get_stats(&self, keys: &[StatKey]) -> Result<Vec<Option<Stats>>, StoreError>;
    /// The committed values of those of `keys` that have one, each with its position in
    /// `keys`, in that order: what a checkpoint's plan reads, where most of a large killmail's
    /// rows are absent (a value per key asked was a 176-byte `None` each, a page of memory
    /// touched per 23 rows).
    fn present_stats(&self, keys: &[StatKey]) -> Result<Vec<(u32, Stats)>, StoreError> {
        let values = self.get_stats(keys)?;
        if values.len() != keys.len() {
            let e = format!("asked for {} rows, got {}", keys.len(), values.len());
            return Err(StoreError(e));
        }
        Ok((values.into_iter().enumerate())
            .filter_map(|(i, v)| Some((i as u32, v?)))
            .collect())
    }
    /// The last committed epoch, if any.
    fn committed_epoch(&self) -> Option<u64>;
    /// How deep the all-time leaderboard index goes as of the last commit: a checkpoint's
    /// plan leaves out the entries below the floors. The default keeps every entry.
    fn rank_floors(&self) -> RankFloors {
        RankFloors::default()
    }
}

/// Encodes "no epoch committed yet" in an atomic.
pub const NO_EPOCH: u64 = u64::MAX;

/// A store that keeps everything in memory. Commits are atomic under one lock.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<MemoryState>,
    committed: AtomicU64Opt,
}

#[derive(Default, Clone)]
pub struct MemoryState {
    pub killmails: HashMap<u64, StoredKillmail>,
    /// Every stored statistic (day buckets included; windows are derived, see
    /// [`MemoryState::served`]).
    pub stats: BTreeMap<StatKey, Stats>,
    /// The all-time leaderboard index.
    pub ranks: BTreeSet<RankKey>,
    pub clock: StreamClock,
    pub dead_letters: Vec<DeadLetter>,
}

impl MemoryState {
    /// Every statistic as the API serves it: the stored ones plus the windows at the clock,
    /// and every leaderboard entry (all time from the index, windows ranked from scratch).
    pub fn served(&self) -> (BTreeMap<StatKey, Stats>, BTreeSet<RankKey>) {
        let mut stats = self.stats.clone();
        let mut ranks = self.ranks.clone();
        if let Some(day) = self.clock.day() {
            let windows = windows_from_days(
                day,
                self.stats
                    .iter()
                    .filter(|(k, _)| matches!(k.dim, Dim::Day(_)))
                    .map(|(k, v)| (*k, *v)),
            );
            ranks.extend(window_rank_entries(&windows));
            stats.extend(windows);
        }
        (stats, ranks)
    }

    /// The all-time statistics of every entity.
    pub fn all_time(&self) -> BTreeMap<crate::model::EntityKey, Stats> {
        self.stats
            .iter()
            .filter(|(k, _)| k.dim == Dim::All)
            .map(|(k, v)| (k.entity, *v))
            .collect()
    }
}

struct AtomicU64Opt(AtomicU64);

impl Default for AtomicU64Opt {
    fn default() -> Self {
        AtomicU64Opt(AtomicU64::new(NO_EPOCH))
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one commit at wall-clock time `wall`: moves the clock, applies the shards'
    /// writes, replaces the upsert state, keeps dead letters.
    pub fn apply<M>(&self, batch: &CheckpointBatch<M>, wall: i64) {
        let mut state = self.inner.write().expect("memory store lock poisoned");
        state.clock = state.clock.advance(batch.max_time, wall);
        for w in batch.writes.iter() {
            match w {
                Write::Put(k, v) => {
                    state.stats.insert(k, v);
                }
                Write::Merge(k, delta) => {
                    let entry = state.stats.entry(k).or_default();
                    entry.merge(&delta);
                    if entry.is_empty() {
                        state.stats.remove(&k);
                    }
                }
                Write::Delete(k) => {
                    state.stats.remove(&k);
                }
                Write::RankPut(r) => {
                    state.ranks.insert(r);
                }
                Write::RankDelete(r) => {
                    state.ranks.remove(&r);
                }
            }
        }
        for (id, stored) in &batch.upserts {
            state.killmails.insert(*id, stored.clone());
        }
        state
            .dead_letters
            .extend(batch.dead_letters.iter().cloned());
        self.committed.0.store(batch.last_epoch, Ordering::Release);
    }

    /// A copy of the whole state.
    pub fn snapshot(&self) -> MemoryState {
        self.inner
            .read()
            .expect("memory store lock poisoned")
            .clone()
    }
}

impl StateStore for MemoryStore {
    fn get_stats(&self, keys: &[StatKey]) -> Result<Vec<Option<Stats>>, StoreError> {
        let state = self.inner.read().expect("memory store lock poisoned");
        Ok(keys.iter().map(|k| state.stats.get(k).copied()).collect())
    }

    fn multi_get(&self, ids: &[u64]) -> Result<Vec<Option<StoredKillmail>>, StoreError> {
        let state = self.inner.read().expect("memory store lock poisoned");
        Ok(ids
            .iter()
            .map(|id| state.killmails.get(id).cloned())
            .collect())
    }

    fn committed_epoch(&self) -> Option<u64> {
        match self.committed.0.load(Ordering::Acquire) {
            NO_EPOCH => None,
            e => Some(e),
        }
    }
}
