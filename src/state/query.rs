//! The read models the API serves, each answered from one RocksDB snapshot.

use super::*;

use super::breakdowns::Packed;
use super::codec::*;
use kmflow_dataflows::keys::{KeyBytes, StatTable};

/// A stored key and value.
type KvPair = (Box<[u8]>, Box<[u8]>);

/// A leaderboard entry with the entity's statistics in the leaderboard's window.
pub type RankedEntry = (RankKey, Option<Stats>);

/// An answer and the commit it reflects (read from one snapshot).
pub type AsOf<T> = (T, Option<CheckpointMeta>);

/// How many entries of a window leaderboard are kept between commits (the API's largest limit).
pub const WINDOW_RANKING_DEPTH: usize = 1000;

/// The most keys of one `MultiGet` call (see [`RocksState::batched_get`]).
const MULTI_GET_CHUNK: usize = 1024;

pub(super) type WindowBoards = std::collections::HashMap<
    (EntityKind, u8, Metric),
    (u64, Option<CheckpointMeta>, Vec<RankedEntry>),
>;

/// The first key after every key that starts with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Read options for an iterator that stops before `end`: RocksDB never reaches (nor merges)
/// the row after a range, such as an entity's breakdowns row after its roster rows.
fn read_before(end: Option<Vec<u8>>) -> rocksdb::ReadOptions {
    let mut o = rocksdb::ReadOptions::default();
    if let Some(end) = end {
        o.set_iterate_upper_bound(end);
    }
    o
}

