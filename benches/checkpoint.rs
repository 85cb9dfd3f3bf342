//! The RocksDB commit of one checkpoint: the shards' writes (all-time rows and their
//! leaderboard index entries, blind merges of every other touched statistic), the upsert state
//! of every killmail, offsets and metadata, in one synced WriteBatch. The shards' planning
//! (which reads the all-time rows they do not cache) happens in the setup, not in the timing.
//!
//! Run: `cargo bench --bench checkpoint`.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use kmflow::state::RocksState;
use kmflow_dataflows::checkpoint::{CheckpointBatch, DeltaMap};
use kmflow_dataflows::contrib::{contributions, StatsLevel};
use kmflow_dataflows::decode::decode;
use kmflow_dataflows::gen::{GenConfig, Generator};
use kmflow_dataflows::shard::{plan_flush, AllTimeCache};
use kmflow_dataflows::{SourcePos, StoredKillmail};

fn batch(state: &RocksState, first: u64, n: u64, epoch: u64) -> CheckpointBatch<()> {
    let mut b = CheckpointBatch::<()> {
        last_epoch: epoch,
        ..Default::default()
    };
    let kms = Generator::new(GenConfig {
        count: n,
        first_id: first,
        seed: first,
        ..GenConfig::default()
    });
    let mut deltas = DeltaMap::default();
    for (i, (_, payload)) in kms.enumerate() {
        let km = decode(&payload).unwrap();
        for (k, s) in contributions(&km, StatsLevel::Full) {
            deltas.merge(k, &s);
        }
        b.max_time = b.max_time.max(Some(km.time));
        let applied_from = SourcePos {
            topic: 0,
            partition: 0,
            offset: i as i64,
        };
        b.upserts.push((
            km.killmail_id,
            StoredKillmail {
                killmail: km,
                zkb_version: 0,
                applied_from,
                epoch,
            },
        ));
    }
    let mut cache = AllTimeCache::new(1 << 20);
    b.writes = plan_flush(state, &mut cache, deltas)
        .map_err(|(e, _)| e)
        .unwrap();
    b
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    g.sample_size(10);
    let topics = vec!["killmails".to_string()];
    let offsets = BTreeMap::from([("killmails".to_string(), BTreeMap::from([(0, 1i64)]))]);
    for n in [1_000u64, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let state = RocksState::open(dir.path(), 64).unwrap();
        // Warm state: a history the commits update.
        state
            .write_checkpoint(
                &batch(&state, 1, 50_000, 0),
                &topics,
                &offsets,
                &BTreeMap::new(),
                i64::MAX,
            )
            .unwrap();
        let mut epoch = 1;
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("epoch", n), &n, |b, &n| {
            b.iter_batched(
                || {
                    epoch += 1;
                    batch(&state, epoch * 1_000_000, n, epoch)
                },
                |bt| {
                    state
                        .write_checkpoint(&bt, &topics, &offsets, &BTreeMap::new(), i64::MAX)
                        .unwrap()
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
