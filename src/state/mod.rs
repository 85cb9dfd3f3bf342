//! The durable state: RocksDB column families written only by the checkpointer, one atomic,
//! synced `WriteBatch` per checkpoint, and read by the upsert operator and the HTTP API.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `killmails` | killmail id (u64 BE) | bincode [`StoredKillmail`]: the upsert state |
//! | `stats` | [`StatKey::to_bytes`]: entity, then dimension (all time, a member's all time) | compact [`Stats`] (`codec::encode_stats_into`; varint bincode up to format 5, still read) |
//! | `stats` | [`StatKey::breakdowns_key`]: entity, then [`tag::BREAKDOWNS`] | the entity's month, group, ship, system and hour buckets ([`breakdowns`]) |
//! | `stats` | [`StatKey::member_days_key`]: corporation, [`tag::MEMBER_DAYS`], day | the corporation's members' buckets of that day ([`breakdowns`]) |
//! | `days` | [`StatKey::day_major_bytes`]: day, then entity | compact [`Stats`]: the day buckets windows slide over |
//! | `ranks` | [`RankKey::to_bytes`]: kind, window, metric, value descending, id | empty: the leaderboards |
//! | `dead_letters` | epoch (u64 BE), index in the checkpoint (u32 BE): oldest first | JSON [`DeadLetterRecord`] |
//! | `offsets` | topic, 0, partition (i32 BE) | next offset to read (i64 BE) |
//! | `meta` | `commit` | JSON [`CheckpointMeta`]: epoch, time and offsets of the last checkpoint |
//!
//! Durability: the WAL is on and every commit is written with `sync = true`, so a commit that
//! returned survives a crash or power loss; a commit interrupted by a crash is absent as a whole.

mod batch;
mod breakdowns;
mod checkpoint;
pub use batch::Batch;
pub use checkpoint::PreparedCheckpoint;
mod codec;
mod dump;
pub use dump::Table;
mod query;
mod ranks;
pub use ranks::{Board, RankBoards, LEADERBOARD_DEPTH};

pub use codec::{decode_stats, encode_stats};
use codec::{merge_stats, merge_stats_table};
use query::WindowBoards;
pub use query::{
    AsOf, DeadLetterFilter, EntityView, RankedEntry, ViewParts, DEAD_LETTER_SCAN,
    WINDOW_RANKING_DEPTH,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use kmflow_dataflows::aggregate::{
    rank_windows, window_rank_entries, windows_from_days, StreamClock,
};
use kmflow_dataflows::checkpoint::CheckpointBatch;
use kmflow_dataflows::keys::{tag, Dim, Metric, RankKey, StatKey, WINDOW_DAYS};
use kmflow_dataflows::model::DeadLetter;
use kmflow_dataflows::store::{StateStore, StoreError, NO_EPOCH};
use kmflow_dataflows::{EntityKey, EntityKind, Stats, StoredKillmail};
use rustc_hash::FxHashMap;

const CF_KILLMAILS: &str = "killmails";
const CF_STATS: &str = "stats";
const CF_DAYS: &str = "days";
const CF_RANKS: &str = "ranks";
const CF_DEAD_LETTERS: &str = "dead_letters";
const CF_OFFSETS: &str = "offsets";
const CF_META: &str = "meta";
const META_CHECKPOINT: &[u8] = b"commit";
const ALL_CFS: [&str; 7] = [
    CF_KILLMAILS,
    CF_STATS,
    CF_DAYS,
    CF_RANKS,
    CF_DEAD_LETTERS,
    CF_OFFSETS,
    CF_META,
];

/// The layout of the stored state this build reads and writes. A state written in another
/// layout is refused at open (replay it into a fresh directory) rather than misread.
/// 2: version keys in the upsert state (R2Z2 sequence) and dead letters keyed by epoch.
/// 3: an entity's breakdowns (months included) in one row.
/// 4: a corporation's member-day buckets of one day in one row.
/// 5: the all-time leaderboards index the top of each board only (floors, see `ranks`).
/// 6: statistics in the compact encoding (`codec::encode_stats_into`).
pub const STATE_FORMAT: u32 = 6;

/// The formats this build opens, upgraded in place at open: a format-4 state's complete
/// leaderboard index is rebuilt to the floors; a format-5 state's values are read in either
/// encoding as they are (merges rewrite them compact), so only its format changes. An older
/// build refuses format 6, whose values or index it would misread.
const READS_FORMATS: [u32; 3] = [4, 5, STATE_FORMAT];

/// The first format whose leaderboard index has floors.
const FLOORS_SINCE: u32 = 5;

/// What the last checkpoint covered; served as `as_of`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub epoch: u64,
    /// Unix milliseconds.
    pub committed_at: u64,
    /// topic → partition → next offset to read.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// topic → partition → fingerprint of the message before the next offset (0: unknown).
    #[serde(default)]
    pub fingerprints: BTreeMap<String, BTreeMap<i32, u64>>,
    /// The stream clock the windows end at.
    #[serde(default)]
    pub clock: StreamClock,
    /// The dead letters stored, and how many the retention dropped.
    #[serde(default)]
    pub dead_letters: DeadLetterTotals,
    /// [`STATE_FORMAT`] of the build that wrote it (absent: 1).
    #[serde(default = "format_one")]
    pub format: u32,
    /// In a cluster: which process of how many wrote it (absent: one process alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterPlace>,
    /// The all-time leaderboards' floors and counts after this checkpoint (absent: written
    /// before floors; the index is rebuilt at open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<RankBoards>,
}

