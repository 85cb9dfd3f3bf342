//! How a commit changes the stored statistics: the stream clock, rolling windows and
//! leaderboards, on top of the consolidated deltas the dataflow produced.
//!
//! The dataflow emits deltas for every dimension that does not depend on the clock (all time,
//! months, day buckets, breakdowns, rosters). Windows depend on the stream clock, which is
//! committed state, so the committer derives them here, incrementally:
//!
//! - a delta to a day bucket also changes every window whose range holds that day, at the
//!   clock after this commit;
//! - when the clock's day moves from `c` to `c'`, window `n` gains the stored buckets of the
//!   days in `(max(c, c'-n), c']` and loses those of `(c-n, min(c, c'-n)]`: a range scan of the
//!   day-major bucket table, proportional to the entities active on those days, never a
//!   recomputation from scratch;
//! - every change of an entity's all-time or window statistics moves its leaderboard entries
//!   (one index key per metric with a positive value), so a leaderboard is a prefix scan.
//!
//! The planner only reads the state as of the previous commit and returns writes; the caller
//! applies them atomically with the rest of the commit.

use crate::commit::DeltaMap;
use crate::keys::{RankKey, StatKey, WINDOW_DAYS};
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
    /// The clock after a commit that applied killmails up to `batch_max_time`, at `wall`.
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

/// Read access to the state as of the last commit.
pub trait StatsReader {
    type Error;
    /// The stored value of each key (day buckets included), in the order asked.
    fn get_many(&self, keys: &[StatKey]) -> Result<Vec<Option<Stats>>, Self::Error>;
    /// Every stored day bucket of the days `from..=to`.
    fn day_buckets(&self, from: i32, to: i32) -> Result<Vec<(StatKey, Stats)>, Self::Error>;
}

/// One change to the stored statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put(StatKey, Stats),
    /// Adds a delta to a statistic without reading it (no leaderboard depends on it).
    Merge(StatKey, Stats),
    Delete(StatKey),
    RankPut(RankKey),
    RankDelete(RankKey),
}

/// The writes that apply `deltas` and move the clock's day from `before` to `after`.
pub fn plan<R: StatsReader>(
    reader: &R,
    deltas: &DeltaMap,
    before: Option<i32>,
    after: Option<i32>,
) -> Result<Vec<Write>, R::Error> {
    // Window changes; the batch's own deltas are read in place, not copied (hot path).
    let mut windows = DeltaMap::default();
    if let Some(c2) = after {
        if before != after {
            slide_windows(reader, before, c2, &mut windows)?;
        }
        for (key, delta) in deltas {
            let Some(day) = key.dim.day() else { continue };
            for w in 0..WINDOW_DAYS.len() {
                if in_window(c2, w, day) {
                    let wk = key.window_of(w as u8).expect("day buckets have windows");
                    windows.entry(wk).or_default().merge(&delta.without_times());
                }
            }
        }
    }
    // Only statistics with a leaderboard are read (their index entries hold the old value);
    // every other delta is a blind merge.
    let mut writes = Vec::with_capacity(deltas.len() + deltas.len() / 4);
    let mut keys: Vec<StatKey> = Vec::new();
    for (key, delta) in deltas {
        if key.leaderboard_window().is_some() {
            keys.push(*key);
        } else if !delta.is_empty() {
            writes.push(Write::Merge(*key, *delta));
        }
    }
    keys.extend(windows.keys().copied());
    keys.sort_unstable();
    keys.dedup();
    let current = reader.get_many(&keys)?;
    for (key, old) in keys.into_iter().zip(current) {
        let old = old.unwrap_or_default();
        let mut new = old;
        for change in [deltas.get(&key), windows.get(&key)].into_iter().flatten() {
            new.merge(change);
        }
        if new == old {
            continue;
        }
        if new.is_empty() {
            writes.push(Write::Delete(key));
        } else {
            writes.push(Write::Put(key, new));
        }
        if key.leaderboard_window().is_some() {
            let (was, is) = (RankKey::entries(key, &old), RankKey::entries(key, &new));
            for r in &was {
                if !is.contains(r) {
                    writes.push(Write::RankDelete(*r));
                }
            }
            for r in is {
                if !was.contains(&r) {
                    writes.push(Write::RankPut(r));
                }
            }
        }
    }
    Ok(writes)
}

