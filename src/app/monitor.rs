//! The monitor thread: every 250 ms it publishes the upsert counters; every 2 s (Kafka only)
//! it measures consumer lag, detects broker outages and decides readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kmflow_dataflows::pipeline::UpsertCounters;

use crate::config::{Config, SourceKind};
use crate::metrics::Metrics;
use crate::source::kafka;
use crate::state::RocksState;

pub struct MonitorCtx {
    pub config: Arc<Config>,
    pub state: Arc<RocksState>,
    pub metrics: Metrics,
    pub counters: Arc<UpsertCounters>,
}

pub fn monitor_loop(
    ctx: MonitorCtx,
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
                .state
                .upserts
                .with_label_values(&[outcome])
                .inc_by(now[i] - last[i]);
        }
        last = now;
        let read_errors = counters.store_errors.load(Ordering::Relaxed);
        metrics
            .state
            .read_errors
            .inc_by(read_errors - metrics.state.read_errors.get());
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
                metrics.source.outage.set(0);
                let offsets = state.offsets();
                for ((t, p), lo, hi) in marks {
                    let topic = &topics[t as usize];
                    let next = offsets.get(topic).and_then(|m| m.get(&p)).copied();
                    // Clamped: Tansu reports the last batch's base offset as high watermark.
                    let lag = hi - next.unwrap_or(lo).max(lo);
                    metrics
                        .source
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
                    metrics.source.outage.set(1);
                }
            }
        }
        let any_reset = partitions.iter().chain(blocked).any(|(t, p)| {
            let topic = &topics[*t as usize];
            metrics
                .source
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
