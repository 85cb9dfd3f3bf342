//! A kmflow cluster: several processes forming one timely dataflow (timely's cluster mode).
//!
//! - **Ownership.** With `P` processes of `W` workers, timely numbers worker `w` of process `p`
//!   as `p·W + w`. Kafka partitions are dealt over all `P·W` workers; statistics (by key
//!   group) and upsert states (by killmail id) are owned by contiguous ranges of workers
//!   ([`kmflow_dataflows::shard::entity_owner`], [`kmflow_dataflows::shard::killmail_owner`]),
//!   so the process that owns something depends on `P` only. Each process keeps what its
//!   workers own in its own `state.dir`.
//! - **Control** ([`control`]): a small dataflow beside the main one carries epoch beacons (the
//!   processes cut epochs at the same numbers), the shutdown request, and agreement rounds.
//! - **Checkpoints** ([`prepared`]): two-phase. The processes agree on each checkpoint's
//!   target, each makes its part durable in a prepared file, and writes it to RocksDB once
//!   every process has prepared. After a crash the processes compare what they hold and roll
//!   the laggards forward ([`decide`]), so every store is at one common checkpoint.
//! - **Reads** (`api::cluster`): any process answers every request, forwarding a lookup to the
//!   process that owns it.

pub mod control;
pub mod prepared;
pub mod rescale;

use serde::{Deserialize, Serialize};

use kmflow_dataflows::aggregate::StreamClock;
use kmflow_dataflows::shard::{entity_owner, killmail_owner};
use kmflow_dataflows::EntityKey;

use crate::config::Config;

/// Where this process stands in its cluster. One process alone is `processes == 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub processes: usize,
    pub process: usize,
    /// Timely workers per process (`pipeline.workers`).
    pub workers: usize,
    /// Every process's timely address, in process order (empty alone).
    pub addresses: Vec<String>,
    /// Every process's API base URL, in process order (empty alone).
    pub apis: Vec<String>,
}

impl Topology {
    pub fn from_config(config: &Config) -> Topology {
        let c = &config.cluster;
        Topology {
            processes: c.addresses.len().max(1),
            process: c.process,
            workers: config.pipeline.workers,
            addresses: c.addresses.clone(),
            apis: c
                .apis
                .iter()
                .map(|a| a.trim_end_matches('/').to_string())
                .collect(),
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.processes > 1
    }

    /// The timely configuration: threads of one process, or this process of the cluster.
    pub fn timely_config(&self) -> timely::Config {
        if !self.is_cluster() {
            return timely::Config::process(self.workers);
        }
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.workers,
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    }

    /// Workers in the whole cluster.
    pub fn total_workers(&self) -> usize {
        self.processes * self.workers
    }

    /// The cluster-wide index of this process's worker `local`.
    pub fn global_worker(&self, local: usize) -> usize {
        self.process * self.workers + local
    }

    /// The process that owns an entity's statistics.
    pub fn entity_process(&self, e: EntityKey) -> usize {
        entity_owner(e, self.processes)
    }

    /// What every process of a cluster must have alike.
    pub fn shape(config: &Config) -> String {
        format!(
            "workers={} source={:?} topics={:?} level={:?}",
            config.pipeline.workers,
            config.source.kind,
            config.kafka.topics(),
            config.stats.level
        )
    }

    /// Refuses a state written by another place: a cluster's store opened alone, by another
    /// process index, or in a cluster of another size (`kmflow rescale` moves a state).
    pub fn check_place(
        &self,
        stored: Option<crate::state::ClusterPlace>,
        dir: &std::path::Path,
    ) -> Result<(), String> {
        let here = self.is_cluster().then_some(crate::state::ClusterPlace {
            processes: self.processes,
            process: self.process,
        });
        let show = |p: Option<crate::state::ClusterPlace>| match p {
            Some(p) => format!("process {} of a {}-process cluster", p.process, p.processes),
            None => "a single process".to_string(),
        };
        if stored == here || (stored.is_none() && here.is_none()) {
            return Ok(());
        }
        Err(format!(
            "the state in {} was written by {}, and this is {}: start it in its place, or move it with `kmflow rescale`",
            dir.display(),
            show(stored),
            show(here)
        ))
    }

    /// The process that owns a killmail's upsert state.
    pub fn killmail_process(&self, id: u64) -> usize {
        killmail_owner(id, self.processes)
    }
}

/// What a process holds at start, as it tells the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The epoch of its last written checkpoint (`None`: an empty state).
    pub committed: Option<u64>,
    /// The stream clock of that checkpoint.
    pub clock: StreamClock,
    /// The epoch of a checkpoint it prepared and has not written, if any.
    pub prepared: Option<u64>,
    /// What every process must have alike (workers per process, source, topics, statistics):
    /// timely and the ownership functions assume it.
    pub shape: String,
}

