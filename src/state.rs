//! The durable state: RocksDB column families written only by the committer, one atomic,
//! synced `WriteBatch` per commit, and read by the upsert operator and the HTTP API.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `killmails` | killmail id (u64 BE) | bincode [`StoredKillmail`]: the upsert state |
//! | `stats` | [`EntityKey::to_bytes`] | bincode [`Stats`] |
//! | `dead_letters` | topic, 0, partition (i32 BE), offset (i64 BE) | JSON [`DeadLetterRecord`] |
//! | `offsets` | topic, 0, partition (i32 BE) | next offset to read (i64 BE) |
//! | `meta` | `commit` | JSON [`CommitMeta`]: epoch, time and offsets of the last commit |
//!
//! Durability: the WAL is on and every commit is written with `sync = true`, so a commit that
//! returned survives a crash or power loss; a commit interrupted by a crash is absent as a whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use kmflow_dataflows::commit::EpochBatch;
use kmflow_dataflows::model::DeadLetter;
use kmflow_dataflows::store::{KillmailStore, StoreError, NO_EPOCH};
use kmflow_dataflows::{EntityKey, Stats, StoredKillmail};

const CF_KILLMAILS: &str = "killmails";
const CF_STATS: &str = "stats";
const CF_DEAD_LETTERS: &str = "dead_letters";
const CF_OFFSETS: &str = "offsets";
const CF_META: &str = "meta";
const META_COMMIT: &[u8] = b"commit";

/// What the last commit covered; served as `as_of`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMeta {
    pub epoch: u64,
    /// Unix milliseconds.
    pub committed_at: u64,
    /// topic → partition → next offset to read.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// topic → partition → fingerprint of the message before the next offset (0: unknown).
    #[serde(default)]
    pub fingerprints: BTreeMap<String, BTreeMap<i32, u64>>,
}

