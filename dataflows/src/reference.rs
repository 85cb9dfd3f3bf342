//! A from-scratch, single-threaded fold of killmails into statistics: the oracle the dataflow
//! is tested against, and the "floor" baseline of the benchmarks.
//!
//! Written independently of [`crate::contrib`]: it walks each entity's role on each killmail
//! with sets rather than building per-killmail contributions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::keys::{Dim, RankKey, StatKey, WINDOW_DAYS};
use crate::model::{Attacker, EntityKey, EntityKind, Killmail};
use crate::stats::{Seen, Stats, Sums};
use crate::time::{day_of, month_of_day, week_hour};

/// The applied version of a killmail, and the rank of its appraisal: (R2Z2 sequence, read
/// from the live topic), `None` while it has none.
type Applied = (Killmail, Option<(Option<u64>, bool)>);

/// The upsert rule written out on its own (the production rule is `version::upsert`):
/// returns what is applied after `incoming`, read from the live topic or not, arrives when
/// `known` was applied, or `None` when nothing changes.
///
/// The ESI part never changes: only a present `zkb` whose rank (sequence, then live over
/// history) is at least the applied one's replaces the appraisal; a zkb-less version only
/// inserts an unknown killmail.
pub fn upsert_rule(known: Option<&Applied>, incoming: &Killmail, live: bool) -> Option<Applied> {
    let rank = incoming.zkb.map(|_| (incoming.sequence, live));
    let Some((k, k_rank)) = known else {
        return Some((incoming.clone(), rank));
    };
    let rank = rank?;
    if matches!(k_rank, Some(r) if rank < *r) {
        return None;
    }
    let next = Killmail {
        zkb: incoming.zkb,
        sequence: incoming.sequence,
        ..k.clone()
    };
    (next != *k || *k_rank != Some(rank)).then_some((next, Some(rank)))
}

/// Applies killmails in arrival order with the upsert rule; returns the final version of each.
#[derive(Default, Clone)]
pub struct ReferenceFold {
    pub killmails: HashMap<u64, Killmail>,
    ranks: HashMap<u64, Option<(Option<u64>, bool)>>,
}

impl ReferenceFold {
    /// Applies `km`, read from the live topic when `live`, else from a history topic.
    pub fn apply(&mut self, km: &Killmail, live: bool) {
        let id = km.killmail_id;
        let known = self
            .killmails
            .get(&id)
            .map(|k| (k.clone(), self.ranks.get(&id).copied().flatten()));
        if let Some((next, rank)) = upsert_rule(known.as_ref(), km, live) {
            self.killmails.insert(id, next);
            self.ranks.insert(id, rank);
        }
    }

    /// All-time statistics of every entity, computed from scratch in one pass (the floor
    /// baseline: the least work that computes them).
    pub fn stats(&self) -> BTreeMap<EntityKey, Stats> {
        let mut out: BTreeMap<EntityKey, Stats> = BTreeMap::new();
        for km in self.killmails.values() {
            let npc = km.is_npc();
            let (isk, points) = match &km.zkb {
                Some(z) => (z.total_value_cents as i128, z.points),
                None => (0, 0),
            };
            let solo = km.is_solo();
            for kind in EntityKind::ALL {
                let attackers: HashSet<u64> = km
                    .attackers
                    .iter()
                    .filter_map(|a| kind.attacker_id(a))
                    .collect();
                for &id in &attackers {
                    let s = out.entry(EntityKey::new(kind, id)).or_default();
                    s.sums.involved += 1;
                    s.seen.first = Some(s.seen.first.map_or(km.time, |t| t.min(km.time)));
                    s.seen.last = Some(s.seen.last.map_or(km.time, |t| t.max(km.time)));
                    if npc {
                        continue;
                    }
                    s.sums.kills += 1;
                    s.sums.isk_destroyed_cents += isk;
                    s.sums.points_destroyed += points;
                    match solo {
                        Some(true) => s.sums.solo_kills += 1,
                        Some(false) => {}
                        None => s.sums.solo_unknown += 1,
                    }
                    s.sums.damage_done += km
                        .attackers
                        .iter()
                        .filter(|a| kind.attacker_id(a) == Some(id))
                        .map(|a| a.damage_done as i64)
                        .sum::<i64>();
                    if km
                        .attackers
                        .iter()
                        .any(|a| a.final_blow && kind.attacker_id(a) == Some(id))
                    {
                        s.sums.final_blows += 1;
                    }
                }
                if let Some(id) = kind.victim_id(&km.victim) {
                    let s = out.entry(EntityKey::new(kind, id)).or_default();
                    if !attackers.contains(&id) {
                        s.sums.involved += 1;
                    }
                    s.seen.first = Some(s.seen.first.map_or(km.time, |t| t.min(km.time)));
                    s.seen.last = Some(s.seen.last.map_or(km.time, |t| t.max(km.time)));
                    if npc {
                        s.sums.npc_losses += 1;
                    } else {
                        s.sums.losses += 1;
                        s.sums.damage_taken += km.victim.damage_taken as i64;
                        s.sums.isk_lost_cents += isk;
                        s.sums.points_lost += points;
                        match solo {
                            Some(true) => s.sums.solo_losses += 1,
                            Some(false) => {}
                            // An awox counts one unknown killmail, not two.
                            None if !attackers.contains(&id) => s.sums.solo_unknown += 1,
                            None => {}
                        }
                    }
                }
            }
        }
        out
    }

