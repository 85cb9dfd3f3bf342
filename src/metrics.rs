//! Prometheus metrics. The app owns one [`Registry`]; nothing goes to the default registry,
//! so tests running side by side do not share counters.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use kmflow_dataflows::decode::DecodeError;

/// Buckets for latencies in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0, 30.0, 120.0,
];

/// Every metric of one process, by concern.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub source: SourceMetrics,
    pub state: StateMetrics,
    pub http: HttpMetrics,
    pub stream: StreamMetrics,
    /// 1 when state is restored and the source connected.
    pub ready: IntGauge,
}

/// Reading and decoding messages.
#[derive(Clone)]
pub struct SourceMetrics {
    /// Labels: topic, partition (bounded by the configured topics' partitions).
    pub records: IntCounterVec,
    pub errors: IntCounter,
    /// 1 while the source cannot reach the broker.
    pub outage: IntGauge,
    /// Labels: reason (bounded: [`DecodeError::REASONS`]). Counted at commit: exactly once.
    pub decode_failures: IntCounterVec,
    /// Labels: topic, partition.
    pub consumer_lag: IntGaugeVec,
    /// Labels: topic, partition. 1 when the stored offset is past the partition's end.
    pub partition_reset: IntGaugeVec,
    /// Labels: topic, partition. Offsets the broker skipped after a resume.
    pub offset_gaps: IntCounterVec,
}

/// The upsert state, checkpoints and what they store.
#[derive(Clone)]
pub struct StateMetrics {
    /// Labels: outcome (inserted, replaced, unchanged).
    pub upserts: IntCounterVec,
    pub checkpoint_latency: Histogram,
    /// Records (killmail upserts, deltas and dead letters) written per checkpoint.
    pub checkpoint_size: Histogram,
    pub checkpoint_errors: IntCounter,
    pub committed_epoch: IntGauge,
    /// The stream clock (Unix seconds) the rolling windows end at.
    pub clock: IntGauge,
    /// State reads by the upsert operator that failed (retried).
    pub read_errors: IntCounter,
    pub size: IntGauge,
    /// Labels: part (block_cache, pinned, memtables, table_readers).
    pub memory: IntGaugeVec,
    /// Dead letters stored.
    pub dead_letters_stored: IntGauge,
    /// Dead letters the retention dropped (oldest first), over the state's life.
    pub dead_letters_dropped: IntCounter,
    /// Seconds from a message's produce timestamp to the checkpoint that made it visible.
    pub freshness: Histogram,
}

/// The API's connections and requests.
#[derive(Clone)]
pub struct HttpMetrics {
    /// Labels: route (the matched pattern, bounded), status.
    pub latency: HistogramVec,
    /// Open API connections.
    pub connections: IntGauge,
    /// Connections closed on accept because `api.max-connections` were open.
    pub connections_refused: IntCounter,
    /// Labels: reason (overloaded, timeout, panic). Requests answered by a limit, not a handler.
    pub rejected: IntCounterVec,
    /// Labels: outcome (ok, error). In a cluster: requests sent to other processes.
    pub forwarded: IntCounterVec,
}

/// The live feed, `GET /v1/stream`.
#[derive(Clone)]
pub struct StreamMetrics {
    /// Open subscribers.
    pub subscribers: IntGauge,
    /// Labels: type (subscribed, killmail, stats, checkpoint, resync, dropped). Events sent.
    pub events: IntCounterVec,
    /// Labels: reason (slow, limit). Subscribers dropped or refused.
    pub dropped: IntCounterVec,
}

/// Creates each metric and registers it in one step; a labelled counter can be given the
/// label values that always exist (created at 0, so dashboards have series from the start).
struct Builder {
    registry: Registry,
}

