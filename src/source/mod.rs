//! Sources: a timely operator per worker that reads its share of the partitions and cuts the
//! stream into ingestion epochs.
//!
//! Epochs are aligned across workers: whichever worker closes an epoch first (by size or by
//! time) raises a shared target, and every other worker closes its epoch as soon as it sees it,
//! so commits do not wait for idle workers. A source stops reading while
//! `max-inflight-epochs` epochs await their commit, which bounds memory during a replay.

pub mod generator;
pub mod kafka;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};

use kmflow_dataflows::store::StateStore;
use kmflow_dataflows::wake::Wakers;
use kmflow_dataflows::RawRecord;

/// Where a partition stands: the next offset to read, and the fingerprint of the message just
/// before it (see [`fingerprint`]), which lets a restart prove the partition is the one it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub topic: u16,
    pub partition: i32,
    pub next: i64,
    pub fingerprint: u64,
    /// When the last message read before `next` was produced (Unix ms; 0: unknown), for
    /// `kmflow_freshness_seconds`.
    pub produced_ms: i64,
}

/// Payloads up to this size are fingerprinted whole; of a larger one, the first and last
/// halves of this size and the length.
const FINGERPRINT_WHOLE: usize = 64 << 10;

/// The fingerprint of a payload, stored with the offsets: FNV-1a of the payload if it is up to
/// 64 KiB (a killmail of the real data is under 20 KiB), else FNV-1a of its first 32 KiB, its
/// last 32 KiB and its length (8 bytes, little-endian). Stable across platforms; up to 64 KiB
/// it is what every earlier build stored, and this build accepts an earlier build's whole one
/// ([`fingerprint_matches`]). One way only: an earlier build that opens a state this build
/// wrote, where a partition's last message read was over 64 KiB, finds that position's
/// fingerprint different and treats the partition as recreated (`kafka.on-offset-reset`:
/// stopped, or read again from its start, which the upsert makes no-ops of). FNV-1a goes a
/// byte at a time: over the whole of the largest killmail (2.2 MB) it cost a worker 3 ms.
pub fn fingerprint(payload: &[u8]) -> u64 {
    if payload.len() <= FINGERPRINT_WHOLE {
        return fnv1a(payload);
    }
    let half = FINGERPRINT_WHOLE / 2;
    let h = fnv1a_from(FNV_OFFSET, &payload[..half]);
    let h = fnv1a_from(h, &payload[payload.len() - half..]);
    fnv1a_from(h, &(payload.len() as u64).to_le_bytes())
}

/// Whether `payload` is the message a position stored with fingerprint `stored`: by
/// [`fingerprint`], or, for a position stored by a build that fingerprinted every payload
/// whole, by FNV-1a of the whole.
pub fn fingerprint_matches(payload: &[u8], stored: u64) -> bool {
    fingerprint(payload) == stored
        || (payload.len() > FINGERPRINT_WHOLE && fnv1a(payload) == stored)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64-bit) of `bytes`: also the checksum of a cluster's prepared checkpoint file.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a of `bytes`, continuing from `h`.
fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A worker's share of the input.
pub trait PartitionReader {
    /// Appends up to `max` records to `out`; returns how many. Must not block for long.
    fn poll(&mut self, out: &mut Vec<RawRecord>, max: usize) -> usize;
    /// The next offset of every partition this reader owns and has a position for.
    fn positions(&self) -> Vec<Position>;
    /// Asks the reader to call `wake` (from any thread) when something arrives for [`poll`]
    /// after a poll found nothing; true if it will. A reader that cannot is polled on a timer.
    ///
    /// [`poll`]: PartitionReader::poll
    fn wake_on_arrival(&mut self, wake: Box<dyn Fn() + Send + Sync>) -> bool {
        let _ = wake;
        false
    }
}

/// Shared by all workers' sources.
pub struct EpochControl {
    target: AtomicU64,
    /// Set on SIGTERM, a failed checkpoint, or (in a cluster) another process's shutdown.
    pub shutdown: Arc<AtomicBool>,
    pub store: Arc<dyn StateStore>,
    pub max_records: usize,
    pub max_wait: Duration,
    pub max_inflight: u64,
    /// Every worker's source, woken when the target rises (they do not poll for it).
    sources: Wakers,
}

impl EpochControl {
    pub fn new(
        start: u64,
        store: Arc<dyn StateStore>,
        max_records: usize,
        max_wait: Duration,
        max_inflight: u64,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        EpochControl {
            target: AtomicU64::new(start),
            shutdown,
            store,
            max_records,
            max_wait,
            max_inflight,
            sources: Default::default(),
        }
    }
}

impl EpochControl {
    /// The epoch every source closes up to as soon as it sees it.
    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Acquire)
    }

    /// Lets every source close its epochs up to `epoch` (a beacon from another process, or
    /// a source that closed one), waking them if that raises the target.
    pub fn raise_target(&self, epoch: u64) {
        if self.target.fetch_max(epoch, Ordering::AcqRel) < epoch {
            self.sources.wake();
        }
    }
}

/// Source metadata per closed epoch, shared between a worker's source and its sink.
pub type EpochPositions = Rc<RefCell<Vec<(u64, Vec<Position>)>>>;

