//! The stream clock, the writes a checkpoint makes, and what is derived at read time: rolling
//! windows and their leaderboards.
//!
//! The dataflow maintains every dimension that does not depend on the clock (all time,
//! months, day buckets, breakdowns, rosters). Windows depend on the stream clock, so they are
//! not stored: a window is the sum of the entity's day buckets of the days it covers (at most
//! 90 small rows, read at query time), and a window leaderboard is ranked from scratch over
//! the window's day buckets when asked. Nothing on the write path depends on the clock, so a
//! clock that moves (a replay crossing midnight every 12,000 killmails) costs no writes; the
//! all-time leaderboards are an index the shards maintain ([`crate::shard::plan_flush`]).

use std::collections::BTreeMap;

use crate::deltas::{prefetch, DeltaMap, PREFETCH_AHEAD};
use crate::keys::{Metric, RankKey, StatKey, WINDOW_DAYS};
use crate::stats::Stats;
use crate::time::day_of;

/// The stream clock: the earlier of wall-clock time and the latest killmail time seen, never
/// moving backwards. Windows end at its UTC day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamClock {
    /// The latest `killmail_time` applied (Unix seconds).
    pub max_time: Option<i64>,
    /// The clock (Unix seconds), once any killmail was applied.
    pub now: Option<i64>,
}

impl StreamClock {
    /// The clock after a checkpoint that applied killmails up to `batch_max_time`, at `wall`.
    pub fn advance(self, batch_max_time: Option<i64>, wall: i64) -> StreamClock {
        let max_time = self.max_time.max(batch_max_time);
        let now = match max_time {
            Some(m) => self.now.max(Some(m.min(wall))),
            None => self.now,
        };
        StreamClock { max_time, now }
    }

    /// The day windows end at.
    pub fn day(self) -> Option<i32> {
        self.now.map(day_of)
    }
}

/// Whether day `day` is inside window `w` (an index into [`WINDOW_DAYS`]) ending at `clock_day`.
pub fn in_window(clock_day: i32, w: usize, day: i32) -> bool {
    day <= clock_day && day > clock_day - WINDOW_DAYS[w]
}

/// One change to the stored statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The new value of an all-time row (its old value was read: leaderboards moved).
    Put(StatKey, Stats),
    /// Adds a delta to a statistic without reading it (no leaderboard index depends on it).
    Merge(StatKey, Stats),
    Delete(StatKey),
    RankPut(RankKey),
    RankDelete(RankKey),
}

/// A checkpoint's writes to the statistics, in parts as the shards made them.
///
/// A part holds the shard's summed deltas themselves, moved from the shard, and says in store
/// order which to merge, which all-time rows to put (their new values replace their deltas) or
/// delete, then which leaderboard entries to put or delete. Copying every statistic into a
/// ~200-byte [`Write`] instead, then sorting and concatenating those, made a checkpoint's
/// largest allocation: its first touches and copies were a third of a 20,000-attacker
/// killmail's CPU. [`Writes::iter`] gives every write, part by part.
#[derive(Clone, Debug, Default)]
pub struct Writes {
    parts: Vec<WritesPart>,
}

/// What a part does with the statistic at a position of its deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatOp {
    /// Merge the delta.
    Merge,
    /// Put the value (an all-time row's new value).
    Put,
    /// Delete the row.
    Delete,
}

#[derive(Clone, Debug, Default)]
struct WritesPart {
    deltas: DeltaMap,
    /// Positions in `deltas` and what to write there, in store order.
    stats: Vec<(u32, StatOp)>,
    /// Leaderboard entries to put (`true`) or delete, in store order.
    ranks: Vec<(RankKey, bool)>,
}

impl Writes {
    /// One shard's writes: `stats` of the entries of `values`, then `ranks`.
    pub fn part(
        values: DeltaMap,
        stats: Vec<(u32, StatOp)>,
        ranks: Vec<(RankKey, bool)>,
    ) -> Writes {
        debug_assert!(stats.iter().all(|&(i, _)| (i as usize) < values.len()));
        Writes {
            parts: vec![WritesPart {
                deltas: values,
                stats,
                ranks,
            }],
        }
    }

    pub fn len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.stats.len() + p.ranks.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shards' maps the parts hold, emptied, for reuse ([`crate::shard::Checkpoints::recycle`]).
    pub fn into_maps(self) -> impl Iterator<Item = DeltaMap> {
        self.parts.into_iter().map(|mut p| {
            p.deltas.drain();
            p.deltas
        })
    }

    /// Adds the parts of `other` (no write is copied).
    pub fn append(&mut self, other: Writes) {
        self.parts.extend(other.parts);
    }

