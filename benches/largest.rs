//! The cost of committing the largest killmail kmflow accepts (20,000 attackers, all distinct
//! characters, 2,000 corporations, 200 alliances) through the real state path, at both
//! statistics levels: decode, contributions summed into a shard's deltas, the shard's plan
//! (which reads the all-time rows), the RocksDB batch, the synced commit. Each round opens a
//! fresh RocksDB and commits one such killmail into it, then measures a second one (new
//! characters, corporations and alliances), as a running kmflow commits them: its maps are
//! recycled from the previous checkpoint, its shard's all-time cache and the leaderboards'
//! floors are those the first one left. Prints the best of `ROUNDS` (default 7) for every
//! step, the CPU time of the whole (this thread: RocksDB writes from the calling thread) and
//! the wall time, and the same for the first killmail into the empty state.
//!
//! Run: `cargo bench --bench largest` (`benches/largest.sh` runs it beside a baseline build);
//! `LEVEL=full` skips the all-time level, for a profile of full statistics; `SHARDS=2` splits
//! the statistics over two shards (two maps, two plans, a batch of two parts), as a kmflow with
//! two workers has them.

use std::collections::BTreeMap;
use std::time::Instant;

use kmflow::state::RocksState;
use kmflow_dataflows::aggregate::Writes;
use kmflow_dataflows::checkpoint::CheckpointBatch;
use kmflow_dataflows::contrib::{for_each_contribution, StatsLevel};
use kmflow_dataflows::decode::decode;
use kmflow_dataflows::deltas::DeltaMap;
use kmflow_dataflows::deltas::Summing;
use kmflow_dataflows::shard::{key_group, owner, plan_flush, AllTimeCache, Checkpoints};
use kmflow_dataflows::{SourcePos, StoredKillmail};

const STEPS: [&str; 5] = ["decode", "deltas", "plan", "batch", "commit"];