/// What a process does with its prepared checkpoint at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing prepared: the state is at the common checkpoint.
    Keep,
    /// The prepared checkpoint was written nowhere: drop it.
    Discard,
    /// Another process wrote it: write it too, with that process's clock.
    RollForward { clock: StreamClock },
}

/// Decides, from what every process holds, what process `me` does so that every store ends at
/// one common checkpoint; returns that checkpoint's epoch too.
///
/// A process writes a checkpoint only after every process prepared it, so when some process
/// has written epoch `E`, every other is at the checkpoint before with `E` prepared: they
/// roll forward. When none has written it, a prepared `E` is dropped.
pub fn decide(me: usize, all: &[Holding]) -> Result<(Recovery, Option<u64>), String> {
    if let Some((p, h)) = all
        .iter()
        .enumerate()
        .find(|(_, h)| h.shape != all[me].shape)
    {
        return Err(format!(
            "process {p} is configured differently: {} here, {} there; every process needs the same pipeline.workers, source, topics and stats.level",
            all[me].shape, h.shape
        ));
    }
    let common = all.iter().map(|h| h.committed).max().flatten();
    let mine = &all[me];
    if mine.committed == common {
        let recovery = if mine.prepared.is_some() {
            Recovery::Discard
        } else {
            Recovery::Keep
        };
        return Ok((recovery, common));
    }
    let ahead = all
        .iter()
        .find(|h| h.committed == common)
        .expect("the greatest is someone's");
    if mine.prepared.is_some() && mine.prepared == common {
        return Ok((Recovery::RollForward { clock: ahead.clock }, common));
    }
    let show = |e: Option<u64>| e.map_or_else(|| "none".to_string(), |e| e.to_string());
    Err(format!(
        "this process's state is at checkpoint {} (prepared: {}) while another process's is at {}: \
         the state directories do not belong to one cluster (or one was replaced); restore them together",
        show(mine.committed),
        show(mine.prepared),
        show(common),
    ))
}

/// In a cluster, a lost peer makes timely's network threads panic and the dataflow can never
/// complete: this hook turns that into a clear error and an exit, for a supervisor to restart
/// the process (every process then recovers to the common checkpoint).
pub fn exit_when_a_peer_is_lost() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        if name.starts_with("timely:send") || name.starts_with("timely:recv") {
            let peer = name.rsplit('-').next().unwrap_or("?");
            tracing::error!(
                peer,
                cause = %info,
                "cluster: lost the connection to process {peer}; the dataflow cannot go on without it. \
                 Exiting: restart the cluster's processes (a supervisor does); every state resumes from the common checkpoint"
            );
            eprintln!("kmflow: error: cluster peer {peer} lost ({info}); exiting");
            std::process::exit(3);
        }
        previous(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(committed: Option<u64>, prepared: Option<u64>) -> Holding {
        Holding {
            committed,
            clock: StreamClock {
                max_time: committed.map(|e| e as i64 * 10),
                now: committed.map(|e| e as i64 * 10),
            },
            prepared,
            shape: "w=1".into(),
        }
    }

    #[test]
    fn differently_configured_processes_are_refused() {
        let mut other = at(Some(1), None);
        other.shape = "w=2".into();
        let err = decide(0, &[at(Some(1), None), other]).unwrap_err();
        assert!(err.contains("process 1 is configured differently"), "{err}");
    }

    #[test]
    fn every_process_ends_at_one_checkpoint() {
        // Nobody wrote 7: both drop it.
        let all = [at(Some(5), Some(7)), at(Some(5), Some(7))];
        assert_eq!(decide(0, &all), Ok((Recovery::Discard, Some(5))));
        // Process 1 wrote 7: process 0 writes it too, with 1's clock.
        let all = [at(Some(5), Some(7)), at(Some(7), None)];
        assert_eq!(
            decide(0, &all),
            Ok((
                Recovery::RollForward {
                    clock: all[1].clock
                },
                Some(7)
            ))
        );
        assert_eq!(decide(1, &all), Ok((Recovery::Keep, Some(7))));
        // Crashed after writing and before deleting its prepared file.
        let all = [at(Some(7), Some(7)), at(Some(7), None)];
        assert_eq!(decide(0, &all), Ok((Recovery::Discard, Some(7))));
        // A first checkpoint written by one process only.
        let all = [at(None, Some(0)), at(Some(0), None)];
        assert!(matches!(
            decide(0, &all),
            Ok((Recovery::RollForward { .. }, Some(0)))
        ));
        // Empty states.
        assert_eq!(
            decide(1, &[at(None, None), at(None, None)]),
            Ok((Recovery::Keep, None))
        );
    }

    #[test]
    fn states_of_different_clusters_are_refused() {
        let all = [at(Some(3), None), at(Some(7), None)];
        let err = decide(0, &all).unwrap_err();
        assert!(
            err.contains("at checkpoint 3") && err.contains("at 7"),
            "{err}"
        );
        let all = [at(Some(5), Some(6)), at(Some(7), None)];
        assert!(decide(0, &all).is_err());
    }
}
