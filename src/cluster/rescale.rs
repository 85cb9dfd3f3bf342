//! `kmflow rescale`: hands key groups over when the number of processes changes.
//!
//! Each process stores what its workers own, and the owning process of a statistic, a
//! leaderboard entry or an upsert state depends on the number of processes only (see
//! [`super`]). Changing the workers per process moves nothing; changing the number of
//! processes is this offline step: the stores of the old processes (all at one checkpoint,
//! the cluster stopped) are read and every key is written to the store of its new owner.
//! Nothing is re-read from Kafka: the offsets travel with the state.
//!
//! - statistics and day buckets go to the owner of their entity, and each new store rebuilds
//!   its leaderboard index from them;
//! - upsert states go to the owner of their killmail;
//! - dead letters all go to process 0 (renumbered within their epoch, oldest first);
//! - every new store gets every partition's offsets: each process then keeps its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kmflow_dataflows::keys::StatKey;
use kmflow_dataflows::shard::{entity_owner, killmail_owner};

use crate::state::{CheckpointMeta, ClusterPlace, DeadLetterTotals, RocksState, StateError, Table};

/// Entries buffered per new store before they are written.
const CHUNK: usize = 50_000;

/// What a rescale copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Keys written to each new store.
    pub keys: Vec<u64>,
    /// The checkpoint every new store is at.
    pub epoch: u64,
}

