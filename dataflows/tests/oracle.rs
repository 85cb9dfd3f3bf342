//! Oracle tests: after every checkpoint, the statistics the dataflow maintains equal a from-scratch
//! fold (`reference::ReferenceFold`) of the messages given up to that epoch, for random orders,
//! worker counts, partitions, epoch sizes, duplicates, re-appraisals and undecodable messages.

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use kmflow_dataflows::decode::decode;
use kmflow_dataflows::harness::{run, run_on, HarnessConfig};
use kmflow_dataflows::store::MemoryStore;
use std::collections::BTreeMap;
use std::sync::Arc;

use kmflow_dataflows::contrib::StatsLevel;
use kmflow_dataflows::keys::Dim;
use kmflow_dataflows::pipeline::StatsSpec;
use kmflow_dataflows::reference::{upsert_rule, ReferenceFold};
use kmflow_dataflows::static_data::StaticData;
use kmflow_dataflows::time::day_of;
use kmflow_dataflows::{EntityKey, Killmail, RawRecord, SourcePos, Stats};

/// The middle of the generated killmails' time range (2021-12-03T08:00:00Z).
const T0: i64 = 1_638_518_400;

/// Ship types: a frigate, a capsule, a cruiser, a citadel (a structure) and a type unknown to
/// the static data (solo then undecidable without zkb).
const SHIPS: [u32; 5] = [587, 670, 620, 35_832, 999_999];

/// A small static data set covering [`SHIPS`] except the unknown one.
fn static_data() -> Arc<StaticData> {
    Arc::new(StaticData {
        type_group: [(587, 25), (670, 29), (620, 26), (35_832, 1657)].into(),
        group_category: [(25, 6), (29, 6), (26, 6), (1657, 65)].into(),
        group_name: Default::default(),
    })
}

/// Builds the ESI part of killmail `id`.
fn esi(rng: &mut SmallRng, id: u64) -> Value {
    let char_of = |c: u64| 90_000_000 + c;
    let corp_of = |c: u64| 98_000_000 + c % 7;
    let alliance_of = |c: u64| {
        if c % 7 < 5 {
            Some(99_000_000 + c % 3)
        } else {
            None
        }
    };
    let person = |rng: &mut SmallRng| -> (Option<u64>, Option<u64>, Option<u64>) {
        match rng.random_range(0..10) {
            0 => (None, Some(1_000_125), None), // NPC corp, no character
            1 => (
                Some(3_000_000 + rng.random_range(0..5)),
                Some(1_000_127),
                None,
            ), // NPC id
            _ => {
                let c = rng.random_range(0..25u64);
                (Some(char_of(c)), Some(corp_of(c)), alliance_of(c))
            }
        }
    };
    let n = if rng.random_bool(0.3) {
        1
    } else {
        rng.random_range(1..7)
    };
    let fb = rng.random_range(0..n);
    let attackers: Vec<Value> = (0..n)
        .map(|i| {
            let (c, corp, a) = person(rng);
            let ship = SHIPS[rng.random_range(0..SHIPS.len())];
            let mut o = json!({"damage_done": rng.random_range(0..5000), "final_blow": i == fb,
                               "security_status": 0.5, "ship_type_id": ship});
            if let Some(c) = c {
                o["character_id"] = json!(c)
            }
            if let Some(x) = corp {
                o["corporation_id"] = json!(x)
            }
            if let Some(x) = a {
                o["alliance_id"] = json!(x)
            }
            o
        })
        .collect();
    let (vc, vcorp, va) = person(rng);
    let victim_ship = SHIPS[rng.random_range(0..SHIPS.len())];
    let mut victim = json!({"damage_taken": rng.random_range(0..9000), "ship_type_id": victim_ship,
                            "items": [{"flag": 5, "item_type_id": 34, "quantity_dropped": 3, "singleton": 0}]});
    if rng.random_bool(0.9) {
        if let Some(c) = vc {
            victim["character_id"] = json!(c)
        }
    }
    if let Some(x) = vcorp {
        victim["corporation_id"] = json!(x)
    }
    if let Some(x) = va {
        victim["alliance_id"] = json!(x)
    }
    // Four months around T0, so windows, months and day boundaries all matter.
    let t = T0 + rng.random_range(-60 * 86_400..60 * 86_400);
    let system = 30_000_140 + rng.random_range(0..4);
    json!({"killmail_id": id, "killmail_time": kmflow_dataflows::time::format_rfc3339(t),
           "solar_system_id": system, "victim": victim, "attackers": attackers})
}