/// Moves every window from clock day `before` to `c2`, from the stored day buckets.
fn slide_windows<R: StatsReader>(
    reader: &R,
    before: Option<i32>,
    c2: i32,
    changes: &mut DeltaMap,
) -> Result<(), R::Error> {
    // The three windows usually gain (and lose) the same days: read each range once.
    let mut scanned: std::collections::HashMap<(i32, i32), Vec<(StatKey, Stats)>> =
        Default::default();
    let mut apply = |from: i32, to: i32, w: usize, sign: bool| -> Result<(), R::Error> {
        if from > to {
            return Ok(());
        }
        if let std::collections::hash_map::Entry::Vacant(e) = scanned.entry((from, to)) {
            e.insert(reader.day_buckets(from, to)?);
        }
        for (key, bucket) in scanned[&(from, to)].iter().copied() {
            let wk = key.window_of(w as u8).expect("day buckets have windows");
            let b = bucket.without_times();
            let d = if sign { b } else { b.negated() };
            changes.entry(wk).or_default().merge(&d);
        }
        Ok(())
    };
    for (w, &n) in WINDOW_DAYS.iter().enumerate() {
        match before {
            None => apply(c2 - n + 1, c2, w, true)?,
            Some(c) => {
                // Days entering: (max(c, c2 - n), c2].
                apply(c.max(c2 - n) + 1, c2, w, true)?;
                // Days leaving: (c - n, min(c, c2 - n)].
                apply(c - n + 1, c.min(c2 - n), w, false)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Dim;
    use crate::model::{EntityKey, EntityKind};
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Mem(BTreeMap<StatKey, Stats>);

    impl StatsReader for Mem {
        type Error = ();
        fn get_many(&self, keys: &[StatKey]) -> Result<Vec<Option<Stats>>, ()> {
            Ok(keys.iter().map(|k| self.0.get(k).copied()).collect())
        }
        fn day_buckets(&self, from: i32, to: i32) -> Result<Vec<(StatKey, Stats)>, ()> {
            Ok(self
                .0
                .iter()
                .filter(|(k, _)| k.dim.day().is_some_and(|d| d >= from && d <= to))
                .map(|(k, v)| (*k, *v))
                .collect())
        }
    }

    fn apply(m: &mut Mem, writes: Vec<Write>) {
        for w in writes {
            match w {
                Write::Put(k, v) => {
                    m.0.insert(k, v);
                }
                Write::Merge(k, d) => {
                    let e = m.0.entry(k).or_default();
                    e.merge(&d);
                    if e.is_empty() {
                        m.0.remove(&k);
                    }
                }
                Write::Delete(k) => {
                    m.0.remove(&k);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn windows_slide_with_the_clock() {
        let e = EntityKey::new(EntityKind::Character, 95_000_000);
        let kill = Stats {
            kills: 1,
            ..Default::default()
        };
        let mut m = Mem::default();
        // One kill on day 100, clock at 100: in every window.
        let d: DeltaMap = [(StatKey::new(e, Dim::Day(100)), kill)]
            .into_iter()
            .collect();
        let w = plan(&m, &d, None, Some(100)).unwrap();
        apply(&mut m, w);
        for i in 0..3 {
            assert_eq!(m.0[&StatKey::new(e, Dim::Window(i))].kills, 1);
        }
        // Clock to 107: out of 7d only. To 190: out of all.
        let w = plan(&m, &DeltaMap::default(), Some(100), Some(107)).unwrap();
        apply(&mut m, w);
        assert!(!m.0.contains_key(&StatKey::new(e, Dim::Window(0))));
        assert_eq!(m.0[&StatKey::new(e, Dim::Window(2))].kills, 1);
        let w = plan(&m, &DeltaMap::default(), Some(107), Some(190)).unwrap();
        apply(&mut m, w);
        assert!(!m.0.contains_key(&StatKey::new(e, Dim::Window(2))));
        assert_eq!(m.0[&StatKey::new(e, Dim::Day(100))].kills, 1);
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
