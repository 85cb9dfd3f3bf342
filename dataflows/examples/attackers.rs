//! The cost of the largest killmail kmflow accepts (`MAX_ATTACKERS` attackers, all distinct
//! characters, corporations and alliances): decode, then every statistic it contributes at
//! full statistics. Prints milliseconds for each step, for the hardening figures.
//!
//!   cargo run --release -p kmflow-dataflows --example attackers

use std::time::Instant;

use kmflow_dataflows::contrib::{contributions, StatsLevel};
use kmflow_dataflows::decode::{decode, MAX_ATTACKERS};
use kmflow_dataflows::harness::{run, HarnessConfig};
use kmflow_dataflows::{RawRecord, SourcePos};

fn main() {
    let payload = kmflow_dataflows::gen::largest_killmail();
    let mut best = (f64::MAX, f64::MAX, 0);
    for _ in 0..5 {
        let t0 = Instant::now();
        let km = decode(&payload).expect("decodes");
        let t1 = Instant::now();
        let c = contributions(&km, StatsLevel::Full);
        let t2 = Instant::now();
        best.0 = best.0.min((t1 - t0).as_secs_f64() * 1e3);
        best.1 = best.1.min((t2 - t1).as_secs_f64() * 1e3);
        best.2 = c.len();
    }
    // The whole path in memory: decode, upsert, sums, shards, one checkpoint (1 worker).
    let mut whole = f64::MAX;
    for _ in 0..3 {
        let msgs = vec![RawRecord {
            pos: SourcePos::default(),
            payload: payload.clone(),
        }];
        let mut config = HarnessConfig::new(1, 10);
        config.spec.level = StatsLevel::Full;
        let t = Instant::now();
        let out = run(msgs, &config);
        whole = whole.min(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(out.final_state.killmails.len(), 1);
    }
    println!(
        "{MAX_ATTACKERS} attackers, {} bytes: decode {:.1} ms, contributions {:.1} ms ({} statistics), \
         the whole dataflow to a checkpoint in memory {:.1} ms",
        payload.len(),
        best.0,
        best.1,
        best.2,
        whole
    );
}
