//! The checkpointer thread: it gathers what the workers report, asks the shards for a
//! checkpoint when every sink has passed an epoch, and writes each checkpoint to RocksDB as
//! one synced `WriteBatch` (see `state::checkpoint`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;

use kmflow_dataflows::aggregate::Write;
use kmflow_dataflows::checkpoint::{CheckpointBatch, CheckpointCoordinator, ToCoordinator};
use kmflow_dataflows::EntityKind;

use crate::config::WallClock;
use crate::metrics::Metrics;
use crate::source::{EpochControl, Position};
use crate::state::{CheckpointMeta, RocksState, StateError};

use super::Offsets;

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
}

impl Checkpointer<'_> {
    /// Runs until every worker has dropped its sender. On the first failed write it stops
    /// ingestion, releases the shards and drains the channel; returns that error.
    pub fn run(
        &self,
        rx: Receiver<ToCoordinator<Vec<Position>>>,
        mut coordinator: CheckpointCoordinator<Vec<Position>>,
        mut offsets: Offsets,
    ) -> Result<(), StateError> {
        let mut fingerprints = self
            .state
            .checkpoint_meta()
            .map(|m| m.fingerprints)
            .unwrap_or_default();
        let mut failure: Option<StateError> = None;
        let mut hinted = false;
        for report in rx {
            if failure.is_some() {
                continue; // drain until the workers stop
            }
            let Some(mut batch) = coordinator.offer(report) else {
                continue;
            };
            // When the newest message of each partition read since the last checkpoint was
            // produced: visible once this checkpoint is written.
            let mut produced = Vec::new();
            for pos in batch.meta.iter().flatten().flatten() {
                let topic = &self.topics[pos.topic as usize];
                let before = offsets.get(topic).and_then(|p| p.get(&pos.partition));
                if pos.produced_ms > 0 && before.is_none_or(|&b| b < pos.next) {
                    produced.push(pos.produced_ms);
                }
                offsets
                    .entry(topic.clone())
                    .or_default()
                    .insert(pos.partition, pos.next);
                fingerprints
                    .entry(topic.clone())
                    .or_default()
                    .insert(pos.partition, pos.fingerprint);
            }
            let t0 = Instant::now();
            let written = self.state.write_checkpoint(
                &batch,
                self.topics,
                &offsets,
                &fingerprints,
                self.wall.now(),
            );
            match written {
                Ok(meta) => {
                    coordinator.committed();
                    let now_ms = crate::source::unix_ms_now();
                    for ms in produced {
                        let age = (now_ms - ms).max(0) as f64 / 1000.0;
                        self.metrics.state.freshness.observe(age);
                    }
                    self.observe(&batch, &meta, t0);
                    hinted = hinted || self.hint(&batch);
                    self.feed.publish(&mut batch);
                }
                Err(e) => {
                    self.metrics.state.checkpoint_errors.inc();
                    tracing::error!(error = %e, "checkpoint failed: stopping ingestion");
                    self.ctl.shutdown.store(true, Ordering::Release);
                    coordinator.abandon();
                    failure = Some(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
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
        let character = batch.writes.iter().find_map(|w| match w {
            Write::Put(k, _) if k.entity.kind == EntityKind::Character => Some(k),
            _ => None,
        });
        if let Some(c) = character {
            println!(
                "kmflow: first checkpoint; try  curl {}/v1/characters/{}",
                self.api, c.entity.id
            );
        }
        character.is_some()
    }
}
