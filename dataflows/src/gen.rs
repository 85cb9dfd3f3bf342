//! A deterministic generator of realistic killmails, for users without data, the embedded
//! demo source and the benchmarks.
//!
//! Distributions are fitted to the EVE Ref week 2021-11-27..12-03 (83,228 killmails): attackers
//! per killmail (43% one attacker, 18% two, a heavy tail of fleet fights up to ~1,000), 14% NPC
//! kills, 1% victims without a character (structures), power-law activity of characters,
//! corporations, alliances and systems, the hour-of-day curve, and the most flown ship types.
//! Each killmail carries a zKillboard `zkb` block. Memory use does not grow with the count.

use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::time::format_rfc3339;

/// Real hourly killmail counts (2021-11-28), used as the time-of-day weights.
const HOUR_WEIGHTS: [u32; 24] = [
    608, 588, 539, 710, 535, 555, 478, 335, 425, 372, 525, 532, 995, 956, 708, 910, 1014, 1160,
    972, 1033, 982, 1098, 565, 452,
];
/// The most flown attacker ship types of the week (Tristan/Rifter-class frigates lead).
const ATTACKER_SHIPS: [u32; 16] = [
    12011, 12015, 11993, 24688, 34828, 17738, 670, 29990, 4310, 22456, 621, 3756, 35683, 11961,
    29986, 49710,
];
/// The most lost victim ship types (capsules first).
const VICTIM_SHIPS: [u32; 16] = [
    670, 16233, 16242, 605, 32880, 33475, 16240, 621, 601, 626, 606, 12011, 22456, 3756, 12005, 588,
];
/// Cumulative share of killmails by attacker count bucket: (upper bound, cumulative share).
const ATTACKER_CDF: [(u32, f64); 10] = [
    (1, 0.433),
    (2, 0.612),
    (3, 0.701),
    (5, 0.801),
    (10, 0.889),
    (20, 0.936),
    (50, 0.970),
    (100, 0.982),
    (300, 0.998),
    (1000, 1.0),
];

/// Generator settings.
#[derive(Clone, Debug)]
pub struct GenConfig {
    pub seed: u64,
    /// How many killmails to generate.
    pub count: u64,
    /// The first killmail id.
    pub first_id: u64,
    /// Unix time of the first killmail's day.
    pub start_time: i64,
    /// Killmails per simulated day (the real rate is about 12,000).
    pub per_day: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            count: 100_000,
            first_id: 100_000_000,
            start_time: 1_637_971_200, // 2021-11-27
            per_day: 12_000,
        }
    }
}

/// Yields `(killmail_id, JSON payload)` in killmail-id order.
pub struct Generator {
    cfg: GenConfig,
    rng: SmallRng,
    next: u64,
    characters: u64,
    corporations: u64,
    alliances: u64,
    hour_cdf: [u32; 24],
}

/// A power-law pick in `0..n`: small indices are much more likely (a few very active
/// entities, a long tail).
fn skewed(rng: &mut SmallRng, n: u64, power: f64) -> u64 {
    let u: f64 = rng.random();
    ((n as f64) * u.powf(power)).min(n as f64 - 1.0) as u64
}

