//! The statistics of one entity in one scope, split by their algebra:
//!
//! - [`Sums`]: counts and sums. An abelian group (differential's `Semigroup`, `Monoid`,
//!   `Abelian`): a retraction is the exact negation, and any order of updates gives one sum.
//! - [`Seen`]: the first and last time the entity appears. A join-semilattice (min, max):
//!   idempotent, with no inverse. A retraction contributes nothing to it (`Seen::default()`),
//!   which is exact because a killmail's time and participants never change between its
//!   versions (only its `zkb` does): the version that replaces a retracted one re-asserts the
//!   same times.
//!
//! [`Stats`] is the product of the two: the delta the dataflow sums per epoch and statistic
//! (a commutative monoid), the row stored in RocksDB (a merge operand is a `Stats` delta) and
//! what the API serves.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Semigroup};
use serde::{Deserialize, Serialize};

/// Counts and sums: an abelian group under field-wise addition.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Sums {
    /// Killmails the entity appears on (NPC ones included).
    pub involved: i64,
    pub kills: i64,
    pub losses: i64,
    pub npc_losses: i64,
    pub final_blows: i64,
    pub solo_kills: i64,
    pub solo_losses: i64,
    /// Kills and losses whose solo status is unknown: no `zkb`, and no static data for a ship.
    pub solo_unknown: i64,
    pub damage_done: i64,
    pub damage_taken: i64,
    pub isk_destroyed_cents: i128,
    pub isk_lost_cents: i128,
    pub points_destroyed: i64,
    pub points_lost: i64,
}

/// Calls macro `$m` with the name of every field of [`Sums`].
macro_rules! sum_fields {
    ($m:ident) => {
        $m!(
            involved,
            kills,
            losses,
            npc_losses,
            final_blows,
            solo_kills,
            solo_losses,
            solo_unknown,
            damage_done,
            damage_taken,
            isk_destroyed_cents,
            isk_lost_cents,
            points_destroyed,
            points_lost
        )
    };
}

impl Sums {
    /// Adds `other` field by field. The decoder bounds every input (`decode::MAX_DAMAGE`,
    /// ISK and points), so a sum reaches `i64::MAX` only after billions of killmails of one
    /// entity; the arithmetic saturates there rather than wrap, so no input can turn a sum
    /// negative. Within that range (every reachable value) the group laws hold exactly.
    #[inline]
    pub fn add(&mut self, other: &Sums) {
        let mut a = *self;
        macro_rules! add {
            ($($f:ident),*) => { $( a.$f = a.$f.saturating_add(other.$f); )* };
        }
        sum_fields!(add);
        *self = a;
    }

    /// Every field in declaration order, as an `i128` (what a codec writes).
    #[inline]
    pub fn fields(&self) -> [i128; 14] {
        macro_rules! list {
            ($($f:ident),*) => { [$( self.$f as i128 ),*] };
        }
        sum_fields!(list)
    }

    /// The sums of `fields` in declaration order (as [`Sums::fields`] gives them); `None` if
    /// one does not fit its field.
    #[inline]
    pub fn from_fields(fields: [i128; 14]) -> Option<Sums> {
        let mut next = fields.into_iter();
        macro_rules! build {
            ($($f:ident),*) => { Sums { $( $f: next.next()?.try_into().ok()? ),* } };
        }
        Some(sum_fields!(build))
    }

    /// The inverse: every field negated.
    pub fn negated(&self) -> Sums {
        let mut a = *self;
        macro_rules! neg {
            ($($f:ident),*) => { $( a.$f = a.$f.saturating_neg(); )* };
        }
        sum_fields!(neg);
        a
    }
}

impl IsZero for Sums {
    fn is_zero(&self) -> bool {
        *self == Sums::default()
    }
}

impl Semigroup for Sums {
    fn plus_equals(&mut self, rhs: &Self) {
        self.add(rhs);
    }
}

impl Monoid for Sums {
    fn zero() -> Self {
        Sums::default()
    }
}

impl Abelian for Sums {
    fn negate(&mut self) {
        *self = self.negated();
    }
}

/// When an entity was first and last seen: a join-semilattice (min of firsts, max of lasts).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Seen {
    pub first: Option<i64>,
    pub last: Option<i64>,
}

impl Seen {
    /// Seen once, at `t`.
    pub fn at(t: i64) -> Seen {
        Seen {
            first: Some(t),
            last: Some(t),
        }
    }

    /// The join: earliest first, latest last.
    #[inline]
    pub fn join(&mut self, other: &Seen) {
        self.first = min_opt(self.first, other.first);
        self.last = max_opt(self.last, other.last);
    }
}

/// The statistics of one entity in one scope: sums, and when it was seen.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stats {
    pub sums: Sums,
    pub seen: Seen,
}

impl Stats {
    /// Sums seen at `t`.
    #[inline]
    pub fn at(sums: Sums, t: i64) -> Stats {
        Stats {
            sums,
            seen: Seen::at(t),
        }
    }

    /// Merges `other` into `self`: sums add, times join.
    #[inline]
    pub fn merge(&mut self, other: &Stats) {
        self.sums.add(&other.sums);
        self.seen.join(&other.seen);
    }

