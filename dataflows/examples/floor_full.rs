//! The full-statistics floor of `benches/replay.sh`: a single-threaded, in-memory, hash-map fold
//! of every statistic kmflow serves (all time, months, days, breakdowns, rosters; windows and
//! every leaderboard at the end) over the same generated killmails kmflow's built-in source
//! produces (4 partitions), with the same decoder. No state on disk, no incremental windows or
//! leaderboards: the least work anyone could do to get the answers once.
//!
//!   cargo run --release -p kmflow-dataflows --example floor_full -- --generate N [--static-dir DIR]
//!
//! Prints `R killmails/s` (the fold only; the JSON is generated before the clock starts).

use std::path::PathBuf;
use std::time::Instant;

use kmflow_dataflows::aggregate::{rank_windows, windows_from_days};
use kmflow_dataflows::checkpoint::DeltaMap;
use kmflow_dataflows::contrib::{contributions, expand, StatsLevel};
use kmflow_dataflows::gen::{GenConfig, Generator};
use kmflow_dataflows::keys::{Dim, Metric, RankKey, WINDOW_DAYS};
use kmflow_dataflows::model::EntityKind;
use kmflow_dataflows::static_data::StaticData;
use kmflow_dataflows::time::day_of;
use kmflow_dataflows::version::{upsert, Upsert};
use kmflow_dataflows::{SourcePos, StoredKillmail};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut n, mut static_dir) = (1_000_000u64, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--generate" => {
                n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--generate N")
            }
            "--static-dir" => static_dir = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: floor_full --generate N [--static-dir DIR]");
                std::process::exit(2);
            }
        }
    }
    let sd = static_dir.map(|d| StaticData::load(&d).expect("static data"));
    // The generator source's killmails: 4 partitions of N/4, seeds 1+p.
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(n as usize);
    for p in 0..4u64 {
        let g = Generator::new(GenConfig {
            seed: 1 + p,
            count: n / 4,
            first_id: 100_000_000 + p * 1_000_000_000,
            ..GenConfig::default()
        });
        payloads.extend(g.map(|(_, payload)| payload));
    }

    let start = Instant::now();
    let mut applied: rustc_hash::FxHashMap<u64, StoredKillmail> = Default::default();
    let mut stats = DeltaMap::default();
    let mut latest = i64::MIN;
    let mut touched = 0usize;
    let pos = SourcePos::default();
    for payload in &payloads {
        let Ok(mut km) = kmflow_dataflows::decode::decode(payload) else {
            continue;
        };
        if let Some(sd) = &sd {
            km.derived = sd.derive(&km);
        }
        let current = applied.get(&km.killmail_id);
        let next = match upsert(current, &km, pos) {
            Upsert::Ignore => continue,
            Upsert::Insert(next) | Upsert::Advance(next) => next,
            Upsert::Replace(next) => {
                let old = &current.expect("replaces a known version").killmail;
                for (k, s) in contributions(old, StatsLevel::Full) {
                    expand(k, &s.retraction(), |k, s| stats.merge(k, &s));
                }
                next
            }
        };
        if current.is_none_or(|c| c.killmail.zkb != next.zkb) {
            let c = contributions(&next, StatsLevel::Full);
            touched += c.len();
            // Every statistic served: a share's delta as the buckets it adds to.
            for (k, s) in c {
                expand(k, &s, |k, s| stats.merge(k, &s));
            }
        }
        latest = latest.max(next.time);
        let stored = StoredKillmail {
            killmail: next,
            zkb_version: 0,
            applied_from: pos,
            epoch: 0,
        };
        applied.insert(stored.killmail.killmail_id, stored);
    }
    let folded = start.elapsed().as_secs_f64();
    // Windows at the clock (the latest killmail), then every leaderboard.
    let clock = day_of(latest);
    let windows = windows_from_days(
        clock,
        stats
            .iter()
            .filter(|(k, _)| matches!(k.dim, Dim::Day(_)))
            .map(|(k, v)| (*k, *v)),
    );
    let mut boards = 0usize;
    for kind in EntityKind::ALL {
        for metric in Metric::ALL {
            let mut all: Vec<RankKey> = stats
                .iter()
                .filter(|(k, _)| k.dim == Dim::All && k.entity.kind == kind)
                .flat_map(|(k, s)| RankKey::entries(*k, s))
                .filter(|r| r.metric == metric)
                .collect();
            all.sort_unstable_by_key(|r| r.to_bytes());
            boards += all.len().min(1);
            for w in 1..=WINDOW_DAYS.len() as u8 {
                let of_kind = windows.iter().filter(|(k, _)| k.entity.kind == kind);
                boards += rank_windows(of_kind, w, metric, 1000).len().min(1);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "floor_full: {} killmails touching {:.0} statistics each, {} statistics, {} windows, {boards} leaderboards in {secs:.2} s (fold {folded:.2} s)",
        payloads.len(),
        touched as f64 / payloads.len().max(1) as f64,
        stats.len(),
        windows.len()
    );
    println!("{:.0} killmails/s", payloads.len() as f64 / secs);
}
