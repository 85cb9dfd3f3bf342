//! Which version of a killmail wins: the upsert rule and the order of versions.
//!
//! A killmail's ESI part (time, place, victim, attackers) never changes; only its `zkb`
//! appraisal does, when zKillboard re-appraises it. Versions of one killmail arrive from the
//! live topic and from history topics replayed at the same time, so "the later one read" is
//! not "the newer one". The order of two appraisals is the lexicographic order of their
//! [`VersionKey`]:
//!
//! 1. R2Z2's sequence (`sequence_updated`, else `sequence_id`): a larger one is newer; a
//!    version with a sequence is newer than one without;
//! 2. then the topic: a version from the live topic (index 0 in the configured topic list)
//!    is newer than one from a history topic;
//! 3. then arrival: of two versions with equal keys, the one ingested later (by epoch, then
//!    by topic, partition and offset within an epoch) is newer.
//!
//! The first two do not depend on which topic is read first; the third only decides between
//! versions the producers themselves do not order. A version without `zkb` carries no
//! appraisal: it inserts a killmail not yet known and is otherwise ignored.

use serde::{Deserialize, Serialize};

use crate::model::{Killmail, SourcePos, StoredKillmail};

/// The index of the live topic in the configured topic list (history topics follow).
pub const LIVE_TOPIC: u16 = 0;

/// The rank of an appraisal among the versions of its killmail (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionKey {
    pub sequence: Option<u64>,
    pub live: bool,
}

impl VersionKey {
    /// The key of `km` read at `pos`.
    pub fn of(km: &Killmail, pos: SourcePos) -> VersionKey {
        VersionKey {
            sequence: km.sequence,
            live: pos.topic == LIVE_TOPIC,
        }
    }

    /// The key of the appraisal `stored` holds; `None` when it holds none (any appraisal is
    /// newer).
    pub fn of_stored(stored: &StoredKillmail) -> Option<VersionKey> {
        stored
            .killmail
            .zkb
            .map(|_| VersionKey::of(&stored.killmail, stored.applied_from))
    }
}

/// What an incoming version does to the applied one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upsert {
    /// The killmail was unknown: apply this version.
    Insert(Killmail),
    /// A newer, different appraisal: retract the applied version, apply this one.
    Replace(Killmail),
    /// A newer version of the same appraisal: statistics unchanged, the stored version (its
    /// key) moves forward so an older appraisal read later cannot replace it.
    Advance(Killmail),
    /// An older or identical version, or one without an appraisal: nothing changes.
    Ignore,
}

/// The upsert rule: what `incoming` (read at `pos`) does when `known` is applied.
pub fn upsert(known: Option<&StoredKillmail>, incoming: &Killmail, pos: SourcePos) -> Upsert {
    let Some(known) = known else {
        return Upsert::Insert(incoming.clone());
    };
    let Some(zkb) = incoming.zkb else {
        return Upsert::Ignore;
    };
    let key = VersionKey::of(incoming, pos);
    let known_key = VersionKey::of_stored(known);
    if known_key.is_some_and(|k| key < k) {
        return Upsert::Ignore;
    }
    let next = Killmail {
        zkb: Some(zkb),
        sequence: incoming.sequence,
        ..known.killmail.clone()
    };
    if known.killmail.zkb != Some(zkb) {
        Upsert::Replace(next)
    } else if known_key != Some(key) {
        Upsert::Advance(next)
    } else {
        Upsert::Ignore
    }
}
