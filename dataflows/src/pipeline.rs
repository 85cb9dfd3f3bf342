//! The kmflow dataflow: raw messages in, consistent per-epoch commits out.
//!
//! ```text
//! raw ─ Decode ─┬─ ok ─ Upsert (exchange by killmail_id) ─┬─ facts ±1 ─ Combine ─ Shard (exchange by key group) ─ flush ─┐
//!               │                                          └─ upsert state, clock ─ Sink ──────────────────────────────┼─ checkpointer
//!               └─ dead letters ─────────────────────────────────────────────── Sink ──────────────────────────────────┘
//! ```
//!
//! The checkpointer ([`crate::commit`]) cuts aligned checkpoints: it asks every shard to flush
//! the epochs below a target and writes their writes, with the sinks' items and the sources'
//! offsets of the same epochs, as one atomic batch.
//!
//! Timestamps are ingestion epochs (`u64`). Every operator is data-parallel; the result does
//! not depend on the number of workers or on how messages are cut into epochs, only on the
//! order of the versions of each killmail (see [`upsert`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Map, Partition};
use timely::dataflow::operators::{Capability, Concat, Probe};
use timely::dataflow::{ProbeHandle, StreamVec};

use crate::checkpoint::{DeltaMap, SinkItem, SinkReport};
use crate::contrib::{for_each_contribution, StatsLevel};
use crate::decode::decode;
use crate::deltas::Summing;
use crate::model::{
    DeadLetter, Killmail, RawRecord, SourcePos, StoredKillmail, DEAD_LETTER_MAX_PAYLOAD,
};
use crate::shard::{key_group, owner, Checkpoints, ShardFlush, ShardHooks, ShardStats};
use crate::static_data::StaticData;
use crate::store::{StateStore, StoreError};
use crate::version::{upsert as upsert_version, Upsert};

/// Counts of what the upsert operator decided, for metrics. Shared by all workers.
#[derive(Debug, Default)]
pub struct UpsertCounters {
    /// First version of a killmail.
    pub inserted: AtomicU64,
    /// A new `zkb` replaced the applied one.
    pub replaced: AtomicU64,
    /// A re-delivery that changed nothing.
    pub unchanged: AtomicU64,
    /// State store reads that failed (retried).
    pub store_errors: AtomicU64,
}

/// How the pipeline reports to its host.
pub struct PipelineHooks<R> {
    pub store: Arc<dyn StateStore>,
    pub counters: Arc<UpsertCounters>,
    /// Called on each worker when its sink frontier advances.
    pub report: R,
    /// Called on each worker when its statistics shard flushed a checkpoint.
    pub flush: Box<dyn FnMut(ShardFlush)>,
    /// The checkpoint target the checkpointer raises, shared with it.
    pub checkpoints: Arc<Checkpoints>,
    /// The first epoch of this run.
    pub start: u64,
    /// All-time rows each worker's shard caches.
    pub cache_rows: usize,
    /// Called when the state store fails (the operator retries on its next activation).
    pub on_store_error: std::rc::Rc<dyn Fn(&StoreError)>,
    /// Which statistics to maintain, and the static data to derive them with.
    pub spec: StatsSpec,
}

/// Which statistics the pipeline maintains.
#[derive(Clone, Default)]
pub struct StatsSpec {
    pub level: StatsLevel,
    /// Type → group → category tables; without them, solo (when `zkb` is absent) and the
    /// victim ship group are unknown.
    pub static_data: Option<Arc<StaticData>>,
}

#[derive(Clone, Debug)]
enum Decoded {
    Ok(SourcePos, Killmail),
    Err(DeadLetter),
}

#[derive(Clone, Debug)]
enum UpsertOut {
    /// A killmail version entering (+1) or leaving (-1) the applied set, with its epoch.
    Fact(Killmail, u64, isize),
    /// A killmail's new upsert state; true when a version was applied (inserted or
    /// replaced), false when only its version advanced.
    State(u64, StoredKillmail, bool),
    /// The latest `killmail_time` first applied in the epoch.
    Clock(i64),
}

/// How long the upsert operator waits before retrying a failed state read.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// The epoch of a message: epochs are totally ordered, so a stamp holds one time.
fn epoch_of(cap: &timely::dataflow::operators::InputCapability<u64>) -> u64 {
    *cap.least().expect("a message stamp has a time")
}

