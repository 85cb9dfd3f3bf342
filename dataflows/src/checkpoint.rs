//! Gathers what every worker reports and hands out consistent checkpoints to write.
//!
//! Two kinds of reports reach the coordinator ([`ToCoordinator`]):
//! - each worker's sink reports, whenever its input frontier advances, the items of the epochs
//!   that frontier has passed (upsert states, dead letters, the clock) and its source metadata
//!   (for kmflow: partition offsets) as of each epoch it closed;
//! - each statistics shard ([`crate::shard`]) reports its writes when it has flushed every
//!   epoch below the current checkpoint target.
//!
//! The protocol (aligned checkpoints): when no checkpoint is being written, the coordinator
//! raises the target to the least frontier every sink reported ([`Checkpoints::request`]).
//! Once every shard flushed through it, [`CheckpointCoordinator::offer`] returns one
//! [`CheckpointBatch`] covering every epoch below the target, which the host writes atomically and
//! then acknowledges with [`CheckpointCoordinator::committed`], which raises the next target.

use std::collections::{BTreeMap, HashMap};

use crate::aggregate::Writes;
use crate::model::{DeadLetter, StoredKillmail};
use crate::shard::{Checkpoints, ShardFlush};
use std::sync::Arc;

pub use crate::deltas::DeltaMap;

/// One item of committed output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SinkItem {
    /// The latest `killmail_time` of the killmails first applied in an epoch (moves the clock).
    Clock(i64),
    /// The new upsert state of a killmail; true when a version was applied (inserted or
    /// replaced) rather than only advanced.
    Upsert(u64, StoredKillmail, bool),
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
    pub items: Vec<(u64, SinkItem)>,
    /// Metadata of this worker's source as of the end of each epoch it closed.
    pub meta: Vec<(u64, M)>,
}

/// What workers send the checkpointer.
#[derive(Debug)]
pub enum ToCoordinator<M> {
    Sink(SinkReport<M>),
    Flush(ShardFlush),
}

/// Everything to write for a range of epochs, consolidated.
#[derive(Debug, Default)]
pub struct CheckpointBatch<M = ()> {
    /// The last epoch included; the state after this batch is the state as of this epoch.
    pub last_epoch: u64,
    /// The shards' writes to the statistics (each statistic in at most one shard).
    pub writes: Writes,
    /// The latest `killmail_time` first applied in these epochs.
    pub max_time: Option<i64>,
    /// The last upsert state of each killmail changed in these epochs.
    pub upserts: Vec<(u64, StoredKillmail)>,
    /// The killmails (sorted ids) a version of which was applied in these epochs: new ones
    /// and re-appraisals, not those whose version only advanced.
    pub applied: Vec<u64>,
    pub dead_letters: Vec<DeadLetter>,
    /// Per worker, the latest metadata as of `last_epoch`, when it reported any.
    pub meta: Vec<Option<M>>,
}

impl<M> CheckpointBatch<M> {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.upserts.is_empty() && self.dead_letters.is_empty()
    }
}

/// Collects the reports of `workers` workers and cuts checkpoints.
pub struct CheckpointCoordinator<M> {
    frontiers: Vec<u64>,
    items: BTreeMap<u64, Vec<SinkItem>>,
    meta: Vec<BTreeMap<u64, M>>,
    /// Per shard, its writes for the current target once it flushed.
    flushes: Vec<Option<Writes>>,
    checkpoints: Arc<Checkpoints>,
    /// The current checkpoint target (every epoch below it is being flushed).
    target: u64,
    /// Epochs below this were handed out.
    committed_frontier: u64,
    /// The greatest epoch any item or metadata was reported for.
    max_seen: Option<u64>,
    /// Targets are agreed with other processes ([`CheckpointCoordinator::agreed`]) instead of
    /// raised as soon as the sinks pass them.
    agreed: bool,
    /// In agreed mode, the epoch the current checkpoint is stored as (the same everywhere).
    agreed_last: Option<u64>,
}

impl<M: Clone> CheckpointCoordinator<M> {
    /// `start` is the first epoch this run produces (epochs below it were committed before);
    /// `checkpoints` is shared with the shards.
    pub fn new(workers: usize, start: u64, checkpoints: Arc<Checkpoints>) -> Self {
        CheckpointCoordinator {
            frontiers: vec![start; workers],
            items: BTreeMap::new(),
            meta: (0..workers).map(|_| BTreeMap::new()).collect(),
            flushes: vec![None; workers],
            checkpoints,
            target: start,
            committed_frontier: start,
            max_seen: None,
            agreed: false,
            agreed_last: None,
        }
    }

    /// A coordinator whose host agrees on every target with other processes: it proposes
    /// ([`CheckpointCoordinator::proposal`]), starts the agreed target
    /// ([`CheckpointCoordinator::start`]), and gets a batch for every target, even an empty
    /// last one, so every process goes through the same checkpoints.
    pub fn agreed(workers: usize, start: u64, checkpoints: Arc<Checkpoints>) -> Self {
        CheckpointCoordinator {
            agreed: true,
            ..CheckpointCoordinator::new(workers, start, checkpoints)
        }
    }

    /// The target this process proposes when no checkpoint is in flight: its sinks' frontier.
    pub fn proposal(&self) -> Option<u64> {
        let frontier = self.frontier();
        (self.target == self.committed_frontier
            && self.target != u64::MAX
            && frontier > self.target)
            .then_some(frontier)
    }

