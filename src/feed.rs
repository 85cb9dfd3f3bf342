//! The live feed behind `GET /v1/stream`: after each checkpoint the checkpointer publishes
//! what it made visible (the killmails a version of which was applied, and the new all-time
//! statistics of the entities they touched); subscribers read it from here.
//!
//! Publishing never waits for a subscriber: the feed is a ring of recent checkpoints, bounded
//! by count and by estimated bytes (`stream.retain-checkpoints`, `stream.retain-mb`), that
//! every subscriber reads at its own pace with its own cursor. A subscriber whose cursor falls
//! behind the oldest checkpoint kept is dropped (it was too slow); a client that reconnects
//! with a cursor (`Last-Event-ID`) still covered resumes with no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;

use kmflow_dataflows::checkpoint::CheckpointBatch;
use kmflow_dataflows::keys::Dim;
use kmflow_dataflows::{EntityKey, Stats, StoredKillmail};

use crate::config::StreamConfig;

/// What one checkpoint made visible.
pub struct FeedCheckpoint {
    /// The checkpoint's epoch (the last epoch it includes).
    pub epoch: u64,
    /// Killmails a version of which was applied, by id.
    pub killmails: Vec<StoredKillmail>,
    /// The new all-time statistics of the entities whose statistics changed.
    pub stats: Vec<(EntityKey, Stats)>,
    bytes: usize,
}

