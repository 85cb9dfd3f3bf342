//! The durable state: RocksDB column families written only by the committer, one atomic,
//! synced `WriteBatch` per commit, and read by the upsert operator and the HTTP API.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `killmails` | killmail id (u64 BE) | bincode [`StoredKillmail`]: the upsert state |
//! | `stats` | [`StatKey::to_bytes`]: entity, then dimension (all time, month, window, breakdowns, roster) | varint bincode [`Stats`] |
//! | `days` | [`StatKey::day_major_bytes`]: day, then entity | varint bincode [`Stats`]: the day buckets windows slide over |
//! | `ranks` | [`RankKey::to_bytes`]: kind, window, metric, value descending, id | empty: the leaderboards |
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

use kmflow_dataflows::aggregate::{
    rank_windows, window_rank_entries, windows_from_days, StreamClock, Write,
};
use kmflow_dataflows::commit::EpochBatch;
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
const META_COMMIT: &[u8] = b"commit";
const ALL_CFS: [&str; 7] = [
    CF_KILLMAILS,
    CF_STATS,
    CF_DAYS,
    CF_RANKS,
    CF_DEAD_LETTERS,
    CF_OFFSETS,
    CF_META,
];

/// Stats are stored with varint integers: most fields of most keys are small or zero.
fn stats_codec() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_varint_encoding()
}

pub fn encode_stats(s: &Stats) -> Vec<u8> {
    use bincode::Options;
    stats_codec().serialize(s).expect("stats serialize")
}

/// [`encode_stats`] into a reused buffer (the commit path).
fn encode_stats_into(s: &Stats, buf: &mut Vec<u8>) {
    use bincode::Options;
    buf.clear();
    stats_codec()
        .serialize_into(&mut *buf, s)
        .expect("stats serialize");
}

pub fn decode_stats(b: &[u8]) -> Result<Stats, StateError> {
    use bincode::Options;
    stats_codec().deserialize(b).map_err(codec_err)
}

/// The RocksDB merge operator of the statistics column families: a merge operand is a delta,
/// and merging adds it ([`Stats::merge`]). Statistics no leaderboard depends on are written as
/// merges, without reading them first. `None` (a corrupt operand) makes RocksDB report
/// corruption rather than guess.
fn merge_stats(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut acc = match existing {
        Some(v) => decode_stats(v).ok()?,
        None => Stats::default(),
    };
    for op in operands {
        acc.merge(&decode_stats(op).ok()?);
    }
    Some(encode_stats(&acc))
}

/// A stored statistic; a merge can leave an all-zero value behind, which reads as absent.
fn stored_stats(b: &[u8]) -> Result<Option<Stats>, StateError> {
    decode_stats(b).map(|s| (!s.is_empty()).then_some(s))
}

/// A stored key and value.
type KvPair = (Box<[u8]>, Box<[u8]>);

/// A leaderboard entry with the entity's statistics in the leaderboard's window.
pub type RankedEntry = (RankKey, Option<Stats>);

/// An answer and the commit it reflects (read from one snapshot).
pub type AsOf<T> = (T, Option<CommitMeta>);

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
    /// The stream clock the windows end at.
    #[serde(default)]
    pub clock: StreamClock,
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
    /// Window leaderboards by (kind, window, metric): the epoch they were ranked at.
    window_boards: parking_lot::Mutex<WindowBoards>,
}

/// How many entries of a window leaderboard are kept between commits (the API's largest limit).
pub const WINDOW_RANKING_DEPTH: usize = 1000;

type WindowBoards = std::collections::HashMap<
    (EntityKind, u8, Metric),
    (u64, Option<CommitMeta>, Vec<RankedEntry>),