impl RocksState {
    /// Every key and value of `cf` that starts with `prefix`, in key order, from the latest
    /// state (RocksDB stops at the prefix's end).
    pub(super) fn prefixed<'a>(
        &'a self,
        cf: &str,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<KvPair, StateError>> + 'a {
        self.db
            .iterator_cf_opt(
                self.cf(cf),
                read_before(prefix_end(prefix)),
                IteratorMode::From(prefix, rocksdb::Direction::Forward),
            )
            .map(|item| item.map_err(|e| self.err(e)))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
    }

    /// All-time statistics of `keys` and the commit they reflect, all read from one snapshot.
    pub fn stats_many(
        &self,
        keys: &[EntityKey],
    ) -> Result<(Vec<Option<Stats>>, Option<CheckpointMeta>), StateError> {
        let snap = self.db.snapshot();
        let keys: Vec<StatKey> = keys.iter().map(|k| StatKey::all(*k)).collect();
        let out = self.get_stats(&snap, &keys)?;
        Ok((out, self.meta_at(&snap)?))
    }

    /// The stored value of each key (day buckets from `days`, breakdown buckets from their
    /// entity's breakdowns row, the rest from `stats`).
    pub(super) fn get_stats(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        keys: &[StatKey],
    ) -> Result<Vec<Option<Stats>>, StateError> {
        let mut out: Vec<Option<Stats>> = vec![None; keys.len()];
        self.read_stats(snap, keys, |i, v| out[i] = Some(v))?;
        Ok(out)
    }

    /// Hands `found` the position and stored value of each of `keys` that has one, table by
    /// table (`stats`, then `days`), each table's in the order asked.
    pub(super) fn read_stats(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        keys: &[StatKey],
        mut found: impl FnMut(usize, Stats),
    ) -> Result<(), StateError> {
        // Each key's table and stored key (a breakdown bucket is found in its entity's
        // breakdowns row), then one batched read per table.
        let stored: Vec<(bool, KeyBytes)> = keys
            .iter()
            .map(|&k| match (Packed::of(k), k.stored()) {
                (Some(p), _) => (false, p.key()),
                (None, (table, b)) => (table == StatTable::Days, b),
            })
            .collect();
        for (days, cf) in [(false, CF_STATS), (true, CF_DAYS)] {
            let at: Vec<usize> = (0..keys.len()).filter(|&i| stored[i].0 == days).collect();
            if at.is_empty() {
                continue;
            }
            let got = self.batched_get(snap, self.cf(cf), at.iter().map(|&i| &stored[i].1[..]));
            for (i, g) in at.into_iter().zip(got) {
                let value = match (g?, Packed::of(keys[i])) {
                    (Some(v), Some(_)) => Packed::find(&v, keys[i].dim)?,
                    (Some(v), None) => stored_stats(&v)?,
                    (None, _) => None,
                };
                if let Some(v) = value {
                    found(i, v);
                }
            }
        }
        Ok(())
    }

    /// The values of `keys` in `cf` as of `snap`, in batched reads of up to
    /// [`MULTI_GET_CHUNK`] keys (RocksDB's `MultiGet` with one column family: a pass over the
    /// memtables and files per call, values pinned, not copied; every call reads the same
    /// snapshot). Keys already in order, as a checkpoint's plan asks for them, skip its sort.
    pub(super) fn batched_get<'k>(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        cf: &rocksdb::ColumnFamily,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Vec<Result<Option<rocksdb::DBPinnableSlice<'_>>, StateError>> {
        let keys: Vec<&[u8]> = keys.collect();
        let sorted = keys.windows(2).all(|w| w[0] <= w[1]);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(snap);
        // In chunks: RocksDB sets up a context of about a hundred bytes per key of a call,
        // megabytes of fresh memory for a large checkpoint's tens of thousands of rows.
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MULTI_GET_CHUNK) {
            out.extend(
                (self
                    .db
                    .batched_multi_get_cf_opt(cf, chunk, sorted, &opts)
                    .into_iter())
                .map(|r| r.map_err(|e| self.err(e))),
            );
        }
        out
    }

    /// The breakdown buckets of `entity` whose tag (month, group, ship, system, hour) is `wanted`, at
    /// most [`MAX_BREAKDOWN_ROWS`] of each, in tag and bucket order, and the tags that had more.
    fn breakdowns(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        entity: EntityKey,
        wanted: impl Fn(u8) -> bool,
    ) -> Result<breakdowns::Buckets, StateError> {
        match snap
            .get_cf(self.cf(CF_STATS), StatKey::breakdowns_key(entity))
            .map_err(|e| self.err(e))?
        {
            Some(v) => breakdowns::decode_tags(&v, wanted, MAX_BREAKDOWN_ROWS),
            None => Ok((Vec::new(), Vec::new())),
        }
    }

    fn meta_at(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, DB>,
    ) -> Result<Option<CheckpointMeta>, StateError> {
        match snap
            .get_cf(self.cf(CF_META), META_CHECKPOINT)
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
        let iter = snap.iterator_cf_opt(
            self.cf(cf),
            read_before(prefix_end(prefix)),
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
    ) -> Result<(Option<EntityView>, Option<CheckpointMeta>), StateError> {
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
        let wanted = |t: u8| match t {
            tag::MONTH => parts.months,
            tag::GROUP => parts.groups,
            tag::SHIP => parts.ships,
            tag::SYSTEM => parts.systems,
            tag::HOUR => parts.activity,
            _ => false,
        };
        let tags = [tag::MONTH, tag::GROUP, tag::SHIP, tag::SYSTEM, tag::HOUR];
        let (breakdowns, truncated) = match tags.into_iter().any(wanted) {
            true => self.breakdowns(&snap, entity, wanted)?,
            false => (Vec::new(), Vec::new()),
        };
        view.truncated = truncated;
        // Only the wanted tags were decoded: the others come out empty.
        let buckets = |t: u8| -> Vec<(u32, Stats)> {
            breakdowns
                .iter()
                .filter_map(|&(d, s)| match d.breakdown() {
                    Some((tag, bucket)) if tag == t => Some((bucket, s)),
                    _ => None,
                })
                .collect()
        };
        view.months = buckets(tag::MONTH);
        view.groups = buckets(tag::GROUP);
        view.ships = buckets(tag::SHIP);
        view.systems = buckets(tag::SYSTEM);
        view.hours = buckets(tag::HOUR);
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
        // The corporation's member-day rows of the window's days: one range.
        let start = StatKey::member_days_key(entity, from);
        let end = StatKey::member_days_key(entity, clock + 1);
        let mut sums: BTreeMap<u64, Stats> = BTreeMap::new();
        let iter = snap.iterator_cf_opt(
            self.cf(CF_STATS),
            read_before(Some(end.to_vec())),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k[..] >= end[..] {
                break;
            }
            if StatKey::member_days_of(&k).is_none() {
                return Err(bad());
            }
            for (c, s) in breakdowns::decode_members(&v)? {
                sums.entry(c).or_default().merge(&s);
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
    /// epoch and reused until the next checkpoint; concurrent requests wait for one computation.
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

    /// Stored dead letters, newest first: at most `limit` matching `filter`, starting after
    /// `cursor` (the key of the last letter of the previous page). A page scans at most
    /// [`DEAD_LETTER_SCAN`] letters, so a filter matching nothing costs a bounded read; the
    /// returned cursor (when more may follow) continues where the scan stopped.
    pub fn dead_letters(
        &self,
        limit: usize,
        cursor: Option<&[u8]>,
        filter: &DeadLetterFilter,
    ) -> Result<(Vec<DeadLetterRecord>, Option<Vec<u8>>), StateError> {
        let cf = self.cf(CF_DEAD_LETTERS);
        let mode = match cursor {
            Some(c) => IteratorMode::From(c, rocksdb::Direction::Reverse),
            None => IteratorMode::End,
        };
        let (mut out, mut scanned, mut last) = (Vec::new(), 0usize, None);
        for item in self.db.iterator_cf(cf, mode) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if cursor.is_some_and(|c| &k[..] >= c) {
                continue;
            }
            if out.len() >= limit || scanned >= DEAD_LETTER_SCAN {
                return Ok((out, last));
            }
            scanned += 1;
            last = Some(k.to_vec());
            let rec: DeadLetterRecord = serde_json::from_slice(&v).map_err(codec_err)?;
            if filter.matches(&rec) {
                out.push(rec);
            }
        }
        Ok((out, None))
    }
}

/// Most rows one breakdown of one entity reads (EVE has ~8,000 systems, ~500 ship types, a
/// few hundred months and ship groups, 168 heatmap cells): a bound no real entity reaches.
pub const MAX_BREAKDOWN_ROWS: usize = 10_000;

/// Most dead letters one page request reads (matching or not).
pub const DEAD_LETTER_SCAN: usize = 10_000;

/// Which dead letters a page shows.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterFilter {
    pub reason: Option<String>,
    pub topic: Option<String>,
}

impl DeadLetterFilter {
    fn matches(&self, r: &DeadLetterRecord) -> bool {
        self.reason.as_ref().is_none_or(|x| *x == r.reason)
            && self.topic.as_ref().is_none_or(|x| *x == r.topic)
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
    /// The breakdown tags ([`tag`]) read only in part: more than [`MAX_BREAKDOWN_ROWS`]
    /// buckets, of which the first by bucket were read.
    pub truncated: Vec<u8>,
}
