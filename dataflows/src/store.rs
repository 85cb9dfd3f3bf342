//! The state the dataflow reads while it runs, and the in-memory implementation used by tests,
//! benches and the embedded demo when no state directory is wanted.
//!
//! The contract (after Materialize's `UpsertStateBackend`):
//! - [`KillmailStore::multi_get`] **must** return, for each id, the upsert state as of the last
//!   committed epoch, and **must** reflect a commit before that commit's epoch is reported by
//!   [`KillmailStore::committed_epoch`].
//! - Only the committer writes. A commit (see [`crate::commit::EpochBatch`]) **must** be applied
//!   atomically: readers see all of it or none of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::aggregate::{plan, StatsReader, StreamClock, Write};
use crate::commit::EpochBatch;
use crate::keys::{Dim, RankKey, StatKey};
use crate::model::{DeadLetter, StoredKillmail};
use crate::stats::Stats;

/// A failure of the state store. Its message is shown to operators as is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

/// What the upsert operator needs from the state store.
pub trait KillmailStore: Send + Sync + 'static {
    /// The committed upsert state of each id, in the order asked.
    fn multi_get(&self, ids: &[u64]) -> Result<Vec<Option<StoredKillmail>>, StoreError>;
    /// The last committed epoch, if any.
    fn committed_epoch(&self) -> Option<u64>;
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
    /// Every statistic, day buckets and windows included.
    pub stats: BTreeMap<StatKey, Stats>,
    /// The leaderboard index.
    pub ranks: BTreeSet<RankKey>,
    pub clock: StreamClock,
    pub dead_letters: Vec<DeadLetter>,
    /// Day buckets by day, for sliding the windows.
    day_index: BTreeSet<(i32, StatKey)>,
}

impl StatsReader for MemoryState {
    type Error = std::convert::Infallible;

    fn get_many(&self, keys: &[StatKey]) -> Result<Vec<Option<Stats>>, Self::Error> {
        Ok(keys.iter().map(|k| self.stats.get(k).copied()).collect())
    }

    fn day_buckets(&self, from: i32, to: i32) -> Result<Vec<(StatKey, Stats)>, Self::Error> {
        let lo = StatKey::all(crate::model::EntityKey::new(
            crate::model::EntityKind::Character,
            0,
        ));
        Ok(self
            .day_index
            .range((from, lo)..)
            .take_while(|(d, _)| *d <= to)
            .map(|(_, k)| (*k, self.stats[k]))
            .collect())
    }
}

impl MemoryState {
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

    /// Applies one commit at wall-clock time `wall`: moves the clock, applies the deltas with
    /// their windows and leaderboards, replaces the upsert state, keeps dead letters.
    pub fn apply(&self, batch: &EpochBatch, wall: i64) {
        let mut state = self.inner.write().expect("memory store lock poisoned");
        let clock = state.clock.advance(batch.max_time, wall);
        let Ok(writes) = plan(&*state, &batch.deltas, state.clock.day(), clock.day());
        state.clock = clock;
        for w in writes {
            match w {
                Write::Put(k, v) => {
                    if let Some(d) = k.dim.day() {
                        state.day_index.insert((d, k));
                    }
                    state.stats.insert(k, v);
                }
                Write::Merge(k, delta) => {
                    let entry = state.stats.entry(k).or_default();
                    entry.merge(&delta);
                    let empty = entry.is_empty();
                    if empty {
                        state.stats.remove(&k);
                    }
                    if let Some(d) = k.dim.day() {
                        if empty {
                            state.day_index.remove(&(d, k));
                        } else {
                            state.day_index.insert((d, k));
                        }
                    }
                }
                Write::Delete(k) => {
                    if let Some(d) = k.dim.day() {
                        state.day_index.remove(&(d, k));
                    }
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

impl KillmailStore for MemoryStore {
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
