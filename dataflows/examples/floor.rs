//! The floor baseline of `benches/e2e.sh`: a single-threaded, hand-written, in-memory fold of a
//! JSON Lines file into the same all-time statistics kmflow keeps: decode each line, apply the
//! upsert rule, then one pass over the final versions (`ReferenceFold`). No Kafka, no state on
//! disk, no incremental maintenance: the least work anyone could do to get the answers.
//!
//!   cargo run --release -p kmflow-dataflows --example floor -- FILE.jsonl [--static-dir DIR]
//!       [--sample OUT.jsonl]
//!
//! Prints `floor: N killmails in S s = R killmails/s`. With `--sample`, also writes the
//! statistics of a deterministic sample of characters and corporations (the most involved ten
//! and a hundred spread over the id range) as JSON Lines, in the API's field names and units, for
//! the bench's three-way answer check.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Instant;

use kmflow_dataflows::model::{EntityKey, EntityKind};
use kmflow_dataflows::reference::ReferenceFold;
use kmflow_dataflows::static_data::StaticData;
use kmflow_dataflows::Stats;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut input = None;
    let mut static_dir = None;
    let mut sample = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--static-dir" => static_dir = args.next().map(PathBuf::from),
            "--sample" => sample = args.next().map(PathBuf::from),
            _ => input = Some(PathBuf::from(a)),
        }
    }
    let Some(input) = input else {
        eprintln!("usage: floor FILE.jsonl [--static-dir DIR] [--sample OUT.jsonl]");
        std::process::exit(2);
    };
    let static_data = static_dir.map(|d| {
        StaticData::load(&d).unwrap_or_else(|e| panic!("static data {}: {e}", d.display()))
    });
    let file = std::fs::File::open(&input)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", input.display()));

    let start = Instant::now();
    let mut fold = ReferenceFold::default();
    let (mut lines, mut bad) = (0u64, 0u64);
    for line in BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line.expect("read");
        if line.is_empty() {
            continue;
        }
        lines += 1;
        match kmflow_dataflows::decode::decode(&line) {
            Ok(mut km) => {
                if let Some(s) = &static_data {
                    km.derived = s.derive(&km);
                }
                fold.apply(&km, true);
            }
            Err(_) => bad += 1,
        }
    }
    let stats = fold.stats();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "floor: {lines} killmails in {secs:.2} s = {:.0} killmails/s ({bad} undecodable, {} entities)",
        lines as f64 / secs,
        stats.len()
    );
    if let Some(out) = sample {
        write_sample(&stats, &out);
    }
}

/// The ten most involved entities of each kind and a hundred spread evenly over the id range.
fn write_sample(stats: &BTreeMap<EntityKey, Stats>, out: &PathBuf) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).expect("create sample"));
    for kind in [EntityKind::Character, EntityKind::Corporation] {
        let of_kind: Vec<(&EntityKey, &Stats)> =
            stats.iter().filter(|(k, _)| k.kind == kind).collect();
        let mut picked: Vec<usize> = (0..100).map(|i| i * of_kind.len() / 100).collect();
        let mut by_involved: Vec<usize> = (0..of_kind.len()).collect();
        by_involved.sort_by_key(|&i| std::cmp::Reverse(of_kind[i].1.sums.involved));
        picked.extend(by_involved.into_iter().take(10));
        picked.sort_unstable();
        picked.dedup();
        for i in picked.into_iter().filter(|&i| i < of_kind.len()) {
            let (key, s) = of_kind[i];
            let solo = |v: i64| (s.sums.solo_unknown == 0).then_some(v);
            let row = serde_json::json!({
                "kind": kind.as_str(),
                "id": key.id,
                "involved": s.sums.involved,
                "kills": s.sums.kills,
                "losses": s.sums.losses,
                "npc_losses": s.sums.npc_losses,
                "final_blows": s.sums.final_blows,
                "damage_done": s.sums.damage_done,
                "damage_taken": s.sums.damage_taken,
                "isk_destroyed": s.sums.isk_destroyed_cents as f64 / 100.0,
                "isk_lost": s.sums.isk_lost_cents as f64 / 100.0,
                "points_destroyed": s.sums.points_destroyed,
                "points_lost": s.sums.points_lost,
                "solo_kills": solo(s.sums.solo_kills),
                "solo_losses": solo(s.sums.solo_losses),
            });
            writeln!(f, "{row}").expect("write sample");
        }
    }
}