/// A stable pseudo-random fraction of `x` (so memberships need no tables).
fn frac_hash(x: u64, salt: u64) -> f64 {
    let mut z = x.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        // Entity pools scale with the history, as a longer history sees more players.
        let characters = (cfg.count / 2).clamp(2_000, 5_000_000);
        let corporations = (characters / 6).max(200);
        let alliances = (corporations / 9).max(20);
        let mut hour_cdf = [0u32; 24];
        let mut acc = 0;
        for (i, w) in HOUR_WEIGHTS.iter().enumerate() {
            acc += w;
            hour_cdf[i] = acc;
        }
        Generator {
            rng: SmallRng::seed_from_u64(cfg.seed),
            next: 0,
            cfg,
            characters,
            corporations,
            alliances,
            hour_cdf,
        }
    }

    fn character_id(&self, c: u64) -> u64 {
        2_112_000_000 + c
    }

    fn corporation_of(&self, c: u64) -> u64 {
        let idx = (self.corporations as f64 * frac_hash(c, 1).powf(2.0)) as u64;
        98_000_000 + idx
    }

    fn alliance_of(&self, corp: u64) -> Option<u64> {
        if frac_hash(corp, 2) < 0.25 {
            return None;
        }
        Some(99_000_000 + (self.alliances as f64 * frac_hash(corp, 3).powf(2.0)) as u64)
    }

    fn attacker_count(&mut self) -> u32 {
        let u: f64 = self.rng.random();
        let mut lo = 1;
        for (hi, cum) in ATTACKER_CDF {
            if u <= cum {
                return self.rng.random_range(lo..=hi);
            }
            lo = hi + 1;
        }
        1
    }

    fn time_of(&mut self, i: u64) -> i64 {
        let day = (i / self.cfg.per_day.max(1)) as i64;
        let total = self.hour_cdf[23];
        let x = self.rng.random_range(0..total);
        let hour = self.hour_cdf.iter().position(|&c| x < c).unwrap_or(23) as i64;
        self.cfg.start_time + day * 86_400 + hour * 3600 + self.rng.random_range(0..3600)
    }

    fn write_person(&self, out: &mut String, c: u64) {
        let corp = self.corporation_of(c);
        let _ = write!(
            out,
            "\"character_id\":{},\"corporation_id\":{}",
            self.character_id(c),
            corp
        );
        if let Some(a) = self.alliance_of(corp) {
            let _ = write!(out, ",\"alliance_id\":{a}");
        }
    }

    /// Generates killmail number `i` (0-based).
    fn killmail(&mut self, i: u64) -> (u64, Vec<u8>) {
        let id = self.cfg.first_id + i;
        let time = self.time_of(i);
        let npc = self.rng.random_bool(0.14);
        let n = if npc {
            self.rng.random_range(1..4)
        } else {
            self.attacker_count()
        };
        let system = if self.rng.random_bool(0.1) {
            31_000_000 + skewed(&mut self.rng, 2_600, 1.5)
        } else {
            30_000_001 + skewed(&mut self.rng, 5_200, 2.5)
        };
        let victim_c = skewed(&mut self.rng, self.characters, 2.0);
        let mut s = String::with_capacity(400 + 160 * n as usize);
        s.push_str("{\"attackers\":[");
        // Fleets fly with friends: big fights draw attackers from one neighbourhood of ids.
        let anchor = skewed(&mut self.rng, self.characters, 2.0);
        let final_blow = self.rng.random_range(0..n);
        let mut total_damage = 0u64;
        for k in 0..n {
            if k > 0 {
                s.push(',');
            }
            let dmg = self.rng.random_range(0..8_000u64);
            total_damage += dmg;
            s.push('{');
            if npc {
                let _ = write!(
                    s,
                    "\"corporation_id\":{}",
                    1_000_120 + self.rng.random_range(0..20)
                );
            } else {
                let c = if n > 10 && self.rng.random_bool(0.7) {
                    (anchor + self.rng.random_range(0..4 * n as u64)) % self.characters
                } else {
                    skewed(&mut self.rng, self.characters, 2.0)
                };
                self.write_person(&mut s, c);
            }
            let ship =
                ATTACKER_SHIPS[skewed(&mut self.rng, ATTACKER_SHIPS.len() as u64, 2.0) as usize];
            let _ = write!(
                s,
                ",\"damage_done\":{dmg},\"final_blow\":{},\"security_status\":{:.1},\"ship_type_id\":{ship},\"weapon_type_id\":{}}}",
                k == final_blow,
                self.rng.random_range(-100..=50) as f64 / 10.0,
                2_000 + self.rng.random_range(0..500)
            );
        }
        s.push_str("],");
        let vship = VICTIM_SHIPS[skewed(&mut self.rng, VICTIM_SHIPS.len() as u64, 2.0) as usize];
        let _ = write!(
            s,
            "\"killmail_id\":{id},\"killmail_time\":\"{}\",\"solar_system_id\":{system},\"victim\":{{",
            format_rfc3339(time)
        );
        if self.rng.random_bool(0.988) {
            self.write_person(&mut s, victim_c);
        } else {
            let corp = self.corporation_of(victim_c);
            let _ = write!(s, "\"corporation_id\":{corp}");
        }
        let _ = write!(s, ",\"damage_taken\":{total_damage},\"items\":[");
        for k in 0..self.rng.random_range(0..32) {
            if k > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"flag\":{},\"item_type_id\":{},\"quantity_destroyed\":{},\"singleton\":0}}",
                self.rng.random_range(5..100),
                self.rng.random_range(100..60_000),
                self.rng.random_range(1..100)
            );
        }
        let value: f64 = (self.rng.random::<f64>() * 4.0 + 14.5).exp(); // ~2M .. 100B ISK
        let _ = write!(
            s,
            "],\"position\":{{\"x\":1.0,\"y\":2.0,\"z\":3.0}},\"ship_type_id\":{vship}}},\"zkb\":{{\"locationID\":{},\"hash\":\"{:040x}\",\"fittedValue\":{:.2},\"totalValue\":{:.2},\"points\":{},\"npc\":{npc},\"solo\":{},\"awox\":false}}}}",
            40_000_000 + system % 1_000_000,
            id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            value * 0.8,
            value,
            if npc { 1 } else { 1 + self.rng.random_range(0..40) / n.min(40) },
            !npc && n == 1
        );
        (id, s.into_bytes())
    }
}