    /// The epoch this process would store the last checkpoint (of the closed input) as: the
    /// latest epoch it saw anything of. Processes agree on the greatest.
    pub fn last_seen(&self) -> u64 {
        self.max_seen
            .unwrap_or(0)
            .max(self.committed_frontier.saturating_sub(1))
    }

    /// Starts the checkpoint of every epoch below the agreed `target`. Every process stores it
    /// as the same epoch: `target - 1`, or for the last checkpoint (`u64::MAX`) the greatest
    /// [`CheckpointCoordinator::last_seen`] of all processes, `last`.
    pub fn start(&mut self, target: u64, last: u64) {
        debug_assert!(target > self.target && target <= self.frontier());
        self.target = target;
        self.agreed_last = Some(if target == u64::MAX { last } else { target - 1 });
        self.checkpoints.request(target);
    }

    /// The last checkpoint (of the closed input) is written.
    pub fn finished(&self) -> bool {
        self.committed_frontier == u64::MAX
    }

    /// The least frontier every worker's sink reported.
    pub fn frontier(&self) -> u64 {
        self.frontiers.iter().copied().min().unwrap_or(u64::MAX)
    }

    /// Takes one report; returns a batch when a checkpoint is complete on every worker. The
    /// caller writes it and then calls [`CheckpointCoordinator::committed`].
    pub fn offer(&mut self, report: ToCoordinator<M>) -> Option<CheckpointBatch<M>> {
        match report {
            ToCoordinator::Sink(report) => self.take_sink(report),
            ToCoordinator::Flush(flush) => {
                debug_assert_eq!(flush.through, self.target, "a shard flushed another target");
                if flush.through == self.target {
                    match &mut self.flushes[flush.worker] {
                        Some(w) => w.append(flush.writes),
                        slot => *slot = Some(flush.writes),
                    }
                }
            }
        }
        self.request_next();
        self.cut()
    }

    /// Hands the maps of a written batch's `writes` back to the shards for reuse.
    pub fn recycle(&self, writes: Writes) {
        self.checkpoints.recycle(writes);
    }

    /// Acknowledges that the last batch is durable: the next checkpoint may start.
    pub fn committed(&mut self) {
        self.committed_frontier = self.target;
        self.request_next();
    }

    /// Gives up after a failed checkpoint: asks the shards to flush everything (their writes are
    /// dropped) so they release their epochs and the workers can stop.
    pub fn abandon(&mut self) {
        self.target = u64::MAX;
        self.checkpoints.request(u64::MAX);
    }

    fn take_sink(&mut self, report: SinkReport<M>) {
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
    }

    /// Raises the target when no checkpoint is in flight and epochs completed.
    fn request_next(&mut self) {
        if !self.agreed && self.target == self.committed_frontier && self.target != u64::MAX {
            let frontier = self.frontier();
            if frontier > self.target {
                self.target = frontier;
                self.checkpoints.request(frontier);
            }
        }
    }

    /// The batch of the current target, once every shard flushed it and every sink passed it.
    fn cut(&mut self) -> Option<CheckpointBatch<M>> {
        let target = self.target;
        if target == self.committed_frontier
            || self.frontier() < target
            || self.flushes.iter().any(|f| f.is_none())
        {
            return None;
        }
        // The shards' parts are moved, not copied (see `Writes`).
        let mut writes = Writes::default();
        for f in &mut self.flushes {
            writes.append(f.take().unwrap_or_default());
        }
        // When the input closed (target u64::MAX) the batch ends at the last epoch used.
        let last_epoch = match self.max_seen {
            _ if self.agreed => self.agreed_last.expect("an agreed target has its epoch"),
            Some(seen) => (target - 1).min(seen.max(self.committed_frontier.saturating_sub(1))),
            None => (target - 1).min(self.committed_frontier.saturating_sub(1)),
        };
        if target == u64::MAX
            && !self.agreed
            && writes.is_empty()
            && self.items.is_empty()
            && self.meta.iter().all(|m| m.is_empty())
        {
            self.committed_frontier = target;
            return None;
        }
        let mut batch = CheckpointBatch {
            last_epoch,
            writes,
            max_time: None,
            upserts: Vec::new(),
            applied: Vec::new(),
            dead_letters: Vec::new(),
            meta: Vec::with_capacity(self.meta.len()),
        };
        let mut upserts: HashMap<u64, StoredKillmail> = HashMap::new();
        let mut applied = Vec::new();
        let rest = self.items.split_off(&target);
        // Epoch order, so a later upsert of the same killmail wins.
        for (_, items) in std::mem::replace(&mut self.items, rest) {
            for item in items {
                match item {
                    SinkItem::Upsert(id, s, was_applied) => {
                        if was_applied {
                            applied.push(id);
                        }
                        match upserts.get(&id) {
                            Some(prev) if prev.epoch > s.epoch => {}
                            _ => {
                                upserts.insert(id, s);
                            }
                        }
                    }
                    SinkItem::DeadLetter(d) => batch.dead_letters.push(d),
                    SinkItem::Clock(t) => batch.max_time = batch.max_time.max(Some(t)),
                }
            }
        }
        batch.upserts = upserts.into_iter().collect();
        batch.upserts.sort_unstable_by_key(|(id, _)| *id);
        applied.sort_unstable();
        applied.dedup();
        batch.applied = applied;
        batch.dead_letters.sort_unstable_by_key(|d| d.pos);
        for m in &mut self.meta {
            let rest = m.split_off(&target);
            let latest = std::mem::replace(m, rest)
                .into_iter()
                .next_back()
                .map(|(_, v)| v);
            batch.meta.push(latest);
        }
        Some(batch)
    }
}
