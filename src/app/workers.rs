//! The timely workers: each reads its share of the partitions and runs the dataflow
//! (`kmflow_dataflows::pipeline`), reporting to the checkpointer through a channel.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use kmflow_dataflows::checkpoint::{SinkReport, ToCoordinator};
use kmflow_dataflows::pipeline::{build, PipelineHooks, StatsSpec, UpsertCounters};
use kmflow_dataflows::shard::Checkpoints;
use kmflow_dataflows::static_data::StaticData;

use crate::config::{Config, SourceKind};
use crate::metrics::Metrics;
use crate::source::generator::{GeneratorReader, GENERATOR_TOPIC};
use crate::source::kafka::{self, KafkaReader};
use crate::source::{epoch_source, EpochControl, EpochPositions, PartitionReader, Position};

use super::source_plan::SourcePlan;

/// Everything the workers share.
pub struct Workers {
    pub config: Arc<Config>,
    pub ctl: Arc<EpochControl>,
    pub metrics: Metrics,
    pub outage: Arc<AtomicBool>,
    pub counters: Arc<UpsertCounters>,
    pub static_data: Option<Arc<StaticData>>,
    pub checkpoints: Arc<Checkpoints>,
    pub start_epoch: u64,
    pub plan: Arc<SourcePlan>,
}

impl Workers {
    /// Runs `pipeline.workers` timely workers until the sources end or a shutdown; the
    /// channel closes when the last worker drops its sender.
    pub fn run(self, tx: Sender<ToCoordinator<Vec<Position>>>) -> anyhow::Result<()> {
        let workers = self.config.pipeline.workers;
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let reader = self.reader(index, workers);
            let positions: EpochPositions = Rc::new(RefCell::new(Vec::new()));
            let hooks = self.hooks(tx.clone(), positions.clone(), workers);
            let (ctl, start) = (self.ctl.clone(), self.start_epoch);
            let probe = worker.dataflow::<u64, _, _>(|scope| {
                build(epoch_source(scope, start, reader, ctl, positions), hooks)
            });
            while !probe.done() {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
        })
        .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?;
        for r in guards.join() {
            r.map_err(|e| anyhow::anyhow!("timely worker failed: {e}"))?;
        }
        Ok(())
    }

    /// The reader of worker `index`'s partitions.
    fn reader(&self, index: usize, workers: usize) -> Box<dyn PartitionReader> {
        let (config, plan) = (&self.config, &self.plan);
        let mine = kafka::assign(&plan.partitions, index, workers);
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
        workers: usize,
    ) -> PipelineHooks<impl FnMut(SinkReport<()>) + 'static> {
        let flush_tx = tx.clone();
        PipelineHooks {
            store: self.ctl.store.clone(),
            counters: self.counters.clone(),
            spec: StatsSpec {
                level: self.config.stats.level,
                static_data: self.static_data.clone(),
            },
            flush: Box::new(move |f| {
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
                    worker: r.worker,
                    frontier: r.frontier,
                    items: r.items,
                    meta,
                }));
            },
            on_store_error: Rc::new(|e| tracing::error!(error = %e, "state read failed; retrying")),
        }
    }
}
