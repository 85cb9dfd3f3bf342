//! Writing a checkpoint: one atomic, synced `WriteBatch` with the shards' statistics, the
//! upserts, the dead letters, the offsets and the checkpoint's metadata.

use super::*;

use super::batch::Cf;
use super::breakdowns::{Packed, RowOperand};
use super::codec::*;
use kmflow_dataflows::aggregate::{StatOp, Writes};
use kmflow_dataflows::contrib::expand;
use kmflow_dataflows::keys::{KeyBytes, StatTable};

/// A checkpoint built and not yet written: the batch of its statistics, upserts, dead letters
/// and offsets, and its metadata without the stream clock, which is set when it is written
/// ([`RocksState::commit_prepared`], which adds it to the batch). A cluster keeps it durable in
/// between (see `cluster::prepared`), so every process can write the same checkpoint after a
/// crash.
pub struct PreparedCheckpoint {
    pub batch: Batch,
    /// The metadata to write with it; `clock` is set at commit.
    pub meta: CheckpointMeta,
    /// The latest `killmail_time` the checkpoint applies (moves the clock).
    pub max_time: Option<i64>,
}

impl RocksState {
    /// Writes one batch atomically with the new offsets and fingerprints, moving the stream
    /// clock to what `wall` (Unix seconds) and the batch's killmails allow; returns what it
    /// committed.
    pub fn write_checkpoint<M>(
        &self,
        batch: &CheckpointBatch<M>,
        topics: &[String],
        offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
        fingerprints: &BTreeMap<String, BTreeMap<i32, u64>>,
        wall: i64,
    ) -> Result<CheckpointMeta, StateError> {
        let prepared = self.prepare_checkpoint(batch, topics, offsets, fingerprints)?;
        let clock = self.clock().advance(prepared.max_time, wall);
        self.commit_prepared(prepared, clock)
    }

    /// Adds the writes to statistics to `wb`, in the order they come (the store's key order),
    /// each delta as the statistics it adds to ([`expand`]): the statistics of a packed row
    /// (an entity's breakdown buckets; a corporation's member days of one day), gathered while
    /// their row lasts, as one merge of that row; the day buckets gathered, summed per bucket
    /// and written last, in the `days` table's order; every other statistic as its own put,
    /// merge or delete.
    fn stage_stats(&self, wb: &mut Batch, writes: &Writes) -> Result<(), StateError> {
        let mut stage = Stage {
            wb,
            stats_cf: self.cf_id(CF_STATS),
            days_cf: self.cf_id(CF_DAYS),
            buf: Vec::with_capacity(64),
            days: Vec::new(),
            row: None,
            operand: RowOperand::default(),
            error: None,
        };
        for (op, k, v) in writes.stats() {
            match op {
                StatOp::Merge => expand(*k, v, |k, v| stage.one(StatOp::Merge, k, &v)),
                op => stage.one(op, *k, v),
            }
        }
        stage.merge_row();
        stage.merge_days();
        stage.error.map_or(Ok(()), Err)
    }

    /// Builds the `WriteBatch` of a checkpoint without writing it.
    pub fn prepare_checkpoint<M>(
        &self,
        batch: &CheckpointBatch<M>,
        topics: &[String],
        offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
        fingerprints: &BTreeMap<String, BTreeMap<i32, u64>>,
    ) -> Result<PreparedCheckpoint, StateError> {
        // Sized up front (~48 bytes per encoded write, ~41 per attacker of an upsert state):
        // grown by doubling, the batch's buffer was copied over and over (a twentieth of the
        // largest killmail's CPU).
        let upserts: usize = batch
            .upserts
            .iter()
            .map(|(_, s)| s.killmail.attackers.len() * 48 + 512)
            .sum();
        // A share's delta is five buckets: 80 bytes per write covers them (room reserved and
        // not used is never touched, so it costs no memory).
        let spare = std::mem::take(&mut *self.spare_batch.lock());
        let mut wb = Batch::in_buffer(spare, batch.writes.len() * 80 + upserts + 4096);
        self.stage_stats(&mut wb, &batch.writes)?;
        let ranks = self.stage_ranks(&mut wb, &batch.writes)?;
        let km_cf = self.cf_id(CF_KILLMAILS);
        for (id, stored) in &batch.upserts {
            wb.put_cf(
                km_cf,
                id.to_be_bytes(),
                bincode::serialize(stored).map_err(codec_err)?,
            );
        }
        let dead = self.retain_dead_letters(&mut wb, batch, topics)?;
        let off_cf = self.cf_id(CF_OFFSETS);
        for (topic, parts) in offsets {
            for (p, o) in parts {
                wb.put_cf(off_cf, position_key(topic, *p, None), o.to_be_bytes());
            }
        }
        let meta = CheckpointMeta {
            epoch: batch.last_epoch,
            committed_at: 0,
            offsets: offsets.clone(),
            fingerprints: fingerprints.clone(),
            clock: StreamClock::default(),
            dead_letters: dead,
            format: STATE_FORMAT,
            cluster: None,
            ranks: Some(ranks),
        };
        Ok(PreparedCheckpoint {
            batch: wb,
            meta,
            max_time: batch.max_time,
        })
    }