    /// The retraction of `self`: sums negated, nothing seen (see the module docs).
    pub fn retraction(&self) -> Stats {
        Stats {
            sums: self.sums.negated(),
            seen: Seen::default(),
        }
    }

    /// The same sums without times (what windows and day buckets keep).
    #[inline]
    pub fn without_times(self) -> Stats {
        Stats {
            sums: self.sums,
            seen: Seen::default(),
        }
    }

    /// True when the entity has never been seen (nothing to serve).
    ///
    /// Every sum folded into one word, compared once: the derived comparison with
    /// `Stats::default()` branched field by field, and a checkpoint asks this of every bucket
    /// it writes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        let any = self.sums.fields().into_iter().fold(0, |any, f| any | f);
        any == 0 && self.seen.first.is_none() && self.seen.last.is_none()
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sums() -> impl Strategy<Value = Sums> {
        // Within the reachable range: three of these never overflow.
        const R: i64 = i64::MAX / 4;
        (-R..R, -R..R, -R..R, -(R as i128)..(R as i128), -R..R).prop_map(|(a, b, c, d, e)| Sums {
            involved: a,
            kills: b,
            losses: c,
            isk_destroyed_cents: d,
            points_lost: e,
            damage_done: a / 2 + e / 2,
            ..Default::default()
        })
    }

    fn seen() -> impl Strategy<Value = Seen> {
        (proptest::option::of(-1000i64..1000), 0i64..1000).prop_map(|(f, d)| Seen {
            first: f,
            last: f.map(|f| f + d),
        })
    }

    proptest! {
        #[test]
        fn sums_are_an_abelian_group(a in sums(), b in sums(), c in sums()) {
            let plus = |x: Sums, y: Sums| { let mut z = x; z.plus_equals(&y); z };
            prop_assert_eq!(plus(a, b), plus(b, a));
            prop_assert_eq!(plus(plus(a, b), c), plus(a, plus(b, c)));
            prop_assert_eq!(plus(a, Sums::zero()), a);
            prop_assert!(plus(a, a.negated()).is_zero());
        }

        #[test]
        fn sums_saturate_instead_of_wrapping(a in 1i64..i64::MAX) {
            let mut s = Sums { damage_done: i64::MAX, ..Default::default() };
            s.add(&Sums { damage_done: a, ..Default::default() });
            prop_assert_eq!(s.damage_done, i64::MAX);
        }

        #[test]
        fn seen_is_a_semilattice(a in seen(), b in seen(), c in seen()) {
            let join = |x: Seen, y: Seen| { let mut z = x; z.join(&y); z };
            prop_assert_eq!(join(a, b), join(b, a));
            prop_assert_eq!(join(join(a, b), c), join(a, join(b, c)));
            prop_assert_eq!(join(a, a), a);
            prop_assert_eq!(join(a, Seen::default()), a);
        }
    }

    /// The fields come back as they went, and a value too wide for its field is refused.
    #[test]
    fn sums_round_trip_through_their_fields() {
        let mut fields = [0i128; 14];
        for (i, f) in fields.iter_mut().enumerate() {
            *f = (i as i128 + 1) * if i % 2 == 0 { -1 } else { 1 };
        }
        let sums = Sums::from_fields(fields).unwrap();
        assert_eq!(sums.fields(), fields);
        assert_eq!(sums.involved, -1);
        assert_eq!(sums.isk_destroyed_cents, -11);
        assert_eq!(sums.points_lost, 14);
        fields[0] = i64::MAX as i128 + 1;
        assert_eq!(Sums::from_fields(fields), None);
        fields[0] = 0;
        fields[10] = i128::MIN;
        assert_eq!(
            Sums::from_fields(fields).unwrap().isk_destroyed_cents,
            i128::MIN
        );
    }

    /// Empty exactly when equal to the default: any one field set, to any value (the high
    /// bits of an ISK sum alone included), makes it non-empty.
    #[test]
    fn empty_is_the_default_and_nothing_else() {
        assert!(Stats::default().is_empty());
        for v in [1i64, -1, i64::MIN, i64::MAX, 1 << 40] {
            let mut stats = Vec::new();
            macro_rules! one {
                ($($f:ident),*) => { $(
                    let mut s = Stats::default();
                    s.sums.$f = v as _;
                    stats.push(s);
                )* };
            }
            sum_fields!(one);
            stats.push(Stats {
                seen: Seen {
                    first: Some(v),
                    last: None,
                },
                ..Default::default()
            });
            stats.push(Stats {
                seen: Seen {
                    first: None,
                    last: Some(v),
                },
                ..Default::default()
            });
            for s in stats {
                assert!(!s.is_empty(), "{s:?}");
            }
        }
        let mut high = Stats::default();
        high.sums.isk_lost_cents = 1 << 100;
        assert!(!high.is_empty());
    }

    #[test]
    fn retraction_then_reinsertion_keeps_times() {
        let one = |kills, isk| {
            Stats::at(
                Sums {
                    kills,
                    isk_destroyed_cents: isk,
                    ..Default::default()
                },
                10,
            )
        };
        let mut s = one(1, 0);
        let old = s;
        s.merge(&old.retraction());
        s.merge(&one(1, 5));
        assert_eq!(s.sums.kills, 1);
        assert_eq!(s.sums.isk_destroyed_cents, 5);
        assert_eq!(s.seen, Seen::at(10));
    }
}
