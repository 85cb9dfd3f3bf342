//! The keys statistics are kept under: an entity and a dimension (all time, a month, a day, a
//! rolling window, a breakdown bucket, a corporation member), and the leaderboard index keys.
//!
//! Byte encodings are big-endian so RocksDB orders keys by entity, then dimension, then value:
//! an entity's all-time key is the 9-byte [`EntityKey::to_bytes`], every other dimension of it
//! extends that prefix, so one prefix scan reads all of an entity.
//!
//! Stored, an entity's breakdowns (month, victim ship group, ship flown, system, hour of week)
//! are one row, [`StatKey::breakdowns_key`]: a list of `(tag, bucket, statistics)` the RocksDB
//! merge operator adds lists into. A killmail touches one bucket of each of them for every
//! entity on it, and an entity's buckets are touched again and again, so one row for the five
//! halves what a checkpoint writes. They are read whole anyway (an entity page shows them all).
//! Likewise a corporation's member-day buckets of one day are one row,
//! [`StatKey::member_days_key`]: a list of `(member, statistics)`. A killmail touches one per
//! member on it and a roster window reads whole days, so a checkpoint writes one row per
//! corporation and day rather than one per member (state format 4).
//! The keys above stay the statistics' names everywhere else (the dataflow, the memory store).

use serde::{Deserialize, Serialize};

use crate::model::{EntityKey, EntityKind};
use crate::stats::Stats;

/// The rolling windows, in days, by window index.
pub const WINDOW_DAYS: [i32; 3] = [7, 30, 90];
/// Their names in the API, by window index.
pub const WINDOW_NAMES: [&str; 3] = ["7d", "30d", "90d"];

/// What an entity's statistics are broken down by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// All time.
    All,
    /// A calendar month, `YYYYMM`.
    Month(u32),
    /// A UTC day (days since 1970-01-01): the buckets windows are summed from.
    Day(i32),
    /// A rolling window (index into [`WINDOW_DAYS`]), maintained by the checkpointer.
    Window(u8),
    /// The victim ship's group (0: unknown type).
    Group(u32),
    /// A ship type the entity flew as an attacker.
    Ship(u32),
    /// A solar system.
    System(u32),
    /// Day of week (Monday 0) × 24 + hour of day, UTC.
    Hour(u8),
    /// A character's statistics under a corporation (corporation entities only).
    Member(u64),
    /// A member's day bucket (rosters sum these over a window's days when asked). As a delta,
    /// with the times, it adds to the member's [`Dim::Member`] row too
    /// ([`crate::contrib::expand`]).
    MemberDay(i32, u64),
    /// An entity's part in killmails of one day, system, victim group and hour of week, as a
    /// delta: never stored as such, it stands for the month, system, hour, group and day
    /// buckets it adds to ([`crate::contrib::expand`]). One sum instead of five or six: a
    /// share summed per bucket was 111,000 of the 223,205 sums of a 20,000-attacker killmail.
    Share {
        day: i32,
        system: u32,
        group: u32,
        hour: u8,
    },
}

impl Dim {
    fn tag(self) -> u8 {
        match self {
            Dim::All => 0,
            Dim::Month(_) => 1,
            Dim::Day(_) => 2,
            Dim::Window(_) => 3,
            Dim::Group(_) => 4,
            Dim::Ship(_) => 5,
            Dim::System(_) => 6,
            Dim::Hour(_) => 7,
            Dim::Member(_) => 8,
            Dim::MemberDay(..) => 9,
            Dim::Share { .. } => tag::SHARE,
        }
    }

    /// The month, group, ship type, system or heatmap cell of a breakdown dimension.
    pub fn bucket(self) -> Option<u32> {
        match self {
            Dim::Month(x) | Dim::Group(x) | Dim::Ship(x) | Dim::System(x) => Some(x),
            Dim::Hour(h) => Some(h as u32),
            _ => None,
        }
    }

    /// The tag and bucket of a breakdown dimension (a month, group, ship, system or hour),
    /// which is stored in its entity's breakdowns row ([`StatKey::breakdowns_key`]).
    #[inline]
    pub fn breakdown(self) -> Option<(u8, u32)> {
        match self {
            Dim::Month(x) => Some((tag::MONTH, x)),
            Dim::Group(x) => Some((tag::GROUP, x)),
            Dim::Ship(x) => Some((tag::SHIP, x)),
            Dim::System(x) => Some((tag::SYSTEM, x)),
            Dim::Hour(h) => Some((tag::HOUR, h as u32)),
            _ => None,
        }
    }