    /// The stream clock of the last checkpoint.
    pub fn clock(&self) -> StreamClock {
        self.checkpoint_meta().map(|m| m.clock).unwrap_or_default()
    }

    /// Writes a prepared checkpoint as one synced batch, with the stream clock at `clock`
    /// (in a cluster, the same on every process).
    pub fn commit_prepared(
        &self,
        prepared: PreparedCheckpoint,
        clock: StreamClock,
    ) -> Result<CheckpointMeta, StateError> {
        let PreparedCheckpoint {
            batch: mut wb,
            mut meta,
            ..
        } = prepared;
        let t0 = std::time::Instant::now();
        meta.clock = clock;
        meta.committed_at = now_ms();
        // Prepared by the previous build (format 5, floors already): it becomes this format
        // in the same batch, since its merges may write values in the compact encoding.
        if meta.format >= FLOORS_SINCE {
            meta.format = STATE_FORMAT;
        }
        wb.put_cf(
            self.cf_id(CF_META),
            META_CHECKPOINT,
            serde_json::to_vec(&meta).map_err(codec_err)?,
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let keys = wb.len();
        let (wb, spare) = wb.into_write_batch();
        // One buffer kept for the next checkpoint, up to 64 MiB.
        if spare.capacity() <= 64 << 20 {
            *self.spare_batch.lock() = spare;
        }
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))?;
        tracing::debug!(
            keys,
            write_ms = t0.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        // A prepared checkpoint of an earlier build (a cluster's, written before an upgrade)
        // left the index it was prepared against.
        self.upgrade(&mut meta)?;
        *self.meta.write() = Some(meta.clone());
        self.committed_epoch.store(meta.epoch, Ordering::Release);
        Ok(meta)
    }
}

impl RocksState {
    /// Adds the batch's dead letters (keyed by epoch and index, so newest last) and drops the
    /// oldest stored ones while the total exceeds the retention (`state.dead-letters-max`,
    /// `state.dead-letters-max-mb`); returns the totals after this checkpoint.
    fn retain_dead_letters<M>(
        &self,
        wb: &mut Batch,
        batch: &CheckpointBatch<M>,
        topics: &[String],
    ) -> Result<DeadLetterTotals, StateError> {
        let limits = *self.dead_letter_limits.read();
        let mut totals = self
            .checkpoint_meta()
            .map(|m| m.dead_letters)
            .unwrap_or_default();
        let dl_cf = self.cf_id(CF_DEAD_LETTERS);
        let mut fresh: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(batch.dead_letters.len());
        for (i, d) in batch.dead_letters.iter().enumerate() {
            let key = dead_letter_key(batch.last_epoch, i as u32);
            let value = serde_json::to_vec(&dead_letter_record(d, topics)).map_err(codec_err)?;
            totals.count += 1;
            totals.bytes += value.len() as u64;
            fresh.push((key, value));
        }
        let over = |t: &DeadLetterTotals| t.count > limits.count || t.bytes > limits.bytes;
        if over(&totals) {
            for item in self
                .db
                .iterator_cf(self.cf(CF_DEAD_LETTERS), IteratorMode::Start)
            {
                if !over(&totals) {
                    break;
                }
                let (k, v) = item.map_err(|e| self.err(e))?;
                wb.delete_cf(dl_cf, k);
                totals.count = totals.count.saturating_sub(1);
                totals.bytes = totals.bytes.saturating_sub(v.len() as u64);
                totals.dropped += 1;
            }
        }
        // A batch larger than the whole retention keeps its newest letters.
        let mut skip = 0;
        while over(&totals) && skip < fresh.len() {
            totals.count = totals.count.saturating_sub(1);
            totals.bytes = totals.bytes.saturating_sub(fresh[skip].1.len() as u64);
            totals.dropped += 1;
            skip += 1;
        }
        for (k, v) in &fresh[skip..] {
            wb.put_cf(dl_cf, k, v);
        }
        Ok(totals)
    }
}

