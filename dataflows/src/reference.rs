//! A from-scratch, single-threaded fold of killmails into statistics: the oracle the dataflow
//! is tested against, and the "floor" baseline of the benchmarks.
//!
//! Written independently of [`crate::contrib`]: it walks each entity's role on each killmail
//! with sets rather than building per-killmail contributions.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::{EntityKey, EntityKind, Killmail};
use crate::stats::Stats;

/// The upsert rule on its own: returns the killmail that should be applied after `incoming`
/// arrives when `known` was applied, or `None` when `incoming` changes nothing.
///
/// The ESI part never changes, so only a different, present `zkb` replaces the known version.
pub fn upsert_rule(known: Option<&Killmail>, incoming: &Killmail) -> Option<Killmail> {
    match known {
        None => Some(incoming.clone()),
        Some(k) => match incoming.zkb {
            Some(z) if k.zkb != Some(z) => Some(Killmail {
                zkb: Some(z),
                ..k.clone()
            }),
            _ => None,
        },
    }
}

/// Applies killmails in arrival order with the upsert rule; returns the final version of each.
#[derive(Default, Clone)]
pub struct ReferenceFold {
    pub killmails: HashMap<u64, Killmail>,
}

impl ReferenceFold {
    pub fn apply(&mut self, km: &Killmail) {
        if let Some(next) = upsert_rule(self.killmails.get(&km.killmail_id), km) {
            self.killmails.insert(km.killmail_id, next);
        }
    }

    /// Statistics of every entity, computed from scratch.
    pub fn stats(&self) -> BTreeMap<EntityKey, Stats> {
        let mut out: BTreeMap<EntityKey, Stats> = BTreeMap::new();
        for km in self.killmails.values() {
            let npc = km.is_npc();
            let (isk, points, solo) = match &km.zkb {
                Some(z) => (z.total_value_cents as i128, z.points, z.solo),
                None => (0, 0, false),
            };
            for kind in EntityKind::ALL {
                let attackers: HashSet<u64> = km
                    .attackers
                    .iter()
                    .filter_map(|a| kind.attacker_id(a))
                    .collect();
                for &id in &attackers {
                    let s = out.entry(EntityKey::new(kind, id)).or_default();
                    s.first_seen = Some(s.first_seen.map_or(km.time, |t| t.min(km.time)));
                    s.last_seen = Some(s.last_seen.map_or(km.time, |t| t.max(km.time)));
                    if npc {
                        continue;
                    }
                    s.kills += 1;
                    s.isk_destroyed_cents += isk;
                    s.points_destroyed += points;
                    if solo {
                        s.solo_kills += 1;
                    }
                    s.damage_done += km
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
                        s.final_blows += 1;
                    }
                }
                if let Some(id) = kind.victim_id(&km.victim) {
                    let s = out.entry(EntityKey::new(kind, id)).or_default();
                    s.first_seen = Some(s.first_seen.map_or(km.time, |t| t.min(km.time)));
                    s.last_seen = Some(s.last_seen.map_or(km.time, |t| t.max(km.time)));
                    if npc {
                        s.npc_losses += 1;
                    } else {
                        s.losses += 1;
                        s.damage_taken += km.victim.damage_taken as i64;
                        s.isk_lost_cents += isk;
                        s.points_lost += points;
                        if solo {
                            s.solo_losses += 1;
                        }
                    }
                }
            }
        }
        out
    }
}
