//! What one killmail contributes to the statistics of every entity on it.

use crate::keys::{Dim, StatKey};
use crate::model::{Attacker, EntityKey, EntityKind, Killmail};
use crate::stats::{Stats, Sums};
use crate::time::{day_of, month_of_day, week_hour};

/// Which statistics the pipeline maintains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatsLevel {
    /// All-time statistics only (the cheapest; what the first pipeline kept).
    AllTime,
    /// Everything: all time, months, day buckets for the rolling windows, breakdowns by victim
    /// ship group, ship flown, system and hour of week, and corporation rosters.
    #[default]
    Full,
}

/// One entity's share of a killmail, before it is spread over dimensions.
struct Share<K> {
    key: K,
    stats: Stats,
}

/// The shares of a killmail and the ship types each flew as an attacker (non-NPC killmails
/// only): `(share, ship)` sorted and distinct, in one list rather than a list per share (an
/// allocation per attacker on the largest killmails).
struct Shares<K> {
    shares: Vec<Share<K>>,
    ships: Vec<(u32, u32)>,
}

impl<K> Shares<K> {
    /// The ship types of share `i`, given `at`: where the previous share's ended.
    fn ships_of(&self, i: usize, at: &mut usize) -> &[(u32, u32)] {
        let start = *at;
        while self.ships.get(*at).is_some_and(|&(s, _)| s as usize == i) {
            *at += 1;
        }
        &self.ships[start..*at]
    }
}

/// Folds the rows of `km` into one [`Share`] per distinct key: `attacker_key`/`victim_key` say
/// which key (if any) a row belongs to; `with_ships` whether to list the ships flown.
///
/// The API contract: a killmail counts once per key however many of its rows carry it; a key
/// both attacker and victim (awox) gets a kill and a loss; NPC killmails count only as
/// `npc_losses` for the victim side and in `involved`/`first_seen`/`last_seen` for everyone.
fn shares<K: Copy + Eq + std::hash::Hash>(
    km: &Killmail,
    attacker_key: impl Fn(&Attacker) -> Option<K>,
    victim_key: Option<K>,
    with_ships: bool,
) -> Shares<K> {
    let npc = km.is_npc();
    let zkb = km.zkb.as_ref();
    let isk = zkb.map_or(0, |z| z.total_value_cents as i128);
    let points = zkb.map_or(0, |z| z.points);
    let solo = km.is_solo();
    let rows = km.attackers.len() + 1;
    // Room for every row: a large killmail grew it by doubling, copying every share each time.
    let mut out: Vec<Share<K>> = Vec::with_capacity(rows);
    let mut ships: Vec<(u32, u32)> = Vec::new();
    // Rows to shares by key: O(rows), whatever the number of attackers.
    let mut index: rustc_hash::FxHashMap<K, usize> = Default::default();
    index.reserve(rows);
    let new_share = |key: K| {
        let stats = Stats::at(
            Sums {
                involved: 1,
                ..Default::default()
            },
            km.time,
        );
        Share { key, stats }
    };
    for a in &km.attackers {
        let Some(key) = attacker_key(a) else {
            continue;
        };
        let idx = match index.get(&key) {
            Some(&i) => i,
            None => {
                let mut share = new_share(key);
                if !npc {
                    let s = &mut share.stats;
                    s.sums.kills = 1;
                    s.sums.isk_destroyed_cents = isk;
                    s.sums.points_destroyed = points;
                    match solo {
                        Some(solo) => s.sums.solo_kills = solo as i64,
                        None => s.sums.solo_unknown = 1,
                    }
                }
                out.push(share);
                index.insert(key, out.len() - 1);
                out.len() - 1
            }
        };
        if !npc {
            let share = &mut out[idx];
            // At most MAX_DAMAGE (10^11) each: the decoder rejects more.
            share.stats.sums.damage_done += a.damage_done as i64;
            if a.final_blow {
                share.stats.sums.final_blows = 1;
            }
            if with_ships {
                ships.extend(a.ship_type_id.map(|t| (idx as u32, t)));
            }
        }
    }
    ships.sort_unstable();
    ships.dedup();
    if let Some(key) = victim_key {
        let idx = match index.get(&key) {
            Some(&i) => i,
            None => {
                out.push(new_share(key));
                out.len() - 1
            }
        };
        let s = &mut out[idx].stats;
        if npc {
            s.sums.npc_losses = 1;
        } else {
            s.sums.losses = 1;
            s.sums.damage_taken = km.victim.damage_taken as i64;
            s.sums.isk_lost_cents = isk;
            s.sums.points_lost = points;
            match solo {
                Some(solo) => s.sums.solo_losses = solo as i64,
                // An awox already counted as unknown once for this killmail.
                None => s.sums.solo_unknown = 1,
            }
        }
    }
    Shares { shares: out, ships }
}

