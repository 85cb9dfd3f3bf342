//! Gathers what every worker's sink reports and hands out consistent batches to commit.
//!
//! Each worker's sink reports, whenever its input frontier advances, the items of the epochs
//! that frontier has passed and its source metadata (for kmflow: partition offsets) as of each
//! epoch it closed. An epoch can be committed once every worker has reported past it; the
//! coordinator then returns one [`EpochBatch`] covering every epoch below the least reported
//! frontier, which the caller writes atomically.

use std::collections::{BTreeMap, HashMap};

use crate::keys::StatKey;
use crate::model::{DeadLetter, StoredKillmail};
use crate::stats::Stats;

/// Deltas by statistic (Fx hashing: the keys are small and not attacker-controlled).
pub type DeltaMap = rustc_hash::FxHashMap<StatKey, Stats>;

/// One item of committed output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CommitItem {
    /// A change to one statistic.
    Delta(StatKey, Stats),
    /// The latest `killmail_time` of the killmails first applied in an epoch (moves the clock).
    Clock(i64),
    /// The new upsert state of a killmail.
    Upsert(u64, StoredKillmail),
    /// A message that could not be decoded.
    DeadLetter(DeadLetter),
}

/// What one worker's sink reports.
#[derive(Debug)]
pub struct SinkReport<M> {
    pub worker: usize,
    /// Every epoch below this is complete on all workers (`u64::MAX` once the input closed).
    pub frontier: u64,
    /// Items of epochs below `frontier` not reported before, with their epoch.
    pub items: Vec<(u64, CommitItem)>,
    /// Metadata of this worker's source as of the end of each epoch it closed.
    pub meta: Vec<(u64, M)>,
}

/// Everything to write for a range of epochs, consolidated.
#[derive(Debug, Default)]
pub struct EpochBatch<M = ()> {
    /// The last epoch included; the state after this batch is the state as of this epoch.
    pub last_epoch: u64,
    pub deltas: DeltaMap,
    /// The latest `killmail_time` first applied in these epochs.
    pub max_time: Option<i64>,
    /// The last upsert state of each killmail changed in these epochs.
    pub upserts: Vec<(u64, StoredKillmail)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Per worker, the latest metadata as of `last_epoch`, when it reported any.
    pub meta: Vec<Option<M>>,
}

impl<M> EpochBatch<M> {
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty() && self.upserts.is_empty() && self.dead_letters.is_empty()
    }
}

/// Collects [`SinkReport`]s from `workers` workers.
pub struct CommitCoordinator<M> {
    frontiers: Vec<u64>,
    items: BTreeMap<u64, Vec<CommitItem>>,
    meta: Vec<BTreeMap<u64, M>>,
    /// Epochs below this were handed out.
    committed_frontier: u64,
    /// The greatest epoch any item or metadata was reported for.
    max_seen: Option<u64>,
}

impl<M: Clone> CommitCoordinator<M> {
    /// `start` is the first epoch this run produces (epochs below it were committed before).
    pub fn new(workers: usize, start: u64) -> Self {
        CommitCoordinator {
            frontiers: vec![start; workers],
            items: BTreeMap::new(),
            meta: (0..workers).map(|_| BTreeMap::new()).collect(),
            committed_frontier: start,
            max_seen: None,
        }
    }

    /// The least frontier every worker reported.
    pub fn frontier(&self) -> u64 {
        self.frontiers.iter().copied().min().unwrap_or(u64::MAX)
    }

    /// Takes one report; returns a batch when epochs became complete on every worker.
    pub fn offer(&mut self, report: SinkReport<M>) -> Option<EpochBatch<M>> {
        let w = report.worker;
        self.frontiers[w] = self.frontiers[w].max(report.frontier);
        for (epoch, item) in report.items {
            self.max_seen = self.max_seen.max(Some(epoch));
            self.items.entry(epoch).or_default().push(item);
        }
        for (epoch, m) in report.meta {
            self.max_seen = self.max_seen.max(Some(epoch));
            self.meta[w].insert(epoch, m);
        }
        let frontier = self.frontier();
        if frontier <= self.committed_frontier {
            return None;
        }
        // When the input closed (frontier u64::MAX) the batch ends at the last epoch used.
        let last_epoch = match self.max_seen {
            Some(seen) => (frontier - 1).min(seen.max(self.committed_frontier.saturating_sub(1))),
            None => (frontier - 1).min(self.committed_frontier.saturating_sub(1)),
        };
        if frontier == u64::MAX && self.items.is_empty() && self.meta.iter().all(|m| m.is_empty()) {
            self.committed_frontier = frontier;
            return None;
        }
        let mut batch = EpochBatch {
            last_epoch,
            deltas: DeltaMap::default(),
            max_time: None,
            upserts: Vec::new(),
            dead_letters: Vec::new(),
            meta: Vec::with_capacity(self.meta.len()),
        };
        let mut upserts: HashMap<u64, StoredKillmail> = HashMap::new();
        let rest = self.items.split_off(&frontier);
        // Epoch order, so a later upsert of the same killmail wins.
        for (_, items) in std::mem::replace(&mut self.items, rest) {
            for item in items {
                match item {
                    CommitItem::Delta(key, d) => batch.deltas.entry(key).or_default().merge(&d),
                    CommitItem::Upsert(id, s) => match upserts.get(&id) {
                        Some(prev) if prev.epoch > s.epoch => {}
                        _ => {
                            upserts.insert(id, s);
                        }
                    },
                    CommitItem::DeadLetter(d) => batch.dead_letters.push(d),
                    CommitItem::Clock(t) => batch.max_time = batch.max_time.max(Some(t)),
                }
            }
        }
        batch.deltas.retain(|_, d| !d.is_empty());
        batch.upserts = upserts.into_iter().collect();
        batch.upserts.sort_unstable_by_key(|(id, _)| *id);
        batch.dead_letters.sort_unstable_by_key(|d| d.pos);
        for m in &mut self.meta {
            let rest = m.split_off(&frontier);
            let latest = std::mem::replace(m, rest)
                .into_iter()
                .next_back()
                .map(|(_, v)| v);
            batch.meta.push(latest);
        }
        self.committed_frontier = frontier;
        Some(batch)
    }
}
