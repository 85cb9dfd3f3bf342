//! The all-time leaderboard index keeps the top of each board, not every entity.
//!
//! A board is a kind and a metric. The API reads at most [`LEADERBOARD_DEPTH`] entries of
//! one, so each board indexes the entries that rank at or before its *floor* (a position in
//! the ranking, [`RankFloors`]) and no others: between the depth and four times it, usually
//! about twice. The shards leave out the changes below the floors; each checkpoint counts what
//! it puts and deletes per board and, in the same atomic batch:
//!
//! - **raises** a board past four times the depth: the floor moves up to the entry at twice
//!   the depth, and the indexed entries below it are deleted;
//! - **lowers** a board that fell under the depth (values can fall: a re-appraisal lowers ISK
//!   and points, and solo kills): the all-time rows of its kind are scanned, and the entries
//!   below the floor that rank first are indexed, back up to twice the depth (or all of them).
//!
//! The floors and counts are stored with every checkpoint ([`CheckpointMeta::ranks`]), so a
//! board is exact after any crash: its index holds exactly the entries at or above its floor,
//! at least the depth of them unless it holds every entry of the board. A killmail of 20,000
//! new characters (of whom almost none rank near the top) put 66,600 entries into a complete
//! index; now it puts the few that rank above the floors.

use std::collections::BinaryHeap;

use super::codec::*;
use super::*;
use kmflow_dataflows::aggregate::{StatOp, Writes};
use kmflow_dataflows::keys::RankFloors;

/// The entries every board holds at least (or all of its entries): the API's deepest page.
pub const LEADERBOARD_DEPTH: usize = 1000;

/// One all-time board as stored with a checkpoint: its floor (`None`: every entry with a
/// value is indexed) and how many entries its index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    pub kind: EntityKind,
    pub metric: Metric,
    pub floor: Option<RankKey>,
    pub count: u64,
}

/// Every all-time board, in kind then metric order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankBoards(pub Vec<Board>);

impl Default for RankBoards {
    /// An empty state's: every board complete and empty.
    fn default() -> Self {
        RankBoards(
            EntityKind::ALL
                .into_iter()
                .flat_map(|kind| {
                    Metric::ALL.into_iter().map(move |metric| Board {
                        kind,
                        metric,
                        floor: None,
                        count: 0,
                    })
                })
                .collect(),
        )
    }
}

impl RankBoards {
    pub fn floors(&self) -> RankFloors {
        let mut f = RankFloors::default();
        for b in &self.0 {
            f.set(b.kind, b.metric, b.floor);
        }
        f
    }

    fn index(kind: EntityKind, metric: Metric) -> usize {
        kind as usize * Metric::ALL.len() + metric as usize
    }

    pub fn get(&self, kind: EntityKind, metric: Metric) -> &Board {
        &self.0[Self::index(kind, metric)]
    }

    fn get_mut(&mut self, kind: EntityKind, metric: Metric) -> &mut Board {
        &mut self.0[Self::index(kind, metric)]
    }

    /// Whether every board is where it belongs (a stored list read back, say).
    fn well_formed(&self) -> bool {
        let d = RankBoards::default();
        self.0.len() == d.0.len()
            && (self.0.iter().zip(&d.0)).all(|(a, b)| (a.kind, a.metric) == (b.kind, b.metric))
    }
}

/// What lowering a board gives: the entries to add, and its new floor.
type Lowered = (Vec<RankKey>, Option<RankKey>);

/// The entry of `kind`'s board by `metric` that `stats` makes, if its value is positive.
fn entry(kind: EntityKind, metric: Metric, id: u64, stats: &Stats) -> Option<RankKey> {
    let value = metric.value(stats);
    (value > 0).then_some(RankKey {
        kind,
        window: 0,
        metric,
        value,
        id,
    })
}

impl RocksState {
    /// The boards as of the last commit.
    pub fn rank_boards(&self) -> RankBoards {
        self.meta
            .read()
            .as_ref()
            .and_then(|m| m.ranks.clone())
            .unwrap_or_default()
    }

