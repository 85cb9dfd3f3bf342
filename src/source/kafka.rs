//! The Kafka source: static, deterministic partition assignment (no consumer-group
//! rebalancing) and resumption at the offsets stored with the state, never the group's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use kmflow_dataflows::{RawRecord, SourcePos};

use super::{fingerprint, fingerprint_matches, PartitionReader, Position};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// Consumer properties kmflow sets; user options from `[kafka.options]` override them.
fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        // Required by librdkafka, unused: offsets live in kmflow's state, never in the group.
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A partition without a stored offset starts at its beginning (backfill).
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Fetch tuning: answer fetches as soon as any data is there (Tansu and small topics
        // otherwise wait the default 500 ms per fetch), and keep a deep local queue.
        .set("fetch.wait.max.ms", "10")
        .set("fetch.min.bytes", "1")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "8388608")
        .set("queued.min.messages", "200000")
        .set("queued.max.messages.kbytes", "262144")
        // Reconnect quickly after a broker outage, with backoff.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .set("topic.metadata.refresh.interval.ms", "10000");
    for (k, v) in cfg.options.iter() {
        c.set(k, v);
    }
    c
}

/// Tracks broker reachability from librdkafka's error callback.
pub struct SourceContext {
    pub metrics: Metrics,
    pub outage: Arc<AtomicBool>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.source.errors.inc();
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.outage.store(true, Ordering::Release);
            self.metrics.source.outage.set(1);
        }
        tracing::warn!(error = %error, reason, "kafka: client error");
    }
}

impl ConsumerContext for SourceContext {}

/// Asks the brokers for the partitions of every topic, retrying until `deadline` passes.
pub fn discover_partitions(
    cfg: &KafkaConfig,
    timeout: Duration,
) -> Result<Vec<(u16, i32)>, KafkaError> {
    let consumer: BaseConsumer = consumer_config(cfg).create()?;
    let mut out = Vec::new();
    for (i, topic) in cfg.topics().iter().enumerate() {
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                for p in t.partitions() {
                    out.push((i as u16, p.id()));
                }
            }
            _ => {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub struct KafkaReader {
    consumer: BaseConsumer<SourceContext>,
    topic_index: HashMap<String, u16>,
    topics: Vec<String>,
    /// (topic, partition) → (next offset, fingerprint of the message before it).
    positions: BTreeMap<(u16, i32), (i64, u64)>,
    /// Per partition, when its last message read was produced (Unix ms).
    produced: BTreeMap<(u16, i32), i64>,
    metrics: Metrics,
    outage: Arc<AtomicBool>,
    /// Records read since the last metrics flush, by (topic, partition).
    counts: BTreeMap<(u16, i32), u64>,
    /// Partitions resumed at a stored offset whose first record has not arrived yet.
    resumed: std::collections::BTreeSet<(u16, i32)>,
}

impl KafkaReader {
    /// A consumer assigned `partitions`, each at its stored next offset or at the beginning.
    pub fn new(
        cfg: &KafkaConfig,
        partitions: &[(u16, i32)],
        stored: &BTreeMap<String, BTreeMap<i32, i64>>,
        fingerprints: &BTreeMap<String, BTreeMap<i32, u64>>,
        metrics: Metrics,
        outage: Arc<AtomicBool>,
    ) -> Result<Self, KafkaError> {
        let topics = cfg.topics();
        let ctx = SourceContext {
            metrics: metrics.clone(),
            outage: Arc::clone(&outage),
        };
        let consumer: BaseConsumer<SourceContext> =
            consumer_config(cfg).create_with_context(ctx)?;
        let mut tpl = TopicPartitionList::new();
        let mut positions = BTreeMap::new();
        for &(t, p) in partitions {
            let name = &topics[t as usize];
            match stored.get(name).and_then(|m| m.get(&p)) {
                Some(&o) => {
                    tpl.add_partition_offset(name, p, Offset::Offset(o))?;
                    let fp = fingerprints
                        .get(name)
                        .and_then(|m| m.get(&p))
                        .copied()
                        .unwrap_or(0);
                    positions.insert((t, p), (o, fp));
                }
                None => {
                    tpl.add_partition_offset(name, p, Offset::Beginning)?;
                }
            }
        }
        consumer.assign(&tpl)?;
        let resumed = positions.keys().copied().collect();
        let topic_index = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u16))
            .collect();
        Ok(KafkaReader {
            consumer,
            topic_index,
            topics,
            positions,
            produced: BTreeMap::new(),
            metrics,
            outage,
            counts: BTreeMap::new(),
            resumed,
        })
    }

    fn flush_metrics(&mut self) {
        for ((t, p), n) in std::mem::take(&mut self.counts) {
            self.metrics
                .source
                .records
                .with_label_values(&[self.topics[t as usize].as_str(), &p.to_string()])
                .inc_by(n);
        }
    }
}

