//! Before reading: which partitions exist, and whether each stored position still points
//! into the same partition (a topic deleted and recreated does not).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cluster::Topology;
use crate::config::{Config, OffsetResetPolicy, SourceKind};
use crate::metrics::Metrics;
use crate::source::generator::GENERATOR_PARTITIONS;
use crate::source::kafka;
use crate::source::{EpochControl, Position};

use super::{Fingerprints, Offsets};

/// What the workers read and from where.
pub struct SourcePlan {
    /// (topic index, partition) of every partition read.
    pub partitions: Vec<(u16, i32)>,
    /// Every partition discovered, blocked or not: they are dealt over the workers from this
    /// list, so every process of a cluster deals them alike.
    pub all: Vec<(u16, i32)>,
    /// Partitions left unread: their stored position is gone (`on-offset-reset = stop`).
    pub blocked: Vec<(u16, i32)>,
    /// The stored next offsets, without those of partitions reprocessed from the start.
    pub offsets: Offsets,
    pub fingerprints: Fingerprints,
}

impl SourcePlan {
    /// Discovers the partitions (retrying while the broker is unreachable) and verifies the
    /// stored positions. `None` when a shutdown was requested while waiting.
    pub fn connect(
        config: &Config,
        topics: &[String],
        offsets: Offsets,
        fingerprints: Fingerprints,
        metrics: &Metrics,
        ctl: &EpochControl,
    ) -> Option<SourcePlan> {
        let partitions: Vec<(u16, i32)> = match config.source.kind {
            SourceKind::Generator => (0..GENERATOR_PARTITIONS).map(|p| (0u16, p)).collect(),
            SourceKind::Kafka => retry(ctl, "kafka: waiting for brokers and topics", || {
                let r = kafka::discover_partitions(&config.kafka, Duration::from_secs(5));
                if r.is_err() {
                    metrics.source.outage.set(1);
                }
                r
            })?,
        };
        check_offsets_against_partitions(topics, &partitions, &offsets);
        let mut plan = SourcePlan {
            all: partitions.clone(),
            partitions,
            blocked: Vec::new(),
            offsets,
            fingerprints,
        };
        if config.source.kind == SourceKind::Kafka {
            let stored = plan.stored_positions(topics);
            let failed = retry(ctl, "kafka: cannot verify stored positions yet", || {
                kafka::verify_positions(&config.kafka, &stored, Duration::from_secs(10))
            })?;
            for (t, p) in failed {
                plan.reset(config, topics, metrics, t, p);
            }
            let blocked = plan.blocked.clone();
            plan.partitions.retain(|p| !blocked.contains(p));
        }
        metrics.source.outage.set(0);
        Some(plan)
    }

    /// The partitions worker `index` of the cluster reads: partition `i` of the discovered
    /// list goes to process `i mod P`, and within it to worker `(i div P) mod W`, so the
    /// process that reads a partition (and stores its offset) depends on `P` only.
    pub fn assigned(&self, index: usize, topology: &Topology) -> Vec<(u16, i32)> {
        let (processes, workers) = (topology.processes, topology.workers);
        self.all
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                (i % processes) * workers + (i / processes) % workers == index
                    && !self.blocked.contains(p)
            })
            .map(|(_, p)| *p)
            .collect()
    }

    /// The partitions this process's workers read.
    pub fn owned(&self, topology: &Topology) -> Vec<(u16, i32)> {
        let first = topology.global_worker(0);
        let mut own: Vec<(u16, i32)> = (first..first + topology.workers)
            .flat_map(|w| self.assigned(w, topology))
            .collect();
        own.sort_unstable();
        own
    }

    /// The stored offsets of `partitions` (in a cluster, each process stores only its own
    /// partitions' positions).
    pub fn offsets_of(&self, topics: &[String], partitions: &[(u16, i32)]) -> Offsets {
        let mut own = Offsets::new();
        for &(t, p) in partitions {
            let topic = &topics[t as usize];
            if let Some(o) = self.offsets.get(topic).and_then(|m| m.get(&p)) {
                own.entry(topic.clone()).or_default().insert(p, *o);
            }
        }
        own
    }

    fn stored_positions(&self, topics: &[String]) -> Vec<Position> {
        self.partitions
            .iter()
            .filter_map(|&(t, p)| {
                let topic = &topics[t as usize];
                let next = *self.offsets.get(topic)?.get(&p)?;
                let fingerprint = self
                    .fingerprints
                    .get(topic)
                    .and_then(|m| m.get(&p))
                    .copied()
                    .unwrap_or(0);
                Some(Position {
                    topic: t,
                    partition: p,
                    next,
                    fingerprint,
                    produced_ms: 0,
                })
            })
            .collect()
    }

    /// A partition whose stored position is gone: blocked, or read again from its start.
    fn reset(&mut self, config: &Config, topics: &[String], metrics: &Metrics, t: u16, p: i32) {
        let topic = &topics[t as usize];
        let stored = self.offsets.get(topic).and_then(|m| m.get(&p)).copied();
        metrics
            .source
            .partition_reset
            .with_label_values(&[topic.as_str(), &p.to_string()])
            .set(1);
        match config.kafka.on_offset_reset {
            OffsetResetPolicy::Stop => {
                tracing::error!(topic, partition = p, stored,
                    "the message before the stored offset is missing or different: was the topic deleted and recreated? \
                     not reading this partition; set kafka.on-offset-reset = \"reprocess\" to read it again from its beginning");
                self.blocked.push((t, p));
            }
            OffsetResetPolicy::Reprocess => {
                tracing::error!(topic, partition = p, stored,
                    "the message before the stored offset is missing or different: reprocessing the partition from its beginning (kafka.on-offset-reset = reprocess)");
                if let Some(m) = self.offsets.get_mut(topic) {
                    m.remove(&p);
                }
                if let Some(m) = self.fingerprints.get_mut(topic) {
                    m.remove(&p);
                }
            }
        }
    }
}

/// Calls `f` every second until it succeeds; `None` if a shutdown is requested meanwhile.
fn retry<T, E: std::fmt::Display>(
    ctl: &EpochControl,
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> Option<T> {
    loop {
        match f() {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "{what}; retrying");
                if ctl.shutdown.load(Ordering::Acquire) {
                    return None;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
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