    /// The writes to statistics, by reference: what a write does, the key and the delta
    /// (`Merge`) or new value (`Put`). The parts' writes are merged by table (`stats`, then
    /// the day buckets' `days`) and entity: an entity's statistics are all in one part, in
    /// store order, so the `stats` table's writes come in its order, as one run rather than a
    /// run per part (RocksDB's memtable inserts each next to the one before; two runs cost the
    /// largest killmail's commit 2 ms more with two shards). Day buckets, which the `days`
    /// table orders day first, come by entity (the store gathers and sorts them); a tie (an
    /// entity in two parts) goes to the earlier part, as concatenating them did.
    pub fn stats(&self) -> impl Iterator<Item = (StatOp, &StatKey, &Stats)> + '_ {
        let mut parts: Vec<_> = self.parts.iter().map(|p| p.stats().peekable()).collect();
        let order = |k: &StatKey| (k.dim.day().is_some(), k.entity.to_bytes());
        std::iter::from_fn(move || {
            if let [only] = &mut parts[..] {
                return only.next();
            }
            // The part whose next write comes first (the first such part on a tie).
            let mut first: Option<(usize, (bool, [u8; 9]))> = None;
            for (i, part) in parts.iter_mut().enumerate() {
                if let Some((_, k, _)) = part.peek() {
                    let at = order(k);
                    if first.is_none_or(|(_, f)| at < f) {
                        first = Some((i, at));
                    }
                }
            }
            parts[first?.0].next()
        })
    }

    /// The all-time rows put (with their new values) or deleted, part by part: only those
    /// entries are read (a pass over every write reads every delta, tens of megabytes on the
    /// largest checkpoints).
    pub fn all_time(&self) -> impl Iterator<Item = (StatOp, &StatKey, &Stats)> + '_ {
        self.parts.iter().flat_map(|p| {
            let entries = p.deltas.entries();
            p.stats
                .iter()
                .filter(|(_, op)| *op != StatOp::Merge)
                .map(move |&(i, op)| {
                    let (k, v) = &entries[i as usize];
                    (op, k, v)
                })
        })
    }

    /// The all-time rows put, with their new values ([`Writes::all_time`]).
    pub fn puts(&self) -> impl Iterator<Item = (&StatKey, &Stats)> + '_ {
        self.all_time()
            .filter(|(op, ..)| *op == StatOp::Put)
            .map(|(_, k, v)| (k, v))
    }

    /// The leaderboard entries to put (`true`) or delete, part by part.
    pub fn ranks(&self) -> impl Iterator<Item = (&RankKey, bool)> + '_ {
        self.parts
            .iter()
            .flat_map(|p| p.ranks.iter().map(|(r, put)| (r, *put)))
    }

    /// Every write, part by part, a share's or a member day's delta as the merges it stands
    /// for ([`crate::contrib::expand`]).
    pub fn iter(&self) -> impl Iterator<Item = Write> + '_ {
        self.parts.iter().flat_map(|p| {
            let stats = p.stats().flat_map(|(op, &key, &value)| {
                let mut out = Vec::new();
                match op {
                    StatOp::Merge => {
                        crate::contrib::expand(key, &value, |k, v| out.push(Write::Merge(k, v)))
                    }
                    StatOp::Put => out.push(Write::Put(key, value)),
                    StatOp::Delete => out.push(Write::Delete(key)),
                }
                out
            });
            let ranks = p.ranks.iter().map(|&(r, put)| match put {
                true => Write::RankPut(r),
                false => Write::RankDelete(r),
            });
            stats.chain(ranks)
        })
    }
}

impl WritesPart {
    /// Its writes to statistics in store order, which is random in the map's memory: each
    /// asks for the entry a few writes ahead.
    fn stats(&self) -> impl Iterator<Item = (StatOp, &StatKey, &Stats)> + '_ {
        let entries = self.deltas.entries();
        self.stats.iter().enumerate().map(move |(j, &(i, op))| {
            if let Some(&(ahead, _)) = self.stats.get(j + PREFETCH_AHEAD) {
                prefetch(entries, ahead as usize);
            }
            let (key, value) = &entries[i as usize];
            (op, key, value)
        })
    }
}

impl FromIterator<Write> for Writes {
    /// Writes made outside the shards (tests), as one part: the statistics' writes in the
    /// order given, then the leaderboard entries'. Each statistic at most once (a repeated key
    /// fails a debug assertion; a release build keeps both writes).
    fn from_iter<I: IntoIterator<Item = Write>>(iter: I) -> Self {
        let mut values = DeltaMap::default();
        let (mut stats, mut ranks) = (Vec::new(), Vec::new());
        for w in iter {
            let mut stat = |key, value, op| {
                stats.push((values.len() as u32, op));
                values.push(key, value);
            };
            match w {
                Write::Put(k, v) => stat(k, v, StatOp::Put),
                Write::Merge(k, v) => stat(k, v, StatOp::Merge),
                Write::Delete(k) => stat(k, Stats::default(), StatOp::Delete),
                Write::RankPut(r) => ranks.push((r, true)),
                Write::RankDelete(r) => ranks.push((r, false)),
            }
        }
        Writes::part(values, stats, ranks)
    }
}

