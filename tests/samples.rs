//! Decoding of every real sample under ../shared/data/killmails, through the same file reader
//! `kmflow import` uses.

mod common;

use std::collections::HashSet;

use kmflow::files::for_each_message;
use kmflow_dataflows::decode::decode;
use kmflow_dataflows::Killmail;

fn read(rel: &str) -> Vec<Killmail> {
    let mut out = Vec::new();
    for_each_message(&[common::shared_data().join(rel)], &mut |r| {
        let (origin, bytes) = r.unwrap();
        out.push(decode(&bytes).unwrap_or_else(|e| panic!("{origin}: {e}")));
    });
    out
}

#[test]
fn r2z2_sample() {
    let kms = read("killmails/r2z2");
    assert_eq!(kms.len(), 1);
    let km = &kms[0];
    assert_eq!(km.killmail_id, 134265477);
    let z = km.zkb.unwrap();
    assert_eq!(z.total_value_cents, 8_618_010_873);
    assert_eq!(z.points, 7);
    assert!(z.solo && !z.npc);
}

#[test]
fn redisq_sample() {
    let kms = read("killmails/redisq");
    assert_eq!(kms.len(), 1);
    assert_eq!(kms[0].killmail_id, 119455394);
    assert_eq!(kms[0].zkb.unwrap().total_value_cents, 14_257_299_392);
}

#[test]
fn zkb_api_samples() {
    let kms = read("killmails/zkb-api");
    assert_eq!(kms.len(), 200 + 197 + 28 + 2);
    assert!(kms.iter().all(|k| k.zkb.is_some()));
    let ids: HashSet<u64> = kms.iter().map(|k| k.killmail_id).collect();
    assert_eq!(ids.len(), 405, "22 rows are duplicated across files");
}

#[test]
fn large_fights_without_victim_character() {
    let kms = read("killmails/esi-large");
    assert_eq!(kms.len(), 2);
    let big = kms.iter().find(|k| k.killmail_id == 107220741).unwrap();
    assert_eq!(big.attackers.len(), 581);
    assert_eq!(big.victim.character_id, None);
    assert_eq!(
        kms.iter()
            .find(|k| k.killmail_id == 108794056)
            .unwrap()
            .attackers
            .len(),
        982
    );
}

#[test]
fn everef_week_decodes_entirely() {
    let kms = read("killmails/everef");
    assert_eq!(kms.len(), 83_228);
    assert!(kms.iter().all(|k| k.zkb.is_none()));
    let ids: HashSet<u64> = kms.iter().map(|k| k.killmail_id).collect();
    assert_eq!(ids.len(), 83_228);
    // Optional ids are normal input: structures without a character, NPC attackers.
    assert_eq!(
        kms.iter()
            .filter(|k| k.victim.character_id.is_none())
            .count(),
        1_482
    );
    assert!(kms.iter().any(|k| k.is_npc()));
    let jsonl = read("killmails/everef-jsonl");
    assert_eq!(jsonl.len(), 1_000);
    assert!(jsonl.iter().all(|k| ids.contains(&k.killmail_id)));
}

/// The solo rule kmflow applies when `zkb` is absent, checked against zKillboard's own `solo`
/// flag on every appraised sample (zkb-api, R2Z2, RedisQ and the large fights).
#[test]
fn derived_solo_agrees_with_zkillboard() {
    let sd = common::static_data();
    let mut kms = read("killmails/zkb-api");
    kms.extend(read("killmails/r2z2"));
    kms.extend(read("killmails/redisq"));
    let mut seen = HashSet::new();
    let (mut agree, mut disagree, mut unknown) = (0, Vec::new(), 0);
    for km in kms.iter().filter(|k| seen.insert(k.killmail_id)) {
        let z = km.zkb.unwrap();
        match sd.solo(km) {
            Some(s) if s == z.solo => agree += 1,
            Some(_) => disagree.push(km.killmail_id),
            None => unknown += 1,
        }
    }
    eprintln!(
        "solo: {agree} agree, {} disagree {disagree:?}, {unknown} unknown",
        disagree.len()
    );
    assert_eq!(
        unknown, 0,
        "every type of the samples is in the static data"
    );
    assert!(agree >= 400, "{agree}");
    assert!(disagree.is_empty(), "{disagree:?}");
    // Both outcomes occur in the samples.
    assert!(kms.iter().any(|k| k.zkb.unwrap().solo) && kms.iter().any(|k| !k.zkb.unwrap().solo));
}