    /// The breakdown dimension of `tag` and `bucket` (the inverse of [`Dim::breakdown`]).
    pub fn from_breakdown(tag: u8, bucket: u32) -> Option<Dim> {
        match tag {
            tag::MONTH => Some(Dim::Month(bucket)),
            tag::GROUP => Some(Dim::Group(bucket)),
            tag::SHIP => Some(Dim::Ship(bucket)),
            tag::SYSTEM => Some(Dim::System(bucket)),
            tag::HOUR => u8::try_from(bucket).ok().map(Dim::Hour),
            _ => None,
        }
    }

    /// The day of an entity's day bucket: the buckets rolling windows are maintained from.
    pub fn day(self) -> Option<i32> {
        match self {
            Dim::Day(d) => Some(d),
            _ => None,
        }
    }
}

/// Tags of the dimensions, for prefix scans.
pub mod tag {
    pub const MONTH: u8 = 1;
    pub const WINDOW: u8 = 3;
    pub const GROUP: u8 = 4;
    pub const SHIP: u8 = 5;
    pub const SYSTEM: u8 = 6;
    pub const HOUR: u8 = 7;
    pub const MEMBER: u8 = 8;
    pub const MEMBER_DAY: u8 = 9;
    /// The stored row of an entity's breakdowns (month, group, ship, system and hour buckets).
    pub const BREAKDOWNS: u8 = 10;
    /// The stored row of a corporation's member-day buckets of one day.
    pub const MEMBER_DAYS: u8 = 11;
    /// A share's delta ([`super::Dim::Share`]): it orders a shard's writes, and is never
    /// stored. It is Day's value: a day bucket is stored only day-major, in the `days` table,
    /// so no key of the `stats` table has it, and it puts an entity's shares first among the
    /// statistics of its row (before ships flown, and a corporation's members), so a shard's
    /// writes of one breakdowns row come one after another.
    pub const SHARE: u8 = 2;
}

/// Days are stored offset so negative days (before 1970) still sort in order.
const DAY_BIAS: i64 = 1 << 31;

fn day_bytes(d: i32) -> [u8; 4] {
    ((d as i64 + DAY_BIAS) as u32).to_be_bytes()
}

fn day_from(b: &[u8]) -> Option<i32> {
    Some((u32::from_be_bytes(b.try_into().ok()?) as i64 - DAY_BIAS) as i32)
}

/// An encoded key, on the stack: every key fits in [`KeyBytes::CAPACITY`] bytes (the longest
/// statistic key, a share's (never stored), is 23, a member's day bucket 22; a day-major key
/// 18; a leaderboard key 27), so
/// encoding one allocates nothing. Ordered as RocksDB orders byte strings.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyBytes {
    /// The bytes, zero-padded: with the length compared second, the derived order is the
    /// bytewise order of the keys (a key sorts before every longer key it prefixes).
    buf: [u8; KeyBytes::CAPACITY],
    len: u8,
}

const _: () = assert!(RankKey::LEN <= KeyBytes::CAPACITY);

impl KeyBytes {
    pub const CAPACITY: usize = 31;

    /// `bytes` (at most [`KeyBytes::CAPACITY`] of them).
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut b = KeyBytes::default();
        b.extend(bytes);
        b
    }

    /// Inlined where it is called: each call's length is then a constant, and the copy a
    /// store or two rather than a call to `memcpy`.
    #[inline(always)]
    fn extend(&mut self, bytes: &[u8]) {
        let at = self.len as usize;
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }
}

impl Default for KeyBytes {
    fn default() -> Self {
        KeyBytes {
            buf: [0; KeyBytes::CAPACITY],
            len: 0,
        }
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl AsRef<[u8]> for KeyBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", &**self)
    }
}

/// The two tables statistics are stored in (see [`StatKey::stored`]), in key order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatTable {
    Stats,
    Days,
}

/// One statistic's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StatKey {
    pub entity: EntityKey,
    pub dim: Dim,
}

impl StatKey {
    #[inline]
    pub fn new(entity: EntityKey, dim: Dim) -> Self {
        StatKey { entity, dim }
    }