fn zkb(rng: &mut SmallRng) -> Value {
    json!({"locationID": 1, "hash": "x", "fittedValue": 1.0,
           "totalValue": (rng.random_range(0..1_000_000_000u64) as f64) / 100.0,
           "points": rng.random_range(1..50), "npc": rng.random_bool(0.1),
           "solo": rng.random_bool(0.3), "awox": false})
}

/// One message carrying killmail `esi` with `zkb` in a random shape.
fn shaped(rng: &mut SmallRng, esi: &Value, zkb: Option<&Value>) -> Vec<u8> {
    let id = esi["killmail_id"].clone();
    let v = match (zkb, rng.random_range(0..3)) {
        (None, _) => esi.clone(),
        (Some(z), 0) => {
            let mut e = esi.clone();
            e["zkb"] = z.clone();
            e
        }
        // R2Z2, with a sequence that orders its versions (sometimes re-appraised).
        (Some(z), 1) => {
            let mut v = json!({"killmail_id": id, "hash": "h", "esi": esi, "zkb": z,
                               "sequence_id": rng.random_range(1..4u64), "uploaded_at": 0});
            if rng.random_bool(0.3) {
                v["sequence_updated"] = json!(rng.random_range(1..6u64));
            }
            v
        }
        (Some(z), _) => json!({"package": {"killID": id, "killmail": esi, "zkb": z}}),
    };
    serde_json::to_vec(&v).unwrap()
}

const GARBAGE: &[&[u8]] = &[
    b"{not json",
    b"",
    b"[]",
    b"{\"killmail_id\": 5}",
    b"{\"killmail_id\": 77, \"killmail_time\": \"2021-11-27T00:00:00Z\"}",
    b"{\"killmail_id\": \"seven\"}",
];

/// Messages in arrival order, each on the live topic (0) or a history topic (1), each
/// killmail's versions on partition `id % partitions` of its topic.
fn messages(seed: u64, killmails: usize, partitions: u32) -> Vec<RawRecord> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut payloads: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..killmails {
        let id = 1_000 + i as u64;
        let e = esi(&mut rng, id);
        let zkbs = [zkb(&mut rng), zkb(&mut rng)];
        for _ in 0..rng.random_range(1..5) {
            let z = match rng.random_range(0..4) {
                0 => None,
                1 => Some(&zkbs[1]),
                _ => Some(&zkbs[0]),
            };
            payloads.push((id, shaped(&mut rng, &e, z)));
        }
    }
    for _ in 0..killmails / 5 {
        let g = GARBAGE[rng.random_range(0..GARBAGE.len())];
        payloads.push((rng.random_range(0..1000), g.to_vec()));
    }
    payloads.shuffle(&mut rng);
    let mut next_offset = vec![[0i64; 2]; partitions as usize];
    payloads
        .into_iter()
        .map(|(key, payload)| {
            let partition = (key % partitions as u64) as u32;
            let topic = rng.random_range(0..2u16);
            let offset = next_offset[partition as usize][topic as usize];
            next_offset[partition as usize][topic as usize] += 1;
            RawRecord {
                pos: SourcePos {
                    topic,
                    partition,
                    offset,
                },
                payload,
            }
        })
        .collect()
}

/// Decodes `payload` and derives what the pipeline derives from the static data.
fn decoded(payload: &[u8], sd: &StaticData) -> Option<Killmail> {
    let mut km = decode(payload).ok()?;
    km.derived = sd.derive(&km);
    Some(km)
}

