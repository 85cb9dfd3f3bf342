//! The embedded source: the realistic generator of `kmflow_dataflows::gen` on 4 virtual
//! partitions, so the demo runs without Kafka and resumes from stored offsets like Kafka does.

use std::time::Instant;

use kmflow_dataflows::gen::{GenConfig, Generator};
use kmflow_dataflows::{RawRecord, SourcePos};

use super::{PartitionReader, Position};
use crate::config::GeneratorConfig;
use crate::metrics::Metrics;

/// The topic name the generator's records carry.
pub const GENERATOR_TOPIC: &str = "generator";
/// Virtual partitions of the generator.
pub const GENERATOR_PARTITIONS: i32 = 4;

struct Part {
    partition: i32,
    gen: std::iter::Peekable<Generator>,
    next_offset: i64,
    /// When its last record was generated (Unix ms; 0: none yet).
    produced_ms: i64,
}

pub struct GeneratorReader {
    parts: Vec<Part>,
    /// Records per second for this reader (0 = unlimited).
    rate: f64,
    started: Instant,
    emitted: u64,
    next_part: usize,
    metrics: Metrics,
}

impl GeneratorReader {
    /// The reader for `partitions`, each resumed at its stored offset.
    pub fn new(cfg: &GeneratorConfig, partitions: &[(i32, Option<i64>)], metrics: Metrics) -> Self {
        let parts = partitions
            .iter()
            .map(|&(p, offset)| {
                let count = if cfg.count == 0 { u64::MAX } else { cfg.count };
                let mut gen = Generator::new(GenConfig {
                    seed: cfg.seed.wrapping_add(p as u64),
                    count,
                    first_id: 100_000_000 + p as u64 * 1_000_000_000,
                    ..GenConfig::default()
                })
                .peekable();
                let skip = offset.unwrap_or(0).max(0);
                for _ in 0..skip {
                    if gen.next().is_none() {
                        break;
                    }
                }
                Part {
                    partition: p,
                    gen,
                    next_offset: skip,
                    produced_ms: 0,
                }
            })
            .collect::<Vec<_>>();
        let share = partitions.len() as f64 / GENERATOR_PARTITIONS as f64;
        GeneratorReader {
            parts,
            rate: cfg.rate_per_sec as f64 * share,
            started: Instant::now(),
            emitted: 0,
            next_part: 0,
            metrics,
        }
    }
}

impl PartitionReader for GeneratorReader {
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> usize {
        let mut budget = max;
        if self.rate > 0.0 {
            let allowed = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
            budget = budget.min(allowed.saturating_sub(self.emitted) as usize);
        }
        let mut n = 0;
        let mut idle = 0;
        let mut per_part = vec![0u64; self.parts.len()];
        while n < budget && idle < self.parts.len() {
            let i = self.next_part % self.parts.len();
            self.next_part += 1;
            let part = &mut self.parts[i];
            match part.gen.next() {
                Some((_, payload)) => {
                    out.push(RawRecord {
                        pos: SourcePos {
                            topic: 0,
                            partition: part.partition as u32,
                            offset: part.next_offset,
                        },
                        payload,
                    });
                    part.next_offset += 1;
                    per_part[i] += 1;
                    n += 1;
                    idle = 0;
                }
                None => idle += 1,
            }
        }
        self.emitted += n as u64;
        let now = super::unix_ms_now();
        for (part, count) in self.parts.iter_mut().zip(per_part) {
            if count > 0 {
                part.produced_ms = now;
                self.metrics
                    .source
                    .records
                    .with_label_values(&[GENERATOR_TOPIC, &part.partition.to_string()])
                    .inc_by(count);
            }
        }
        n
    }

    fn positions(&self) -> Vec<Position> {
        self.parts
            .iter()
            .map(|p| Position {
                topic: 0,
                partition: p.partition,
                next: p.next_offset,
                fingerprint: 0,
                produced_ms: p.produced_ms,
            })
            .collect()
    }
}