impl Iterator for Generator {
    type Item = (u64, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.cfg.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some(self.killmail(i))
    }
}

/// The largest killmail kmflow accepts, for hardening tests and figures: `MAX_ATTACKERS`
/// distinct attacking characters (ten per corporation, a hundred per alliance, 50 ship
/// types) on one appraised killmail, as JSON.
pub fn largest_killmail() -> Vec<u8> {
    largest_killmail_copy(0)
}

/// Copy `c` of [`largest_killmail`]: killmail `9 + c`, whose characters, corporations and
/// alliances are new (ids `100,000·c`, `10,000·c` and `1,000·c` further on).
pub fn largest_killmail_copy(c: u64) -> Vec<u8> {
    let attackers: Vec<String> = (0..crate::decode::MAX_ATTACKERS as u64)
        .map(|i| {
            format!(
                r#"{{"character_id":{},"corporation_id":{},"alliance_id":{},"damage_done":10,"ship_type_id":{}}}"#,
                90_000_000 + 100_000 * c + i,
                98_000_000 + 10_000 * c + i / 10,
                99_000_000 + 1_000 * c + i / 100,
                587 + i % 50
            )
        })
        .collect();
    format!(
        r#"{{"killmail_id":{},"killmail_time":"2021-11-27T00:00:00Z","solar_system_id":1,"victim":{{"character_id":95000001,"damage_taken":5}},"attackers":[{}],"zkb":{{"totalValue":1e9,"points":10,"npc":false,"solo":false,"awox":false}}}}"#,
        9 + c,
        attackers.join(",")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    #[test]
    fn deterministic_and_decodable() {
        let cfg = GenConfig {
            count: 2_000,
            ..GenConfig::default()
        };
        let a: Vec<_> = Generator::new(cfg.clone()).collect();
        let b: Vec<_> = Generator::new(cfg).collect();
        assert_eq!(a, b);
        let mut solo = 0;
        let mut npc = 0;
        let mut max_attackers = 0;
        for (id, payload) in &a {
            let km = decode(payload)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
            assert_eq!(km.killmail_id, *id);
            assert_eq!(km.attackers.iter().filter(|a| a.final_blow).count(), 1);
            solo += (km.attackers.len() == 1) as usize;
            npc += km.is_npc() as usize;
            max_attackers = max_attackers.max(km.attackers.len());
        }
        // Shape close to the real week: ~43% single-attacker, ~14% NPC, some large fights.
        assert!(
            (0.35..0.60).contains(&(solo as f64 / 2000.0)),
            "solo {solo}"
        );
        assert!((0.08..0.20).contains(&(npc as f64 / 2000.0)), "npc {npc}");
        assert!(max_attackers > 100, "max attackers {max_attackers}");
    }
}
