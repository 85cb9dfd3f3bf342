//! `kmflow run`, in the order a killmail meets it:
//!
//! 1. [`Restored::open`]: the RocksDB state, the epoch to start from, the static data;
//! 2. [`ApiServer::start`]: the read API, serving the stored state at once;
//! 3. [`SourcePlan::connect`]: which partitions to read, from which stored positions;
//! 4. [`Workers::run`]: timely workers read, decode, upsert and shard the statistics;
//! 5. [`Checkpointer::run`]: writes each checkpoint to RocksDB (a thread of its own);
//! 6. [`monitor::monitor_loop`]: lag, outages and readiness (a thread of its own).

mod api_server;
mod checkpointer;
mod monitor;
mod source_plan;
mod workers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use kmflow_dataflows::checkpoint::{CheckpointCoordinator, ToCoordinator};
use kmflow_dataflows::pipeline::UpsertCounters;
use kmflow_dataflows::shard::Checkpoints;
use kmflow_dataflows::static_data::StaticData;

use crate::api::AppState;
use crate::cluster::control::{Control, Vote};
use crate::cluster::{prepared, Holding, Recovery, Topology};
use crate::config::{Config, SourceKind};
use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::source::generator::GENERATOR_TOPIC;
use crate::source::{EpochControl, Position};
use crate::state::{DeadLetterLimits, RocksState};

use api_server::ApiServer;
use checkpointer::Checkpointer;
use monitor::{monitor_loop, MonitorCtx};
use source_plan::SourcePlan;
use workers::{Launch, Started, Workers};

/// topic → partition → next offset to read.
type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;
/// topic → partition → fingerprint of the message before the next offset.
type Fingerprints = BTreeMap<String, BTreeMap<i32, u64>>;

/// Messages the workers may queue for the checkpointer, per worker, before they wait for it.
const CHANNEL_PER_WORKER: usize = 256;

/// The state as found at start.
struct Restored {
    state: Arc<RocksState>,
    start_epoch: u64,
    static_data: Option<Arc<StaticData>>,
}

