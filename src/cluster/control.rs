//! The control dataflow: beside the main dataflow on every worker, it broadcasts
//!
//! - **epoch beacons**: when a source closes an epoch, every source of every process may close
//!   up to it, so an idle process does not hold the cluster's frontier back (within a process
//!   the sources share [`EpochControl`]'s target; the beacons extend it to the cluster);
//! - **shutdown**: a SIGTERM on any process stops reading on all of them, and the cluster
//!   finishes its last checkpoint together;
//! - **agreement rounds**: every process votes once per round ([`Vote`]) and every process
//!   gets all votes when the round's time is complete. Timely's own progress tracking is the
//!   barrier: a round is complete when every process's control input has moved past it.
//!
//! Only the first worker of each process has a control input; the others drop theirs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::input::{Handle, Input};
use timely::dataflow::operators::vec::Broadcast;

use super::Holding;
use crate::source::EpochControl;

/// A process's vote in an agreement round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// At start: what its state holds.
    Holding(Holding),
    /// The checkpoint target it proposes: every epoch below it is complete for its sinks.
    /// The agreed target is the least proposal. `last`: the latest epoch it saw anything of
    /// (the last checkpoint is stored as the greatest).
    Propose { target: u64, last: u64 },
    /// Its part of the agreed checkpoint is prepared (durable), with the latest killmail time
    /// it applies and its wall clock: the checkpoint's clock moves by the greatest of each.
    Prepared { max_time: Option<i64>, wall: i64 },
}

/// What travels on the control dataflow.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Signal {
    Epoch(u64),
    Shutdown,
    Vote(usize, Vote),
}

/// A complete round: every process's vote, by process (`None`: a process that had stopped).
#[derive(Clone, Debug)]
pub struct Round {
    pub index: u64,
    pub votes: Vec<Option<Vote>>,
}

impl Round {
    /// Every vote, or the error naming the first process missing.
    pub fn all(self) -> Result<Vec<Vote>, String> {
        let index = self.index;
        self.votes
            .into_iter()
            .enumerate()
            .map(|(p, v)| {
                v.ok_or_else(|| format!("cluster: process {p} left during round {index}"))
            })
            .collect()
    }
}

/// One process's side of the control dataflow, shared by its workers and its checkpointer.
pub struct Control {
    processes: usize,
    process: usize,
    outbox: Mutex<VecDeque<Vote>>,
    results: (Sender<Round>, Receiver<Round>),
    /// The greatest epoch beacon sent or received.
    known_epoch: AtomicU64,
    /// The sources of this process, once built.
    epochs: OnceLock<Arc<EpochControl>>,
    shutdown_sent: AtomicBool,
    /// Set by the checkpointer after the last checkpoint: the workers may stop.
    finished: AtomicBool,
}

impl Control {
    pub fn new(processes: usize, process: usize) -> Arc<Control> {
        Arc::new(Control {
            processes,
            process,
            outbox: Mutex::new(VecDeque::new()),
            results: crossbeam_channel::unbounded(),
            known_epoch: AtomicU64::new(0),
            epochs: OnceLock::new(),
            shutdown_sent: AtomicBool::new(false),
            finished: AtomicBool::new(false),
        })
    }

    /// This process's place, stored with its checkpoints.
    pub fn place(&self) -> crate::state::ClusterPlace {
        crate::state::ClusterPlace {
            processes: self.processes,
            process: self.process,
        }
    }

    /// Casts this process's vote in the next round.
    pub fn vote(&self, v: Vote) {
        self.outbox.lock().push_back(v);
    }

    /// Complete rounds, in order.
    pub fn rounds(&self) -> &Receiver<Round> {
        &self.results.1
    }

    /// Connects the beacons to this process's sources.
    pub fn attach(&self, epochs: Arc<EpochControl>) {
        let epochs = self.epochs.get_or_init(|| epochs);
        // What was heard before: the cluster's epochs, a shutdown.
        epochs.raise_target(self.known_epoch.load(Ordering::Acquire));
        if self.shutdown_sent.load(Ordering::Acquire) {
            epochs.shutdown.store(true, Ordering::Release);
        }
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Builds the control dataflow on `worker`; the returned port is pumped by the worker loop.
    pub fn build(self: &Arc<Control>, worker: &mut timely::worker::Worker) -> ControlPort {
        let per_process = (worker.peers() / self.processes).max(1);
        let first = worker.index().is_multiple_of(per_process);
        let control = self.clone();
        let input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, signals) = scope.new_input::<Signal>();
            signals
                .broadcast()
                .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                    Pipeline,
                    "Control",
                    move |_cap, _info| {
                        let mut votes: BTreeMap<u64, Vec<Option<Vote>>> = BTreeMap::new();
                        move |(input, frontier), _output| {
                            input.for_each(|cap, data| {
                                let time = *cap.least().expect("a message stamp has a time");
                                for signal in data.drain(..) {
                                    match signal {
                                        Signal::Epoch(e) => control.heard_epoch(e),
                                        Signal::Shutdown => control.heard_shutdown(),
                                        Signal::Vote(p, v) => {
                                            let round = votes
                                                .entry(time)
                                                .or_insert_with(|| vec![None; control.processes]);
                                            if let Some(slot) = round.get_mut(p) {
                                                *slot = Some(v);
                                            }
                                        }
                                    }
                                }
                            });
                            while let Some((&index, _)) = votes.first_key_value() {
                                if frontier.less_equal(&index) {
                                    break;
                                }
                                let votes = votes.remove(&index).expect("first key");
                                if first {
                                    let _ = control.results.0.send(Round { index, votes });
                                }
                            }
                        }
                    },
                );
            input
        });
        ControlPort {
            input: first.then_some(input),
            round: 0,
        }
    }

    fn heard_epoch(&self, e: u64) {
        self.known_epoch.fetch_max(e, Ordering::AcqRel);
        if let Some(epochs) = self.epochs.get() {
            epochs.raise_target(e);
        }
    }

    fn heard_shutdown(&self) {
        self.shutdown_sent.store(true, Ordering::Release);
        if let Some(epochs) = self.epochs.get() {
            epochs.shutdown.store(true, Ordering::Release);
        }
    }
}

/// A worker's end of the control dataflow.
pub struct ControlPort {
    /// The first worker of each process sends; the others have none.
    input: Option<Handle<u64, Signal>>,
    round: u64,
}

impl ControlPort {
    /// Sends what this process has to say: new epochs of its sources, a shutdown, its votes.
    pub fn pump(&mut self, control: &Control) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        if let Some(epochs) = control.epochs.get() {
            let target = epochs.target();
            if target > control.known_epoch.load(Ordering::Acquire) {
                control.known_epoch.fetch_max(target, Ordering::AcqRel);
                input.send(Signal::Epoch(target));
                // The input buffers what it is given until it is full or flushed.
                input.flush();
            }
            if epochs.shutdown.load(Ordering::Acquire)
                && !control.shutdown_sent.swap(true, Ordering::AcqRel)
            {
                input.send(Signal::Shutdown);
                input.flush();
            }
        }
        while let Some(v) = control.outbox.lock().pop_front() {
            input.send(Signal::Vote(control.process, v));
            self.round += 1;
            input.advance_to(self.round);
        }
        // After the last checkpoint, or a failed one: no more rounds. Closing lets the others'
        // pending round complete (without this process's vote, which they report).
        if control.is_finished() {
            input.flush();
            self.input = None;
        }
    }

    /// Closes this worker's control input (at the end of the run).
    pub fn close(&mut self) {
        self.input = None;
    }
}
