//! The checkpointer thread: it gathers what the workers report, asks the shards for a
//! checkpoint when every sink has passed an epoch, and writes each checkpoint to RocksDB as
//! one synced `WriteBatch` (see `state::checkpoint`).

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;

use kmflow_dataflows::aggregate::Writes;
use kmflow_dataflows::checkpoint::{CheckpointBatch, CheckpointCoordinator, ToCoordinator};
use kmflow_dataflows::EntityKind;

use crate::cluster::control::{Control, Vote};
use crate::config::WallClock;
use crate::metrics::Metrics;
use crate::source::{EpochControl, Position};
use crate::state::{CheckpointMeta, ClusterPlace, PreparedCheckpoint, RocksState, StateError};

use super::{Fingerprints, Offsets};

/// What the checkpointer needs besides its channel and coordinator.
pub struct Checkpointer<'a> {
    pub state: &'a RocksState,
    pub topics: &'a [String],
    pub metrics: &'a Metrics,
    pub ctl: &'a EpochControl,
    /// The API's base URL, for the first-checkpoint hint.
    pub api: &'a str,
    /// The live feed each written checkpoint is published to.
    pub feed: &'a crate::feed::Feed,
    pub wall: WallClock,
    /// Whether the first-query hint was printed.
    pub hinted: std::cell::Cell<bool>,
}

/// Where a cluster checkpointer stands in the current checkpoint.
enum Phase {
    Idle,
    /// It proposed a target and waits for the others'.
    Proposed,
    /// The agreed target is being flushed.
    Flushing,
    /// Its part is prepared; it waits for every other process's.
    Prepared(Box<(PreparedCheckpoint, CheckpointBatch<Vec<Position>>, Vec<i64>)>),
}

fn out_of_step(votes: &[Vote]) -> StateError {
    StateError::Corrupt(format!(
        "cluster: the processes are out of step (votes {votes:?}); restart the cluster"
    ))
}

/// The offsets and fingerprints stored with the next checkpoint.
struct Positions {
    offsets: Offsets,
    fingerprints: Fingerprints,
}

impl Positions {
    /// Takes in the positions a batch carries; returns when the newest message of each
    /// partition read since the last checkpoint was produced (for the freshness metric).
    fn advance(&mut self, batch: &CheckpointBatch<Vec<Position>>, topics: &[String]) -> Vec<i64> {
        let mut produced = Vec::new();
        for pos in batch.meta.iter().flatten().flatten() {
            let topic = &topics[pos.topic as usize];
            let before = self.offsets.get(topic).and_then(|p| p.get(&pos.partition));
            if pos.produced_ms > 0 && before.is_none_or(|&b| b < pos.next) {
                produced.push(pos.produced_ms);
            }
            self.offsets
                .entry(topic.clone())
                .or_default()
                .insert(pos.partition, pos.next);
            self.fingerprints
                .entry(topic.clone())
                .or_default()
                .insert(pos.partition, pos.fingerprint);
        }
        produced
    }
}

