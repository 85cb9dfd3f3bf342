//! `kmflow run`: restore the state, serve the API, run the dataflow until stopped.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::Receiver;

use kmflow_dataflows::aggregate::Write;
use kmflow_dataflows::commit::{CommitCoordinator, SinkReport, ToCommitter};
use kmflow_dataflows::pipeline::{build, PipelineHooks, StatsSpec, UpsertCounters};
use kmflow_dataflows::shard::Checkpoints;
use kmflow_dataflows::static_data::StaticData;
use kmflow_dataflows::store::StateStore;
use kmflow_dataflows::EntityKind;

use crate::api::{app, AppState};
use crate::config::{Config, OffsetResetPolicy, SourceKind, WallClock};
use crate::metrics::Metrics;
use crate::source::generator::{GeneratorReader, GENERATOR_PARTITIONS, GENERATOR_TOPIC};
use crate::source::kafka::{self, KafkaReader};
use crate::source::{epoch_source, EpochControl, EpochPositions, PartitionReader, Position};
use crate::state::{RocksState, StateError};

type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Runs kmflow until SIGINT/SIGTERM, or until the state store fails.
pub fn run(config: Arc<Config>) -> anyhow::Result<()> {
    let started = Instant::now();
    let metrics = Metrics::new();
    std::fs::create_dir_all(&config.state.dir)
        .with_context(|| format!("creating state directory {}", config.state.dir.display()))?;
    let state = RocksState::open(&config.state.dir, config.state.block_cache_mb)?;
    let start_epoch = state.commit_meta().map_or(0, |m| m.epoch + 1);
    let wall = config.stats.wall_clock()?;
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
    let stored_offsets = state.offsets();
    tracing::info!(
        dir = %config.state.dir.display(),
        epoch = start_epoch,
        killmails = state.estimated_killmails(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state restored"
    );

    let topics: Vec<String> = match config.source.kind {
        SourceKind::Kafka => config.kafka.topics(),
        SourceKind::Generator => vec![GENERATOR_TOPIC.to_string()],
    };
    let ready = Arc::new(AtomicBool::new(false));
    let outage = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(UpsertCounters::default());
    let store: Arc<dyn StateStore> = state.clone();
    let ctl = Arc::new(EpochControl::new(
        start_epoch,
        store.clone(),
        config.pipeline.epoch_max_records,
        Duration::from_millis(config.pipeline.epoch_max_ms),
        config.pipeline.max_inflight_epochs,
    ));

    // The API first: reads are served while the source connects or the broker is down.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kmflow-api")
        .enable_all()
        .build()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(config.api.listen))
        .with_context(|| format!("binding the API to {}", config.api.listen))?;
    let addr = listener.local_addr()?;
    let api_state = AppState {
        state: state.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        topics: Arc::new(topics.clone()),
        static_data: static_data.clone(),
        level: config.stats.level,
    };
    let api_stop = Arc::new(tokio::sync::Notify::new());
    let api_stop2 = api_stop.clone();
    let server = rt.spawn(async move {
        axum::serve(listener, app(api_state))
            .with_graceful_shutdown(async move { api_stop2.notified().await })
            .await
    });
    {
        let ctl = ctl.clone();
        rt.spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: finishing the current epoch");
            ctl.shutdown.store(true, Ordering::Release);
        });
    }
    println!(
        "kmflow: API and metrics on http://{addr}  (state in {})",
        config.state.dir.display()
    );
    println!("kmflow: try  curl http://{addr}/readyz   curl http://{addr}/metrics");

    // Partitions: fixed for the generator, asked of the brokers for Kafka (retrying).
    let partitions: Vec<(u16, i32)> = match config.source.kind {
        SourceKind::Generator => (0..GENERATOR_PARTITIONS).map(|p| (0u16, p)).collect(),
        SourceKind::Kafka => loop {
            match kafka::discover_partitions(&config.kafka, Duration::from_secs(5)) {
                Ok(p) => break p,
                Err(e) => {
                    metrics.source_outage.set(1);
                    tracing::warn!(error = %e, brokers = %config.kafka.brokers, "kafka: waiting for brokers and topics");
                    if ctl.shutdown.load(Ordering::Acquire) {
                        api_stop.notify_one();
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        },
    };
    check_offsets_against_partitions(&topics, &partitions, &stored_offsets);
    // Partitions whose stored offset is past their end: the topic was recreated.
    let mut stored_offsets = stored_offsets;
    let mut partitions = partitions;
    let mut blocked: Vec<(u16, i32)> = Vec::new();
    let mut stored_fps = state
        .commit_meta()
        .map(|m| m.fingerprints)
        .unwrap_or_default();
    if config.source.kind == SourceKind::Kafka {
        let stored: Vec<Position> = partitions
            .iter()
            .filter_map(|&(t, p)| {
                let topic = &topics[t as usize];
                let next = *stored_offsets.get(topic)?.get(&p)?;
                let fingerprint = stored_fps
                    .get(topic)
                    .and_then(|m| m.get(&p))
                    .copied()
                    .unwrap_or(0);
                Some(Position {
                    topic: t,
                    partition: p,
                    next,
                    fingerprint,
                })
            })
            .collect();
        let failed = loop {
            match kafka::verify_positions(&config.kafka, &stored, Duration::from_secs(10)) {
                Ok(f) => break f,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka: cannot verify stored positions yet; retrying");
                    if ctl.shutdown.load(Ordering::Acquire) {
                        api_stop.notify_one();
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        for (t, p) in failed {
            let topic = &topics[t as usize];
            let stored = stored_offsets.get(topic).and_then(|m| m.get(&p)).copied();
            metrics
                .partition_reset
                .with_label_values(&[topic.as_str(), &p.to_string()])
                .set(1);
            match config.kafka.on_offset_reset {
                OffsetResetPolicy::Stop => {
                    tracing::error!(topic, partition = p, stored,
                        "the message before the stored offset is missing or different: was the topic deleted and recreated? \
                         not reading this partition; set kafka.on-offset-reset = \"reprocess\" to read it again from its beginning");
                    blocked.push((t, p));
                }
                OffsetResetPolicy::Reprocess => {
                    tracing::error!(topic, partition = p, stored,
                        "the message before the stored offset is missing or different: reprocessing the partition from its beginning (kafka.on-offset-reset = reprocess)");
                    if let Some(m) = stored_offsets.get_mut(topic) {
                        m.remove(&p);
                    }
                    if let Some(m) = stored_fps.get_mut(topic) {
                        m.remove(&p);
                    }
                }
            }
        }
        partitions.retain(|p| !blocked.contains(p));
    }
    let blocked = Arc::new(blocked);
    metrics.source_outage.set(0);
    ready.store(blocked.is_empty(), Ordering::Release);
    metrics.ready.set(blocked.is_empty() as i64);
    tracing::info!(
        partitions = partitions.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ready"
    );

    let workers = config.pipeline.workers;
    let (tx, rx) = crossbeam_channel::unbounded::<ToCommitter<Vec<Position>>>();
    let checkpoints = Arc::new(Checkpoints::new(start_epoch));
    let committer = {
        let (state, topics, metrics, ctl) =
            (state.clone(), topics.clone(), metrics.clone(), ctl.clone());
        let offsets = stored_offsets.clone();
        let api = format!("http://{addr}");
        let checkpoints = checkpoints.clone();
        std::thread::Builder::new()
            .name("kmflow-commit".into())
            .spawn(move || {
                commit_loop(
                    rx,
                    CommitCoordinator::new(workers, start_epoch, checkpoints),
                    &state,
                    &topics,
                    offsets,
                    &metrics,
                    &ctl,
                    &api,
                    wall,
                )
            })?
    };
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (config, state, metrics, counters) = (
            config.clone(),
            state.clone(),
            metrics.clone(),
            counters.clone(),
        );
        let (ready, outage, stop, partitions, blocked) = (
            ready.clone(),
            outage.clone(),
            monitor_stop.clone(),
            partitions.clone(),
            blocked.clone(),
        );
        std::thread::Builder::new()
            .name("kmflow-monitor".into())
            .spawn(move || {
                let ctx = MonitorCtx {
                    config: &config,
                    state: &state,
                    metrics: &metrics,
                    counters: &counters,
                };
                monitor_loop(ctx, &ready, &outage, &stop, &partitions, &blocked)
            })?
    };

    let guards = {
        let (config, ctl, metrics, outage) =
            (config.clone(), ctl.clone(), metrics.clone(), outage.clone());
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let mine = kafka::assign(&partitions, index, workers);
            let reader: Box<dyn PartitionReader> = match config.source.kind {
                SourceKind::Generator => {
                    let parts: Vec<(i32, Option<i64>)> = mine
                        .iter()
                        .map(|&(_, p)| {
                            (
                                p,
                                stored_offsets
                                    .get(GENERATOR_TOPIC)
                                    .and_then(|m| m.get(&p))
                                    .copied(),
                            )
                        })
                        .collect();
                    Box::new(GeneratorReader::new(
                        &config.generator,
                        &parts,
                        metrics.clone(),
                    ))
                }
                SourceKind::Kafka => match KafkaReader::new(
                    &config.kafka,
                    &mine,
                    &stored_offsets,
                    &stored_fps,
                    metrics.clone(),
                    outage.clone(),
                ) {
                    Ok(r) => Box::new(r),
                    Err(e) => {
                        tracing::error!(error = %e, "kafka: cannot create consumer; stopping");
                        ctl.shutdown.store(true, Ordering::Release);
                        Box::new(GeneratorReader::new(
                            &config.generator,
                            &[],
                            metrics.clone(),
                        ))
                    }
                },
            };
            let positions: EpochPositions = Rc::new(RefCell::new(Vec::new()));
            let tx = tx.clone();
            let probe = worker.dataflow::<u64, _, _>(|scope| {
                let raw = epoch_source(scope, start_epoch, reader, ctl.clone(), positions.clone());
                let hooks = PipelineHooks {
                    store: ctl.store.clone(),
                    counters: counters.clone(),
                    spec: StatsSpec {
                        level: config.stats.level,
                        static_data: static_data.clone(),
                    },
                    flush: {
                        let tx = tx.clone();
                        Box::new(move |f| {
                            let _ = tx.send(ToCommitter::Flush(f));
                        })
                    },
                    checkpoints: checkpoints.clone(),
                    start: start_epoch,
                    cache_rows: config.state.cache_rows / workers.max(1),
                    report: move |r: SinkReport<()>| {
                        let mut meta = Vec::new();
                        positions.borrow_mut().retain(|(e, p)| {
                            if *e < r.frontier {
                                meta.push((*e, p.clone()));
                                false
                            } else {
                                true
                            }
                        });
                        let _ = tx.send(ToCommitter::Sink(SinkReport {
                            worker: r.worker,
                            frontier: r.frontier,
                            items: r.items,
                            meta,
                        }));
                    },
                    on_store_error: Rc::new(
                        |e| tracing::error!(error = %e, "state read failed; retrying"),
                    ),
                };
                build(raw, hooks)
            });
            while !probe.done() {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
        })
        .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?
    };
    // The original sender lives in the worker closure, dropped when the workers finish; the
    // committer's loop then ends.
    for r in guards.join() {
        r.map_err(|e| anyhow::anyhow!("timely worker failed: {e}"))?;
    }
    let commit_result = committer
        .join()
        .map_err(|_| anyhow::anyhow!("committer panicked"))?;
    monitor_stop.store(true, Ordering::Release);
    let _ = monitor.join();
    api_stop.notify_one();
    let _ = rt.block_on(server);
    match commit_result {
        Ok(()) => {
            if let Err(e) = state.flush() {
                tracing::warn!(error = %e, "flushing state on stop failed; the next start replays the WAL");
            }
            tracing::info!(epoch = ?state.commit_meta().map(|m| m.epoch), "stopped cleanly");
            Ok(())
        }
        Err(e) => {
            let last = state
                .commit_meta()
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

/// Warns loudly about stored offsets of partitions that no longer exist.
fn check_offsets_against_partitions(
    topics: &[String],
    partitions: &[(u16, i32)],
    stored: &Offsets,
) {
    for (topic, parts) in stored {
        let Some(t) = topics.iter().position(|x| x == topic) else {
            tracing::warn!(
                topic,
                "state has offsets for a topic no longer configured; ignored"
            );
            continue;
        };
        for p in parts.keys() {
            if !partitions.contains(&(t as u16, *p)) {
                tracing::error!(
                    topic,
                    partition = p,
                    "state has offsets for a partition the broker does not have"
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn commit_loop(
    rx: Receiver<ToCommitter<Vec<Position>>>,
    mut coordinator: CommitCoordinator<Vec<Position>>,
    state: &RocksState,
    topics: &[String],
    mut offsets: Offsets,
    metrics: &Metrics,
    ctl: &EpochControl,
    api: &str,
    wall: WallClock,
) -> Result<(), StateError> {
    let mut fingerprints = state
        .commit_meta()
        .map(|m| m.fingerprints)
        .unwrap_or_default();
    let mut failure: Option<StateError> = None;
    let mut hinted = false;
    for report in rx {
        if failure.is_some() {
            continue; // drain until the workers stop
        }
        let Some(batch) = coordinator.offer(report) else {
            continue;
        };
        for pos in batch.meta.iter().flatten().flatten() {
            let topic = &topics[pos.topic as usize];
            offsets
                .entry(topic.clone())
                .or_default()
                .insert(pos.partition, pos.next);
            fingerprints
                .entry(topic.clone())
                .or_default()
                .insert(pos.partition, pos.fingerprint);
        }
        let t0 = Instant::now();
        match state.commit(&batch, topics, &offsets, &fingerprints, wall.now()) {
            Ok(meta) => {
                coordinator.committed();
                metrics.commit_latency.observe(t0.elapsed().as_secs_f64());
                metrics.commit_size.observe(
                    (batch.writes.len() + batch.upserts.len() + batch.dead_letters.len()) as f64,
                );
                metrics.committed_epoch.set(meta.epoch as i64);
                if let Some(now) = meta.clock.now {
                    metrics.stream_clock.set(now);
                }
                for d in &batch.dead_letters {
                    metrics
                        .decode_failures
                        .with_label_values(&[d.reason.as_str()])
                        .inc();
                    tracing::warn!(topic = %topics.get(d.pos.topic as usize).map_or("?", |s| s.as_str()),
                        partition = d.pos.partition, offset = d.pos.offset, reason = %d.reason,
                        error = %d.error, "dead letter");
                }
                if !hinted {
                    if let Some(c) = batch.writes.iter().find_map(|w| match w {
                        Write::Put(k, _) if k.entity.kind == EntityKind::Character => Some(k),
                        _ => None,
                    }) {
                        println!(
                            "kmflow: first commit; try  curl {api}/v1/characters/{}",
                            c.entity.id
                        );
                        hinted = true;
                    }
                }
            }
            Err(e) => {
                metrics.commit_errors.inc();
                tracing::error!(error = %e, "commit failed: stopping ingestion");
                ctl.shutdown.store(true, Ordering::Release);
                coordinator.abandon();
                failure = Some(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct MonitorCtx<'a> {
    config: &'a Config,
    state: &'a RocksState,
    metrics: &'a Metrics,
    counters: &'a UpsertCounters,
}

fn monitor_loop(
    ctx: MonitorCtx<'_>,
    ready: &AtomicBool,
    outage: &AtomicBool,
    stop: &AtomicBool,
    partitions: &[(u16, i32)],
    blocked: &[(u16, i32)],
) {
    let MonitorCtx {
        config,
        state,
        metrics,
        counters,
    } = ctx;
    let topics = config.kafka.topics();
    let mut last = [0u64; 3];
    let mut tick = 0u64;
    let mut failures = 0u32;
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(250));
        tick += 1;
        let now = [
            counters.inserted.load(Ordering::Relaxed),
            counters.replaced.load(Ordering::Relaxed),
            counters.unchanged.load(Ordering::Relaxed),
        ];
        for (i, outcome) in ["inserted", "replaced", "unchanged"].iter().enumerate() {
            metrics
                .upserts
                .with_label_values(&[outcome])
                .inc_by(now[i] - last[i]);
        }
        last = now;
        let read_errors = counters.store_errors.load(Ordering::Relaxed);
        metrics
            .state_read_errors
            .inc_by(read_errors - metrics.state_read_errors.get());
        if config.source.kind != SourceKind::Kafka || !tick.is_multiple_of(8) {
            continue;
        }
        // Every 2 s: lag, and whether the broker answers.
        match kafka::watermarks(&config.kafka, partitions, Duration::from_secs(2)) {
            Ok(marks) => {
                failures = 0;
                if outage.swap(false, Ordering::AcqRel) {
                    tracing::info!("kafka: broker reachable again");
                }
                metrics.source_outage.set(0);
                let offsets = state.offsets();
                for ((t, p), lo, hi) in marks {
                    let topic = &topics[t as usize];
                    let next = offsets.get(topic).and_then(|m| m.get(&p)).copied();
                    // Clamped: Tansu reports the last batch's base offset as high watermark.
                    let lag = hi - next.unwrap_or(lo).max(lo);
                    metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &p.to_string()])
                        .set(lag.max(0));
                }
            }
            Err(e) => {
                // Three failed probes in a row (about 6 s) make an outage, not one slow answer.
                failures += 1;
                if failures >= 3 {
                    if !outage.swap(true, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "kafka: broker unreachable; serving reads, retrying");
                    }
                    metrics.source_outage.set(1);
                }
            }
        }
        let any_reset = partitions.iter().chain(blocked).any(|(t, p)| {
            let topic = &topics[*t as usize];
            metrics
                .partition_reset
                .with_label_values(&[topic.as_str(), &p.to_string()])
                .get()
                == 1
        });
        let is_ready = !outage.load(Ordering::Acquire) && !any_reset;
        ready.store(is_ready, Ordering::Release);
        metrics.ready.set(is_ready as i64);
    }
}
