//! Runs the pipeline in memory on `workers` threads over a fixed list of messages, as the
//! Kafka host does but with the epochs cut by message count: for oracle tests and benches.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;

use crate::aggregate::StreamClock;
use crate::checkpoint::{CheckpointCoordinator, ToCoordinator};
use crate::keys::{RankKey, StatKey};
use crate::model::RawRecord;
use crate::pipeline::{build, PipelineHooks, StatsSpec, UpsertCounters};
use crate::shard::Checkpoints;
use crate::stats::Stats;
use crate::store::{MemoryState, MemoryStore};

/// The wall-clock time (Unix seconds) the checkpointer sees when it writes the checkpoint through an epoch.
pub type WallClock = Arc<dyn Fn(u64) -> i64 + Send + Sync>;

/// One worker's messages, per epoch.
type WorkerPlan = Vec<Vec<RawRecord>>;

/// How to run the harness.
#[derive(Clone)]
pub struct HarnessConfig {
    pub workers: usize,
    /// Messages per epoch, counted over the whole input in its order.
    pub epoch_size: usize,
    /// Keep a copy of all statistics after every checkpoint (for oracle tests; costly).
    pub snapshots: bool,
    /// All-time rows each shard caches (small values exercise eviction).
    pub cache_rows: usize,
    pub spec: StatsSpec,
    /// The wall clock by last committed epoch; `None`: far in the future (the data's clock).
    pub wall: Option<WallClock>,
}

impl HarnessConfig {
    pub fn new(workers: usize, epoch_size: usize) -> Self {
        HarnessConfig {
            workers,
            epoch_size,
            snapshots: false,
            cache_rows: 1 << 20,
            spec: StatsSpec::default(),
            wall: None,
        }
    }
}

/// The statistics after one checkpoint.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The last epoch the checkpoint covered.
    pub epoch: u64,
    pub stats: BTreeMap<StatKey, Stats>,
    pub ranks: std::collections::BTreeSet<RankKey>,
    pub clock: StreamClock,
}

/// What a run produced.
pub struct HarnessRun {
    /// The state after every checkpoint, when snapshots were asked for.
    pub snapshots: Vec<Snapshot>,
    pub final_state: MemoryState,
    pub counters: Arc<UpsertCounters>,
    /// The epoch each message was given in, by index.
    pub epoch_of: Vec<u64>,
}

/// Runs `messages` (in arrival order) through the pipeline. Worker `w` reads the partitions
/// `p` with `p % workers == w`, as the Kafka source assigns them.
pub fn run(messages: Vec<RawRecord>, config: &HarnessConfig) -> HarnessRun {
    run_on(Arc::new(MemoryStore::new()), messages, config)
}

/// [`run`], continuing from the state in `store` (a later run of the same job, possibly with
/// another number of workers): its epochs start after the store's committed epoch.
pub fn run_on(
    store: Arc<MemoryStore>,
    messages: Vec<RawRecord>,
    config: &HarnessConfig,
) -> HarnessRun {
    use crate::store::StateStore;
    let start = store.committed_epoch().map_or(0, |e| e + 1);
    let workers = config.workers.max(1);
    let epoch_size = config.epoch_size.max(1);
    let epoch_of: Vec<u64> = (0..messages.len())
        .map(|i| start + (i / epoch_size) as u64)
        .collect();
    let epochs = epoch_of.last().map_or(0, |e| e + 1 - start);
    // Per worker, per epoch, its messages in order.
    let mut plan: Vec<Vec<Vec<RawRecord>>> = vec![vec![Vec::new(); epochs as usize]; workers];
    for (i, m) in messages.into_iter().enumerate() {
        let w = m.pos.partition as usize % workers;
        plan[w][(epoch_of[i] - start) as usize].push(m);
    }
    let plan: Arc<Mutex<Vec<Option<WorkerPlan>>>> =
        Arc::new(Mutex::new(plan.into_iter().map(Some).collect()));

    let counters = Arc::new(UpsertCounters::default());
    let (tx, rx) = mpsc::channel::<ToCoordinator<()>>();
    let checkpoints = Arc::new(Checkpoints::new(start));
    let snapshots_wanted = config.snapshots;
    let checkpointer_store = Arc::clone(&store);
    let wall = config.wall.clone();
    let ckpt = Arc::clone(&checkpoints);
    let checkpointer = std::thread::spawn(move || {
        let mut coordinator = CheckpointCoordinator::<()>::new(workers, start, ckpt);
        let mut snapshots = Vec::new();
        for report in rx {
            if let Some(mut batch) = coordinator.offer(report) {
                let now = wall.as_ref().map_or(i64::MAX, |w| w(batch.last_epoch));
                checkpointer_store.apply(&batch, now);
                coordinator.committed();
                coordinator.recycle(std::mem::take(&mut batch.writes));
                if snapshots_wanted {
                    let s = checkpointer_store.snapshot();
                    let (stats, ranks) = s.served();
                    snapshots.push(Snapshot {
                        epoch: batch.last_epoch,
                        stats,
                        ranks,
                        clock: s.clock,
                    });
                }
            }
        }
        snapshots
    });

    let tx = Arc::new(Mutex::new(tx));
    let (store2, counters2) = (Arc::clone(&store), Arc::clone(&counters));
    let spec = config.spec.clone();
    let cache_rows = config.cache_rows;
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let my_plan = plan.lock().expect("plan lock")[index]
            .take()
            .expect("one plan per worker");
        let tx = tx.lock().expect("sender lock").clone();
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<RawRecord>>>::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let hooks = PipelineHooks {
                store: store2.clone() as Arc<dyn crate::store::StateStore>,
                counters: Arc::clone(&counters2),
                report: {
                    let tx = tx.clone();
                    move |r| {
                        let _ = tx.send(ToCoordinator::Sink(r));
                    }
                },
                flush: Box::new(move |f| {
                    let _ = tx.send(ToCoordinator::Flush(f));
                }),
                checkpoints: Arc::clone(&checkpoints),
                start,
                cache_rows,
                on_store_error: std::rc::Rc::new(|e| panic!("memory store failed: {e}")),
                spec: spec.clone(),
            };
            build(input.to_stream(scope), hooks)
        });
        input.advance_to(start);
        for (epoch, batch) in my_plan.into_iter().enumerate() {
            for m in batch {
                input.send(m);
            }
            input.advance_to(start + epoch as u64 + 1);
            // Do not wait for the commit: checkpoints then cover varying runs of epochs.
            worker.step();
        }
        drop(input);
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely workers")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker panicked"));

    let snapshots = checkpointer.join().expect("checkpointer panicked");
    HarnessRun {
        snapshots,
        final_state: store.snapshot(),
        counters,
        epoch_of,
    }
}