    /// Brings a stored checkpoint's metadata written by an earlier build to this format (see
    /// `READS_FORMATS`), synced: for format 4 (no floors, every entry indexed), rebuilds the
    /// index to the floors and stores the boards. Nothing to do for a checkpoint of this
    /// format with well-formed boards.
    pub(super) fn upgrade(&self, meta: &mut CheckpointMeta) -> Result<(), StateError> {
        // Boards stored in another shape (another build's kinds or metrics) are rebuilt too,
        // never indexed out of place.
        let boards = meta.ranks.as_ref().is_some_and(RankBoards::well_formed);
        if meta.format == STATE_FORMAT && boards {
            return Ok(());
        }
        if meta.format < FLOORS_SINCE || !boards {
            meta.ranks = Some(self.rebuild_rank_index()?);
        }
        meta.format = STATE_FORMAT;
        self.write_meta(meta)
    }

    /// Sets how many entries every board holds at least (tests use a few to move floors on
    /// small streams; below the API's deepest page, a leaderboard page could come out short).
    pub fn set_leaderboard_depth(&self, depth: usize) {
        self.leaderboard_depth
            .store(depth.max(1), Ordering::Relaxed);
    }

    /// Adds the checkpoint's leaderboard changes to `wb`, moving the floors of the boards that
    /// leave their bounds; returns the boards after it.
    pub(super) fn stage_ranks(
        &self,
        wb: &mut super::batch::Batch,
        writes: &Writes,
    ) -> Result<RankBoards, StateError> {
        let mut boards = self.rank_boards();
        let floors = boards.floors();
        let depth = self.leaderboard_depth.load(Ordering::Relaxed) as u64;
        // Changes below a floor were left out by the shards; one that is not would break the
        // board's count (a bug to report, not a state to write).
        for (r, put) in writes.ranks() {
            if !floors.indexes(r) {
                return Err(StateError::Corrupt(format!(
                    "leaderboard entry {r:?} below its board's floor written ({})",
                    if put { "put" } else { "delete" }
                )));
            }
            if r.window != 0 {
                return Err(StateError::Corrupt(format!(
                    "window leaderboard entry {r:?} written to the index"
                )));
            }
            let b = boards.get_mut(r.kind, r.metric);
            b.count = if put {
                b.count + 1
            } else {
                b.count.saturating_sub(1)
            };
        }
        let mut new_floors = floors;
        let ranks_cf = self.cf_id(CF_RANKS);
        let keep = 2 * depth;
        for b in boards.0.iter_mut().filter(|b| b.count > 4 * depth) {
            let (floor, beyond) = self.raise(writes, b.kind, b.metric, keep as usize)?;
            for r in beyond {
                wb.delete_cf(ranks_cf, r.to_bytes());
            }
            b.floor = Some(floor);
            b.count = keep;
            new_floors.set(b.kind, b.metric, b.floor);
        }
        for kind in EntityKind::ALL {
            // The boards of the kind that fell under the depth, lowered in one scan.
            let low: Vec<(Metric, RankKey, usize)> = (boards.0.iter())
                .filter(|b| b.kind == kind && b.count < depth)
                .filter_map(|b| Some((b.metric, b.floor?, (keep - b.count) as usize)))
                .collect();
            if low.is_empty() {
                continue;
            }
            for (&(metric, ..), (added, floor)) in low.iter().zip(self.lower(writes, kind, &low)?) {
                for r in &added {
                    wb.put_cf(ranks_cf, r.to_bytes(), []);
                }
                let b = boards.get_mut(kind, metric);
                b.floor = floor;
                b.count += added.len() as u64;
                new_floors.set(kind, metric, floor);
            }
        }
        for (r, put) in writes.ranks() {
            match put {
                // A board raised here drops the puts below its new floor.
                true if new_floors.indexes(r) => wb.put_cf(ranks_cf, r.to_bytes(), []),
                true => {}
                false => wb.delete_cf(ranks_cf, r.to_bytes()),
            }
        }
        Ok(boards)
    }