/// A dead letter as stored, with its topic's name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub error: String,
    pub payload_len: u64,
    /// The payload (truncated), lossily as UTF-8.
    pub payload: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("rocksdb at {path}: {source}")]
    RocksDb {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

/// The RocksDB-backed state. Cheap to share behind an `Arc`.
pub struct RocksState {
    db: DB,
    path: PathBuf,
    committed_epoch: AtomicU64,
    /// The last commit's metadata, cached for the API (updated after each write).
    meta: RwLock<Option<CommitMeta>>,
}

fn codec_err(e: impl std::fmt::Display) -> StateError {
    StateError::Corrupt(e.to_string())
}

impl RocksState {
    /// Opens (or creates) the state in `dir`.
    pub fn open(dir: &Path, block_cache_mb: usize) -> Result<Arc<RocksState>, StateError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // Bounds the WAL replayed after a crash (and so restart time) by forcing flushes.
        opts.set_max_total_wal_size(128 * 1024 * 1024);
        // All memtables together stay under 128 MiB (RocksDB's default would let five column
        // families hold 2 x 64 MiB each), so memory does not follow the write volume.
        opts.set_db_write_buffer_size(128 * 1024 * 1024);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cache = Cache::new_lru_cache(block_cache_mb.max(8) * 1024 * 1024);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let cf = |name: &str| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(name, o)
        };
        let cfs = [CF_KILLMAILS, CF_STATS, CF_DEAD_LETTERS, CF_OFFSETS, CF_META].map(cf);
        let db =
            DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| StateError::RocksDb {
                path: dir.to_path_buf(),
                source,
            })?;
        let state = RocksState {
            db,
            path: dir.to_path_buf(),
            committed_epoch: AtomicU64::new(NO_EPOCH),
            meta: RwLock::new(None),
        };
        let meta = state.read_meta()?;
        if let Some(m) = &meta {
            state.committed_epoch.store(m.epoch, Ordering::Release);
        }
        *state.meta.write() = meta;
        Ok(Arc::new(state))
    }

    fn err(&self, source: rocksdb::Error) -> StateError {
        StateError::RocksDb {
            path: self.path.clone(),
            source,
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn read_meta(&self) -> Result<Option<CommitMeta>, StateError> {
        match self
            .db
            .get_cf(self.cf(CF_META), META_COMMIT)
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(codec_err),
        }
    }

    /// Flushes memtables to SST files, so the next open replays no WAL (called on clean stop).
    pub fn flush(&self) -> Result<(), StateError> {
        for cf in [CF_KILLMAILS, CF_STATS, CF_DEAD_LETTERS, CF_OFFSETS, CF_META] {
            self.db.flush_cf(self.cf(cf)).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The last commit, if any.
    pub fn commit_meta(&self) -> Option<CommitMeta> {
        self.meta.read().clone()
    }

    /// The next offset to read for each (topic, partition) stored.
    pub fn offsets(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        self.commit_meta().map(|m| m.offsets).unwrap_or_default()
    }

    /// Writes one batch atomically with the new offsets and fingerprints; returns what it committed.
    pub fn commit<M>(
        &self,
        batch: &EpochBatch<M>,
        topics: &[String],
        offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
        fingerprints: &BTreeMap<String, BTreeMap<i32, u64>>,
    ) -> Result<CommitMeta, StateError> {
        let mut wb = WriteBatch::default();
        let stats_cf = self.cf(CF_STATS);
        // Read-modify-write of the touched aggregates; only the committer writes them.
        let keys: Vec<(EntityKey, [u8; 9])> =
            batch.deltas.keys().map(|k| (*k, k.to_bytes())).collect();
        let current = self
            .db
            .multi_get_cf(keys.iter().map(|(_, b)| (stats_cf, &b[..])));
        for ((key, bytes), cur) in keys.iter().zip(current) {
            let mut stats: Stats = match cur.map_err(|e| self.err(e))? {
                Some(v) => bincode::deserialize(&v).map_err(codec_err)?,
                None => Stats::default(),
            };
            stats.merge(&batch.deltas[key]);
            if stats.is_empty() {
                wb.delete_cf(stats_cf, bytes);
            } else {
                wb.put_cf(
                    stats_cf,
                    bytes,
                    bincode::serialize(&stats).map_err(codec_err)?,
                );
            }
        }
        let km_cf = self.cf(CF_KILLMAILS);
        for (id, stored) in &batch.upserts {
            wb.put_cf(
                km_cf,
                id.to_be_bytes(),
                bincode::serialize(stored).map_err(codec_err)?,
            );
        }
        let dl_cf = self.cf(CF_DEAD_LETTERS);
        for d in &batch.dead_letters {
            let rec = dead_letter_record(d, topics);
            let key = position_key(&rec.topic, rec.partition, Some(rec.offset));
            wb.put_cf(dl_cf, key, serde_json::to_vec(&rec).map_err(codec_err)?);
        }
        let off_cf = self.cf(CF_OFFSETS);
        for (topic, parts) in offsets {
            for (p, o) in parts {
                wb.put_cf(off_cf, position_key(topic, *p, None), o.to_be_bytes());
            }
        }
        let meta = CommitMeta {
            epoch: batch.last_epoch,
            committed_at: now_ms(),
            offsets: offsets.clone(),
            fingerprints: fingerprints.clone(),
        };
        wb.put_cf(
            self.cf(CF_META),
            META_COMMIT,
            serde_json::to_vec(&meta).map_err(codec_err)?,
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))?;
        *self.meta.write() = Some(meta.clone());
        self.committed_epoch
            .store(batch.last_epoch, Ordering::Release);
        Ok(meta)
    }

    /// Statistics of `keys` and the commit they reflect, all read from one snapshot.
    pub fn stats_many(
        &self,
        keys: &[EntityKey],
    ) -> Result<(Vec<Option<Stats>>, Option<CommitMeta>), StateError> {
        let snap = self.db.snapshot();
        let stats_cf = self.cf(CF_STATS);
        let bytes: Vec<[u8; 9]> = keys.iter().map(|k| k.to_bytes()).collect();
        let got = snap.multi_get_cf(bytes.iter().map(|b| (stats_cf, &b[..])));
        let mut out = Vec::with_capacity(keys.len());
        for g in got {
            out.push(match g.map_err(|e| self.err(e))? {
                Some(v) => Some(bincode::deserialize(&v).map_err(codec_err)?),
                None => None,
            });
        }
        let meta = match snap
            .get_cf(self.cf(CF_META), META_COMMIT)
            .map_err(|e| self.err(e))?
        {
            Some(v) => Some(serde_json::from_slice(&v).map_err(codec_err)?),
            None => None,
        };
        Ok((out, meta))
    }

    /// The stored upsert state of one killmail.
    pub fn killmail(&self, id: u64) -> Result<Option<StoredKillmail>, StateError> {
        match self
            .db
            .get_cf(self.cf(CF_KILLMAILS), id.to_be_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(v) => Ok(Some(bincode::deserialize(&v).map_err(codec_err)?)),
            None => Ok(None),
        }
    }

    /// The stored dead letters, oldest positions first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetterRecord>, StateError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_DEAD_LETTERS), IteratorMode::Start)
            .take(limit)
        {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(serde_json::from_slice(&v).map_err(codec_err)?);
        }
        Ok(out)
    }

    /// Every entity's statistics (for tests and exports; scans the whole column family).
    pub fn all_stats(&self) -> Result<BTreeMap<EntityKey, Stats>, StateError> {
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf(self.cf(CF_STATS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = EntityKey::from_bytes(&k).ok_or_else(|| codec_err("bad stats key"))?;
            out.insert(key, bincode::deserialize(&v).map_err(codec_err)?);
        }
        Ok(out)
    }

    /// Every killmail's upsert state (for consistency checks; scans the column family).
    pub fn all_killmails(&self) -> Result<Vec<StoredKillmail>, StateError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_KILLMAILS), IteratorMode::Start)
        {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(bincode::deserialize(&v).map_err(codec_err)?);
        }
        Ok(out)
    }

    /// The number of killmails in the upsert state (estimated by RocksDB).
    pub fn estimated_killmails(&self) -> u64 {
        self.db
            .property_int_value_cf(self.cf(CF_KILLMAILS), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Bytes on disk (SST files) plus memtables, over all column families.
    pub fn size_bytes(&self) -> u64 {
        [CF_KILLMAILS, CF_STATS, CF_DEAD_LETTERS, CF_OFFSETS, CF_META]
            .iter()
            .map(|cf| {
                let cf = self.cf(cf);
                let p = |name: &str| {
                    self.db
                        .property_int_value_cf(cf, name)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                };
                p("rocksdb.total-sst-files-size") + p("rocksdb.cur-size-all-mem-tables")
            })
            .sum()
    }
}

impl KillmailStore for RocksState {
    fn multi_get(&self, ids: &[u64]) -> Result<Vec<Option<StoredKillmail>>, StoreError> {
        let cf = self.cf(CF_KILLMAILS);
        let keys: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        self.db
            .multi_get_cf(keys.iter().map(|k| (cf, &k[..])))
            .into_iter()
            .map(|r| match r {
                Ok(Some(v)) => bincode::deserialize(&v)
                    .map(Some)
                    .map_err(|e| StoreError(e.to_string())),
                Ok(None) => Ok(None),
                Err(e) => Err(StoreError(format!("{}: {e}", self.path.display()))),
            })
            .collect()
    }

    fn committed_epoch(&self) -> Option<u64> {
        match self.committed_epoch.load(Ordering::Acquire) {
            NO_EPOCH => None,
            e => Some(e),
        }
    }
}

fn position_key(topic: &str, partition: i32, offset: Option<i64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 13);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    if let Some(o) = offset {
        k.extend_from_slice(&o.to_be_bytes());
    }
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

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