    #[inline]
    pub fn all(entity: EntityKey) -> Self {
        StatKey::new(entity, Dim::All)
    }

    /// The window key a day bucket contributes to.
    pub fn window_of(self, window: u8) -> Option<StatKey> {
        match self.dim {
            Dim::Day(_) => Some(StatKey::new(self.entity, Dim::Window(window))),
            _ => None,
        }
    }

    /// Entity-major bytes (see the module docs). Day buckets use [`StatKey::day_major_bytes`].
    #[inline]
    pub fn to_bytes(self) -> KeyBytes {
        let mut b = KeyBytes::default();
        b.extend(&self.entity.to_bytes());
        if self.dim == Dim::All {
            return b;
        }
        b.extend(&[self.dim.tag()]);
        match self.dim {
            Dim::All => {}
            Dim::Month(m) | Dim::Group(m) | Dim::Ship(m) | Dim::System(m) => {
                b.extend(&m.to_be_bytes())
            }
            Dim::Day(d) => b.extend(&day_bytes(d)),
            Dim::Window(w) | Dim::Hour(w) => b.extend(&[w]),
            Dim::Member(c) => b.extend(&c.to_be_bytes()),
            Dim::MemberDay(d, c) => {
                b.extend(&day_bytes(d));
                b.extend(&c.to_be_bytes());
            }
            Dim::Share {
                day,
                system,
                group,
                hour,
            } => {
                b.extend(&day_bytes(day));
                b.extend(&system.to_be_bytes());
                b.extend(&group.to_be_bytes());
                b.extend(&[hour]);
            }
        }
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<StatKey> {
        let entity = EntityKey::from_bytes(b.get(..9)?)?;
        if b.len() == 9 {
            return Some(StatKey::all(entity));
        }
        let p = &b[10..];
        let u32_at = |p: &[u8]| -> Option<u32> { Some(u32::from_be_bytes(p.try_into().ok()?)) };
        let u64_at = |p: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(p.try_into().ok()?)) };
        let one = |p: &[u8]| -> Option<u8> { (p.len() == 1).then(|| p[0]) };
        let dim = match b[9] {
            1 => Dim::Month(u32_at(p)?),
            2 => Dim::Day(day_from(p)?),
            3 => Dim::Window(one(p)?),
            4 => Dim::Group(u32_at(p)?),
            5 => Dim::Ship(u32_at(p)?),
            6 => Dim::System(u32_at(p)?),
            7 => Dim::Hour(one(p)?),
            8 => Dim::Member(u64_at(p)?),
            9 => Dim::MemberDay(day_from(p.get(..4)?)?, u64_at(p.get(4..)?)?),
            _ => return None,
        };
        Some(StatKey::new(entity, dim))
    }

    /// Day-major bytes of a day bucket: `[day][entity-major key]`, so one day's buckets are
    /// one range. `None` for other dimensions.
    #[inline]
    pub fn day_major_bytes(self) -> Option<KeyBytes> {
        let d = self.dim.day()?;
        let mut b = KeyBytes::default();
        b.extend(&day_bytes(d));
        b.extend(&self.to_bytes());
        Some(b)
    }

    /// Where the statistic is stored: day buckets day-major in the `days` table, every
    /// other statistic entity-major in the `stats` table. The one place that decides it, for
    /// writes, reads and the order a shard hands its writes over in.
    #[inline]
    pub fn stored(self) -> (StatTable, KeyBytes) {
        match self.day_major_bytes() {
            Some(b) => (StatTable::Days, b),
            None => (StatTable::Stats, self.to_bytes()),
        }
    }

    pub fn from_day_major_bytes(b: &[u8]) -> Option<StatKey> {
        let k = StatKey::from_bytes(b.get(4..)?)?;
        (k.dim.day() == day_from(&b[..4])).then_some(k)
    }

    /// The stored key of `entity`'s breakdowns row, in the `stats` table (see the module
    /// docs): the entity and [`tag::BREAKDOWNS`].
    pub fn breakdowns_key(entity: EntityKey) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..9].copy_from_slice(&entity.to_bytes());
        b[9] = tag::BREAKDOWNS;
        b
    }

    /// The entity of a breakdowns row's key, `None` for any other key.
    pub fn breakdowns_entity(b: &[u8]) -> Option<EntityKey> {
        match b {
            [entity @ .., tag::BREAKDOWNS] if b.len() == 10 => EntityKey::from_bytes(entity),
            _ => None,
        }
    }

    /// The stored key of `corp`'s member-day row of `day`, in the `stats` table (see the
    /// module docs): the corporation, [`tag::MEMBER_DAYS`], the day. Rows of one corporation
    /// sort by day, so a window's rows are one range.
    pub fn member_days_key(corp: EntityKey, day: i32) -> [u8; 14] {
        let mut b = [0u8; 14];
        b[..9].copy_from_slice(&corp.to_bytes());
        b[9] = tag::MEMBER_DAYS;
        b[10..].copy_from_slice(&day_bytes(day));
        b
    }

    /// The corporation and day of a member-day row's key, `None` for any other key.
    pub fn member_days_of(b: &[u8]) -> Option<(EntityKey, i32)> {
        match b {
            [entity @ .., tag::MEMBER_DAYS, _, _, _, _] if b.len() == 14 => {
                Some((EntityKey::from_bytes(entity)?, day_from(&b[10..])?))
            }
            _ => None,
        }
    }

    /// The entity of any stored key of the `stats` table: a statistic's, or a packed row's.
    pub fn entity_of_stored(b: &[u8]) -> Option<EntityKey> {
        StatKey::breakdowns_entity(b)
            .or_else(|| StatKey::member_days_of(b).map(|(e, _)| e))
            .or_else(|| StatKey::from_bytes(b).map(|k| k.entity))
    }

    /// The prefix of every key of `entity` with dimension tag `tag` (see [`tag`]).
    pub fn prefix(entity: EntityKey, tag: u8) -> Vec<u8> {
        let mut b = entity.to_bytes().to_vec();
        b.push(tag);
        b
    }

    /// The day-major prefix of every bucket of `day`.
    pub fn day_prefix(day: i32) -> [u8; 4] {
        day_bytes(day)
    }

    /// Whether this key is ranked on the leaderboards: an entity's all-time or window stats.
    pub fn leaderboard_window(self) -> Option<u8> {
        match self.dim {
            Dim::All => Some(0),
            Dim::Window(w) => Some(w + 1),
            _ => None,
        }
    }
}

