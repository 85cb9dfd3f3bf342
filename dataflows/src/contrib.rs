//! What one killmail contributes to the statistics of every entity on it.

use crate::keys::{Dim, StatKey};
use crate::model::{Attacker, EntityKey, EntityKind, Killmail};
use crate::stats::Stats;
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
    /// Ship types the entity flew as an attacker (non-NPC killmails only).
    ships: Vec<u32>,
}

/// Folds the rows of `km` into one [`Share`] per distinct key: `attacker_key`/`victim_key` say
/// which key (if any) a row belongs to.
///
/// The API contract: a killmail counts once per key however many of its rows carry it; a key
/// both attacker and victim (awox) gets a kill and a loss; NPC killmails count only as
/// `npc_losses` for the victim side and in `involved`/`first_seen`/`last_seen` for everyone.
fn shares<K: Copy + Eq>(
    km: &Killmail,
    attacker_key: impl Fn(&Attacker) -> Option<K>,
    victim_key: Option<K>,
) -> Vec<Share<K>> {
    let npc = km.is_npc();
    let zkb = km.zkb.as_ref();
    let isk = zkb.map_or(0, |z| z.total_value_cents as i128);
    let points = zkb.map_or(0, |z| z.points);
    let solo = km.is_solo();
    let mut out: Vec<Share<K>> = Vec::new();
    let new_share = |key: K| {
        let mut stats = Stats {
            involved: 1,
            ..Default::default()
        };
        stats.seen_at(km.time);
        Share {
            key,
            stats,
            ships: Vec::new(),
        }
    };
    for a in &km.attackers {
        let Some(key) = attacker_key(a) else {
            continue;
        };
        let idx = match out.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                let mut share = new_share(key);
                if !npc {
                    let s = &mut share.stats;
                    s.kills = 1;
                    s.isk_destroyed_cents = isk;
                    s.points_destroyed = points;
                    match solo {
                        Some(solo) => s.solo_kills = solo as i64,
                        None => s.solo_unknown = 1,
                    }
                }
                out.push(share);
                out.len() - 1
            }
        };
        if !npc {
            let share = &mut out[idx];
            share.stats.damage_done += a.damage_done as i64;
            if a.final_blow {
                share.stats.final_blows = 1;
            }
            if let Some(t) = a.ship_type_id {
                if !share.ships.contains(&t) {
                    share.ships.push(t);
                }
            }
        }
    }
    if let Some(key) = victim_key {
        let idx = match out.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                out.push(new_share(key));
                out.len() - 1
            }
        };
        let s = &mut out[idx].stats;
        if npc {
            s.npc_losses = 1;
        } else {
            s.losses = 1;
            s.damage_taken = km.victim.damage_taken as i64;
            s.isk_lost_cents = isk;
            s.points_lost = points;
            match solo {
                Some(solo) => s.solo_losses = solo as i64,
                // An awox already counted as unknown once for this killmail.
                None => s.solo_unknown = 1,
            }
        }
    }
    out
}

/// The contribution of `km` to every statistic it touches, one entry per key.
pub fn contributions(km: &Killmail, level: StatsLevel) -> Vec<(StatKey, Stats)> {
    let per_kind = 1 + km.attackers.len().min(64);
    let mut out: Vec<(StatKey, Stats)> = Vec::with_capacity(match level {
        StatsLevel::AllTime => 3 * per_kind,
        StatsLevel::Full => 24 * per_kind,
    });
    let day = day_of(km.time);
    let month = month_of_day(day);
    let hour = week_hour(km.time);
    let group = km.derived.victim_group.unwrap_or(0);
    for kind in EntityKind::ALL {
        for share in shares(km, |a| kind.attacker_id(a), kind.victim_id(&km.victim)) {
            let entity = EntityKey::new(kind, share.key);
            let s = share.stats;
            out.push((StatKey::all(entity), s));
            if level == StatsLevel::AllTime {
                continue;
            }
            let key = |dim| StatKey::new(entity, dim);
            out.push((key(Dim::Month(month)), s));
            out.push((key(Dim::Day(day)), s.without_times()));
            out.push((
                key(Dim::System(km.solar_system_id)),
                Stats {
                    involved: 1,
                    kills: s.kills,
                    losses: s.losses,
                    ..Default::default()
                },
            ));
            if s.kills > 0 {
                let one_kill = Stats {
                    kills: 1,
                    ..Default::default()
                };
                out.push((key(Dim::Hour(hour)), one_kill));
                for t in &share.ships {
                    out.push((key(Dim::Ship(*t)), one_kill));
                }
            }
            if s.kills > 0 || s.losses > 0 || s.npc_losses > 0 {
                out.push((
                    key(Dim::Group(group)),
                    Stats {
                        kills: s.kills,
                        losses: s.losses,
                        npc_losses: s.npc_losses,
                        isk_destroyed_cents: s.isk_destroyed_cents,
                        isk_lost_cents: s.isk_lost_cents,
                        ..Default::default()
                    },
                ));
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
        );
        for share in rows {
            let (corp, ch) = share.key;
            let entity = EntityKey::new(EntityKind::Corporation, corp);
            out.push((StatKey::new(entity, Dim::Member(ch)), share.stats));
            out.push((
                StatKey::new(entity, Dim::MemberDay(day, ch)),
                share.stats.without_times(),
            ));
        }
    }
    out
}
