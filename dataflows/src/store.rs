//! The state the dataflow reads while it runs, and the in-memory implementation used by tests,
//! benches and the embedded demo when no state directory is wanted.
//!
//! The contract (after Materialize's `UpsertStateBackend`):
//! - [`KillmailStore::multi_get`] **must** return, for each id, the upsert state as of the last
//!   committed epoch, and **must** reflect a commit before that commit's epoch is reported by
//!   [`KillmailStore::committed_epoch`].
//! - Only the committer writes. A commit (see [`crate::commit::EpochBatch`]) **must** be applied
//!   atomically: readers see all of it or none of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::commit::EpochBatch;
use crate::model::{DeadLetter, EntityKey, StoredKillmail};
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
    pub stats: BTreeMap<EntityKey, Stats>,
    pub dead_letters: Vec<DeadLetter>,
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

    /// Applies one commit: merges the deltas, replaces the upsert state, keeps dead letters.
    pub fn apply(&self, batch: &EpochBatch) {
        let mut state = self.inner.write().expect("memory store lock poisoned");
        for (key, delta) in &batch.deltas {
            let entry = state.stats.entry(*key).or_default();
            entry.merge(delta);
            if entry.is_empty() {
                state.stats.remove(key);
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