/// What leaderboards rank by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Metric {
    Kills = 0,
    IskDestroyed = 1,
    PointsDestroyed = 2,
    SoloKills = 3,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::Kills,
        Metric::IskDestroyed,
        Metric::PointsDestroyed,
        Metric::SoloKills,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Kills => "kills",
            Metric::IskDestroyed => "isk_destroyed",
            Metric::PointsDestroyed => "points_destroyed",
            Metric::SoloKills => "solo_kills",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The value ranked (ISK in cents).
    pub fn value(self, s: &Stats) -> i128 {
        match self {
            Metric::Kills => s.sums.kills as i128,
            Metric::IskDestroyed => s.sums.isk_destroyed_cents,
            Metric::PointsDestroyed => s.sums.points_destroyed as i128,
            Metric::SoloKills => s.sums.solo_kills as i128,
        }
    }
}

/// One leaderboard entry: entities with a positive value, ordered by value descending, then id.
/// `window` is 0 for all time, `1 + window index` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RankKey {
    pub kind: EntityKind,
    pub window: u8,
    pub metric: Metric,
    pub value: i128,
    pub id: u64,
}

impl RankKey {
    /// The entries that change when the row of `key` goes from `old` to `new`: `emit(entry,
    /// true)` for one to put, `emit(entry, false)` for one to delete. Allocates nothing.
    pub fn changes(key: StatKey, old: &Stats, new: &Stats, mut emit: impl FnMut(RankKey, bool)) {
        let Some(window) = key.leaderboard_window() else {
            return;
        };
        for metric in Metric::ALL {
            let (was, is) = (metric.value(old), metric.value(new));
            if was == is {
                continue;
            }
            let entry = |value| RankKey {
                kind: key.entity.kind,
                window,
                metric,
                value,
                id: key.entity.id,
            };
            if was > 0 {
                emit(entry(was), false);
            }
            if is > 0 {
                emit(entry(is), true);
            }
        }
    }