/// A process's place in its cluster, stored with each checkpoint: a state is only ever opened
/// by the same place (`kmflow rescale` moves it to another shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlace {
    pub processes: usize,
    pub process: usize,
}

fn format_one() -> u32 {
    1
}

/// Dead letters stored (count, bytes of their records) and dropped by the retention, ever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterTotals {
    pub count: u64,
    pub bytes: u64,
    pub dropped: u64,
}

/// The dead-letter retention: the oldest are dropped past either limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetterLimits {
    pub count: u64,
    pub bytes: u64,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits {
            count: 100_000,
            bytes: 256 * 1024 * 1024,
        }
    }
}

/// A dead letter as stored, with its topic's name.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[error("the state in {path} has format {found}; this kmflow reads formats 4 to {STATE_FORMAT}: replay the history into a new state directory")]
    Format { path: PathBuf, found: u32 },
}

/// The RocksDB-backed state. Cheap to share behind an `Arc`.
pub struct RocksState {
    db: DB,
    path: PathBuf,
    committed_epoch: AtomicU64,
    /// The last commit's metadata, cached for the API (updated after each write).
    meta: RwLock<Option<CheckpointMeta>>,
    /// The dead-letter retention (set from the configuration after open).
    dead_letter_limits: RwLock<DeadLetterLimits>,
    /// Window leaderboards by (kind, window, metric): the epoch they were ranked at.
    window_boards: parking_lot::Mutex<WindowBoards>,
    /// The entries every all-time board holds at least ([`LEADERBOARD_DEPTH`]; see `ranks`).
    leaderboard_depth: AtomicUsize,
    /// The id of each column family of [`ALL_CFS`], in its order, for [`batch::Batch`].
    cf_ids: [batch::Cf; ALL_CFS.len()],
    /// The last checkpoint's batch buffer, kept for the next (see `prepare_checkpoint`).
    spare_batch: parking_lot::Mutex<Vec<u8>>,
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
        // Partitioned filters and indexes: a lookup reads one small filter partition rather
        // than the whole filter of a file (megabytes for a 64 MiB file). With whole filters, a
        // state past a million killmails evicted them from the block cache and every upsert
        // `multi_get` read them back and checksummed them: a quarter of the CPU, and the rate
        // fell to 1,340/s at 725k killmails of a 10M replay. The top levels stay pinned.
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let cf = |name: &str| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            // Flushes and the first compactions write uncompressed: most of what they write is
            // merged again soon, and LZ4 there was 5% of a 1M replay's CPU. Deeper levels, which
            // hold most of the data, are compressed.
            o.set_compression_per_level(&[
                rocksdb::DBCompressionType::None,
                rocksdb::DBCompressionType::None,
                rocksdb::DBCompressionType::Lz4,
                rocksdb::DBCompressionType::Lz4,
                rocksdb::DBCompressionType::Lz4,
                rocksdb::DBCompressionType::Lz4,
                rocksdb::DBCompressionType::Lz4,
            ]);
            if name == CF_STATS {
                // A Bloom filter of the memtable's keys, for the checkpoint's reads of all-time
                // rows that are not there (an entity's first killmail since the last flush):
                // without it each was a search of the memtable's skiplist. Small (0.5% of the
                // memtable, a few hundred KiB, which stays in the CPU's cache): larger ones
                // cost more on every write than they saved on the reads (the largest
                // killmail's commit +4 ms at 2%, +8 ms at 10%, for -3 ms in its plan).
                o.set_memtable_whole_key_filtering(true);
                o.set_memtable_prefix_bloom_ratio(0.005);
                o.set_merge_operator_associative("kmflow_stats_table_add", merge_stats_table);
            }
            if name == CF_DAYS {
                o.set_merge_operator_associative("kmflow_stats_add", merge_stats);
            }
            ColumnFamilyDescriptor::new(name, o)
        };
        let cfs = ALL_CFS.map(cf);
        let db =
            DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| StateError::RocksDb {
                path: dir.to_path_buf(),
                source,
            })?;
        let mut cf_ids = [batch::Cf::default(); ALL_CFS.len()];
        for (id, name) in cf_ids.iter_mut().zip(ALL_CFS) {
            let cf = db
                .cf_handle(name)
                .expect("column families are created at open");
            *id = batch::Cf::of(cf).ok_or_else(|| {
                StateError::Corrupt(format!("no column family id for {name} in a batch"))
            })?;
        }
        let state = RocksState {
            cf_ids,
            spare_batch: Default::default(),
            db,
            path: dir.to_path_buf(),
            committed_epoch: AtomicU64::new(NO_EPOCH),
            meta: RwLock::new(None),
            dead_letter_limits: RwLock::new(DeadLetterLimits::default()),
            window_boards: Default::default(),
            leaderboard_depth: AtomicUsize::new(LEADERBOARD_DEPTH),
        };
        let mut meta = state.read_meta()?;
        if let Some(m) = meta.as_ref().filter(|m| !READS_FORMATS.contains(&m.format)) {
            return Err(StateError::Format {
                path: dir.to_path_buf(),
                found: m.format,
            });
        }
        if let Some(m) = meta.as_mut() {
            state.upgrade(m)?;
        }
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

    /// The id of column family `name`, for writes in a [`batch::Batch`].
    fn cf_id(&self, name: &str) -> batch::Cf {
        let at = ALL_CFS.iter().position(|&n| n == name);
        self.cf_ids[at.expect("a column family of ALL_CFS")]
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn read_meta(&self) -> Result<Option<CheckpointMeta>, StateError> {
        match self
            .db
            .get_cf(self.cf(CF_META), META_CHECKPOINT)
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(codec_err),
        }
    }

    /// Sets the dead-letter retention applied from the next checkpoint on.
    pub fn set_dead_letter_limits(&self, limits: DeadLetterLimits) {
        *self.dead_letter_limits.write() = limits;
    }

    /// Flushes memtables to SST files, so the next open replays no WAL (called on clean stop).
    pub fn flush(&self) -> Result<(), StateError> {
        for cf in ALL_CFS {
            self.db.flush_cf(self.cf(cf)).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The last commit, if any.
    pub fn checkpoint_meta(&self) -> Option<CheckpointMeta> {
        self.meta.read().clone()
    }

    /// The next offset to read for each (topic, partition) stored.
    pub fn offsets(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        self.checkpoint_meta()
            .map(|m| m.offsets)
            .unwrap_or_default()
    }

    /// The number of killmails in the upsert state (estimated by RocksDB).
    pub fn estimated_killmails(&self) -> u64 {
        self.db
            .property_int_value_cf(self.cf(CF_KILLMAILS), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// RocksDB's memory by part, for `/metrics`: the block cache (shared by every column family,
    /// bounded by `state.block-cache-mb`), its pinned part, and the memtables and table readers
    /// of all column families.
    pub fn memory_bytes(&self) -> [(&'static str, u64); 4] {
        let p = |cf: &str, name: &str| {
            self.db
                .property_int_value_cf(self.cf(cf), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let sum = |name: &str| ALL_CFS.iter().map(|cf| p(cf, name)).sum::<u64>();
        [
            ("block_cache", p(CF_STATS, "rocksdb.block-cache-usage")),
            ("pinned", p(CF_STATS, "rocksdb.block-cache-pinned-usage")),
            ("memtables", sum("rocksdb.cur-size-all-mem-tables")),
            ("table_readers", sum("rocksdb.estimate-table-readers-mem")),
        ]
    }

    /// Bytes on disk (SST files) plus memtables, over all column families.
    pub fn size_bytes(&self) -> u64 {
        ALL_CFS
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

impl StateStore for RocksState {
    fn present_stats(&self, keys: &[StatKey]) -> Result<Vec<(u32, Stats)>, StoreError> {
        let mut out = Vec::new();
        RocksState::read_stats(self, &self.db.snapshot(), keys, |i, v| {
            out.push((i as u32, v))
        })
        .map_err(|e| StoreError(e.to_string()))?;
        // In the order asked (`read_stats` goes table by table).
        if !out.is_sorted_by_key(|&(i, _)| i) {
            out.sort_unstable_by_key(|&(i, _)| i);
        }
        Ok(out)
    }

    fn multi_get(&self, ids: &[u64]) -> Result<Vec<Option<StoredKillmail>>, StoreError> {
        let keys: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let snap = self.db.snapshot();
        self.batched_get(&snap, self.cf(CF_KILLMAILS), keys.iter().map(|k| &k[..]))
            .into_iter()
            .map(|r| match r {
                Ok(Some(v)) => bincode::deserialize(&v)
                    .map(Some)
                    .map_err(|e| StoreError(e.to_string())),
                Ok(None) => Ok(None),
                Err(e) => Err(StoreError(e.to_string())),
            })
            .collect()
    }

    fn get_stats(&self, keys: &[StatKey]) -> Result<Vec<Option<Stats>>, StoreError> {
        RocksState::get_stats(self, &self.db.snapshot(), keys)
            .map_err(|e| StoreError(e.to_string()))
    }

    fn committed_epoch(&self) -> Option<u64> {
        match self.committed_epoch.load(Ordering::Acquire) {
            NO_EPOCH => None,
            e => Some(e),
        }
    }

    fn rank_floors(&self) -> kmflow_dataflows::keys::RankFloors {
        self.rank_boards().floors()
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
