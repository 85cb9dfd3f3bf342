//! kmflow's dataflows: the killmail model, decoding, and the timely/differential dataflow that
//! turns raw messages into per-entity statistics with exactly-once upserts.
//!
//! No Kafka, RocksDB or HTTP here: the host supplies a source stream, a [`store::StateStore`]
//! and a commit callback, so everything in this crate tests and benches on its own.

pub mod aggregate;
pub mod checkpoint;
pub mod contrib;
pub mod decode;
pub mod deltas;
pub mod gen;
pub mod harness;
pub mod keys;
pub mod model;
pub mod pipeline;
pub mod reference;
pub mod shard;
pub mod static_data;
pub mod stats;
pub mod store;
pub mod time;
pub mod version;
pub mod wake;

pub use model::{EntityKey, EntityKind, Killmail, RawRecord, SourcePos, StoredKillmail};
pub use stats::{Seen, Stats, Sums};