/// Builds the pipeline on `raw` and returns a probe on its commit sink.
///
/// `report` gets, on each worker, a [`SinkReport`] each time the sink's frontier advances; its
/// `meta` is left empty for the host to fill (the host knows its source's offsets).
pub fn build<'s, R>(raw: StreamVec<'s, u64, RawRecord>, hooks: PipelineHooks<R>) -> ProbeHandle<u64>
where
    R: FnMut(SinkReport<()>) + 'static,
{
    let PipelineHooks {
        store,
        counters,
        report,
        flush,
        checkpoints,
        start,
        cache_rows,
        on_store_error,
        spec,
    } = hooks;
    let StatsSpec { level, static_data } = spec;
    let worker = raw.scope().index();

    let mut parts = raw
        .map(move |r| match decode(&r.payload) {
            Ok(mut km) => {
                if let Some(sd) = &static_data {
                    km.derived = sd.derive(&km);
                }
                Decoded::Ok(r.pos, km)
            }
            Err(e) => {
                let mut payload = r.payload;
                let payload_len = payload.len() as u64;
                payload.truncate(DEAD_LETTER_MAX_PAYLOAD);
                Decoded::Err(DeadLetter {
                    pos: r.pos,
                    reason: e.reason().to_string(),
                    error: e.to_string(),
                    payload,
                    payload_len,
                })
            }
        })
        .partition(2, |d| match d {
            Decoded::Ok(..) => (0, d),
            Decoded::Err(..) => (1, d),
        });
    let dead = parts.pop().expect("two parts").flat_map(|d| match d {
        Decoded::Err(dl) => Some(SinkItem::DeadLetter(dl)),
        Decoded::Ok(..) => None,
    });
    let ok = parts.pop().expect("two parts").flat_map(|d| match d {
        Decoded::Ok(pos, km) => Some((pos, km)),
        Decoded::Err(..) => None,
    });

    let mut upserted =
        upsert(ok, store.clone(), counters, on_store_error.clone()).partition(2, |o| match o {
            UpsertOut::Fact(..) => (0, o),
            UpsertOut::State(..) | UpsertOut::Clock(..) => (1, o),
        });
    let states = upserted.pop().expect("two parts").flat_map(|o| match o {
        UpsertOut::State(id, s, applied) => Some(SinkItem::Upsert(id, s, applied)),
        UpsertOut::Clock(t) => Some(SinkItem::Clock(t)),
        UpsertOut::Fact(..) => None,
    });
    // The applied killmail versions (+1 in, -1 out): each version's contributions are summed
    // per epoch into one delta per statistic.
    let facts = upserted.pop().expect("two parts").flat_map(|o| match o {
        UpsertOut::Fact(km, epoch, diff) => Some((km, epoch, diff)),
        UpsertOut::State(..) | UpsertOut::Clock(..) => None,
    });
    let flushed = combine(facts, level, checkpoints.clone()).shard_stats(ShardHooks {
        store,
        checkpoints,
        start,
        cache_rows,
        flush,
        on_store_error: Box::new(move |e| on_store_error(e)),
    });

    // The sink's frontier must not wait for the shards: the checkpointer asks for a checkpoint
    // only of epochs every sink has passed. The probe waits for both.
    let items = states.concat(dead);
    epoch_sink(items.clone(), worker, report);
    let (probe, _) = flushed.concat(items).probe();
    probe
}

/// Pending per-epoch deltas of one worker, with the capability to emit them: one map per
/// worker that owns statistics.
type EpochDeltas = (Capability<u64>, Vec<DeltaMap>);