/// Errors a poll takes from the consumer's queue before it returns (it is polled again at the
/// latest after the source's `SIGNALLED_POLL`).
const MAX_ERRORS_PER_POLL: usize = 16;

impl PartitionReader for KafkaReader {
    /// librdkafka calls back when the consumer's queue goes from empty to non-empty: a poll
    /// drains it (or is re-activated at once when it stops at `max`), so every arrival after
    /// an empty poll wakes the source.
    fn wake_on_arrival(&mut self, wake: Box<dyn Fn() + Send + Sync>) -> bool {
        self.consumer.set_nonempty_callback(wake);
        true
    }

    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> usize {
        let mut n = 0;
        let mut errors = 0;
        // The last record of each partition in this poll, fingerprinted once at the end.
        let mut last: BTreeMap<(u16, i32), usize> = BTreeMap::new();
        while n < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let Some(&t) = self.topic_index.get(m.topic()) else {
                        continue;
                    };
                    let (p, o) = (m.partition(), m.offset());
                    // Never go backwards: a re-delivered offset is already counted.
                    if self
                        .positions
                        .get(&(t, p))
                        .is_some_and(|&(next, _)| o < next)
                    {
                        continue;
                    }
                    if self.resumed.remove(&(t, p)) {
                        let next = self.positions.get(&(t, p)).map_or(o, |&(n, _)| n);
                        if o > next {
                            // The broker skipped records after the resume point (Tansu 0.6 does
                            // when the stored offset is inside a record batch): say so loudly.
                            let topic = self.topics[t as usize].as_str();
                            self.metrics
                                .source
                                .offset_gaps
                                .with_label_values(&[topic, &p.to_string()])
                                .inc_by((o - next) as u64);
                            tracing::error!(topic, partition = p, resumed_at = next, first_offset = o,
                                "kafka: the broker skipped offsets after the resume point; those records were not read");
                        }
                    }
                    out.push(RawRecord {
                        pos: SourcePos {
                            topic: t,
                            partition: p as u32,
                            offset: o,
                        },
                        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    });
                    self.positions.insert((t, p), (o + 1, 0));
                    if let Some(ms) = m.timestamp().to_millis() {
                        self.produced.insert((t, p), ms);
                    }
                    last.insert((t, p), out.len() - 1);
                    *self.counts.entry((t, p)).or_default() += 1;
                    n += 1;
                }
                Some(Err(e)) => {
                    self.metrics.source.errors.inc();
                    tracing::warn!(error = %e, "kafka: fetch error");
                    // Drained (a few per poll): the queue must end empty for the next arrival
                    // to wake the source (`wake_on_arrival`).
                    errors += 1;
                    if errors == MAX_ERRORS_PER_POLL {
                        break;
                    }
                }
            }
        }
        for (key, idx) in last {
            if let Some(pos) = self.positions.get_mut(&key) {
                pos.1 = fingerprint(&out[idx].payload);
            }
        }
        if n > 0 {
            if self.outage.swap(false, Ordering::AcqRel) {
                tracing::info!("kafka: broker reachable again");
                self.metrics.source.outage.set(0);
            }
            self.flush_metrics();
        }
        n
    }

    fn positions(&self) -> Vec<Position> {
        self.positions
            .iter()
            .map(|(&(topic, partition), &(next, fingerprint))| Position {
                topic,
                partition,
                next,
                fingerprint,
                produced_ms: self.produced.get(&(topic, partition)).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// A partition with its low and high watermarks.
pub type Watermark = ((u16, i32), i64, i64);

/// High watermarks of `partitions`, for the lag metric and outage detection.
pub fn watermarks(
    cfg: &KafkaConfig,
    partitions: &[(u16, i32)],
    timeout: Duration,
) -> Result<Vec<Watermark>, KafkaError> {
    thread_local! {
        static CLIENT: std::cell::RefCell<Option<BaseConsumer>> = const { std::cell::RefCell::new(None) };
    }
    let topics = cfg.topics();
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(consumer_config(cfg).create()?);
        }
        let consumer = c.as_ref().expect("just created");
        partitions
            .iter()
            .map(|&(t, p)| {
                let (lo, hi) = consumer.fetch_watermarks(&topics[t as usize], p, timeout)?;
                Ok(((t, p), lo, hi))
            })
            .collect()
    })
}