/// Copies the states in `from` (one per old process, in process order) into new states in
/// `to` (one per new process). `to` must not hold a state yet.
pub fn rescale(
    from: &[PathBuf],
    to: &[PathBuf],
    block_cache_mb: usize,
) -> Result<Copied, StateError> {
    let (sources, metas) = open_sources(from, to, block_cache_mb)?;
    let targets = to
        .iter()
        .map(|d| {
            std::fs::create_dir_all(d).map_err(|e| StateError::Corrupt(e.to_string()))?;
            RocksState::open(d, block_cache_mb)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut copy = Copier {
        targets: &targets,
        pending: (0..targets.len()).map(|_| Vec::new()).collect(),
        keys: vec![0; targets.len()],
    };
    let mut letters = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        // Each new store rebuilds its own leaderboard index: a source's is not read.
        for table in Table::ALL.into_iter().filter(|&t| t != Table::Ranks) {
            source.scan_raw(table, |k, v| {
                if table == Table::DeadLetters {
                    letters.push((k.to_vec(), i, v.to_vec()));
                    return Ok(());
                }
                copy.route(table, k, v)
            })?;
        }
    }
    let letter_totals = copy.dead_letters(letters, &metas)?;
    copy.flush_all()?;
    for (p, target) in targets.iter().enumerate() {
        let mut meta = merged_meta(&metas);
        meta.cluster = (to.len() > 1).then_some(ClusterPlace {
            processes: to.len(),
            process: p,
        });
        meta.dead_letters = if p == 0 {
            letter_totals
        } else {
            DeadLetterTotals::default()
        };
        meta.ranks = Some(target.rebuild_rank_index()?);
        target.write_meta(&meta)?;
    }
    Ok(Copied {
        keys: copy.keys,
        epoch: metas[0].epoch,
    })
}

/// Opens the old states, refusing what cannot be rescaled: a prepared checkpoint, a target
/// that holds something, a missing or misplaced process's state, different checkpoints.
fn open_sources(
    from: &[PathBuf],
    to: &[PathBuf],
    block_cache_mb: usize,
) -> Result<(Vec<std::sync::Arc<RocksState>>, Vec<CheckpointMeta>), StateError> {
    let refuse = |m: String| Err(StateError::Corrupt(m));
    if from.is_empty() || to.is_empty() {
        return refuse("rescale needs at least one state to read and one to write".into());
    }
    for dir in from {
        if super::prepared::path(dir).exists() {
            return refuse(format!(
                "{} holds a prepared checkpoint: start the cluster once so that it recovers, stop it, then rescale",
                dir.display()
            ));
        }
    }
    for dir in to {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return refuse(format!(
                "{} is not empty: rescale writes new states",
                dir.display()
            ));
        }
    }
    let sources = from
        .iter()
        .map(|d| RocksState::open(d, block_cache_mb))
        .collect::<Result<Vec<_>, _>>()?;
    let metas = sources
        .iter()
        .zip(from)
        .map(|(s, d)| {
            s.checkpoint_meta()
                .ok_or_else(|| StateError::Corrupt(format!("{} holds no checkpoint", d.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, (m, d)) in metas.iter().zip(from).enumerate() {
        let want = (from.len() > 1).then_some(ClusterPlace {
            processes: from.len(),
            process: i,
        });
        if m.cluster != want {
            return refuse(format!(
                "{} was written by {:?}, not by process {i} of {}: pass every process's state, in process order",
                d.display(),
                m.cluster,
                from.len()
            ));
        }
    }
    if metas.iter().any(|m| m.epoch != metas[0].epoch) {
        let epochs: Vec<u64> = metas.iter().map(|m| m.epoch).collect();
        return refuse(format!(
            "the states are at different checkpoints ({epochs:?}): start the cluster once so that it recovers, stop it, then rescale"
        ));
    }
    Ok((sources, metas))
}

/// A raw entry of a table.
type Entry = (Table, Vec<u8>, Vec<u8>);

/// The new stores and what waits to be written to each.
struct Copier<'a> {
    targets: &'a [std::sync::Arc<RocksState>],
    pending: Vec<Vec<Entry>>,
    keys: Vec<u64>,
}

impl Copier<'_> {
    fn route(&mut self, table: Table, k: &[u8], v: &[u8]) -> Result<(), StateError> {
        let n = self.targets.len();
        let bad = || StateError::Corrupt(format!("a {table:?} key that does not decode: {k:02x?}"));
        let owner = match table {
            Table::Killmails => {
                let id = u64::from_be_bytes(k.try_into().map_err(|_| bad())?);
                Some(killmail_owner(id, n))
            }
            Table::Stats => Some(entity_owner(
                StatKey::entity_of_stored(k).ok_or_else(bad)?,
                n,
            )),
            Table::Days => Some(entity_owner(
                StatKey::from_day_major_bytes(k).ok_or_else(bad)?.entity,
                n,
            )),
            // Each new store ranks its own entities: it rebuilds its index once the
            // statistics are copied (a source's index stops at the source's floors).
            Table::Ranks => return Ok(()),
            Table::Offsets => None,
            Table::DeadLetters => Some(0),
        };
        match owner {
            Some(p) => self.push(p, table, k, v)?,
            None => {
                for p in 0..n {
                    self.push(p, table, k, v)?;
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, p: usize, table: Table, k: &[u8], v: &[u8]) -> Result<(), StateError> {
        self.pending[p].push((table, k.to_vec(), v.to_vec()));
        self.keys[p] += 1;
        if self.pending[p].len() >= CHUNK {
            self.targets[p].put_raw(&self.pending[p])?;
            self.pending[p].clear();
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), StateError> {
        for (p, pending) in self.pending.iter_mut().enumerate() {
            self.targets[p].put_raw(pending)?;
            pending.clear();
        }
        Ok(())
    }

    /// Every dead letter to process 0, keyed (epoch, index) again so that those of different
    /// old processes do not collide; returns process 0's totals.
    fn dead_letters(
        &mut self,
        mut letters: Vec<(Vec<u8>, usize, Vec<u8>)>,
        metas: &[CheckpointMeta],
    ) -> Result<DeadLetterTotals, StateError> {
        letters.sort();
        let mut totals = DeadLetterTotals {
            dropped: metas.iter().map(|m| m.dead_letters.dropped).sum(),
            ..Default::default()
        };
        let mut index: BTreeMap<[u8; 8], u32> = BTreeMap::new();
        for (k, _, v) in letters {
            let epoch: [u8; 8] = k.get(..8).and_then(|e| e.try_into().ok()).ok_or_else(|| {
                StateError::Corrupt("a dead-letter key that does not decode".into())
            })?;
            let i = index.entry(epoch).or_insert(0);
            let mut key = epoch.to_vec();
            key.extend_from_slice(&i.to_be_bytes());
            *i += 1;
            totals.count += 1;
            totals.bytes += v.len() as u64;
            self.push(0, Table::DeadLetters, &key, &v)?;
        }
        Ok(totals)
    }
}

/// One checkpoint's metadata from every old process's: the same epoch and clock, every
/// partition's position.
fn merged_meta(metas: &[CheckpointMeta]) -> CheckpointMeta {
    let mut meta = metas[0].clone();
    for m in &metas[1..] {
        meta.committed_at = meta.committed_at.max(m.committed_at);
        meta.clock = if m.clock.max_time > meta.clock.max_time {
            m.clock
        } else {
            meta.clock
        };
        for (topic, parts) in &m.offsets {
            meta.offsets
                .entry(topic.clone())
                .or_default()
                .extend(parts.iter().map(|(p, o)| (*p, *o)));
        }
        for (topic, parts) in &m.fingerprints {
            meta.fingerprints
                .entry(topic.clone())
                .or_default()
                .extend(parts.iter().map(|(p, f)| (*p, *f)));
        }
    }
    meta
}