/// At most this many records per activation, so one worker yields to others regularly.
const POLL_CHUNK: usize = 4096;
/// How often a source polls its reader while records flow or an epoch is open.
const BUSY_POLL: Duration = Duration::from_millis(2);
/// How often it polls once no record came for [`IDLE_AFTER`], no epoch is open and no
/// checkpoint is awaited (a source held back by `max-inflight-epochs` polls busily): an idle
/// kmflow wakes 100 times a second per worker rather than 500 (a new record waits at most
/// this long; its epoch then closes within `epoch-max-ms`).
const IDLE_POLL: Duration = Duration::from_millis(10);
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How often a source whose reader wakes it on arrival ([`PartitionReader::wake_on_arrival`])
/// polls anyway when it waits for nothing else: it notices a shutdown within this, and a
/// wake-up lost would cost at most this much latency.
const SIGNALLED_POLL: Duration = Duration::from_millis(100);

/// Builds the source operator on this worker.
pub fn epoch_source<'s>(
    scope: Scope<'s, u64>,
    start: u64,
    mut reader: Box<dyn PartitionReader>,
    ctl: Arc<EpochControl>,
    positions: EpochPositions,
) -> StreamVec<'s, u64, RawRecord> {
    source::<_, CapacityContainerBuilder<Vec<RawRecord>>, _, _>(
        scope,
        "Source",
        move |cap, info| {
            ctl.sources.register(&scope, &info.address);
            let arrival = scope.worker().sync_activator_for(info.address.to_vec());
            let signalled = reader.wake_on_arrival(Box::new(move || {
                let _ = arrival.activate();
            }));
            let activator = scope.activator_for(info.address);
            let mut last_record = Instant::now();
            let mut cap = Some(cap.delayed(&start));
            let mut epoch = start;
            let mut in_epoch = 0usize;
            let mut first_at: Option<Instant> = None;
            let mut buf: Vec<RawRecord> = Vec::with_capacity(POLL_CHUNK);
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                if ctl.shutdown.load(Ordering::Acquire) {
                    positions.borrow_mut().push((epoch, reader.positions()));
                    cap = None;
                    return;
                }
                let committed_next = ctl
                    .store
                    .committed_epoch()
                    .map_or(start, |e| e + 1)
                    .max(start);
                let mut got = 0;
                let backpressured = epoch >= committed_next + ctl.max_inflight;
                if !backpressured {
                    let room = ctl
                        .max_records
                        .saturating_sub(in_epoch)
                        .clamp(1, POLL_CHUNK);
                    got = reader.poll(&mut buf, room);
                    if got > 0 {
                        last_record = Instant::now();
                        output.session(c).give_iterator(buf.drain(..));
                        in_epoch += got;
                        first_at.get_or_insert_with(Instant::now);
                    }
                }
                let target = ctl.target.load(Ordering::Acquire);
                let timed_out = first_at.is_some_and(|t| t.elapsed() >= ctl.max_wait);
                let close = in_epoch >= ctl.max_records || timed_out || target > epoch;
                if close {
                    positions.borrow_mut().push((epoch, reader.positions()));
                    let next = (epoch + 1).max(target);
                    ctl.raise_target(next);
                    epoch = next;
                    c.downgrade(&epoch);
                    in_epoch = 0;
                    first_at = None;
                }
                if got > 0 || close {
                    activator.activate();
                } else if signalled && !backpressured {
                    // Records wake it; what is left is the open epoch's deadline.
                    let wait = first_at.map_or(SIGNALLED_POLL, |t| {
                        ctl.max_wait.saturating_sub(t.elapsed()).min(SIGNALLED_POLL)
                    });
                    activator.activate_after(wait.max(Duration::from_millis(1)));
                } else if in_epoch == 0 && !backpressured && last_record.elapsed() >= IDLE_AFTER {
                    activator.activate_after(IDLE_POLL);
                } else {
                    activator.activate_after(BUSY_POLL);
                }
            }
        },
    )
}

/// The wall clock in Unix milliseconds.
pub fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_fnv1a_up_to_64_kib_and_bounded_past_it() {
        // FNV-1a's published vectors: what every build stored for ordinary payloads.
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fingerprint(b"foobar"), 0x8594_4171_f739_67e8);
        let at_limit: Vec<u8> = (0..FINGERPRINT_WHOLE).map(|i| (i * 7) as u8).collect();
        assert_eq!(fingerprint(&at_limit), fnv1a(&at_limit));
        // Past it: the ends and the length count, and the fingerprint is not the whole's.
        let large: Vec<u8> = (0..3 * FINGERPRINT_WHOLE).map(|i| (i * 13) as u8).collect();
        let fp = fingerprint(&large);
        assert_ne!(fp, fnv1a(&large));
        for at in [
            0,
            FINGERPRINT_WHOLE / 2 - 1,
            large.len() - FINGERPRINT_WHOLE / 2,
            large.len() - 1,
        ] {
            let mut other = large.clone();
            other[at] ^= 1;
            assert_ne!(fingerprint(&other), fp, "a byte at {at}");
        }
        let mut longer = large.clone();
        longer.insert(FINGERPRINT_WHOLE, 0);
        assert_ne!(fingerprint(&longer), fp);
        // A position stored by an earlier build (the whole payload's FNV-1a) still matches,
        // and a different payload does not.
        assert!(fingerprint_matches(&large, fp));
        assert!(fingerprint_matches(&large, fnv1a(&large)));
        assert!(!fingerprint_matches(&longer, fp) && !fingerprint_matches(&longer, fnv1a(&large)));
        assert!(
            fingerprint_matches(b"a", 0xaf63_dc4c_8601_ec8c)
                && !fingerprint_matches(b"b", 0xaf63_dc4c_8601_ec8c)
        );
    }
}
