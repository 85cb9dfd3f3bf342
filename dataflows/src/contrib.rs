//! What one killmail contributes to the statistics of every entity on it.

use crate::model::{EntityKey, EntityKind, Killmail};
use crate::stats::Stats;

/// The contribution of `km` to each entity that appears on it, one entry per entity.
///
/// The API contract: a killmail counts once per entity however many of its members are on it;
/// an entity both attacker and victim (awox) gets a kill and a loss; NPC killmails count only
/// as `npc_losses` for the victim side and in `first_seen`/`last_seen` for everyone.
pub fn contributions(km: &Killmail) -> Vec<(EntityKey, Stats)> {
    let npc = km.is_npc();
    let zkb = km.zkb.as_ref();
    let isk = zkb.map_or(0, |z| z.total_value_cents as i128);
    let points = zkb.map_or(0, |z| z.points);
    let solo = zkb.is_some_and(|z| z.solo) as i64;
    let mut out: Vec<(EntityKey, Stats)> = Vec::with_capacity(3 * (km.attackers.len() + 1));

    for kind in EntityKind::ALL {
        let start = out.len();
        // Attackers: one entry per distinct id of this kind, damage summed over its entries.
        for a in &km.attackers {
            let Some(id) = kind.attacker_id(a) else {
                continue;
            };
            let idx = match out[start..].iter().position(|(k, _)| k.id == id) {
                Some(i) => start + i,
                None => {
                    let mut s = Stats::default();
                    s.seen_at(km.time);
                    if !npc {
                        s.kills = 1;
                        s.isk_destroyed_cents = isk;
                        s.points_destroyed = points;
                        s.solo_kills = solo;
                    }
                    out.push((EntityKey::new(kind, id), s));
                    out.len() - 1
                }
            };
            if !npc {
                let s = &mut out[idx].1;
                s.damage_done += a.damage_done as i64;
                if a.final_blow {
                    s.final_blows = 1;
                }
            }
        }
        // The victim, possibly also an attacker (awox).
        if let Some(id) = kind.victim_id(&km.victim) {
            let idx = match out[start..].iter().position(|(k, _)| k.id == id) {
                Some(i) => start + i,
                None => {
                    let mut s = Stats::default();
                    s.seen_at(km.time);
                    out.push((EntityKey::new(kind, id), s));
                    out.len() - 1
                }
            };
            let s = &mut out[idx].1;
            if npc {
                s.npc_losses = 1;
            } else {
                s.losses = 1;
                s.damage_taken = km.victim.damage_taken as i64;
                s.isk_lost_cents = isk;
                s.points_lost = points;
                s.solo_losses = solo;
            }
        }
    }
    out
}