/// What a running kmflow keeps from one checkpoint to the next.
struct Running {
    checkpoints: Checkpoints,
    /// Each shard's all-time cache.
    caches: Vec<AllTimeCache>,
    /// The combiner's capacity hint: the last epoch's statistics.
    capacity: usize,
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    // `LEVEL=full`: full statistics only (for a profile of them).
    let only_full = std::env::var("LEVEL").is_ok_and(|l| l == "full");
    // `SHARDS=2`: the statistics split over two shards, as a kmflow with two workers has them.
    let shards: usize = std::env::var("SHARDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let first = kmflow_dataflows::gen::largest_killmail_copy(0);
    let second = kmflow_dataflows::gen::largest_killmail_copy(1);
    for level in [StatsLevel::AllTime, StatsLevel::Full] {
        if only_full && level == StatsLevel::AllTime {
            continue;
        }
        let mut best = [[f64::MAX; STEPS.len() + 2]; 2];
        let mut counts = [(0, 0, 0, 0, [0; STEPS.len()]); 2];
        for _ in 0..rounds {
            let dir = tempfile::tempdir().expect("temp dir");
            let state = RocksState::open(dir.path(), 64).expect("opens");
            let mut running = Running {
                checkpoints: Checkpoints::new(1),
                caches: (0..shards).map(|_| AllTimeCache::new(1 << 20)).collect(),
                capacity: 0,
            };
            for (n, payload) in [&first, &second].into_iter().enumerate() {
                let (times, keys, writes, ops, bytes, faults) =
                    one(&state, &mut running, payload, level, n as u64 + 1);
                counts[n] = (keys, writes, ops, bytes, faults);
                for (b, t) in best[n].iter_mut().zip(times) {
                    *b = b.min(t);
                }
            }
        }
        for (n, what) in ["into an empty state", "the next one"].iter().enumerate() {
            let steps: Vec<String> = STEPS
                .iter()
                .zip(best[n])
                .map(|(s, t)| format!("{s} {t:.1}"))
                .collect();
            println!(
                "{level:?}, {what}: {} statistics, {} writes ({} RocksDB operations, {:.1} MB), {} page faults ({}); best of {rounds} (ms): {}; whole: cpu {:.1}, wall {:.1}",
                counts[n].0,
                counts[n].1,
                counts[n].2,
                counts[n].3 as f64 / 1e6,
                counts[n].4.iter().sum::<i64>(),
                (STEPS.iter().zip(counts[n].4))
                    .map(|(s, f)| format!("{s} {f}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                steps.join(", "),
                best[n][STEPS.len()],
                best[n][STEPS.len() + 1],
            );
        }
    }
}

/// One commit of the killmail into `state` at `epoch`: milliseconds per step, then CPU and
/// wall for the whole; the statistics and writes it made, the RocksDB operations they took (an
/// entity's breakdown buckets are one) and their bytes, and the page faults of each step (each
/// a page first touched: the kernel zeroes it).
fn one(
    state: &RocksState,
    running: &mut Running,
    payload: &[u8],
    level: StatsLevel,
    epoch: u64,
) -> ([f64; 7], usize, usize, usize, usize, [i64; STEPS.len()]) {
    let topics = vec!["killmails".to_string()];
    let offsets = BTreeMap::from([("killmails".to_string(), BTreeMap::from([(0, epoch as i64)]))]);
    let cpu0 = cpu_ms();
    let mut faults = [page_faults(); STEPS.len() + 1];
    let t0 = Instant::now();
    let km = decode(payload).expect("decodes");
    let t1 = Instant::now();
    faults[1] = page_faults();
    // As a combiner sums them (a map per shard), into recycled maps.
    let shards = running.caches.len();
    let mut deltas: Vec<DeltaMap> = (0..shards)
        .map(|_| running.checkpoints.map(running.capacity))
        .collect();
    let mut summing = Summing::default();
    for_each_contribution(&km, level, |k, s| {
        let to = owner(key_group(k.entity), shards);
        summing.add(&mut deltas, to, k, s)
    });
    summing.finish(&mut deltas);
    let t2 = Instant::now();
    faults[2] = page_faults();
    let keys = deltas.iter().map(DeltaMap::len).sum();
    running.capacity = deltas.iter().map(DeltaMap::len).max().unwrap_or(0);
    let mut writes = Writes::default();
    for (cache, deltas) in running.caches.iter_mut().zip(deltas) {
        let part = plan_flush(state, cache, deltas)
            .map_err(|(e, _)| e)
            .expect("reads");
        writes.append(part);
    }
    let t3 = Instant::now();
    faults[3] = page_faults();
    let n = writes.len();
    let mut b = CheckpointBatch::<()> {
        last_epoch: epoch,
        writes,
        max_time: Some(km.time),
        upserts: vec![(
            km.killmail_id,
            StoredKillmail {
                killmail: km,
                zkb_version: 0,
                applied_from: SourcePos::default(),
                epoch,
            },
        )],
        ..Default::default()
    };
    let prepared = state
        .prepare_checkpoint(&b, &topics, &offsets, &BTreeMap::new())
        .expect("batch");
    let t4 = Instant::now();
    faults[4] = page_faults();
    let ops = prepared.batch.len();
    let bytes = prepared.batch.data().len();
    let clock = state.clock().advance(prepared.max_time, i64::MAX);
    state.commit_prepared(prepared, clock).expect("commit");
    running.checkpoints.recycle(std::mem::take(&mut b.writes));
    let t5 = Instant::now();
    let cpu = cpu_ms() - cpu0;
    faults[5] = page_faults();
    let faults = std::array::from_fn(|i| faults[i + 1] - faults[i]);
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let times = [
        ms(t0, t1),
        ms(t1, t2),
        ms(t2, t3),
        ms(t3, t4),
        ms(t4, t5),
        cpu,
        ms(t0, t5),
    ];
    (times, keys, n, ops, bytes, faults)
}

/// Minor page faults of this thread so far.
fn page_faults() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    u.ru_minflt
}

/// CPU time of this thread (user + system), in milliseconds.
fn cpu_ms() -> f64 {
    // The scheduler's own count (nanoseconds), not getrusage's, which this kernel keeps in
    // ticks: its figures came in steps of 4 ms.
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}