/// Dead letters are keyed by the epoch that kept them and their index in it: oldest first.
pub(crate) fn dead_letter_key(epoch: u64, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn dead_letter_record(d: &DeadLetter, topics: &[String]) -> DeadLetterRecord {
    DeadLetterRecord {
        topic: topics
            .get(d.pos.topic as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{}", d.pos.topic)),
        partition: d.pos.partition as i32,
        offset: d.pos.offset,
        reason: d.reason.clone(),
        error: d.error.clone(),
        payload_len: d.payload_len,
        payload: String::from_utf8_lossy(&d.payload).into_owned(),
    }
}

/// A checkpoint's statistics on their way into its `WriteBatch` ([`RocksState::stage_stats`]).
struct Stage<'a> {
    wb: &'a mut Batch,
    stats_cf: Cf,
    days_cf: Cf,
    buf: Vec<u8>,
    /// The day buckets' deltas, by stored key: they come with their entities' shares (in
    /// the `stats` table's order), and are written after them in the `days` table's order.
    days: Vec<(KeyBytes, Stats)>,
    /// The packed row being gathered, and its operand.
    row: Option<Packed>,
    operand: RowOperand,
    /// The first failure (the rest of the writes are then skipped).
    error: Option<StateError>,
}

impl Stage<'_> {
    fn one(&mut self, op: StatOp, k: StatKey, v: &Stats) {
        if self.error.is_some() {
            return;
        }
        if op != StatOp::Merge && k.dim != Dim::All {
            // Shards put and delete only all-time rows (a share's or a member day's delta is
            // expanded, and only as a merge): this is a bug, not a state to write.
            self.error = Some(StateError::Corrupt(format!(
                "{k:?} written as {op:?}: only all-time rows are put or deleted"
            )));
            return;
        }
        let packed = Packed::of(k);
        // The row is complete at the next packed row, or at the next entity: another
        // statistic of its entity may sit between its entries in key order.
        if self
            .row
            .is_some_and(|r| packed.map_or(r.entity() != k.entity, |p| p != r))
        {
            self.merge_row();
        }
        if let Some(p) = packed {
            self.row = Some(p);
            self.operand.add(k.dim, v);
            return;
        }
        let (table, key) = k.stored();
        if table == StatTable::Days {
            // Only merged (checked above): gathered, and written by `merge_days`. An entity's
            // shares of one day come one after another: they sum into one entry.
            match self.days.last_mut() {
                Some((last, sum)) if *last == key => sum.merge(v),
                _ => self.days.push((key, *v)),
            }
            return;
        }
        let cf = self.stats_cf;
        match op {
            StatOp::Put => {
                encode_stats_into(v, &mut self.buf);
                self.wb.put_cf(cf, key, &self.buf);
            }
            StatOp::Merge => {
                encode_stats_into(v, &mut self.buf);
                self.wb.merge_cf(cf, key, &self.buf);
            }
            StatOp::Delete => self.wb.delete_cf(cf, key),
        }
    }

    /// Writes the gathered day buckets in key order (the memtable inserts each next to the one
    /// before), the deltas of one bucket summed into one merge.
    fn merge_days(&mut self) {
        let mut order: Vec<(KeyBytes, u32)> = (self.days.iter().enumerate())
            .map(|(i, (k, _))| (*k, i as u32))
            .collect();
        // The stable sort (the same order: the pairs are distinct) merges the runs already in
        // order: the buckets come in their entities' order, so those of one day are in key
        // order (every bucket of a checkpoint within one day; the largest killmail's).
        order.sort();
        let mut at = 0;
        while at < order.len() {
            let key = order[at].0;
            let mut sum = Stats::default();
            while order.get(at).is_some_and(|(k, _)| *k == key) {
                sum.merge(&self.days[order[at].1 as usize].1);
                at += 1;
            }
            if !sum.is_empty() {
                encode_stats_into(&sum, &mut self.buf);
                self.wb.merge_cf(self.days_cf, key, &self.buf);
            }
        }
        self.days.clear();
    }

    /// Writes the gathered row as one merge (nothing if its buckets came to nothing).
    fn merge_row(&mut self) {
        let packed = self.row.take();
        match self.operand.take() {
            Ok(operand) => {
                if let (Some(p), false) = (packed, operand.is_empty()) {
                    self.wb.merge_cf(self.stats_cf, p.key(), operand);
                }
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}
