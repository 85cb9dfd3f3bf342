//! `kmflow import` and `kmflow gen --topic`: produce killmails to Kafka, keyed by killmail id
//! so every version of a killmail lands in the same partition (and so is applied in order).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use kmflow_dataflows::decode::decode;

use crate::files::for_each_message;

/// Counts deliveries and failures reported by librdkafka.
#[derive(Default)]
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

pub struct CountingContext(pub Arc<DeliveryCounter>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::error!(error = %e, "kafka: delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A producer tuned for bulk loads.
/// `options` (`key=value` librdkafka producer properties) override kmflow's settings.
pub fn producer(
    brokers: &str,
    options: &[String],
) -> anyhow::Result<(ThreadedProducer<CountingContext>, Arc<DeliveryCounter>)> {
    let counter = Arc::new(DeliveryCounter::default());
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.max.bytes", "10000000")
        .set("enable.idempotence", "false")
        .set("acks", "all");
    for opt in options {
        let (k, v) = opt
            .split_once('=')
            .with_context(|| format!("producer option {opt:?} is not key=value"))?;
        config.set(k.trim(), v.trim());
    }
    let p = config
        .create_with_context(CountingContext(counter.clone()))
        .context("creating the Kafka producer")?;
    Ok((p, counter))
}

/// Fails within `timeout` when no broker at `brokers` answers (or `topic` does not exist),
/// instead of queueing messages that can never be delivered.
pub fn check_reachable<C: ProducerContext>(
    p: &ThreadedProducer<C>,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let md = p
        .client()
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| {
            format!(
                "no Kafka broker answered at {brokers} within {:.0} s (--connect-timeout)",
                timeout.as_secs_f64()
            )
        })?;
    match md.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => anyhow::bail!("topic {topic} does not exist at {brokers}; create it first"),
    }
}

/// Sends one message, waiting while the local queue is full.
pub fn send(
    p: &ThreadedProducer<CountingContext>,
    topic: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

pub fn progress(label: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} {human_pos} killmails  {per_sec}  {elapsed}",
        )
        .expect("valid template"),
    );
    pb.set_prefix(label.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Summary of an import.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub produced: u64,
    pub failed: u64,
    pub seconds: f64,
}

/// Produces every killmail under `paths` to `topic`. Records that cannot be read or decoded are
/// reported and counted as failed; they are not produced unless `send_invalid` is set (then
/// kmflow dead-letters them).
pub fn import(
    paths: &[PathBuf],
    brokers: &str,
    topic: &str,
    send_invalid: bool,
    options: &[String],
    connect_timeout: Duration,
) -> anyhow::Result<ImportReport> {
    let (p, counter) = producer(brokers, options)?;
    check_reachable(&p, brokers, topic, connect_timeout)?;
    let pb = progress("importing");
    let start = Instant::now();
    let mut failed = 0u64;
    let mut sent = 0u64;
    let mut send_err: Option<KafkaError> = None;
    for_each_message(paths, &mut |r| match r {
        Err(e) => {
            pb.suspend(|| eprintln!("kmflow import: {e}"));
            failed += 1;
        }
        Ok((origin, payload)) => {
            let key = match decode(&payload) {
                Ok(km) => km.killmail_id.to_string(),
                Err(e) => {
                    pb.suspend(|| eprintln!("kmflow import: {origin}: {e}"));
                    failed += 1;
                    if !send_invalid {
                        return;
                    }
                    format!("invalid-{sent}")
                }
            };
            if send_err.is_some() {
                return;
            }
            match send(&p, topic, key.as_bytes(), &payload) {
                Ok(()) => {
                    sent += 1;
                    pb.inc(1);
                }
                Err(e) => send_err = Some(e),
            }
        }
    });
    if let Some(e) = send_err {
        return Err(e).context(format!("producing to {topic} at {brokers}"));
    }
    p.flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let delivery_failed = counter.failed.load(Ordering::Relaxed);
    let report = ImportReport {
        produced: counter.delivered.load(Ordering::Relaxed),
        failed: failed + delivery_failed,
        seconds,
    };
    println!(
        "kmflow import: {} killmails to {topic} in {:.1}s ({:.0}/s), {} failed",
        report.produced,
        seconds,
        report.produced as f64 / seconds.max(1e-9),
        report.failed
    );
    Ok(report)
}
