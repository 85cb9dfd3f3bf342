//! The dataflow alone, in memory (no Kafka, no RocksDB): decode, upsert, explode, consolidate,
//! commit coordination, per epoch size and worker count; beside it the single-pass
//! hand-written fold (the floor: the least work that computes the same all-time statistics).
//! `alltime` maintains the all-time statistics only; `full` everything (months, day buckets
//! for windows, breakdowns, rosters) plus the in-memory commit of windows and leaderboards.
//!
//! Run: `cargo bench -p kmflow-dataflows --bench pipeline`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kmflow_dataflows::contrib::StatsLevel;
use kmflow_dataflows::decode::decode;
use kmflow_dataflows::gen::{GenConfig, Generator};
use kmflow_dataflows::harness::{run, HarnessConfig};
use kmflow_dataflows::reference::ReferenceFold;
use kmflow_dataflows::{RawRecord, SourcePos};

const N: u64 = 20_000;

fn messages() -> Vec<RawRecord> {
    Generator::new(GenConfig {
        count: N,
        ..GenConfig::default()
    })
    .enumerate()
    .map(|(i, (id, payload))| RawRecord {
        pos: SourcePos {
            topic: 0,
            partition: (id % 4) as u32,
            offset: i as i64,
        },
        payload,
    })
    .collect()
}

fn bench(c: &mut Criterion) {
    let msgs = messages();
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("floor_fold", |b| {
        b.iter(|| {
            let mut f = ReferenceFold::default();
            for m in &msgs {
                f.apply(&decode(&m.payload).unwrap(), true);
            }
            f.stats().len()
        })
    });
    for (level, name) in [(StatsLevel::AllTime, "alltime"), (StatsLevel::Full, "full")] {
        for workers in [1usize, 2] {
            for epoch_size in [1_000usize, 10_000] {
                let mut cfg = HarnessConfig::new(workers, epoch_size);
                cfg.spec.level = level;
                g.bench_with_input(
                    BenchmarkId::new(format!("dataflow_{name}_w{workers}"), epoch_size),
                    &cfg,
                    |b, cfg| b.iter(|| run(msgs.clone(), cfg).final_state.stats.len()),
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