    /// Every statistic (windows ending at `clock_day`, when given) and the leaderboard
    /// index, computed from scratch.
    pub fn full(&self, clock_day: Option<i32>) -> (BTreeMap<StatKey, Stats>, BTreeSet<RankKey>) {
        let mut out: BTreeMap<StatKey, Stats> = BTreeMap::new();
        let mut add = |key: StatKey, s: Stats| out.entry(key).or_default().merge(&s);
        for km in self.killmails.values() {
            let day = day_of(km.time);
            let month = month_of_day(day);
            for kind in EntityKind::ALL {
                let mut ids: BTreeSet<u64> = km
                    .attackers
                    .iter()
                    .filter_map(|a| kind.attacker_id(a))
                    .collect();
                ids.extend(kind.victim_id(&km.victim));
                for id in ids {
                    let e = EntityKey::new(kind, id);
                    let s = role_stats(
                        km,
                        |a| kind.attacker_id(a) == Some(id),
                        kind.victim_id(&km.victim) == Some(id),
                    );
                    let key = |dim| StatKey::new(e, dim);
                    add(key(Dim::All), s);
                    add(key(Dim::Month(month)), s);
                    add(key(Dim::Day(day)), s.without_times());
                    add(
                        key(Dim::System(km.solar_system_id)),
                        Stats {
                            sums: Sums {
                                involved: 1,
                                kills: s.sums.kills,
                                losses: s.sums.losses,
                                ..Default::default()
                            },
                            ..Default::default()
                        },
                    );
                    let kill = Stats {
                        sums: Sums {
                            kills: 1,
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    if s.sums.kills == 1 {
                        add(key(Dim::Hour(week_hour(km.time))), kill);
                        let ships: BTreeSet<u32> = km
                            .attackers
                            .iter()
                            .filter(|a| kind.attacker_id(a) == Some(id))
                            .filter_map(|a| a.ship_type_id)
                            .collect();
                        for t in ships {
                            add(key(Dim::Ship(t)), kill);
                        }
                    }
                    if s.sums.kills + s.sums.losses + s.sums.npc_losses > 0 {
                        add(
                            key(Dim::Group(km.derived.victim_group.unwrap_or(0))),
                            Stats {
                                sums: Sums {
                                    kills: s.sums.kills,
                                    losses: s.sums.losses,
                                    npc_losses: s.sums.npc_losses,
                                    isk_destroyed_cents: s.sums.isk_destroyed_cents,
                                    isk_lost_cents: s.sums.isk_lost_cents,
                                    ..Default::default()
                                },
                                ..Default::default()
                            },
                        );
                    }
                }
            }
            let row = |corp: Option<u64>, ch: Option<u64>| corp.zip(ch);
            let mut members: BTreeSet<(u64, u64)> = km
                .attackers
                .iter()
                .filter_map(|a| row(a.corporation_id, a.character_id))
                .collect();
            members.extend(row(km.victim.corporation_id, km.victim.character_id));
            for (corp, ch) in members {
                let is_row = |c: Option<u64>, h: Option<u64>| row(c, h) == Some((corp, ch));
                let s = role_stats(
                    km,
                    |a| is_row(a.corporation_id, a.character_id),
                    is_row(km.victim.corporation_id, km.victim.character_id),
                );
                let e = EntityKey::new(EntityKind::Corporation, corp);
                add(StatKey::new(e, Dim::Member(ch)), s);
                add(StatKey::new(e, Dim::MemberDay(day, ch)), s.without_times());
            }
        }
        if let Some(c) = clock_day {
            let buckets: Vec<(StatKey, Stats)> = out
                .iter()
                .filter(|(k, _)| k.dim.day().is_some())
                .map(|(k, v)| (*k, *v))
                .collect();
            for (k, v) in buckets {
                let d = k.dim.day().expect("filtered");
                for (w, &n) in WINDOW_DAYS.iter().enumerate() {
                    if d <= c && c - d < n {
                        out.entry(StatKey::new(k.entity, Dim::Window(w as u8)))
                            .or_default()
                            .merge(&v);
                    }
                }
            }
        }
        out.retain(|_, v| !v.is_empty());
        let ranks = out
            .iter()
            .flat_map(|(k, v)| RankKey::entries(*k, v))
            .collect();
        (out, ranks)
    }
}

/// What `km` gives the holder of the attacker rows matching `is_mine` and, if `victim`, of
/// the victim row: a kill once however many rows, damage summed, a loss, and so on.
fn role_stats(km: &Killmail, is_mine: impl Fn(&Attacker) -> bool, victim: bool) -> Stats {
    let npc = km.is_npc();
    let (isk, points) = match &km.zkb {
        Some(z) => (z.total_value_cents as i128, z.points),
        None => (0, 0),
    };
    let solo = km.is_solo();
    let mine: Vec<&Attacker> = km.attackers.iter().filter(|a| is_mine(a)).collect();
    let mut s = Stats {
        sums: Sums {
            involved: 1,
            ..Default::default()
        },
        seen: Seen::at(km.time),
    };
    if !npc && !mine.is_empty() {
        s.sums.kills = 1;
        s.sums.isk_destroyed_cents = isk;
        s.sums.points_destroyed = points;
        s.sums.solo_kills = (solo == Some(true)) as i64;
        s.sums.damage_done = mine.iter().map(|a| a.damage_done as i64).sum();
        s.sums.final_blows = mine.iter().any(|a| a.final_blow) as i64;
    }
    if victim {
        if npc {
            s.sums.npc_losses = 1;
        } else {
            s.sums.losses = 1;
            s.sums.damage_taken = km.victim.damage_taken as i64;
            s.sums.isk_lost_cents = isk;
            s.sums.points_lost = points;
            s.sums.solo_losses = (solo == Some(true)) as i64;
        }
    }
    if !npc && (s.sums.kills == 1 || victim) && solo.is_none() {
        s.sums.solo_unknown = 1;
    }
    s
}