/// The wall clock the checkpointer sees at `epoch`: it starts 20 days before the data's middle
/// and moves 2 days per epoch, so the stream clock is bounded by the wall clock on some
/// commits and by the killmails on others, and crosses day and month boundaries.
fn wall(epoch: u64) -> i64 {
    T0 - 20 * 86_400 + epoch as i64 * 2 * 86_400
}

fn check(
    seed: u64,
    killmails: usize,
    partitions: u32,
    workers: usize,
    epoch_size: usize,
    cache_rows: usize,
) {
    let msgs = messages(seed, killmails, partitions);
    let garbage = msgs.iter().filter(|m| decode(&m.payload).is_err()).count();
    let sd = static_data();
    let mut config = HarnessConfig::new(workers, epoch_size);
    config.snapshots = true;
    config.cache_rows = cache_rows;
    config.spec = StatsSpec {
        level: StatsLevel::Full,
        static_data: Some(Arc::clone(&sd)),
    };
    config.wall = Some(Arc::new(wall));
    let out = run(msgs.clone(), &config);
    assert!(!out.snapshots.is_empty() || msgs.is_empty());
    let mut clock: Option<i64> = None;
    for snap in &out.snapshots {
        let last_epoch = snap.epoch;
        let mut fold = ReferenceFold::default();
        for (m, e) in msgs.iter().zip(&out.epoch_of) {
            if *e <= last_epoch {
                if let Some(km) = decoded(&m.payload, &sd) {
                    fold.apply(&km, m.pos.topic == 0);
                }
            }
        }
        // The clock, independently: the earlier of wall and latest killmail, never backwards.
        let latest = fold.killmails.values().map(|k| k.time).max();
        if let Some(latest) = latest {
            clock = clock.max(Some(latest.min(wall(last_epoch))));
        }
        assert_eq!(snap.clock.now, clock, "clock after epoch {last_epoch}");
        let (expected, ranks) = fold.full(clock.map(day_of));
        let ctx = format!(
            "after epoch {last_epoch} (seed {seed}, {workers} workers, epoch size {epoch_size})"
        );
        if snap.stats != expected {
            for (k, v) in &expected {
                assert_eq!(snap.stats.get(k), Some(v), "{k:?} {ctx}");
            }
            for (k, v) in &snap.stats {
                assert_eq!(Some(v), expected.get(k), "{k:?} {ctx}");
            }
        }
        assert_eq!(snap.ranks, ranks, "leaderboards {ctx}");
        // The all-time floor fold, written separately, agrees on all-time statistics.
        let all_time: BTreeMap<EntityKey, Stats> = snap
            .stats
            .iter()
            .filter(|(k, _)| k.dim == Dim::All)
            .map(|(k, v)| (k.entity, *v))
            .collect();
        assert_eq!(all_time, fold.stats(), "all-time {ctx}");
    }
    // The final upsert state and the dead letters.
    let mut fold = ReferenceFold::default();
    for m in &msgs {
        if let Some(km) = decoded(&m.payload, &sd) {
            fold.apply(&km, m.pos.topic == 0);
        }
    }
    assert_eq!(out.final_state.killmails.len(), fold.killmails.len());
    for (id, stored) in &out.final_state.killmails {
        assert_eq!(&stored.killmail, &fold.killmails[id], "killmail {id}");
    }
    assert_eq!(out.final_state.dead_letters.len(), garbage);
    assert_eq!(out.final_state.all_time(), fold.stats());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn dataflow_equals_fold_after_every_epoch(
        seed in any::<u64>(),
        killmails in 1usize..40,
        partitions in 1u32..5,
        workers in 1usize..4,
        epoch_size in 1usize..30,
        cache_rows in prop_oneof![1usize..8, Just(1usize << 20)],
    ) {
        check(seed, killmails, partitions, workers, epoch_size, cache_rows);
    }
}

#[test]
fn larger_run_many_workers() {
    check(7, 400, 4, 4, 97, 16);
}