    /// The new floor of a board that holds too many entries after `writes`: its entry at
    /// rank `keep`, and the stored entries below it (to delete). Walks the stored index with
    /// the checkpoint's changes applied, in rank order.
    fn raise(
        &self,
        writes: &Writes,
        kind: EntityKind,
        metric: Metric,
        keep: usize,
    ) -> Result<(RankKey, Vec<RankKey>), StateError> {
        let mine = |r: &&RankKey| r.kind == kind && r.metric == metric;
        let mut puts: Vec<RankKey> = writes
            .ranks()
            .filter(|(r, put)| *put && mine(r))
            .map(|(r, _)| *r)
            .collect();
        puts.sort_by_key(RankKey::store_order);
        let deleted: rustc_hash::FxHashSet<RankKey> = writes
            .ranks()
            .filter(|(r, put)| !*put && mine(r))
            .map(|(r, _)| *r)
            .collect();
        let prefix = RankKey::prefix(kind, 0, metric);
        let mut stored = self.index_of(&prefix);
        let mut next_stored = || -> Result<Option<RankKey>, StateError> {
            loop {
                match stored.next().transpose()? {
                    Some(r) if deleted.contains(&r) => continue,
                    other => return Ok(other),
                }
            }
        };
        let (mut s, mut p) = (next_stored()?, puts.into_iter().peekable());
        let mut rank = 0;
        let mut floor = None;
        let mut beyond = Vec::new();
        loop {
            let from_store = match (&s, p.peek()) {
                (None, None) => break,
                (Some(a), Some(b)) => a.store_order() < b.store_order(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            let r = if from_store {
                let r = s.take().expect("an entry");
                s = next_stored()?;
                r
            } else {
                p.next().expect("an entry")
            };
            rank += 1;
            if rank == keep {
                floor = Some(r);
            } else if rank > keep && from_store {
                beyond.push(r);
            }
        }
        let floor = floor.ok_or_else(|| {
            StateError::Corrupt(format!(
                "leaderboard {kind:?} by {metric:?}: counted more than {keep} entries, found {rank}"
            ))
        })?;
        Ok((floor, beyond))
    }

    /// For each board of `kind` asked for (its metric, floor and how many entries it needs),
    /// the entries below its floor that rank first, at most that many, after `writes`, and its
    /// new floor (`None` if they are all the board had left out). One scan of the all-time
    /// rows of `kind`, with the checkpoint's new values over the stored ones.
    fn lower(
        &self,
        writes: &Writes,
        kind: EntityKind,
        boards: &[(Metric, RankKey, usize)],
    ) -> Result<Vec<Lowered>, StateError> {
        // The checkpoint's all-time rows of the kind: a new value, or gone.
        let mut overlay: FxHashMap<u64, Option<Stats>> = FxHashMap::default();
        for (op, k, v) in writes.all_time() {
            if k.entity.kind == kind {
                overlay.insert(k.entity.id, (op != StatOp::Delete).then_some(*v));
            }
        }
        // Per board, the best `need + 1` entries below its floor (one more tells whether any
        // is left).
        type Order = (u8, u8, u8, std::cmp::Reverse<i128>, u64);
        let mut best: Vec<BinaryHeap<Order>> = boards.iter().map(|_| BinaryHeap::new()).collect();
        let mut offer = |stats: &Stats, id: u64| {
            for (&(metric, floor, need), best) in boards.iter().zip(&mut best) {
                let Some(r) = entry(kind, metric, id, stats) else {
                    continue;
                };
                if r.store_order() > floor.store_order() {
                    best.push(r.store_order());
                    if best.len() > need + 1 {
                        best.pop();
                    }
                }
            }
        };
        for item in self.prefixed(CF_STATS, &[kind as u8]) {
            let (k, v) = item?;
            let Some(key) = (k.len() == 9).then(|| StatKey::from_bytes(&k)).flatten() else {
                continue;
            };
            match overlay.remove(&key.entity.id) {
                Some(Some(stats)) => offer(&stats, key.entity.id),
                Some(None) => {}
                None => {
                    if let Some(stats) = stored_stats(&v)? {
                        offer(&stats, key.entity.id);
                    }
                }
            }
        }
        // Entities the checkpoint writes for the first time.
        for (id, stats) in overlay {
            if let Some(stats) = stats {
                offer(&stats, id);
            }
        }
        Ok(boards
            .iter()
            .zip(best)
            .map(|(&(metric, _, need), best)| {
                let mut taken: Vec<RankKey> = best
                    .into_sorted_vec()
                    .into_iter()
                    .map(|(_, _, _, std::cmp::Reverse(value), id)| RankKey {
                        kind,
                        window: 0,
                        metric,
                        value,
                        id,
                    })
                    .collect();
                let rest = taken.len() > need;
                taken.truncate(need);
                let floor = if rest { taken.last().copied() } else { None };
                (taken, floor)
            })
            .collect())
    }

    /// Rebuilds the whole index from the all-time rows: every board's first `2 × depth`
    /// entries (or all of them). For a state stored without boards (before floors), and after
    /// a rescale, which copies statistics and not the index. Returns the boards.
    pub fn rebuild_rank_index(&self) -> Result<RankBoards, StateError> {
        let depth = self.leaderboard_depth.load(Ordering::Relaxed);
        let keep = 2 * depth;
        let mut boards = RankBoards::default();
        let mut wb = WriteBatch::default();
        let ranks_cf = self.cf(CF_RANKS);
        wb.delete_range_cf(
            ranks_cf,
            [0u8].as_slice(),
            [0xFFu8; RankKey::LEN + 1].as_slice(),
        );
        for kind in EntityKind::ALL {
            // Every entry ranks below a floor of the greatest value and no id.
            let all: Vec<(Metric, RankKey, usize)> = Metric::ALL
                .into_iter()
                .map(|metric| {
                    let top = RankKey {
                        kind,
                        window: 0,
                        metric,
                        value: i128::MAX,
                        id: 0,
                    };
                    (metric, top, keep)
                })
                .collect();
            for (&(metric, ..), (entries, floor)) in
                all.iter().zip(self.lower(&Writes::default(), kind, &all)?)
            {
                let b = boards.get_mut(kind, metric);
                b.floor = floor;
                b.count = entries.len() as u64;
                for r in entries {
                    wb.put_cf(ranks_cf, r.to_bytes(), []);
                }
            }
        }
        self.db.write(wb).map_err(|e| self.err(e))?;
        Ok(boards)
    }

    /// The stored entries of the board whose index keys start with `prefix`, in rank order.
    fn index_of<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<RankKey, StateError>> + 'a {
        self.prefixed(CF_RANKS, prefix).map(|item| {
            let (k, _) = item?;
            RankKey::from_bytes(&k).ok_or_else(|| codec_err("bad rank key"))
        })
    }

    /// Checks the stored boards against the index (for tests): every board's count is what
    /// its index holds, and no entry lies below its floor.
    pub fn check_rank_boards(&self) -> Result<RankBoards, StateError> {
        let boards = self.rank_boards();
        if !boards.well_formed() {
            return Err(codec_err(format!(
                "malformed leaderboard boards {boards:?}"
            )));
        }
        let floors = boards.floors();
        for b in &boards.0 {
            let prefix = RankKey::prefix(b.kind, 0, b.metric);
            let mut n = 0;
            for r in self.index_of(&prefix) {
                let r = r?;
                if !floors.indexes(&r) {
                    return Err(codec_err(format!("{r:?} is below its floor {:?}", b.floor)));
                }
                n += 1;
            }
            if n != b.count {
                return Err(codec_err(format!("{b:?} holds {n} entries")));
            }
        }
        Ok(boards)
    }
}