impl Restored {
    fn open(config: &Config, metrics: &Metrics) -> anyhow::Result<Restored> {
        let started = Instant::now();
        std::fs::create_dir_all(&config.state.dir)
            .with_context(|| format!("creating state directory {}", config.state.dir.display()))?;
        let state = RocksState::open(&config.state.dir, config.state.block_cache_mb)?;
        state.set_dead_letter_limits(DeadLetterLimits {
            count: config.state.dead_letters_max,
            bytes: config.state.dead_letters_max_mb.saturating_mul(1024 * 1024),
        });
        let meta = state.checkpoint_meta();
        let start_epoch = meta.as_ref().map_or(0, |m| m.epoch + 1);
        // Gauges describing the stored state are right from the start, not from the next
        // checkpoint.
        if let Some(m) = &meta {
            metrics.observe_stored(m);
        }
        let static_data = if config.stats.static_dir.as_os_str().is_empty() {
            tracing::warn!(
                "stats.static-dir is empty: solo without zkb and victim ship groups will be unknown"
            );
            None
        } else {
            let sd = StaticData::load(&config.stats.static_dir)?;
            tracing::info!(dir = %config.stats.static_dir.display(), types = sd.type_group.len(),
                groups = sd.group_category.len(), "static data loaded");
            Some(Arc::new(sd))
        };
        tracing::info!(
            dir = %config.state.dir.display(),
            epoch = start_epoch,
            killmails = state.estimated_killmails(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state restored"
        );
        Ok(Restored {
            state,
            start_epoch,
            static_data,
        })
    }
}

/// Runs kmflow until SIGINT/SIGTERM, or until the state store fails.
pub fn run(config: Arc<Config>) -> anyhow::Result<()> {
    let started = Instant::now();
    let topology = Topology::from_config(&config);
    let metrics = Metrics::for_process(topology.is_cluster().then_some(topology.process));
    let restored = Restored::open(&config, &metrics)?;
    let state = restored.state.clone();
    if let Some(m) = state.checkpoint_meta() {
        topology
            .check_place(m.cluster, &config.state.dir)
            .map_err(anyhow::Error::msg)?;
    }
    let topics: Vec<String> = match config.source.kind {
        SourceKind::Kafka => config.kafka.topics(),
        SourceKind::Generator => vec![GENERATOR_TOPIC.to_string()],
    };
    let stopping = Arc::new(AtomicBool::new(false));
    // The API first: reads are served while the source connects or the broker is down.
    let served = Served::start(&config, &restored, &metrics, &topics, &stopping)?;

    let mut launch = Launch::new(&topology);
    let (startup, abort, control) = launch.handles();
    let (start_epoch, mut guards) = match &control {
        // In a cluster the workers start first: recovering the state needs every process.
        Some(control) => {
            crate::cluster::exit_when_a_peer_is_lost();
            tracing::info!(process = topology.process, addresses = ?topology.addresses, "cluster: connecting to every process");
            let guards = launch.spawn(&topology)?;
            (recover(&config, &state, control)?, Some(guards))
        }
        None => (restored.start_epoch, None),
    };
    let ctl = Arc::new(EpochControl::new(
        start_epoch,
        state.clone(),
        config.pipeline.epoch_max_records,
        Duration::from_millis(config.pipeline.epoch_max_ms),
        config.pipeline.max_inflight_epochs,
        stopping,
    ));
    if let Some(c) = &control {
        c.attach(ctl.clone());
    }
    let meta = state.checkpoint_meta().unwrap_or_default();
    let plan = SourcePlan::connect(
        &config,
        &topics,
        meta.offsets,
        meta.fingerprints,
        &metrics,
        &ctl,
    );
    let Some(plan) = plan else {
        abort.store(true, Ordering::Release);
        served.api.stop();
        return Ok(());
    };
    let plan = Arc::new(plan);
    // Ready unless a partition is left unread (its stored position is gone).
    served
        .ready
        .store(plan.blocked.is_empty(), Ordering::Release);
    metrics.ready.set(plan.blocked.is_empty() as i64);
    tracing::info!(
        partitions = plan.partitions.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    let running = Running::start(Ingest {
        config: &config,
        topology: &topology,
        state: &state,
        metrics: &metrics,
        topics: &topics,
        served: &served,
        plan: &plan,
        ctl: &ctl,
        control: control.clone(),
        start_epoch,
    })?;
    let _ = startup.set(Workers {
        config: config.clone(),
        topology: topology.clone(),
        ctl,
        metrics,
        outage: running.outage.clone(),
        counters: running.counters.clone(),
        static_data: restored.static_data,
        checkpoints: running.checkpoints.clone(),
        start_epoch,
        plan,
        tx: running.tx.clone(),
    });
    if guards.is_none() {
        guards = Some(launch.spawn(&topology)?);
    }
    let ran = guards.map_or(Ok(()), Started::join);
    // The workers' sender goes with them: the checkpointer sees the channel close.
    drop((startup, launch));
    let written = running.stop()?;
    served.api.stop();
    ran?;
    finish(&config, &state, written)
}

/// The read API, serving from the start.
struct Served {
    api: ApiServer,
    feed: Arc<Feed>,
    ready: Arc<AtomicBool>,
}

impl Served {
    fn start(
        config: &Config,
        restored: &Restored,
        metrics: &Metrics,
        topics: &[String],
        stopping: &Arc<AtomicBool>,
    ) -> anyhow::Result<Served> {
        let state = restored.state.clone();
        let mut api_state = AppState::new(state.clone(), metrics.clone(), config);
        api_state.topics = Arc::new(topics.to_vec());
        api_state.static_data = restored.static_data.clone();
        api_state.level = config.stats.level;
        let feed = api_state.feed.clone();
        let ready = api_state.ready.clone();
        let api = ApiServer::start(config, api_state)?;
        let grace = Duration::from_millis(config.pipeline.shutdown_grace_ms);
        api.rt.spawn(stop_on_signal(stopping.clone(), state, grace));
        let addr = api.addr;
        println!(
            "kmflow: API and metrics on http://{addr}  (state in {})",
            config.state.dir.display()
        );
        println!("kmflow: try  curl http://{addr}/readyz   curl http://{addr}/metrics");
        Ok(Served { api, feed, ready })
    }
}

/// What the checkpointer and the monitor are started from.
struct Ingest<'a> {
    config: &'a Arc<Config>,
    topology: &'a Topology,
    state: &'a Arc<RocksState>,
    metrics: &'a Metrics,
    topics: &'a [String],
    served: &'a Served,
    plan: &'a SourcePlan,
    ctl: &'a Arc<EpochControl>,
    control: Option<Arc<Control>>,
    start_epoch: u64,
}

/// The checkpointer and monitor threads, and what the workers share with them.
struct Running {
    tx: crossbeam_channel::Sender<ToCoordinator<Vec<Position>>>,
    checkpoints: Arc<Checkpoints>,
    counters: Arc<UpsertCounters>,
    outage: Arc<AtomicBool>,
    checkpointer: std::thread::JoinHandle<Result<(), crate::state::StateError>>,
    monitor: std::thread::JoinHandle<()>,
    monitor_stop: Arc<AtomicBool>,
}

impl Running {
    fn start(i: Ingest<'_>) -> anyhow::Result<Running> {
        let workers = i.config.pipeline.workers;
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_PER_WORKER * workers);
        let checkpoints = Arc::new(Checkpoints::new(i.start_epoch));
        // The partitions this process reads: in a cluster, it stores and watches only those.
        let own = i.plan.owned(i.topology);
        let (offsets, coordinator) = match &i.control {
            Some(_) => (
                i.plan.offsets_of(i.topics, &own),
                CheckpointCoordinator::agreed(workers, i.start_epoch, checkpoints.clone()),
            ),
            None => (
                i.plan.offsets.clone(),
                CheckpointCoordinator::new(workers, i.start_epoch, checkpoints.clone()),
            ),
        };
        let checkpointing = Checkpointing {
            state: i.state.clone(),
            topics: i.topics.to_vec(),
            metrics: i.metrics.clone(),
            ctl: i.ctl.clone(),
            api: format!("http://{}", i.served.api.addr),
            feed: i.served.feed.clone(),
            offsets,
            coordinator,
            control: i.control.clone(),
            dir: i.config.state.dir.clone(),
            checkpoints: checkpoints.clone(),
        };
        let checkpointer = spawn_checkpointer(i.config, checkpointing, rx)?;
        let monitor_stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(UpsertCounters::default());
        let outage = Arc::new(AtomicBool::new(false));
        let monitor = spawn_monitor(
            MonitorCtx {
                config: i.config.clone(),
                state: i.state.clone(),
                metrics: i.metrics.clone(),
                counters: counters.clone(),
            },
            Monitored {
                ready: i.served.ready.clone(),
                outage: outage.clone(),
                stop: monitor_stop.clone(),
                partitions: own,
                blocked: i.plan.blocked.clone(),
            },
        )?;
        Ok(Running {
            tx,
            checkpoints,
            counters,
            outage,
            checkpointer,
            monitor,
            monitor_stop,
        })
    }