/// The rolling windows ending at `clock_day`, summed from day buckets: for each bucket of a
/// day inside a window, its sums (times dropped) are added to that entity's window.
pub fn windows_from_days(
    clock_day: i32,
    buckets: impl IntoIterator<Item = (StatKey, Stats)>,
) -> BTreeMap<StatKey, Stats> {
    let mut out: BTreeMap<StatKey, Stats> = BTreeMap::new();
    for (key, bucket) in buckets {
        let Some(day) = key.dim.day() else { continue };
        for w in 0..WINDOW_DAYS.len() {
            if in_window(clock_day, w, day) {
                let wk = key.window_of(w as u8).expect("day buckets have windows");
                out.entry(wk).or_default().merge(&bucket.without_times());
            }
        }
    }
    out.retain(|_, v| !v.is_empty());
    out
}

/// Every window leaderboard entry of `windows` (as [`windows_from_days`] sums them), for
/// every kind, window and metric: the window half of the served leaderboards.
pub fn window_rank_entries(windows: &BTreeMap<StatKey, Stats>) -> Vec<RankKey> {
    let mut out = Vec::new();
    for kind in crate::model::EntityKind::ALL {
        for w in 1..=WINDOW_DAYS.len() as u8 {
            for metric in Metric::ALL {
                let of_kind = windows.iter().filter(|(k, _)| k.entity.kind == kind);
                out.extend(
                    rank_windows(of_kind, w, metric, usize::MAX)
                        .into_iter()
                        .map(|(r, _)| r),
                );
            }
        }
    }
    out
}

/// The first `limit` entries of the leaderboard of `window` (1 + window index) and `metric`
/// over `windows` (window statistics of one kind, as [`windows_from_days`] sums them), each
/// with its statistics: ranked from scratch, so always equal to a from-scratch ranking.
pub fn rank_windows<'a>(
    windows: impl IntoIterator<Item = (&'a StatKey, &'a Stats)>,
    window: u8,
    metric: Metric,
    limit: usize,
) -> Vec<(RankKey, Stats)> {
    let mut ranked: Vec<(RankKey, Stats)> = windows
        .into_iter()
        .filter(|(k, _)| k.leaderboard_window() == Some(window))
        .filter_map(|(k, s)| {
            RankKey::entries(*k, s)
                .into_iter()
                .find(|r| r.metric == metric)
                .map(|r| (r, *s))
        })
        .collect();
    let limit = limit.min(ranked.len());
    if limit < ranked.len() {
        ranked.select_nth_unstable_by_key(limit, |(r, _)| r.to_bytes());
        ranked.truncate(limit);
    }
    ranked.sort_unstable_by_key(|(r, _)| r.to_bytes());
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Dim;
    use crate::model::{EntityKey, EntityKind};
    use crate::stats::{Seen, Sums};

    #[test]
    fn windows_hold_the_days_they_cover() {
        let e = EntityKey::new(EntityKind::Character, 95_000_000);
        let kill = Stats {
            sums: Sums {
                kills: 1,
                ..Default::default()
            },
            seen: Seen {
                first: Some(1),
                last: None,
            },
        };
        let day = |d| (StatKey::new(e, Dim::Day(d)), kill);
        let w = windows_from_days(100, [day(100), day(94), day(93), day(11), day(101)]);
        let get = |i: u8| {
            w.get(&StatKey::new(e, Dim::Window(i)))
                .map(|s| s.sums.kills)
        };
        assert_eq!(get(0), Some(2)); // 94..=100
        assert_eq!(get(1), Some(3)); // 71..=100
        assert_eq!(get(2), Some(4)); // 11..=100
        assert_eq!(w[&StatKey::new(e, Dim::Window(0))].seen.first, None);
        let top = rank_windows(&w, 1, Metric::Kills, 1);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0.value, 2);
    }

    #[test]
    fn clock_takes_the_earlier_of_wall_and_data_and_never_goes_back() {
        let c = StreamClock::default().advance(Some(1_000), 500);
        assert_eq!(c.now, Some(500));
        let c = c.advance(None, 2_000);
        assert_eq!(c.now, Some(1_000));
        let c = c.advance(Some(10), 100);
        assert_eq!((c.now, c.max_time), (Some(1_000), Some(1_000)));
    }
}