impl Builder {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }
    /// `known`: the values of the (single) label created at 0.
    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        known: &[&str],
    ) -> IntCounterVec {
        let c = self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"));
        for v in known {
            c.with_label_values(&[v]);
        }
        c
    }
    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::for_process(None)
    }

    /// In a cluster every series carries `process="N"`, so the processes' series never
    /// collide where they are gathered (`sum without (process, instance) (...)` sums the
    /// cluster).
    pub fn for_process(process: Option<usize>) -> Metrics {
        let labels = process
            .map(|p| std::collections::HashMap::from([("process".to_string(), p.to_string())]));
        let b = Builder {
            registry: Registry::new_custom(None, labels).expect("a valid process label"),
        };
        #[cfg(target_os = "linux")]
        b.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("register");
        Metrics {
            source: SourceMetrics::new(&b),
            state: StateMetrics::new(&b),
            http: HttpMetrics::new(&b),
            stream: StreamMetrics::new(&b),
            ready: b.gauge(
                "kmflow_ready",
                "1 when state is restored and the source connected",
            ),
            registry: b.registry,
        }
    }

    /// Sets the gauges that describe the stored state to `meta` (at start and after each
    /// checkpoint).
    pub fn observe_stored(&self, meta: &crate::state::CheckpointMeta) {
        let s = &self.state;
        s.committed_epoch.set(meta.epoch as i64);
        if let Some(now) = meta.clock.now {
            s.clock.set(now);
        }
        s.dead_letters_stored.set(meta.dead_letters.count as i64);
        let dropped = meta.dead_letters.dropped;
        s.dead_letters_dropped
            .inc_by(dropped.saturating_sub(s.dead_letters_dropped.get()));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl SourceMetrics {
    fn new(b: &Builder) -> Self {
        let topic_partition = ["topic", "partition"];
        SourceMetrics {
        records: b.counter_vec(
            "kmflow_source_records_total",
            "Messages read, by topic and partition",
            &topic_partition,
            &[],
        ),
        errors: b.counter(
            "kmflow_source_errors_total",
            "Errors reported by the Kafka client (broker unreachable, fetch failures)",
        ),
        outage: b.gauge(
            "kmflow_source_outage",
            "1 while the source cannot reach the broker",
        ),
        decode_failures: b.counter_vec(
            "kmflow_decode_failures_total",
            "Messages that could not be decoded (kept as dead letters), by reason",
            &["reason"],
            &DecodeError::REASONS,
        ),
        consumer_lag: b.gauge_vec(
            "kmflow_source_consumer_lag_messages",
            "High watermark minus the committed next offset, by topic and partition",
            &topic_partition,
        ),
        partition_reset: b.gauge_vec(
            "kmflow_source_partition_reset",
            "1 when the stored offset is past the end of the partition (topic deleted and recreated?)",
            &topic_partition,
        ),
        offset_gaps: b.counter_vec(
            "kmflow_source_offset_gaps_total",
            "Offsets the broker skipped right after kmflow resumed a partition (records not read)",
            &topic_partition,
            &[],
        ),
        }
    }
}

impl StateMetrics {
    fn new(b: &Builder) -> Self {
        StateMetrics {
        upserts: b.counter_vec(
            "kmflow_upsert_total",
            "Upsert decisions: inserted (new killmail), replaced (new zkb), unchanged (re-delivery)",
            &["outcome"],
            &["inserted", "replaced", "unchanged"],
        ),
        checkpoint_latency: b.histogram(
            "kmflow_checkpoint_seconds",
            "Time to write one checkpoint (one synced WriteBatch) to RocksDB",
            LATENCY_BUCKETS.to_vec(),
        ),
        checkpoint_size: b.histogram(
            "kmflow_checkpoint_records",
            "Records written per checkpoint (every epoch complete when it is taken)",
            prometheus::exponential_buckets(1.0, 4.0, 12).expect("valid buckets"),
        ),
        checkpoint_errors: b.counter(
            "kmflow_checkpoint_errors_total",
            "Checkpoints that failed to write (ingestion stops on the first)",
        ),
        committed_epoch: b.gauge("kmflow_committed_epoch", "The last committed epoch"),
        clock: b.gauge(
            "kmflow_stream_clock_seconds",
            "The stream clock rolling windows end at: min(wall clock, latest killmail_time), Unix seconds",
        ),
        read_errors: b.counter(
            "kmflow_state_read_errors_total",
            "Upsert-state reads that failed; the operator retries them",
        ),
        size: b.gauge(
            "kmflow_state_rocksdb_size_bytes",
            "RocksDB SST files and memtables, all column families",
        ),
        memory: b.gauge_vec(
            "kmflow_state_rocksdb_memory_bytes",
            "RocksDB memory by part: block_cache (bounded by state.block-cache-mb), pinned \
             (the part of the cache in use and not evictable), memtables, table_readers \
             (indexes and filters held outside the cache)",
            &["part"],
        ),
        dead_letters_stored: b.gauge(
            "kmflow_dead_letters_stored",
            "Dead letters kept for GET /v1/dead-letters",
        ),
        dead_letters_dropped: b.counter(
            "kmflow_dead_letters_dropped_total",
            "Dead letters dropped by the retention (state.dead-letters-max, state.dead-letters-max-mb), oldest first",
        ),
        freshness: b.histogram(
            "kmflow_freshness_seconds",
            "Seconds from a message's produce timestamp to the checkpoint that makes it visible in the API (observed per partition and checkpoint)",
            vec![
                0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                3600.0, 86400.0,
            ],
        ),
        }
    }
}

impl HttpMetrics {
    fn new(b: &Builder) -> Self {
        HttpMetrics {
        latency: b.add(
            HistogramVec::new(
                HistogramOpts::new(
                    "kmflow_http_request_duration_seconds",
                    "HTTP request latency, by route pattern and status",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route", "status"],
            )
            .expect("valid metric"),
        ),
        connections: b.gauge("kmflow_http_connections", "Open API connections"),
        connections_refused: b.counter(
            "kmflow_http_connections_refused_total",
            "API connections closed on accept because api.max-connections were open",
        ),
        rejected: b.counter_vec(
            "kmflow_http_rejected_total",
            "API requests answered by a limit instead of a handler: overloaded (api.max-in-flight), timeout (api.request-timeout-ms), panic (a handler bug, answered 500)",
            &["reason"],
            &["overloaded", "timeout", "panic"],
        ),
        forwarded: b.counter_vec(
            "kmflow_http_forwarded_total",
            "In a cluster: requests this process sent to the process that owns the answer (or to every process, for leaderboards, batches and readiness), by outcome",
            &["outcome"],
            &["ok", "error"],
        ),
        }
    }
}

impl StreamMetrics {
    fn new(b: &Builder) -> Self {
        StreamMetrics {
        subscribers: b.gauge(
            "kmflow_stream_subscribers",
            "Open GET /v1/stream (server-sent events) subscribers",
        ),
        events: b.counter_vec(
            "kmflow_stream_events_total",
            "Events sent to GET /v1/stream subscribers, by type",
            &["type"],
            &["subscribed", "killmail", "stats", "checkpoint", "resync", "dropped"],
        ),
        dropped: b.counter_vec(
            "kmflow_stream_dropped_total",
            "Stream subscribers dropped (slow: fell behind the retained checkpoints) or refused (limit: stream.max-subscribers)",
            &["reason"],
            &["slow", "limit"],
        ),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