/// Explodes every killmail version into its contributions (negated for a retraction) and sums
/// them per epoch and statistic in hash maps, one per shard (the worker that owns the
/// statistics), emitting each map whole when the frontier passes the epoch: differential's
/// `explode` + `consolidate`, fused, so the fan-out (tens of statistics per participant) is
/// never materialized as records. This is the local half of a local-global aggregation: each
/// worker combines its own killmails, and the shard takes a map in (or adopts it, when it is
/// the epoch's first) instead of receiving and summing its entries one by one.
fn combine<'s>(
    facts: StreamVec<'s, u64, (Killmail, u64, isize)>,
    level: StatsLevel,
    checkpoints: Arc<Checkpoints>,
) -> StreamVec<'s, u64, (usize, DeltaMap)> {
    let peers = facts.scope().peers();
    facts.unary_frontier(Pipeline, "Combine", move |_cap, _info| {
        let mut pending: BTreeMap<u64, EpochDeltas> = BTreeMap::new();
        // Each epoch's maps start with room for the last one's statistics (or are recycled
        // maps of written checkpoints): a map the size of an epoch is tens of megabytes, and a
        // fresh one growing on the way is first touched page by page (the kernel zeroing each),
        // which was a fifth of the largest killmail's CPU.
        let mut capacity = 0;
        let mut summing = Summing::default();
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let t = epoch_of(&cap);
                let entry = pending.entry(t).or_insert_with(|| {
                    let maps = (0..peers).map(|_| checkpoints.map(capacity)).collect();
                    let cap = cap.retain_least(0).expect("input capability for output 0");
                    (cap, maps)
                });
                let maps = &mut entry.1;
                for batch in data {
                    for (km, _epoch, diff) in batch.drain(..) {
                        for_each_contribution(&km, level, |key, s| {
                            let to = owner(key_group(key.entity), peers);
                            let delta = if diff < 0 { s.retraction() } else { s };
                            summing.add(maps, to, key, delta);
                        });
                    }
                }
                summing.finish(maps);
            });
            while let Some((&epoch, _)) = pending.first_key_value() {
                if frontier.less_equal(&epoch) {
                    break;
                }
                let (cap, maps) = pending.remove(&epoch).expect("first key");
                capacity = maps.iter().map(DeltaMap::len).max().unwrap_or(0);
                let mut session = output.session(&cap);
                for (worker, map) in maps.into_iter().enumerate() {
                    if map.is_empty() {
                        checkpoints.keep([map]);
                    } else {
                        session.give((worker, map));
                    }
                }
            }
        }
    })
}

/// Forgets the overlay's entries of epochs up to `committed`: the store has them now.
fn forget_committed(
    overlay: &mut HashMap<u64, StoredKillmail>,
    overlay_by_epoch: &mut BTreeMap<u64, Vec<u64>>,
    committed: u64,
) {
    let rest = overlay_by_epoch.split_off(&(committed + 1));
    for (epoch, ids) in std::mem::replace(overlay_by_epoch, rest) {
        for id in ids {
            if overlay.get(&id).is_some_and(|s| s.epoch == epoch) {
                overlay.remove(&id);
            }
        }
    }
}

/// Buffers sink items per epoch and reports them when the frontier passes their epoch.
fn epoch_sink<'s, R>(stream: StreamVec<'s, u64, SinkItem>, worker: usize, mut report: R)
where
    R: FnMut(SinkReport<()>) + 'static,
{
    let mut pending: BTreeMap<u64, Vec<SinkItem>> = BTreeMap::new();
    let mut reported = 0u64;
    stream.sink(Pipeline, "Sink", move |(input, frontier)| {
        input.for_each(|cap, data| {
            pending.entry(epoch_of(&cap)).or_default().append(data);
        });
        let frontier = frontier.frontier().first().copied().unwrap_or(u64::MAX);
        if frontier > reported {
            let rest = pending.split_off(&frontier);
            let done = std::mem::replace(&mut pending, rest);
            let items = done
                .into_iter()
                .flat_map(|(t, v)| v.into_iter().map(move |i| (t, i)));
            report(SinkReport {
                worker,
                frontier,
                items: items.collect(),
                meta: Vec::new(),
            });
            reported = frontier;
        }
    });
}

/// The stored upsert states of the killmails in `records` (sorted by id) that the overlay of
/// uncommitted epochs does not hold: one batched read.
fn stored_states(
    store: &dyn StateStore,
    records: &[(SourcePos, Killmail)],
    overlay: &HashMap<u64, StoredKillmail>,
) -> Result<HashMap<u64, StoredKillmail>, StoreError> {
    let mut ids: Vec<u64> = records
        .iter()
        .map(|(_, km)| km.killmail_id)
        .filter(|id| !overlay.contains_key(id))
        .collect();
    ids.dedup();
    let fetched = store.multi_get(&ids)?;
    Ok(ids
        .into_iter()
        .zip(fetched)
        .filter_map(|(id, s)| s.map(|s| (id, s)))
        .collect())
}

/// Records of one epoch waiting for the frontier to pass it, with their capability.
type EpochStash = (Capability<u64>, Vec<(SourcePos, Killmail)>);