    /// After the workers: waits for the last checkpoint, then stops the monitor.
    fn stop(self) -> anyhow::Result<Result<(), crate::state::StateError>> {
        drop(self.tx);
        let written = self
            .checkpointer
            .join()
            .map_err(|_| anyhow::anyhow!("checkpointer panicked"))?;
        self.monitor_stop.store(true, Ordering::Release);
        let _ = self.monitor.join();
        Ok(written)
    }
}

/// In a cluster, at start: every process tells what it holds, and each writes or drops its
/// prepared checkpoint so that all are at one common checkpoint (see [`crate::cluster::decide`]).
/// Returns the first epoch to produce.
fn recover(config: &Config, state: &RocksState, control: &Control) -> anyhow::Result<u64> {
    let dir = &config.state.dir;
    let meta = state.checkpoint_meta();
    let prepared = prepared::load(dir)?;
    control.vote(Vote::Holding(Holding {
        committed: meta.as_ref().map(|m| m.epoch),
        clock: meta.as_ref().map(|m| m.clock).unwrap_or_default(),
        prepared: prepared.as_ref().map(|p| p.meta.epoch),
        shape: Topology::shape(config),
    }));
    let round = control
        .rounds()
        .recv()
        .map_err(|_| anyhow::anyhow!("cluster: the workers stopped before recovery"))?;
    let holdings = round
        .all()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|v| match v {
            Vote::Holding(h) => Ok(h),
            other => Err(anyhow::anyhow!(
                "cluster: expected what each process holds, got {other:?}"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let me = config.cluster.process;
    let (recovery, common) = crate::cluster::decide(me, &holdings).map_err(anyhow::Error::msg)?;
    match (recovery, prepared) {
        (Recovery::RollForward { clock }, Some(p)) => {
            let epoch = p.meta.epoch;
            state.commit_prepared(p, clock)?;
            prepared::remove(dir)?;
            tracing::warn!(epoch, "cluster: wrote the prepared checkpoint another process had written before the crash");
        }
        (Recovery::Discard, Some(p)) => {
            prepared::remove(dir)?;
            tracing::warn!(
                epoch = p.meta.epoch,
                "cluster: dropped a prepared checkpoint no process wrote"
            );
        }
        _ => {}
    }
    tracing::info!(checkpoint = ?common, processes = holdings.len(), "cluster: every process is at one checkpoint");
    Ok(common.map_or(0, |e| e + 1))
}

/// On SIGTERM/SIGINT: stop reading and let the workers finish the current epoch. Past the
/// grace, exit at the last checkpoint: it is whole (like after a crash), so nothing is lost;
/// what was read since is read again at the next start.
async fn stop_on_signal(stopping: Arc<AtomicBool>, state: Arc<RocksState>, grace: Duration) {
    wait_for_signal().await;
    tracing::info!("shutdown requested: finishing the current epoch");
    stopping.store(true, Ordering::Release);
    tokio::time::sleep(grace).await;
    let epoch = state.checkpoint_meta().map(|m| m.epoch);
    tracing::warn!(
        ?epoch,
        grace_ms = grace.as_millis() as u64,
        "shutdown grace expired: exiting at the last checkpoint"
    );
    std::process::exit(0);
}

/// What the checkpointer thread owns.
struct Checkpointing {
    /// In a cluster: the control dataflow the checkpoints are agreed on, and where the
    /// prepared checkpoint is kept.
    control: Option<Arc<Control>>,
    dir: std::path::PathBuf,
    /// Released to the shards if the checkpointer dies.
    checkpoints: Arc<Checkpoints>,
    state: Arc<RocksState>,
    topics: Vec<String>,
    metrics: Metrics,
    ctl: Arc<EpochControl>,
    api: String,
    feed: Arc<Feed>,
    offsets: Offsets,
    coordinator: CheckpointCoordinator<Vec<Position>>,
}

fn spawn_checkpointer(
    config: &Config,
    c: Checkpointing,
    rx: crossbeam_channel::Receiver<ToCoordinator<Vec<Position>>>,
) -> anyhow::Result<std::thread::JoinHandle<Result<(), crate::state::StateError>>> {
    let wall = config.stats.wall_clock()?;
    Ok(std::thread::Builder::new()
        .name("kmflow-checkpoint".into())
        .spawn(move || {
            let checkpointer = Checkpointer {
                state: &c.state,
                topics: &c.topics,
                metrics: &c.metrics,
                ctl: &c.ctl,
                api: &c.api,
                feed: &c.feed,
                wall,
                hinted: Default::default(),
            };
            let run = std::panic::AssertUnwindSafe(|| match &c.control {
                Some(control) => {
                    checkpointer.run_cluster(rx, c.coordinator, c.offsets, control, &c.dir)
                }
                None => checkpointer.run(rx, c.coordinator, c.offsets),
            });
            std::panic::catch_unwind(run).unwrap_or_else(|_| {
                // A bug, not a storage failure: stop as after a failed checkpoint (the
                // workers stop reading, the shards release their epochs, the other processes
                // of a cluster end their round) rather than leave the workers waiting.
                c.ctl.shutdown.store(true, Ordering::Release);
                c.checkpoints.request(u64::MAX);
                if let Some(control) = &c.control {
                    control.finish();
                }
                Err(crate::state::StateError::Corrupt(
                    "the checkpointer panicked; the state is at its last checkpoint".into(),
                ))
            })
        })?)
}

/// What the monitor watches and sets.
struct Monitored {
    ready: Arc<AtomicBool>,
    outage: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// This process's partitions.
    partitions: Vec<(u16, i32)>,
    blocked: Vec<(u16, i32)>,
}

fn spawn_monitor(ctx: MonitorCtx, m: Monitored) -> anyhow::Result<std::thread::JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("kmflow-monitor".into())
        .spawn(move || {
            monitor_loop(ctx, &m.ready, &m.outage, &m.stop, &m.partitions, &m.blocked)
        })?)
}

/// After the workers stopped: a clean stop flushes the memtables (the next start replays no
/// WAL); a failed checkpoint is the run's error.
fn finish(
    config: &Config,
    state: &RocksState,
    written: Result<(), crate::state::StateError>,
) -> anyhow::Result<()> {
    match written {
        Ok(()) => {
            if let Err(e) = state.flush() {
                tracing::warn!(error = %e, "flushing state on stop failed; the next start replays the WAL");
            }
            tracing::info!(epoch = ?state.checkpoint_meta().map(|m| m.epoch), "stopped cleanly");
            Ok(())
        }
        Err(e) => {
            let last = state
                .checkpoint_meta()
                .map_or_else(|| "none".to_string(), |m| m.epoch.to_string());
            Err(anyhow::Error::new(e).context(format!(
                "ingestion stopped: the state in {} is intact at its last committed epoch ({last})",
                config.state.dir.display(),
            )))
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
