//! The killmail model kmflow keeps: just what the statistics and retractions need.
//!
//! Items, positions and other ESI fields are not kept; the original payload stays in Kafka.

use serde::{Deserialize, Serialize};

use crate::static_data::Derived;

/// Attackers with a character id at or above this are players; below it, NPCs (zKillboard's rule).
pub const MIN_PLAYER_CHARACTER_ID: u64 = 4_000_000;

/// One ISK is stored as 100 cents so sums stay exact under retraction.
pub const CENTS_PER_ISK: i128 = 100;

/// Where a message came from: the index of its topic in the configured topic list, its
/// partition and its offset. Orders versions of the same killmail within an epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SourcePos {
    pub topic: u16,
    pub partition: u32,
    pub offset: i64,
}

/// A message as read from a source, before decoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRecord {
    pub pos: SourcePos,
    pub payload: Vec<u8>,
}

/// zKillboard's appraisal of a killmail. Values in ISK cents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Zkb {
    pub total_value_cents: i64,
    pub points: i64,
    pub npc: bool,
    pub solo: bool,
    pub awox: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Victim {
    pub character_id: Option<u64>,
    pub corporation_id: Option<u64>,
    pub alliance_id: Option<u64>,
    pub ship_type_id: Option<u32>,
    pub damage_taken: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attacker {
    pub character_id: Option<u64>,
    pub corporation_id: Option<u64>,
    pub alliance_id: Option<u64>,
    pub ship_type_id: Option<u32>,
    pub damage_done: u64,
    pub final_blow: bool,
}

/// A decoded killmail: the immutable ESI part plus the optional `zkb` appraisal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Killmail {
    pub killmail_id: u64,
    /// Unix seconds, UTC.
    pub time: i64,
    pub solar_system_id: u32,
    pub victim: Victim,
    pub attackers: Vec<Attacker>,
    pub zkb: Option<Zkb>,
    /// Facts derived from static data when the killmail was first applied (see
    /// [`crate::static_data::Derived`]); default (all unknown) until then.
    #[serde(default)]
    pub derived: Derived,
    /// R2Z2's sequence of this version (`sequence_updated`, else `sequence_id`), when the
    /// message carried one: it orders re-appraisals (see [`crate::version`]).
    #[serde(default)]
    pub sequence: Option<u64>,
}

impl Killmail {
    /// zKillboard's NPC rule: `zkb.npc` when appraised, otherwise no attacker is a player.
    /// Whether the killmail is solo: `zkb.solo` when appraised, otherwise the derived rule
    /// (`None`: undecidable without static data).
    pub fn is_solo(&self) -> Option<bool> {
        match &self.zkb {
            Some(z) => Some(z.solo),
            None => self.derived.solo,
        }
    }

    pub fn is_npc(&self) -> bool {
        match &self.zkb {
            Some(z) => z.npc,
            None => !self
                .attackers
                .iter()
                .any(|a| a.character_id.is_some_and(|c| c >= MIN_PLAYER_CHARACTER_ID)),
        }
    }
}

/// The upsert state of one killmail: the version whose contributions are applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKillmail {
    pub killmail: Killmail,
    /// 0 for the first version applied, +1 for every `zkb` replacement.
    pub zkb_version: u32,
    /// Where the applied `zkb` (or the first version, when none) came from.
    pub applied_from: SourcePos,
    /// The ingestion epoch that applied it.
    pub epoch: u64,
}

/// A message that could not be decoded: kept, counted and skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub pos: SourcePos,
    /// A short, bounded label for metrics (`malformed_json`, `missing_victim`, ...).
    pub reason: String,
    /// The full error message.
    pub error: String,
    /// The payload, truncated to [`DEAD_LETTER_MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
    pub payload_len: u64,
}

/// Dead letters keep at most this much of the payload.
pub const DEAD_LETTER_MAX_PAYLOAD: usize = 64 * 1024;

/// The kinds of entity kmflow keeps statistics for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntityKind {
    Character = 0,
    Corporation = 1,
    Alliance = 2,
}

impl EntityKind {
    pub const ALL: [EntityKind; 3] = [
        EntityKind::Character,
        EntityKind::Corporation,
        EntityKind::Alliance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Character => "character",
            EntityKind::Corporation => "corporation",
            EntityKind::Alliance => "alliance",
        }
    }

    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(EntityKind::Character),
            1 => Some(EntityKind::Corporation),
            2 => Some(EntityKind::Alliance),
            _ => None,
        }
    }

    /// The id of this kind on a victim.
    pub fn victim_id(self, v: &Victim) -> Option<u64> {
        match self {
            EntityKind::Character => v.character_id,
            EntityKind::Corporation => v.corporation_id,
            EntityKind::Alliance => v.alliance_id,
        }
    }

    /// The id of this kind on an attacker.
    pub fn attacker_id(self, a: &Attacker) -> Option<u64> {
        match self {
            EntityKind::Character => a.character_id,
            EntityKind::Corporation => a.corporation_id,
            EntityKind::Alliance => a.alliance_id,
        }
    }
}

/// A character, corporation or alliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityKey {
    pub kind: EntityKind,
    pub id: u64,
}

impl EntityKey {
    #[inline]
    pub fn new(kind: EntityKind, id: u64) -> Self {
        EntityKey { kind, id }
    }

    /// Big-endian bytes `[kind, id]`, so RocksDB orders keys by kind then id.
    #[inline]
    pub fn to_bytes(self) -> [u8; 9] {
        let mut b = [0u8; 9];
        b[0] = self.kind as u8;
        b[1..].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 9 {
            return None;
        }
        let kind = EntityKind::from_u8(b[0])?;
        Some(EntityKey {
            kind,
            id: u64::from_be_bytes(b[1..].try_into().ok()?),
        })
    }
}