#[test]
fn same_answer_for_any_worker_count_and_epoch_size() {
    let msgs = messages(11, 200, 4);
    let base = run(msgs.clone(), &HarnessConfig::new(1, 1000));
    for (workers, epoch_size) in [(2, 1), (3, 7), (4, 50)] {
        let other = run(msgs.clone(), &HarnessConfig::new(workers, epoch_size));
        assert_eq!(
            other.final_state.stats, base.final_state.stats,
            "{workers} workers, epochs of {epoch_size}"
        );
        assert_eq!(other.final_state.ranks, base.final_state.ranks);
    }
}

/// State written with W workers is read and continued correctly with W' workers: the shards'
/// key groups map to other workers, and every answer still equals the fold.
#[test]
fn resharding_between_runs_keeps_every_answer() {
    let msgs = messages(13, 240, 4);
    let whole = run(msgs.clone(), &HarnessConfig::new(1, 1000));
    let (want_stats, want_ranks) = whole.final_state.served();
    for (first, second) in [(2, 1), (1, 3), (3, 2)] {
        let store = Arc::new(MemoryStore::new());
        let mut config = HarnessConfig::new(first, 17);
        config.cache_rows = 4;
        run_on(Arc::clone(&store), msgs[..120].to_vec(), &config);
        config.workers = second;
        let out = run_on(Arc::clone(&store), msgs[120..].to_vec(), &config);
        let (stats, ranks) = out.final_state.served();
        assert_eq!(stats, want_stats, "{first} then {second} workers");
        assert_eq!(ranks, want_ranks, "{first} then {second} workers");
    }
    let mut fold = ReferenceFold::default();
    for m in &msgs {
        if let Ok(km) = decode(&m.payload) {
            fold.apply(&km, m.pos.topic == 0);
        }
    }
    assert_eq!(whole.final_state.all_time(), fold.stats());
}

#[test]
fn upsert_rule_semantics() {
    let mut rng = SmallRng::seed_from_u64(3);
    let e = esi(&mut rng, 42);
    let (za, zb) = (zkb(&mut rng), zkb(&mut rng));
    let plain = decode(&serde_json::to_vec(&e).unwrap()).unwrap();
    let mut with_a = e.clone();
    with_a["zkb"] = za;
    let a = decode(&serde_json::to_vec(&with_a).unwrap()).unwrap();
    let mut with_b = e.clone();
    with_b["zkb"] = zb;
    let b = decode(&serde_json::to_vec(&with_b).unwrap()).unwrap();
    // First version applies; same version or zkb-less re-delivery is a no-op; new zkb replaces.
    let applied = |km: &Killmail, live: bool| (km.clone(), km.zkb.map(|_| (km.sequence, live)));
    let (p, a_live, a_hist) = (applied(&plain, true), applied(&a, true), applied(&a, false));
    assert_eq!(upsert_rule(None, &plain, true), Some(p.clone()));
    assert_eq!(upsert_rule(Some(&p), &plain, true), None);
    assert_eq!(upsert_rule(Some(&p), &a, false), Some(a_hist.clone()));
    assert_eq!(upsert_rule(Some(&a_live), &a, true), None);
    assert_eq!(
        upsert_rule(Some(&a_live), &plain, true),
        None,
        "a version without zkb never erases zkb"
    );
    assert_eq!(
        upsert_rule(Some(&a_live), &b, true),
        Some(applied(&b, true))
    );
    // A history topic replaying an older appraisal after the live one: the live one stays.
    assert_eq!(upsert_rule(Some(&a_live), &b, false), None);
    // The same appraisal read live after history: only its rank moves.
    assert_eq!(upsert_rule(Some(&a_hist), &a, true), Some(a_live.clone()));
    // R2Z2 sequences order versions whatever the topic.
    let seq = |km: &Killmail, n| Killmail {
        sequence: Some(n),
        ..km.clone()
    };
    let b7 = applied(&seq(&b, 7), false);
    assert_eq!(upsert_rule(Some(&b7), &seq(&a, 5), true), None);
    assert_eq!(
        upsert_rule(Some(&b7), &seq(&a, 9), false),
        Some(applied(&seq(&a, 9), false))
    );
}
