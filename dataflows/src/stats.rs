//! All-time statistics of one entity, and the difference type the dataflow accumulates.
//!
//! `Stats` is both the stored aggregate and a differential-dataflow difference: counts and sums
//! add, and `first_seen`/`last_seen` merge by min/max. Negation (a retraction) drops the two
//! times: a retraction is always paired with the re-insertion of the same killmail (its ESI part,
//! hence its time and participants, never change), so the times stay correct.

use differential_dataflow::difference::{IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stats {
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
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
}

impl Stats {
    /// Merges `other` into `self`: sums add, times take min/max.
    pub fn merge(&mut self, other: &Stats) {
        self.involved += other.involved;
        self.kills += other.kills;
        self.losses += other.losses;
        self.npc_losses += other.npc_losses;
        self.final_blows += other.final_blows;
        self.solo_kills += other.solo_kills;
        self.solo_losses += other.solo_losses;
        self.solo_unknown += other.solo_unknown;
        self.damage_done += other.damage_done;
        self.damage_taken += other.damage_taken;
        self.isk_destroyed_cents += other.isk_destroyed_cents;
        self.isk_lost_cents += other.isk_lost_cents;
        self.points_destroyed += other.points_destroyed;
        self.points_lost += other.points_lost;
        self.first_seen = min_opt(self.first_seen, other.first_seen);
        self.last_seen = max_opt(self.last_seen, other.last_seen);
    }

    /// The retraction of `self`: sums negated, times dropped (see the module docs).
    pub fn negated(&self) -> Stats {
        Stats {
            involved: -self.involved,
            kills: -self.kills,
            losses: -self.losses,
            npc_losses: -self.npc_losses,
            final_blows: -self.final_blows,
            solo_kills: -self.solo_kills,
            solo_losses: -self.solo_losses,
            solo_unknown: -self.solo_unknown,
            damage_done: -self.damage_done,
            damage_taken: -self.damage_taken,
            isk_destroyed_cents: -self.isk_destroyed_cents,
            isk_lost_cents: -self.isk_lost_cents,
            points_destroyed: -self.points_destroyed,
            points_lost: -self.points_lost,
            first_seen: None,
            last_seen: None,
        }
    }

    /// The same sums without `first_seen`/`last_seen` (what windows and day buckets keep).
    pub fn without_times(mut self) -> Stats {
        self.first_seen = None;
        self.last_seen = None;
        self
    }

    /// True when the entity has never been seen (nothing to serve).
    pub fn is_empty(&self) -> bool {
        *self == Stats::default()
    }

    /// Records that the entity appears on a killmail at time `t`.
    pub fn seen_at(&mut self, t: i64) {
        self.first_seen = min_opt(self.first_seen, Some(t));
        self.last_seen = max_opt(self.last_seen, Some(t));
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

impl IsZero for Stats {
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

impl Semigroup for Stats {
    fn plus_equals(&mut self, rhs: &Self) {
        self.merge(rhs);
    }
}

impl Monoid for Stats {
    fn zero() -> Self {
        Stats::default()
    }
}

impl Multiply<isize> for Stats {
    type Output = Stats;
    fn multiply(self, rhs: &isize) -> Stats {
        match *rhs {
            1 => self,
            -1 => self.negated(),
            0 => Stats::default(),
            n => {
                // Only ±1 occur in kmflow's dataflows; general n is repeated merging.
                let unit = if n > 0 { self } else { self.negated() };
                let mut acc = Stats::default();
                for _ in 0..n.unsigned_abs() {
                    acc.merge(&unit);
                }
                acc
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retraction_then_reinsertion_keeps_times() {
        let mut s = Stats {
            kills: 1,
            first_seen: Some(10),
            last_seen: Some(10),
            ..Default::default()
        };
        let old = s;
        s.merge(&old.negated());
        s.merge(&Stats {
            kills: 1,
            isk_destroyed_cents: 5,
            first_seen: Some(10),
            last_seen: Some(10),
            ..Default::default()
        });
        assert_eq!(s.kills, 1);
        assert_eq!(s.isk_destroyed_cents, 5);
        assert_eq!((s.first_seen, s.last_seen), (Some(10), Some(10)));
    }

    #[test]
    fn multiply_by_sign() {
        let s = Stats {
            kills: 2,
            first_seen: Some(1),
            last_seen: Some(3),
            ..Default::default()
        };
        assert_eq!(s.multiply(&1), s);
        assert_eq!(s.multiply(&-1).kills, -2);
        assert_eq!(s.multiply(&-1).first_seen, None);
        assert!(s.multiply(&0).is_zero());
    }
}