/// Proves stored positions still name the same data: reads the message just before each stored
/// offset and compares its offset and fingerprint. Returns the partitions that fail (deleted and
/// recreated, or truncated): a missing message or a different one.
///
/// High watermarks cannot decide this (a recreated topic may have grown past the old offset),
/// and some brokers cannot serve a fetch that starts inside a record batch (Tansu 0.6 answers
/// with the next batch, and reports a high watermark inside the last batch). So each check
/// starts at the wanted offset, then ever earlier, reading forward to it; only from the
/// partition's low watermark, which always starts a batch, is a miss conclusive. On Kafka the
/// first attempt decides.
pub fn verify_positions(
    cfg: &KafkaConfig,
    stored: &[Position],
    timeout: Duration,
) -> Result<Vec<(u16, i32)>, KafkaError> {
    const BACK: [i64; 4] = [0, 1_000, 20_000, i64::MAX];
    let topics = cfg.topics();
    let probe: BaseConsumer = consumer_config(cfg).create()?;
    // (topic, partition) -> (wanted offset, fingerprint, low watermark, first start)
    let mut pending: BTreeMap<(u16, i32), (i64, u64, i64, i64)> = BTreeMap::new();
    for pos in stored.iter().filter(|p| p.next > 0) {
        let topic = &topics[pos.topic as usize];
        let want = pos.next - 1;
        let (lo, hi) = probe.fetch_watermarks(topic, pos.partition, timeout)?;
        pending.insert(
            (pos.topic, pos.partition),
            (want, pos.fingerprint, lo, want.min(hi).max(lo)),
        );
    }
    let index: HashMap<&str, u16> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u16))
        .collect();
    let mut failed = Vec::new();
    for (attempt, back) in BACK.iter().enumerate() {
        if pending.is_empty() {
            break;
        }
        let last = attempt == BACK.len() - 1;
        let mut starts: BTreeMap<(u16, i32), i64> = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for (&(t, p), &(_, _, lo, first)) in &pending {
            let start = if last {
                lo
            } else {
                first.saturating_sub(*back).max(lo)
            };
            tpl.add_partition_offset(&topics[t as usize], p, Offset::Offset(start))?;
            starts.insert((t, p), start);
        }
        let consumer: BaseConsumer = consumer_config(cfg).create()?;
        consumer.assign(&tpl)?;
        // Early attempts can only succeed or defer, so they may be short; the last decides.
        let wait = if last {
            timeout
        } else {
            timeout.min(Duration::from_secs(1))
        };
        let deadline = std::time::Instant::now() + wait;
        while !pending.is_empty() && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let Some(&t) = index.get(m.topic()) else {
                continue;
            };
            let key = (t, m.partition());
            let Some(&(want, want_fp, lo, _)) = pending.get(&key) else {
                continue;
            };
            if m.offset() < want {
                continue; // read forward to the wanted message
            }
            let payload = m.payload().unwrap_or_default();
            let matches =
                m.offset() == want && (want_fp == 0 || fingerprint_matches(payload, want_fp));
            let conclusive = matches || m.offset() == want || starts[&key] == lo || last;
            if !conclusive {
                continue; // the broker skipped ahead; an earlier start will tell
            }
            pending.remove(&key);
            let mut one = TopicPartitionList::new();
            one.add_partition(m.topic(), m.partition());
            let _ = consumer.pause(&one);
            if !matches {
                tracing::warn!(
                    topic = m.topic(),
                    partition = m.partition(),
                    want_offset = want,
                    got_offset = m.offset(),
                    want_fingerprint = want_fp,
                    got_fingerprint = fingerprint(payload),
                    "kafka: stored position does not match the partition"
                );
                failed.push(key);
            }
        }
    }
    for ((t, p), (want, ..)) in &pending {
        tracing::warn!(topic = %topics[*t as usize], partition = p, want_offset = want,
            "kafka: no message at the stored position");
    }
    failed.extend(pending.into_keys());
    failed.sort_unstable();
    Ok(failed)
}