    /// A sort key in the order of [`RankKey::to_bytes`] (value descending; values are > 0).
    pub fn store_order(&self) -> (u8, u8, u8, std::cmp::Reverse<i128>, u64) {
        (
            self.kind as u8,
            self.window,
            self.metric as u8,
            std::cmp::Reverse(self.value),
            self.id,
        )
    }

    /// The entries `stats` of the entity/window in `key` holds, one per metric with a value > 0.
    pub fn entries(key: StatKey, stats: &Stats) -> Vec<RankKey> {
        let Some(window) = key.leaderboard_window() else {
            return Vec::new();
        };
        Metric::ALL
            .into_iter()
            .filter_map(|metric| {
                let value = metric.value(stats);
                (value > 0).then_some(RankKey {
                    kind: key.entity.kind,
                    window,
                    metric,
                    value,
                    id: key.entity.id,
                })
            })
            .collect()
    }

    /// `[kind][window][metric][u128::MAX - value][id]`: ascending bytes = the ranking.
    /// The length of [`RankKey::to_bytes`].
    pub const LEN: usize = 27;

    pub fn to_bytes(self) -> [u8; RankKey::LEN] {
        let mut b = [0u8; RankKey::LEN];
        b[0] = self.kind as u8;
        b[1] = self.window;
        b[2] = self.metric as u8;
        b[3..19].copy_from_slice(&(u128::MAX - self.value as u128).to_be_bytes());
        b[19..].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<RankKey> {
        if b.len() != 27 {
            return None;
        }
        Some(RankKey {
            kind: EntityKind::from_u8(b[0])?,
            window: b[1],
            metric: *Metric::ALL.get(b[2] as usize)?,
            value: (u128::MAX - u128::from_be_bytes(b[3..19].try_into().ok()?)) as i128,
            id: u64::from_be_bytes(b[19..].try_into().ok()?),
        })
    }

    /// The prefix of one leaderboard.
    pub fn prefix(kind: EntityKind, window: u8, metric: Metric) -> [u8; 3] {
        [kind as u8, window, metric as u8]
    }
}

/// How deep the all-time leaderboard index goes, board by board (a board: a kind and a
/// metric): an entry is indexed when it ranks at or before its board's floor, a position in
/// the ranking (`None`: every entry is). The API reads at most the first 1,000 entries of a
/// board, so the store keeps a few thousand rather than one per entity: on a killmail of
/// 20,000 new characters, the puts of entries that rank below every floor were 43% of the
/// checkpoint's RocksDB operations. The store moves the floors (see `kmflow::state::ranks`);
/// the shards only leave out the changes below them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RankFloors([[Option<RankKey>; 4]; 3]);

impl RankFloors {
    /// The floor of the all-time board of `kind` by `metric`.
    pub fn get(&self, kind: EntityKind, metric: Metric) -> Option<RankKey> {
        self.0[kind as usize][metric as usize]
    }

    pub fn set(&mut self, kind: EntityKind, metric: Metric, floor: Option<RankKey>) {
        self.0[kind as usize][metric as usize] = floor;
    }