impl Checkpointer<'_> {
    /// Runs until every worker has dropped its sender. On the first failed write it stops
    /// ingestion, releases the shards and drains the channel; returns that error.
    pub fn run(
        &self,
        rx: Receiver<ToCoordinator<Vec<Position>>>,
        mut coordinator: CheckpointCoordinator<Vec<Position>>,
        offsets: Offsets,
    ) -> Result<(), StateError> {
        let mut positions = self.positions(offsets);
        let mut failure: Option<StateError> = None;
        for report in rx {
            if failure.is_some() {
                continue; // drain until the workers stop
            }
            let Some(batch) = coordinator.offer(report) else {
                continue;
            };
            let produced = positions.advance(&batch, self.topics);
            let t0 = Instant::now();
            let written = self.state.write_checkpoint(
                &batch,
                self.topics,
                &positions.offsets,
                &positions.fingerprints,
                self.wall.now(),
            );
            match written {
                Ok(meta) => {
                    coordinator.committed();
                    coordinator.recycle(self.written(batch, &meta, produced, t0));
                }
                Err(e) => {
                    self.failed(&e);
                    coordinator.abandon();
                    failure = Some(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// The checkpointer of a cluster process: every target is agreed with the other processes
    /// (the least of their proposals), every checkpoint is prepared (made durable in
    /// `state.dir`) and written only once every process has prepared it (see `cluster`).
    /// Returns after the last checkpoint, or at the first failure.
    pub fn run_cluster(
        &self,
        rx: Receiver<ToCoordinator<Vec<Position>>>,
        mut coordinator: CheckpointCoordinator<Vec<Position>>,
        offsets: Offsets,
        control: &Control,
        dir: &Path,
    ) -> Result<(), StateError> {
        let mut positions = self.positions(offsets);
        let mut phase = Phase::Idle;
        let result = loop {
            if coordinator.finished() {
                break Ok(());
            }
            if let (Phase::Idle, Some(target)) = (&phase, coordinator.proposal()) {
                let last = coordinator.last_seen();
                control.vote(Vote::Propose { target, last });
                phase = Phase::Proposed;
            }
            crossbeam_channel::select! {
                recv(rx) -> report => {
                    let Ok(report) = report else {
                        break Err(StateError::Corrupt("cluster: the workers stopped before the last checkpoint".into()));
                    };
                    let Some(batch) = coordinator.offer(report) else { continue };
                    let produced = positions.advance(&batch, self.topics);
                    match self.prepare(&batch, &positions, dir, control.place()) {
                        Ok(p) => {
                            control.vote(Vote::Prepared { max_time: p.max_time, wall: self.wall.now() });
                            phase = Phase::Prepared(Box::new((p, batch, produced)));
                        }
                        Err(e) => break Err(e),
                    }
                }
                recv(control.rounds()) -> round => {
                    let votes = match round.map_err(|e| e.to_string()).and_then(|r| r.all()) {
                        Ok(v) => v,
                        Err(e) => break Err(StateError::Corrupt(e)),
                    };
                    match std::mem::replace(&mut phase, Phase::Idle) {
                        Phase::Proposed => {
                            let proposals: Option<Vec<(u64, u64)>> = votes.iter().map(|v| match v {
                                Vote::Propose { target, last } => Some((*target, *last)),
                                _ => None,
                            }).collect();
                            match proposals {
                                Some(p) if !p.is_empty() => {
                                    let target = p.iter().map(|(t, _)| *t).min().expect("one");
                                    let last = p.iter().map(|(_, l)| *l).max().expect("one");
                                    coordinator.start(target, last);
                                    phase = Phase::Flushing;
                                }
                                _ => break Err(out_of_step(&votes)),
                            }
                        }
                        Phase::Prepared(prepared) => {
                            let (p, batch, produced) = *prepared;
                            match self.commit_agreed(p, &votes, dir, batch, produced) {
                                Ok(writes) => coordinator.recycle(writes),
                                Err(e) => break Err(e),
                            }
                            coordinator.committed();
                        }
                        Phase::Idle | Phase::Flushing => break Err(out_of_step(&votes)),
                    }
                }
            }
        };
        if let Err(e) = &result {
            self.failed(e);
            coordinator.abandon();
        }
        control.finish();
        result
    }

    /// Builds this process's part of the agreed checkpoint and makes it durable.
    fn prepare(
        &self,
        batch: &CheckpointBatch<Vec<Position>>,
        positions: &Positions,
        dir: &Path,
        place: ClusterPlace,
    ) -> Result<PreparedCheckpoint, StateError> {
        let mut p = self.state.prepare_checkpoint(
            batch,
            self.topics,
            &positions.offsets,
            &positions.fingerprints,
        )?;
        p.meta.cluster = Some(place);
        crate::cluster::prepared::save(dir, &p).map_err(|e| {
            StateError::Corrupt(format!(
                "writing the prepared checkpoint in {}: {e}",
                dir.display()
            ))
        })?;
        Ok(p)
    }

    /// Writes the prepared checkpoint once every process prepared it, with the clock moved by
    /// the greatest killmail time and wall clock of all of them.
    fn commit_agreed(
        &self,
        p: PreparedCheckpoint,
        votes: &[Vote],
        dir: &Path,
        batch: CheckpointBatch<Vec<Position>>,
        produced: Vec<i64>,
    ) -> Result<Writes, StateError> {
        let (mut max_time, mut wall) = (None, i64::MIN);
        for v in votes {
            match v {
                Vote::Prepared {
                    max_time: t,
                    wall: w,
                } => {
                    max_time = max_time.max(*t);
                    wall = wall.max(*w);
                }
                _ => return Err(out_of_step(votes)),
            }
        }
        let t0 = Instant::now();
        let clock = self.state.clock().advance(max_time, wall);
        let meta = self.state.commit_prepared(p, clock)?;
        if let Err(e) = crate::cluster::prepared::remove(dir) {
            tracing::warn!(error = %e, "cannot delete the prepared checkpoint (written already; it is dropped at the next start)");
        }
        Ok(self.written(batch, &meta, produced, t0))
    }

    /// Where every partition of this process stands, from the stored state.
    fn positions(&self, offsets: Offsets) -> Positions {
        let mut fingerprints = self
            .state
            .checkpoint_meta()
            .map(|m| m.fingerprints)
            .unwrap_or_default();
        // Only the partitions whose offsets are kept (in a cluster: this process's own).
        fingerprints.retain(|topic, parts| {
            parts.retain(|p, _| offsets.get(topic).is_some_and(|o| o.contains_key(p)));
            !parts.is_empty()
        });
        Positions {
            offsets,
            fingerprints,
        }
    }

    /// After a checkpoint is durable: metrics, the first-query hint, the feed. Gives back
    /// the batch's writes, whose maps the shards reuse.
    fn written(
        &self,
        mut batch: CheckpointBatch<Vec<Position>>,
        meta: &CheckpointMeta,
        produced: Vec<i64>,
        t0: Instant,
    ) -> Writes {
        let now_ms = crate::source::unix_ms_now();
        for ms in produced {
            let age = (now_ms - ms).max(0) as f64 / 1000.0;
            self.metrics.state.freshness.observe(age);
        }
        self.observe(&batch, meta, t0);
        if !self.hinted.get() {
            self.hinted.set(self.hint(&batch));
        }
        self.feed.publish(&mut batch);
        batch.writes
    }

    fn failed(&self, e: &StateError) {
        self.metrics.state.checkpoint_errors.inc();
        tracing::error!(error = %e, "checkpoint failed: stopping ingestion");
        self.ctl.shutdown.store(true, Ordering::Release);
    }

    /// Metrics of a written checkpoint; its dead letters are counted here, exactly once.
    fn observe<M>(&self, batch: &CheckpointBatch<M>, meta: &CheckpointMeta, t0: Instant) {
        let m = self.metrics;
        m.state
            .checkpoint_latency
            .observe(t0.elapsed().as_secs_f64());
        m.state
            .checkpoint_size
            .observe((batch.writes.len() + batch.upserts.len() + batch.dead_letters.len()) as f64);
        m.observe_stored(meta);
        for d in &batch.dead_letters {
            m.source
                .decode_failures
                .with_label_values(&[d.reason.as_str()])
                .inc();
        }
        if !batch.dead_letters.is_empty() {
            // One line per checkpoint, not per message: a flood of garbage cannot flood the log.
            let first = &batch.dead_letters[0];
            tracing::warn!(
                count = batch.dead_letters.len(),
                first_topic = %self.topics.get(first.pos.topic as usize).map_or("?", |s| s.as_str()),
                first_partition = first.pos.partition,
                first_offset = first.pos.offset,
                first_reason = %first.reason,
                first_error = %first.error,
                "dead letters kept (GET /v1/dead-letters)"
            );
        }
    }

    /// Prints a first query to try, once a checkpoint holds a character; true once printed.
    fn hint<M>(&self, batch: &CheckpointBatch<M>) -> bool {
        let character = (batch.writes.puts())
            .find_map(|(k, _)| (k.entity.kind == EntityKind::Character).then_some(*k));
        if let Some(c) = character {
            // Never a panic over a closed or full stdout.
            let _ = writeln!(
                std::io::stdout(),
                "kmflow: first checkpoint; try  curl {}/v1/characters/{}",
                self.api,
                c.entity.id
            );
        }
        character.is_some()
    }
}