/// The upsert operator: keeps, per killmail, the version whose contributions are applied, and
/// emits the retraction of the old version and the insertion of the new one when it changes.
///
/// Versions of a killmail are applied in epoch order, and within an epoch in [`SourcePos`]
/// order. Producers key messages by killmail id, so all versions of a killmail share a
/// partition and this is their arrival order. State of epochs not yet committed is kept in an
/// overlay until the store reports their commit.
fn upsert<'s>(
    input: StreamVec<'s, u64, (SourcePos, Killmail)>,
    store: Arc<dyn StateStore>,
    counters: Arc<UpsertCounters>,
    on_store_error: std::rc::Rc<dyn Fn(&StoreError)>,
) -> StreamVec<'s, u64, UpsertOut> {
    let scope = input.scope();
    let peers = scope.peers();
    let exchange = Exchange::new(move |(_, km): &(SourcePos, Killmail)| {
        crate::shard::killmail_owner(km.killmail_id, peers) as u64
    });
    input.unary_frontier(exchange, "Upsert", move |_cap, info| {
        let activator = scope.activator_for(info.address);
        let mut stash: BTreeMap<u64, EpochStash> = BTreeMap::new();
        let mut overlay: HashMap<u64, StoredKillmail> = HashMap::new();
        let mut overlay_by_epoch: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let t = epoch_of(&cap);
                let entry = stash.entry(t).or_insert_with(|| {
                    (
                        cap.retain_least(0).expect("input capability for output 0"),
                        Vec::new(),
                    )
                });
                for batch in data {
                    entry.1.append(batch);
                }
            });
            if let Some(committed) = store.committed_epoch() {
                forget_committed(&mut overlay, &mut overlay_by_epoch, committed);
            }
            while let Some((&epoch, _)) = stash.first_key_value() {
                if frontier.less_equal(&epoch) {
                    break;
                }
                let (cap, mut records) = stash.remove(&epoch).expect("first key");
                records.sort_by_key(|(pos, km)| (km.killmail_id, *pos));
                let mut known = match stored_states(&*store, &records, &overlay) {
                    Ok(known) => known,
                    Err(e) => {
                        counters.store_errors.fetch_add(1, Ordering::Relaxed);
                        on_store_error(&e);
                        stash.insert(epoch, (cap, records));
                        activator.activate_after(STORE_RETRY);
                        break;
                    }
                };
                let mut changed: Vec<u64> = Vec::new();
                let mut applied: HashSet<u64> = HashSet::new();
                let mut session = output.session(&cap);
                let (mut inserted, mut replaced, mut unchanged) = (0, 0, 0);
                let mut max_time: Option<i64> = None;
                for (pos, km) in records {
                    let id = km.killmail_id;
                    let current = known.get(&id).or_else(|| overlay.get(&id));
                    let (next, zkb_version) = match upsert_version(current, &km, pos) {
                        Upsert::Ignore => {
                            unchanged += 1;
                            continue;
                        }
                        Upsert::Insert(next) => {
                            inserted += 1;
                            max_time = max_time.max(Some(next.time));
                            session.give(UpsertOut::Fact(next.clone(), epoch, 1));
                            applied.insert(id);
                            (next, 0)
                        }
                        Upsert::Replace(next) => {
                            let old = current.expect("a replacement has a known version");
                            session.give(UpsertOut::Fact(old.killmail.clone(), epoch, -1));
                            session.give(UpsertOut::Fact(next.clone(), epoch, 1));
                            replaced += 1;
                            applied.insert(id);
                            (next, old.zkb_version + 1)
                        }
                        Upsert::Advance(next) => {
                            unchanged += 1;
                            let old = current.expect("an advance has a known version");
                            (next, old.zkb_version)
                        }
                    };
                    known.insert(
                        id,
                        StoredKillmail {
                            killmail: next,
                            zkb_version,
                            applied_from: pos,
                            epoch,
                        },
                    );
                    if changed.last() != Some(&id) {
                        changed.push(id);
                    }
                }
                for id in &changed {
                    let state = known.remove(id).expect("changed ids are known");
                    session.give(UpsertOut::State(*id, state.clone(), applied.contains(id)));
                    overlay.insert(*id, state);
                }
                overlay_by_epoch.entry(epoch).or_default().extend(changed);
                if let Some(t) = max_time {
                    session.give(UpsertOut::Clock(t));
                }
                counters.inserted.fetch_add(inserted, Ordering::Relaxed);
                counters.replaced.fetch_add(replaced, Ordering::Relaxed);
                counters.unchanged.fetch_add(unchanged, Ordering::Relaxed);
            }
        }
    })
}
