//! The timely workers: each reads its share of the partitions and runs the dataflow
//! (`kmflow_dataflows::pipeline`), reporting to the checkpointer through a channel.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::Sender;
use timely::communication::WorkerGuards;

use kmflow_dataflows::checkpoint::{SinkReport, ToCoordinator};
use kmflow_dataflows::pipeline::{build, PipelineHooks, StatsSpec, UpsertCounters};
use kmflow_dataflows::shard::Checkpoints;
use kmflow_dataflows::static_data::StaticData;

use crate::cluster::control::{Control, ControlPort};
use crate::cluster::Topology;
use crate::config::{Config, SourceKind};
use crate::metrics::Metrics;
use crate::source::generator::{GeneratorReader, GENERATOR_TOPIC};
use crate::source::kafka::KafkaReader;
use crate::source::{epoch_source, EpochControl, EpochPositions, PartitionReader, Position};

use super::source_plan::SourcePlan;

/// Everything the workers share.
pub struct Workers {
    pub config: Arc<Config>,
    pub topology: Topology,
    pub ctl: Arc<EpochControl>,
    pub metrics: Metrics,
    pub outage: Arc<AtomicBool>,
    pub counters: Arc<UpsertCounters>,
    pub static_data: Option<Arc<StaticData>>,
    pub checkpoints: Arc<Checkpoints>,
    pub start_epoch: u64,
    pub plan: Arc<SourcePlan>,
    /// To the checkpointer; it closes when the last worker drops its clone.
    pub tx: Sender<ToCoordinator<Vec<Position>>>,
}

/// How the timely workers start: alone, at once; in a cluster, before the state is recovered
/// (recovery needs every process connected), each then waiting for its [`Workers`].
pub struct Launch {
    pub startup: Arc<OnceLock<Workers>>,
    /// Set when the run ends before the workers got their start.
    pub abort: Arc<AtomicBool>,
    pub control: Option<Arc<Control>>,
}

impl Launch {
    pub fn new(topology: &Topology) -> Launch {
        Launch {
            startup: Arc::new(OnceLock::new()),
            abort: Arc::new(AtomicBool::new(false)),
            control: topology
                .is_cluster()
                .then(|| Control::new(topology.processes, topology.process)),
        }
    }

    /// What the host keeps: the workers' start, the abort flag, the control dataflow.
    pub fn handles(
        &self,
    ) -> (
        Arc<OnceLock<Workers>>,
        Arc<AtomicBool>,
        Option<Arc<Control>>,
    ) {
        (
            self.startup.clone(),
            self.abort.clone(),
            self.control.clone(),
        )
    }

    /// Starts the timely workers (in a cluster, once every process is connected).
    pub fn spawn(&mut self, topology: &Topology) -> anyhow::Result<Started> {
        let (startup, abort, control) = self.handles();
        let stop = abort.clone();
        timely::execute(topology.timely_config(), move |worker| {
            let mut port = control.as_ref().map(|c| c.build(worker));
            let workers = loop {
                if let Some(w) = startup.get() {
                    break w;
                }
                if abort.load(Ordering::Acquire) {
                    return;
                }
                worker.step_or_park(Some(Duration::from_millis(10)));
                if let (Some(p), Some(c)) = (port.as_mut(), control.as_deref()) {
                    p.pump(c);
                }
            };
            workers.run(worker, port.as_mut(), control.as_deref());
        })
        .map(|guards| Started {
            guards: Some(guards),
            abort: stop,
        })
        .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))
    }
}

/// The running workers. Dropped without [`Started::join`] (the run failed before they got
/// their start): they are told to stop and are not waited for, as a cluster's workers may
/// wait on peers; the process exits with the error.
pub struct Started {
    guards: Option<WorkerGuards<()>>,
    abort: Arc<AtomicBool>,
}