>;

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
            if name == CF_STATS || name == CF_DAYS {
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
        let state = RocksState {
            db,
            path: dir.to_path_buf(),
            committed_epoch: AtomicU64::new(NO_EPOCH),
            meta: RwLock::new(None),
            window_boards: Default::default(),
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
        for cf in ALL_CFS {
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

    /// Writes one batch atomically with the new offsets and fingerprints, moving the stream
    /// clock to what `wall` (Unix seconds) and the batch's killmails allow; returns what it
    /// committed.
    pub fn commit<M>(
        &self,
        batch: &EpochBatch<M>,
        topics: &[String],
        offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
        fingerprints: &BTreeMap<String, BTreeMap<i32, u64>>,
        wall: i64,
    ) -> Result<CommitMeta, StateError> {
        let mut wb = WriteBatch::default();
        let before = self.commit_meta().map(|m| m.clock).unwrap_or_default();
        let clock = before.advance(batch.max_time, wall);
        let t0 = std::time::Instant::now();
        let n_writes = batch.writes.len();
        let (stats_cf, days_cf, ranks_cf) =
            (self.cf(CF_STATS), self.cf(CF_DAYS), self.cf(CF_RANKS));
        let mut buf = Vec::with_capacity(64);
        for w in &batch.writes {
            match *w {
                Write::Put(k, v) => {
                    encode_stats_into(&v, &mut buf);
                    match k.day_major_bytes() {
                        Some(dk) => wb.put_cf(days_cf, dk, &buf),
                        None => wb.put_cf(stats_cf, k.to_bytes(), &buf),
                    }
                }
                Write::Merge(k, d) => {
                    encode_stats_into(&d, &mut buf);
                    match k.day_major_bytes() {
                        Some(dk) => wb.merge_cf(days_cf, dk, &buf),
                        None => wb.merge_cf(stats_cf, k.to_bytes(), &buf),
                    }
                }
                Write::Delete(k) => match k.day_major_bytes() {
                    Some(dk) => wb.delete_cf(days_cf, dk),
                    None => wb.delete_cf(stats_cf, k.to_bytes()),
                },
                Write::RankPut(r) => wb.put_cf(ranks_cf, r.to_bytes(), []),
                Write::RankDelete(r) => wb.delete_cf(ranks_cf, r.to_bytes()),
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
            clock,
        };
        wb.put_cf(
            self.cf(CF_META),
            META_COMMIT,
            serde_json::to_vec(&meta).map_err(codec_err)?,
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let built = t0.elapsed();
        self.db.write_opt(wb, &wo).map_err(|e| self.err(e))?;
        tracing::debug!(
            writes = n_writes,
            upserts = batch.upserts.len(),
            batch_ms = built.as_millis() as u64,
            write_ms = (t0.elapsed() - built).as_millis() as u64,
            "commit"
        );
        *self.meta.write() = Some(meta.clone());
        self.committed_epoch
            .store(batch.last_epoch, Ordering::Release);
        Ok(meta)
    }

    /// All-time statistics of `keys` and the commit they reflect, all read from one snapshot.
    pub fn stats_many(
        &self,
        keys: &[EntityKey],
    ) -> Result<(Vec<Option<Stats>>, Option<CommitMeta>), StateError> {
        let snap = self.db.snapshot();
        let keys: Vec<StatKey> = keys.iter().map(|k| StatKey::all(*k)).collect();
        let out = self.get_stats(&snap, &keys)?;
        Ok((out, self.meta_at(&snap)?))
    }

    /// The stored value of each key (day buckets from `days`, the rest from `stats`).
    fn get_stats(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        keys: &[StatKey],
    ) -> Result<Vec<Option<Stats>>, StateError> {
        let (stats_cf, days_cf) = (self.cf(CF_STATS), self.cf(CF_DAYS));
        let bytes: Vec<(&rocksdb::ColumnFamily, Vec<u8>)> = keys
            .iter()
            .map(|k| match k.day_major_bytes() {
                Some(b) => (days_cf, b),
                None => (stats_cf, k.to_bytes()),
            })
            .collect();
        let got = snap.multi_get_cf(bytes.iter().map(|(cf, b)| (*cf, &b[..])));
        got.into_iter()
            .map(|g| match g.map_err(|e| self.err(e))? {
                Some(v) => stored_stats(&v),
                None => Ok(None),
            })
            .collect()
    }

    fn meta_at(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
    ) -> Result<Option<CommitMeta>, StateError> {
        match snap
            .get_cf(self.cf(CF_META), META_COMMIT)
            .map_err(|e| self.err(e))?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(codec_err)?)),
            None => Ok(None),
        }
    }

    /// Every `(key, value)` of `cf` whose key starts with `prefix`, in key order, at most `limit`.
    fn scan(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        cf: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KvPair>, StateError> {
        let mut out = Vec::new();
        let iter = snap.iterator_cf(
            self.cf(cf),
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k, v));
        }
        Ok(out)
    }

    /// Everything the API shows of one entity, from one snapshot. `None` when it has no
    /// statistics.
    pub fn entity_view(
        &self,
        entity: EntityKey,
        parts: &ViewParts,
    ) -> Result<(Option<EntityView>, Option<CommitMeta>), StateError> {
        let snap = self.db.snapshot();
        let meta = self.meta_at(&snap)?;
        let Some(all) = self
            .get_stats(&snap, &[StatKey::all(entity)])?
            .pop()
            .flatten()
        else {
            return Ok((None, meta));
        };
        let mut view = EntityView {
            all,
            ..Default::default()
        };
        let dims = |t: u8| -> Result<Vec<(Dim, Stats)>, StateError> {
            let mut out = Vec::new();
            for (k, v) in self.scan(&snap, CF_STATS, &StatKey::prefix(entity, t), usize::MAX)? {
                let key = StatKey::from_bytes(&k).ok_or_else(|| codec_err("bad stats key"))?;
                if let Some(s) = stored_stats(&v)? {
                    out.push((key.dim, s));
                }
            }
            Ok(out)
        };
        if let (true, Some(clock)) = (parts.windows, meta.as_ref().and_then(|m| m.clock.day())) {
            // At most 90 day buckets, read in one multi_get.
            let days: Vec<StatKey> = (clock - WINDOW_DAYS[WINDOW_DAYS.len() - 1] + 1..=clock)
                .map(|d| StatKey::new(entity, Dim::Day(d)))
                .collect();
            let buckets = self.get_stats(&snap, &days)?;
            let present = days
                .into_iter()
                .zip(buckets)
                .filter_map(|(k, v)| v.map(|v| (k, v)));
            for (key, v) in windows_from_days(clock, present) {
                if let Dim::Window(w) = key.dim {
                    if let Some(slot) = view.windows.get_mut(w as usize) {
                        *slot = Some(v);
                    }
                }
            }
        }
        let buckets = |wanted: bool, t: u8| -> Result<Vec<(u32, Stats)>, StateError> {
            if !wanted {
                return Ok(Vec::new());
            }
            Ok(dims(t)?
                .into_iter()
                .filter_map(|(d, s)| d.bucket().map(|b| (b, s)))
                .collect())
        };
        view.months = buckets(parts.months, tag::MONTH)?;
        view.groups = buckets(parts.groups, tag::GROUP)?;
        view.ships = buckets(parts.ships, tag::SHIP)?;
        view.systems = buckets(parts.systems, tag::SYSTEM)?;
        view.hours = buckets(parts.activity, tag::HOUR)?;
        Ok((Some(view), meta))
    }

    /// The members of corporation `corp` and their statistics under it: all time (`window`
    /// `None`), or in a window (an index into `WINDOW_DAYS`), summed from the members' day
    /// buckets of the window's days at the committed clock. One snapshot.
    pub fn members(
        &self,
        corp: u64,
        window: Option<u8>,
    ) -> Result<AsOf<Vec<(u64, Stats)>>, StateError> {
        let snap = self.db.snapshot();
        let meta = self.meta_at(&snap)?;
        let entity = EntityKey::new(EntityKind::Corporation, corp);
        let bad = || codec_err("bad member key");
        let Some(w) = window else {
            let mut out = Vec::new();
            for (k, v) in self.scan(
                &snap,
                CF_STATS,
                &StatKey::prefix(entity, tag::MEMBER),
                usize::MAX,
            )? {
                match StatKey::from_bytes(&k).map(|k| k.dim) {
                    Some(Dim::Member(c)) => out.extend(stored_stats(&v)?.map(|s| (c, s))),
                    _ => return Err(bad()),
                }
            }
            return Ok((out, meta));
        };
        let Some(clock) = meta.as_ref().and_then(|m| m.clock.day()) else {
            return Ok((Vec::new(), meta));
        };
        let from = clock - WINDOW_DAYS[w as usize] + 1;
        let start = StatKey::member_day_prefix(entity, from);
        let end = StatKey::member_day_prefix(entity, clock + 1);
        let mut sums: BTreeMap<u64, Stats> = BTreeMap::new();
        let iter = snap.iterator_cf(
            self.cf(CF_STATS),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k[..] >= end[..] {
                break;
            }
            match StatKey::from_bytes(&k).map(|k| k.dim) {
                Some(Dim::MemberDay(_, c)) => sums.entry(c).or_default().merge(&decode_stats(&v)?),
                _ => return Err(bad()),
            }
        }
        sums.retain(|_, s| !s.is_empty());
        Ok((sums.into_iter().collect(), meta))
    }

    /// The first `limit` entries of a leaderboard (`window` 0 for all time, 1 + index
    /// otherwise), each with the entity's statistics in that window, from one snapshot.
    ///
    /// All time reads the leaderboard index the shards maintain. A window is ranked from
    /// scratch over the day buckets it covers (see [`RocksState::window_ranking`]).
    pub fn leaderboard(
        &self,
        kind: EntityKind,
        window: u8,
        metric: Metric,
        limit: usize,
    ) -> Result<AsOf<Vec<RankedEntry>>, StateError> {
        if window > 0 {
            return self.window_ranking(kind, window, metric, limit);
        }
        let snap = self.db.snapshot();
        let prefix = RankKey::prefix(kind, window, metric);
        let ranks: Vec<RankKey> = self
            .scan(&snap, CF_RANKS, &prefix, limit)?
            .into_iter()
            .map(|(k, _)| RankKey::from_bytes(&k).ok_or_else(|| codec_err("bad rank key")))
            .collect::<Result<_, _>>()?;
        let keys: Vec<StatKey> = ranks
            .iter()
            .map(|r| StatKey::all(EntityKey::new(kind, r.id)))
            .collect();
        let stats = self.get_stats(&snap, &keys)?;
        Ok((ranks.into_iter().zip(stats).collect(), self.meta_at(&snap)?))
    }

    /// A window leaderboard, ranked from scratch over the day buckets of the window's days of
    /// entities of `kind`, from one snapshot: its cost is proportional to the entities active
    /// in the window, so the ranking (up to [`WINDOW_RANKING_DEPTH`]) is kept per committed
    /// epoch and reused until the next commit; concurrent requests wait for one computation.
    fn window_ranking(
        &self,
        kind: EntityKind,
        window: u8,
        metric: Metric,
        limit: usize,
    ) -> Result<AsOf<Vec<RankedEntry>>, StateError> {
        let mut cache = self.window_boards.lock();
        let epoch = self.committed_epoch.load(Ordering::Acquire);
        if let Some((e, meta, ranked)) = cache.get(&(kind, window, metric)) {
            if *e == epoch && limit <= WINDOW_RANKING_DEPTH {
                let top = ranked.iter().take(limit).cloned().collect();
                return Ok((top, meta.clone()));
            }
        }
        let snap = self.db.snapshot();
        let meta = self.meta_at(&snap)?;
        let Some(clock) = meta.as_ref().and_then(|m| m.clock.day()) else {
            return Ok((Vec::new(), meta));
        };
        let n = WINDOW_DAYS[(window - 1) as usize];
        let mut sums: FxHashMap<StatKey, Stats> = FxHashMap::default();
        for day in clock - n + 1..=clock {
            let mut prefix = StatKey::day_prefix(day).to_vec();
            prefix.push(kind as u8);
            for item in snap.iterator_cf(
                self.cf(CF_DAYS),
                IteratorMode::From(&prefix, rocksdb::Direction::Forward),
            ) {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let key =
                    StatKey::from_day_major_bytes(&k).ok_or_else(|| codec_err("bad day key"))?;
                sums.entry(key).or_default().merge(&decode_stats(&v)?);
            }
        }
        let windows = windows_from_days(clock, sums);
        let depth = limit.max(WINDOW_RANKING_DEPTH);
        let ranked: Vec<RankedEntry> = rank_windows(&windows, window, metric, depth)
            .into_iter()
            .map(|(r, s)| (r, Some(s)))
            .collect();
        let top = ranked.iter().take(limit).cloned().collect();
        cache.insert((kind, window, metric), (epoch, meta.clone(), ranked));
        Ok((top, meta))
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

    /// Every entity's all-time statistics (for tests and exports; scans the column family).
    pub fn all_stats(&self) -> Result<BTreeMap<EntityKey, Stats>, StateError> {
        Ok(self
            .all_stat_keys()?
            .into_iter()
            .filter(|(k, _)| k.dim == Dim::All)
            .map(|(k, v)| (k.entity, v))
            .collect())
    }

    /// Every statistic as served: the stored ones (day buckets included) and the windows at
    /// the committed clock (for tests; scans two column families).
    pub fn all_stat_keys(&self) -> Result<BTreeMap<StatKey, Stats>, StateError> {
        let mut out = self.stored_stat_keys()?;
        if let Some(clock) = self.commit_meta().and_then(|m| m.clock.day()) {
            let days: Vec<(StatKey, Stats)> = out
                .iter()
                .filter(|(k, _)| matches!(k.dim, Dim::Day(_)))
                .map(|(k, v)| (*k, *v))
                .collect();
            out.extend(windows_from_days(clock, days));
        }
        Ok(out)
    }

    /// Every stored statistic, day buckets included.
    fn stored_stat_keys(&self) -> Result<BTreeMap<StatKey, Stats>, StateError> {
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf(self.cf(CF_STATS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = StatKey::from_bytes(&k).ok_or_else(|| codec_err("bad stats key"))?;
            if let Some(s) = stored_stats(&v)? {
                out.insert(key, s);
            }
        }
        for item in self.db.iterator_cf(self.cf(CF_DAYS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = StatKey::from_day_major_bytes(&k).ok_or_else(|| codec_err("bad day key"))?;
            if let Some(s) = stored_stats(&v)? {
                out.insert(key, s);
            }
        }
        Ok(out)
    }

    /// Every leaderboard entry: the all-time index and the windows ranked from scratch (for
    /// tests).
    pub fn all_ranks(&self) -> Result<std::collections::BTreeSet<RankKey>, StateError> {
        let all = self.all_stat_keys()?;
        let windows: BTreeMap<StatKey, Stats> = all
            .into_iter()
            .filter(|(k, _)| matches!(k.dim, Dim::Window(_)))
            .collect();
        let mut out: std::collections::BTreeSet<RankKey> =
            window_rank_entries(&windows).into_iter().collect();
        for item in self.db.iterator_cf(self.cf(CF_RANKS), IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            out.insert(RankKey::from_bytes(&k).ok_or_else(|| codec_err("bad rank key"))?);
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

/// Which parts of an entity [`RocksState::entity_view`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewParts {
    pub windows: bool,
    pub months: bool,
    pub groups: bool,
    pub ships: bool,
    pub systems: bool,
    pub activity: bool,
}

/// One entity's statistics as the API shows them.
#[derive(Clone, Debug, Default)]
pub struct EntityView {
    pub all: Stats,
    /// By window index (7d, 30d, 90d); `None` when empty.
    pub windows: [Option<Stats>; 3],
    pub months: Vec<(u32, Stats)>,
    pub groups: Vec<(u32, Stats)>,
    pub ships: Vec<(u32, Stats)>,
    pub systems: Vec<(u32, Stats)>,
    /// Heatmap cells (day of week × 24 + hour).
    pub hours: Vec<(u32, Stats)>,
}

impl StateStore for RocksState {
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