/// The contribution of `km` to every statistic it touches, one entry per key.
pub fn contributions(km: &Killmail, level: StatsLevel) -> Vec<(StatKey, Stats)> {
    let per_kind = 1 + km.attackers.len().min(64);
    let mut out = Vec::with_capacity(match level {
        StatsLevel::AllTime => 3 * per_kind,
        StatsLevel::Full => 24 * per_kind,
    });
    for_each_contribution(km, level, |key, stats| out.push((key, stats)));
    out
}

/// [`contributions`], each handed to `emit` as it is made: the combiner sums them straight
/// into its per-epoch map, so the fan-out (tens of thousands of statistics for the largest
/// killmails) is never materialized.
pub fn for_each_contribution(
    km: &Killmail,
    level: StatsLevel,
    mut emit: impl FnMut(StatKey, Stats),
) {
    let day = day_of(km.time);
    let hour = week_hour(km.time);
    let group = km.derived.victim_group.unwrap_or(0);
    for kind in EntityKind::ALL {
        let all = shares(
            km,
            |a| kind.attacker_id(a),
            kind.victim_id(&km.victim),
            true,
        );
        let mut at = 0;
        for (i, share) in all.shares.iter().enumerate() {
            let ships = all.ships_of(i, &mut at);
            let entity = EntityKey::new(kind, share.key);
            let s = share.stats;
            emit(StatKey::all(entity), s);
            if level == StatsLevel::AllTime {
                continue;
            }
            let key = |dim| StatKey::new(entity, dim);
            emit(
                key(Dim::Share {
                    day,
                    system: km.solar_system_id,
                    group,
                    hour,
                }),
                s,
            );
            if s.sums.kills > 0 {
                for &(_, t) in ships {
                    emit(
                        key(Dim::Ship(t)),
                        Stats {
                            sums: Sums {
                                kills: 1,
                                ..Default::default()
                            },
                            ..Default::default()
                        },
                    );
                }
            }
        }
    }
    if level == StatsLevel::Full {
        // Rosters: a character counts under the corporation named on its own row.
        let member = |corp: Option<u64>, ch: Option<u64>| Some((corp?, ch?));
        let rows = shares(
            km,
            |a| member(a.corporation_id, a.character_id),
            member(km.victim.corporation_id, km.victim.character_id),
            false,
        );
        for share in rows.shares {
            let (corp, ch) = share.key;
            let entity = EntityKey::new(EntityKind::Corporation, corp);
            // With the times: it adds to the member's all-time row too (`expand`).
            emit(StatKey::new(entity, Dim::MemberDay(day, ch)), share.stats);
        }
    }
}

/// The statistics a delta adds to: a [`Dim::Share`] adds to its month (with the times), its
/// system (involvement, kills, losses), its hour (kills), its victim group (kills, losses,
/// NPC losses, ISK) and its day bucket (every sum), those of them it leaves at zero are not
/// handed to `emit`; a
/// [`Dim::MemberDay`] delta (with the times) adds to the member's all-time row and to its
/// day bucket (without). Any other delta is its own statistic.
pub fn expand(key: StatKey, delta: &Stats, mut emit: impl FnMut(StatKey, Stats)) {
    let (day, system, group, hour) = match key.dim {
        Dim::Share {
            day,
            system,
            group,
            hour,
        } => (day, system, group, hour),
        Dim::MemberDay(_, member) => {
            emit(StatKey::new(key.entity, Dim::Member(member)), *delta);
            emit(key, delta.without_times());
            return;
        }
        _ => {
            emit(key, *delta);
            return;
        }
    };
    let s = &delta.sums;
    let sums = |sums: Sums| Stats {
        sums,
        ..Default::default()
    };
    for (dim, stats) in [
        (Dim::Month(month_of_day(day)), *delta),
        (
            Dim::Group(group),
            sums(Sums {
                kills: s.kills,
                losses: s.losses,
                npc_losses: s.npc_losses,
                isk_destroyed_cents: s.isk_destroyed_cents,
                isk_lost_cents: s.isk_lost_cents,
                ..Default::default()
            }),
        ),
        (
            Dim::System(system),
            sums(Sums {
                involved: s.involved,
                kills: s.kills,
                losses: s.losses,
                ..Default::default()
            }),
        ),
        (
            Dim::Hour(hour),
            sums(Sums {
                kills: s.kills,
                ..Default::default()
            }),
        ),
        (Dim::Day(day), delta.without_times()),
    ] {
        if !stats.is_empty() {
            emit(StatKey::new(key.entity, dim), stats);
        }
    }
}