impl Started {
    /// Waits for the workers; the first failure is the error.
    pub fn join(mut self) -> anyhow::Result<()> {
        for r in self.guards.take().expect("joined once").join() {
            r.map_err(|e| anyhow::anyhow!("timely worker failed: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(guards) = self.guards.take() {
            self.abort.store(true, Ordering::Release);
            std::mem::forget(guards);
        }
    }
}

impl Workers {
    /// Runs one timely worker until the sources end or a shutdown (in a cluster, until the
    /// last checkpoint is written: the control dataflow carries its rounds).
    fn run(
        &self,
        worker: &mut timely::worker::Worker,
        mut port: Option<&mut ControlPort>,
        control: Option<&Control>,
    ) {
        let index = worker.index();
        let reader = self.reader(index);
        let positions: EpochPositions = Rc::new(RefCell::new(Vec::new()));
        let hooks = self.hooks(self.tx.clone(), positions.clone());
        let (ctl, start) = (self.ctl.clone(), self.start_epoch);
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            build(epoch_source(scope, start, reader, ctl, positions), hooks)
        });
        // What needs the worker activates an operator, which ends a park at once: a checkpoint
        // request or a raised epoch target (from another thread), data between workers, and
        // the sources' own poll timers (2 ms, 10 ms when idle), which is how new Kafka records
        // are noticed. A cluster's control port is pumped between parks, so those stay short.
        let park = match port {
            Some(_) => Duration::from_millis(5),
            None => Duration::from_millis(50),
        };
        while !probe.done() || control.is_some_and(|c| !c.is_finished()) {
            worker.step_or_park(Some(park));
            if let (Some(p), Some(c)) = (port.as_deref_mut(), control) {
                p.pump(c);
            }
        }
        if let Some(p) = port {
            p.close();
        }
    }

    /// The reader of the partitions of worker `index` (numbered over the whole cluster).
    fn reader(&self, index: usize) -> Box<dyn PartitionReader> {
        let (config, plan) = (&self.config, &self.plan);
        let mine = plan.assigned(index, &self.topology);
        match config.source.kind {
            SourceKind::Generator => {
                let stored = plan.offsets.get(GENERATOR_TOPIC);
                let parts: Vec<(i32, Option<i64>)> = mine
                    .iter()
                    .map(|&(_, p)| (p, stored.and_then(|m| m.get(&p)).copied()))
                    .collect();
                Box::new(GeneratorReader::new(
                    &config.generator,
                    &parts,
                    self.metrics.clone(),
                ))
            }
            SourceKind::Kafka => match KafkaReader::new(
                &config.kafka,
                &mine,
                &plan.offsets,
                &plan.fingerprints,
                self.metrics.clone(),
                self.outage.clone(),
            ) {
                Ok(r) => Box::new(r),
                Err(e) => {
                    tracing::error!(error = %e, "kafka: cannot create consumer; stopping");
                    self.ctl.shutdown.store(true, Ordering::Release);
                    Box::new(GeneratorReader::new(
                        &config.generator,
                        &[],
                        self.metrics.clone(),
                    ))
                }
            },
        }
    }

    /// How one worker's dataflow reports to the checkpointer.
    fn hooks(
        &self,
        tx: Sender<ToCoordinator<Vec<Position>>>,
        positions: EpochPositions,
    ) -> PipelineHooks<impl FnMut(SinkReport<()>) + 'static> {
        let flush_tx = tx.clone();
        // The checkpointer counts this process's workers from 0.
        let first = self.topology.global_worker(0);
        let workers = self.topology.workers;
        PipelineHooks {
            store: self.ctl.store.clone(),
            counters: self.counters.clone(),
            spec: StatsSpec {
                level: self.config.stats.level,
                static_data: self.static_data.clone(),
            },
            flush: Box::new(move |mut f| {
                f.worker -= first;
                let _ = flush_tx.send(ToCoordinator::Flush(f));
            }),
            checkpoints: self.checkpoints.clone(),
            start: self.start_epoch,
            cache_rows: self.config.state.cache_rows / workers.max(1),
            report: move |r: SinkReport<()>| {
                // The positions of every epoch the sink has passed travel with its report.
                let mut meta = Vec::new();
                positions.borrow_mut().retain(|(e, p)| {
                    let passed = *e < r.frontier;
                    if passed {
                        meta.push((*e, p.clone()));
                    }
                    !passed
                });
                let _ = tx.send(ToCoordinator::Sink(SinkReport {
                    worker: r.worker - first,
                    frontier: r.frontier,
                    items: r.items,
                    meta,
                }));
            },
            on_store_error: Rc::new(|e| tracing::error!(error = %e, "state read failed; retrying")),
        }
    }
}
