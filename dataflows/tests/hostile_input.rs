//! Hostile messages: the real samples mutated (byte flips, truncation, huge numbers, deep
//! nesting, wrong types) never panic the decoder, every failure has a bounded reason, and
//! through the dataflow every undecodable message is dead-lettered exactly once while the
//! rest are counted as the fold says.

use std::path::PathBuf;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use kmflow_dataflows::decode::{decode, DecodeError, MAX_ATTACKERS};
use kmflow_dataflows::harness::{run, HarnessConfig};
use kmflow_dataflows::reference::ReferenceFold;
use kmflow_dataflows::{RawRecord, SourcePos};

/// The real samples of every shape: ESI (EVE Ref), zKillboard API, R2Z2, RedisQ.
fn samples() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/killmails");
    let mut out = Vec::new();
    let jsonl =
        std::fs::read_to_string(dir.join("everef-jsonl/killmails-2021-11-27.first1000.jsonl"))
            .expect("../shared/data/killmails (see SOURCES.md)");
    out.extend(jsonl.lines().take(40).map(|l| l.as_bytes().to_vec()));
    for f in [
        "r2z2/aa-killtracker-r2z2_example.json",
        "redisq/killmail-router-payload1.json",
    ] {
        out.push(std::fs::read(dir.join(f)).expect("sample"));
    }
    let zkb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("zkb-api/elit-kellyl_kills.json")).unwrap())
            .unwrap();
    for km in zkb.as_array().into_iter().flatten().take(10) {
        out.push(serde_json::to_vec(km).unwrap());
    }
    out
}

/// One mutation of `bytes`, chosen by `rng`.
fn mutate(rng: &mut SmallRng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match rng.random_range(0..7) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => b.truncate(rng.random_range(0..b.len())),
        2 => {
            // A number replaced by a huge or negative one.
            let text = String::from_utf8_lossy(&b).into_owned();
            let huge = [
                "18446744073709551615",
                "-1",
                "1e308",
                "99999999999999999999999",
                "-0",
            ];
            let digits: Vec<usize> = text
                .match_indices(|c: char| c.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            if let Some(&i) = digits.get(rng.random_range(0..digits.len().max(1))) {
                let end = text[i..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(text.len(), |e| i + e);
                b = format!(
                    "{}{}{}",
                    &text[..i],
                    huge[rng.random_range(0..huge.len())],
                    &text[end..]
                )
                .into_bytes();
            }
        }
        3 => {
            // Deep nesting.
            let depth = rng.random_range(100..5000);
            b = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        }
        4 => {
            // A value of the wrong type.
            let text = String::from_utf8_lossy(&b).into_owned();
            let wrong = ["\"x\"", "null", "[]", "{}", "true", "1.5"];
            if let Some(i) = text.find(':') {
                let end = text[i + 1..]
                    .find([',', '}'])
                    .map_or(text.len(), |e| i + 1 + e);
                b = format!(
                    "{}{}{}",
                    &text[..=i],
                    wrong[rng.random_range(0..wrong.len())],
                    &text[end..]
                )
                .into_bytes();
            }
        }
        5 => {
            let i = rng.random_range(0..=b.len());
            let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
            b.splice(i..i, junk);
        }
        _ => {} // unchanged: the sample itself
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The decoder never panics; a failure always has a reason from the bounded list.
    #[test]
    fn mutated_samples_never_panic_the_decoder(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        for s in samples() {
            for _ in 0..4 {
                let m = mutate(&mut rng, &s);
                if let Err(e) = decode(&m) {
                    prop_assert!(DecodeError::REASONS.contains(&e.reason()), "{e}");
                }
            }
        }
    }
}

/// Through the dataflow: every message is either applied (as the fold says) or dead-lettered,
/// once.
#[test]
fn every_undecodable_message_is_dead_lettered_once() {
    let mut rng = SmallRng::seed_from_u64(42);
    let samples = samples();
    let msgs: Vec<RawRecord> = (0..600)
        .map(|i| RawRecord {
            pos: SourcePos {
                topic: 0,
                partition: (i % 3) as u32,
                offset: (i / 3) as i64,
            },
            payload: mutate(&mut rng, &samples[i % samples.len()]),
        })
        .collect();
    let bad = msgs.iter().filter(|m| decode(&m.payload).is_err()).count();
    assert!(
        bad > 100 && bad < 600,
        "the mutations make both kinds ({bad} bad)"
    );
    let out = run(msgs.clone(), &HarnessConfig::new(2, 50));
    assert_eq!(out.final_state.dead_letters.len(), bad);
    let mut fold = ReferenceFold::default();
    for m in &msgs {
        if let Ok(km) = decode(&m.payload) {
            fold.apply(&km, true);
        }
    }
    assert_eq!(out.final_state.all_time(), fold.stats());
}

/// Overflowing values are dead letters (`out_of_range`), never wrapped sums.
#[test]
fn overflowing_damage_is_out_of_range() {
    let km = |damage: &str| {
        format!(
            r#"{{"killmail_id":7,"killmail_time":"2021-11-27T00:00:00Z","solar_system_id":1,
               "victim":{{"character_id":95000001,"damage_taken":{damage}}},
               "attackers":[{{"character_id":95000002,"damage_done":{damage},"final_blow":true}}]}}"#
        )
    };
    let err = decode(km("18446744073709551615").as_bytes()).unwrap_err();
    assert_eq!(err.reason(), "out_of_range", "{err}");
    assert!(decode(km("100000000000").as_bytes()).is_ok());
}

/// A 20,000-attacker killmail decodes and folds in time linear in its attackers.
#[test]
fn a_killmail_with_the_most_attackers_is_linear() {
    let payload = kmflow_dataflows::gen::largest_killmail();
    let msgs = vec![RawRecord {
        pos: SourcePos::default(),
        payload,
    }];
    let mut config = HarnessConfig::new(1, 10);
    config.spec.level = kmflow_dataflows::contrib::StatsLevel::Full;
    let out = run(msgs, &config);
    let characters = out
        .final_state
        .all_time()
        .keys()
        .filter(|k| k.kind == kmflow_dataflows::EntityKind::Character)
        .count();
    assert_eq!(characters, MAX_ATTACKERS + 1);
}