    /// Whether the index holds `entry` (windows are ranked from their day buckets, never
    /// indexed: they are not floored).
    pub fn indexes(&self, entry: &RankKey) -> bool {
        entry.window != 0
            || self
                .get(entry.kind, entry.metric)
                .is_none_or(|f| entry.store_order() <= f.store_order())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RankKey::changes` is the difference of the entries before and after: a delete for
    /// every entry that goes, a put for every entry that comes, for values of every sign.
    #[test]
    fn rank_changes_are_the_entries_difference() {
        let values = [-2i64, -1, 0, 1, 2, 7];
        let key = StatKey::all(EntityKey::new(EntityKind::Alliance, 99_000_001));
        let stats = |k: i64, p: i64, s: i64, isk: i64| {
            let mut st = Stats::default();
            st.sums.kills = k;
            st.sums.points_destroyed = p;
            st.sums.solo_kills = s;
            st.sums.isk_destroyed_cents = isk as i128 * 1_000_000_000_000;
            st
        };
        let mut cases = 0;
        for &a in &values {
            for &b in &values {
                for &c in &values {
                    let old = stats(a, b, c, a * b);
                    let new = stats(b, c, a, c - a);
                    let (was, is) = (RankKey::entries(key, &old), RankKey::entries(key, &new));
                    let mut expected: Vec<(RankKey, bool)> = was
                        .iter()
                        .filter(|r| !is.contains(r))
                        .map(|r| (*r, false))
                        .chain(is.iter().filter(|r| !was.contains(r)).map(|r| (*r, true)))
                        .collect();
                    let mut got = Vec::new();
                    RankKey::changes(key, &old, &new, |r, put| got.push((r, put)));
                    expected.sort();
                    got.sort();
                    assert_eq!(got, expected, "{old:?} -> {new:?}");
                    cases += usize::from(!got.is_empty());
                }
            }
        }
        assert!(cases > 100, "most cases move an entry");
        let day = StatKey::new(key.entity, Dim::Day(1));
        let mut none = Vec::new();
        RankKey::changes(day, &Stats::default(), &stats(1, 1, 1, 1), |r, p| {
            none.push((r, p))
        });
        assert!(none.is_empty(), "no leaderboard for day buckets");
    }

    #[test]
    fn stat_keys_round_trip_and_order() {
        let e = EntityKey::new(EntityKind::Corporation, 98_000_001);
        let dims = [
            Dim::All,
            Dim::Month(202112),
            Dim::Day(-3),
            Dim::Day(18_963),
            Dim::Window(2),
            Dim::Group(25),
            Dim::Ship(587),
            Dim::System(30_000_142),
            Dim::Hour(167),
            Dim::Member(90_000_001),
            Dim::MemberDay(18_963, 90_000_001),
        ];
        for d in dims {
            let k = StatKey::new(e, d);
            assert_eq!(StatKey::from_bytes(&k.to_bytes()), Some(k), "{d:?}");
            if let Some(b) = k.day_major_bytes() {
                assert_eq!(StatKey::from_day_major_bytes(&b), Some(k));
            }
        }
        let a = StatKey::new(e, Dim::Day(-3)).day_major_bytes().unwrap();
        let b = StatKey::new(e, Dim::Day(5)).day_major_bytes().unwrap();
        assert!(a < b);
        assert!(StatKey::all(e).to_bytes() < StatKey::new(e, Dim::Month(1)).to_bytes());
    }

    /// `KeyBytes` compares as the byte strings RocksDB compares: shorter prefixes first.
    #[test]
    fn key_bytes_order_is_bytewise() {
        let mut keys = Vec::new();
        for (kind, id) in [
            (EntityKind::Character, 1u64),
            (EntityKind::Corporation, 1 << 40),
        ] {
            let e = EntityKey::new(kind, id);
            for d in [
                Dim::All,
                Dim::Month(0),
                Dim::Month(u32::MAX),
                Dim::Day(-1),
                Dim::Day(0),
                Dim::Window(0),
                Dim::Hour(255),
                Dim::Member(0),
                Dim::MemberDay(i32::MIN, u64::MAX),
                Dim::MemberDay(i32::MAX, 0),
            ] {
                let k = StatKey::new(e, d);
                keys.push(k.to_bytes());
                keys.extend(k.day_major_bytes());
            }
        }
        for (metric, value, id) in [(Metric::Kills, 1, 1), (Metric::IskDestroyed, i128::MAX, 0)] {
            let r = RankKey {
                kind: EntityKind::Alliance,
                window: 1,
                metric,
                value,
                id,
            };
            keys.push(KeyBytes::from_slice(&r.to_bytes()));
        }
        keys.push(KeyBytes::from_slice(&[]));
        keys.push(KeyBytes::from_slice(&[0]));
        keys.push(KeyBytes::from_slice(&[0; KeyBytes::CAPACITY]));
        for a in &keys {
            assert!(a.len() <= KeyBytes::CAPACITY);
            for b in &keys {
                assert_eq!(a.cmp(b), a[..].cmp(&b[..]), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn rank_keys_sort_by_value_descending_then_id() {
        let k = |value, id| RankKey {
            kind: EntityKind::Character,
            window: 0,
            metric: Metric::Kills,
            value,
            id,
        };
        let mut v = [k(5, 2), k(7, 9), k(5, 1), k(1 << 100, 3)];
        v.sort_by_key(|r| r.to_bytes());
        assert_eq!(v, [k(1 << 100, 3), k(7, 9), k(5, 1), k(5, 2)]);
        for r in v {
            assert_eq!(RankKey::from_bytes(&r.to_bytes()), Some(r));
        }
    }
}