impl FeedCheckpoint {
    /// The events of the checkpoint: killmails first, then statistics. An event's index
    /// here is part of its id, the same whatever a subscriber filters.
    pub fn len(&self) -> usize {
        self.killmails.len() + self.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a subscriber is: everything up to checkpoint `epoch` received (`None`: nothing, the
/// state had no checkpoint), or, when `index` is set, checkpoint `epoch` up to that event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Option<u64>,
    /// The last event received of checkpoint `epoch`, when it was received only in part.
    pub index: Option<usize>,
}

impl Cursor {
    /// The event id that resumes here.
    pub fn id(&self) -> String {
        match (self.epoch, self.index) {
            (None, _) => "start".into(),
            (Some(e), None) => e.to_string(),
            (Some(e), Some(i)) => format!("{e}:{i}"),
        }
    }

    /// Parses a `Last-Event-ID`: `<epoch>:<index>` (an event), `<epoch>` (a whole
    /// checkpoint) or `start` (before the first checkpoint of the state).
    pub fn parse(raw: &str) -> Option<Cursor> {
        if raw == "start" {
            return Some(Cursor {
                epoch: None,
                index: None,
            });
        }
        let digits = |s: &str| crate::api::params::parse_decimal(s);
        match raw.split_once(':') {
            Some((e, i)) => Some(Cursor {
                epoch: Some(digits(e)?),
                index: Some(usize::try_from(digits(i)?).ok()?),
            }),
            None => Some(Cursor {
                epoch: Some(digits(raw)?),
                index: None,
            }),
        }
    }
}

/// What a subscriber gets next.
pub enum Next {
    /// The checkpoint to read, from event `from` on.
    Read(Arc<FeedCheckpoint>, usize),
    /// Nothing new yet: wait for the next publication.
    Wait,
    /// The cursor is older than what is kept (or from a state the feed never had).
    Gone {
        oldest: Option<u64>,
        head: Option<u64>,
    },
}

struct Ring {
    checkpoints: VecDeque<Arc<FeedCheckpoint>>,
    bytes: usize,
    /// The latest checkpoint's epoch (published or empty); `None` before the first.
    head: Option<u64>,
    /// Every checkpoint after this epoch is kept (the ones before were dropped, or predate
    /// this process); `None`: every checkpoint ever written.
    kept_after: Option<u64>,
}

/// The feed: published by the checkpointer, read by the stream's subscribers.
pub struct Feed {
    ring: parking_lot::RwLock<Ring>,
    published: tokio::sync::watch::Sender<Option<u64>>,
    max_checkpoints: usize,
    max_bytes: usize,
}

impl Feed {
    /// A feed that starts after `committed` (the state's committed epoch at start).
    pub fn new(cfg: &StreamConfig, committed: Option<u64>) -> Feed {
        Feed {
            ring: parking_lot::RwLock::new(Ring {
                checkpoints: VecDeque::new(),
                bytes: 0,
                head: committed,
                kept_after: committed,
            }),
            published: tokio::sync::watch::channel(committed).0,
            max_checkpoints: cfg.retain_checkpoints,
            max_bytes: cfg.retain_mb.saturating_mul(1 << 20),
        }
    }

    /// Publishes a written checkpoint; takes its upserts (the batch is spent once written).
    pub fn publish<M>(&self, batch: &mut CheckpointBatch<M>) {
        let applied = std::mem::take(&mut batch.applied);
        let killmails: Vec<StoredKillmail> = std::mem::take(&mut batch.upserts)
            .into_iter()
            .filter(|(id, _)| applied.binary_search(id).is_ok())
            .map(|(_, s)| s)
            .collect();
        let stats: Vec<(EntityKey, Stats)> = batch
            .writes
            .puts()
            .filter(|(k, _)| k.dim == Dim::All)
            .map(|(k, s)| (k.entity, *s))
            .collect();
        let bytes = killmails
            .iter()
            .map(|k| {
                std::mem::size_of::<StoredKillmail>()
                    + k.killmail.attackers.len()
                        * std::mem::size_of::<kmflow_dataflows::model::Attacker>()
            })
            .sum::<usize>()
            + stats.len() * std::mem::size_of::<(EntityKey, Stats)>();
        let epoch = batch.last_epoch;
        {
            let mut ring = self.ring.write();
            ring.head = Some(epoch);
            // An empty checkpoint is not kept: a cursor before it misses nothing by that, so
            // only evictions move `kept_after`.
            if !(killmails.is_empty() && stats.is_empty()) {
                ring.bytes += bytes;
                ring.checkpoints.push_back(Arc::new(FeedCheckpoint {
                    epoch,
                    killmails,
                    stats,
                    bytes,
                }));
                while ring.checkpoints.len() > self.max_checkpoints
                    || (ring.bytes > self.max_bytes && ring.checkpoints.len() > 1)
                {
                    let old = ring.checkpoints.pop_front().expect("not empty");
                    ring.bytes -= old.bytes;
                    ring.kept_after = Some(old.epoch);
                }
            }
        }
        self.published.send_replace(Some(epoch));
    }

    /// The latest checkpoint's epoch: a new subscriber starts after it.
    pub fn head(&self) -> Option<u64> {
        self.ring.read().head
    }

    /// Wakes when a checkpoint is published.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.published.subscribe()
    }

    /// What a subscriber at `cursor` reads next.
    pub fn next(&self, cursor: Cursor) -> Next {
        let ring = self.ring.read();
        let gone = Next::Gone {
            oldest: ring.kept_after,
            head: ring.head,
        };
        if cursor.epoch > ring.head {
            return gone;
        }
        if let Some(index) = cursor.index {
            // Part of checkpoint `epoch` was received: it must still be kept.
            let at = ring
                .checkpoints
                .partition_point(|c| Some(c.epoch) < cursor.epoch);
            let kept = ring
                .checkpoints
                .get(at)
                .filter(|c| Some(c.epoch) == cursor.epoch);
            return match kept {
                // (An index past the end, even u64::MAX, is the checkpoint consumed.)
                Some(c) if index < c.len().saturating_sub(1) => Next::Read(c.clone(), index + 1),
                Some(_) => self.after(&ring, cursor.epoch),
                None => gone,
            };
        }
        if cursor.epoch < ring.kept_after {
            return gone;
        }
        self.after(&ring, cursor.epoch)
    }

    fn after(&self, ring: &Ring, epoch: Option<u64>) -> Next {
        let at = ring.checkpoints.partition_point(|c| Some(c.epoch) <= epoch);
        match ring.checkpoints.get(at) {
            Some(c) => Next::Read(c.clone(), 0),
            None => Next::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmflow_dataflows::aggregate::Write;
    use kmflow_dataflows::keys::StatKey;
    use kmflow_dataflows::EntityKind;

    fn cfg(retain: usize) -> StreamConfig {
        StreamConfig {
            max_subscribers: 4,
            retain_checkpoints: retain,
            retain_mb: 64,
            max_filter_ids: 10,
        }
    }

    /// `(kept_after, head)` of a cursor gone.
    type Gone = (Option<u64>, Option<u64>);

    fn publish(feed: &Feed, epoch: u64, entities: u64) {
        let mut b = CheckpointBatch::<()> {
            last_epoch: epoch,
            ..Default::default()
        };
        b.writes = (1..=entities)
            .map(|id| {
                let k = StatKey::all(EntityKey::new(EntityKind::Character, id));
                Write::Put(k, Stats::default())
            })
            .collect();
        feed.publish(&mut b);
    }

    fn read(feed: &Feed, mut cursor: Cursor) -> Result<Vec<(u64, usize)>, Gone> {
        let mut got = Vec::new();
        loop {
            match feed.next(cursor) {
                Next::Read(c, from) => {
                    for i in from..c.len() {
                        got.push((c.epoch, i));
                    }
                    cursor = Cursor {
                        epoch: Some(c.epoch),
                        index: None,
                    };
                }
                Next::Wait => return Ok(got),
                Next::Gone { oldest, head } => return Err((oldest, head)),
            }
        }
    }

    /// Resuming from any event id gives exactly the events after it; from before what is
    /// kept, or from an epoch the feed never reached, it says so.
    #[test]
    fn cursors_resume_without_gaps_or_duplicates() {
        let feed = Feed::new(&cfg(3), Some(10));
        publish(&feed, 11, 2);
        publish(&feed, 12, 0); // empty: no events, but the head moves
        publish(&feed, 13, 3);
        let all = read(&feed, Cursor::parse("10").unwrap()).unwrap();
        assert_eq!(all, vec![(11, 0), (11, 1), (13, 0), (13, 1), (13, 2)]);
        for (n, &(epoch, index)) in all.iter().enumerate() {
            let rest = read(&feed, Cursor::parse(&format!("{epoch}:{index}")).unwrap()).unwrap();
            assert_eq!(rest, all[n + 1..].to_vec(), "after {epoch}:{index}");
        }
        assert_eq!(read(&feed, Cursor::parse("12").unwrap()).unwrap(), all[2..]);
        assert_eq!(
            read(&feed, Cursor::parse("14").unwrap()),
            Err((Some(10), Some(13)))
        );
        publish(&feed, 14, 1);
        publish(&feed, 15, 1); // 11 is dropped: three are kept
        assert_eq!(
            read(&feed, Cursor::parse("10").unwrap()),
            Err((Some(11), Some(15)))
        );
        assert_eq!(
            read(&feed, Cursor::parse("11:0").unwrap()),
            Err((Some(11), Some(15)))
        );
        assert_eq!(read(&feed, Cursor::parse("11").unwrap()).unwrap().len(), 5);
        assert_eq!(Cursor::parse("+1"), None);
        // An index past any checkpoint's end is that checkpoint consumed, never a panic.
        let huge = Cursor::parse("13:18446744073709551615").unwrap();
        assert_eq!(read(&feed, huge).unwrap(), vec![(14, 0), (15, 0)]);
        // Empty checkpoints on an empty ring drop no one: nothing was missed.
        let quiet = Feed::new(&cfg(3), Some(10));
        let waiting = Cursor::parse("10").unwrap();
        publish(&quiet, 11, 0);
        publish(&quiet, 12, 0);
        assert_eq!(read(&quiet, waiting).unwrap(), vec![]);
        publish(&quiet, 13, 1);
        assert_eq!(read(&quiet, waiting).unwrap(), vec![(13, 0)]);
        assert_eq!(Cursor::parse("start").unwrap().id(), "start");
        assert_eq!(Cursor::parse("7:2").unwrap().id(), "7:2");
        // A state with no checkpoint yet: the first one (epoch 0) is read in full.
        let fresh = Feed::new(&cfg(3), None);
        let start = Cursor {
            epoch: fresh.head(),
            index: None,
        };
        publish(&fresh, 0, 2);
        assert_eq!(read(&fresh, start).unwrap(), vec![(0, 0), (0, 1)]);
        assert_eq!(Cursor::parse("1:x"), None);
    }
}
