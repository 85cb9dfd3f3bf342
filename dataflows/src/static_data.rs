//! EVE static data kmflow needs to derive statistics zKillboard derives: type → group → category.
//!
//! Read from a directory holding two files (both from CCP's Static Data Export, as redistributed
//! by zKillboard and Fuzzwork):
//!
//! | file | format | used for |
//! |---|---|---|
//! | `zkillboard-items.json` (or `items.json`) | JSON array of `{"typeID", "groupID", "name"}` | type → group |
//! | `invGroups.csv` | SDE CSV with header `groupID,categoryID,groupName,...` | group → category, group name |
//!
//! Without them, the statistics that need them (solo when `zkb` is absent, the victim ship group
//! breakdown) are reported as unavailable rather than guessed.

use std::collections::HashMap;
use std::path::Path;

use crate::model::{Killmail, MIN_PLAYER_CHARACTER_ID};

/// The ship category.
pub const CATEGORY_SHIP: u32 = 6;
/// Categories whose members count as structures among attackers (Starbase, Sovereignty
/// Structures, Structure).
pub const STRUCTURE_CATEGORIES: [u32; 3] = [23, 40, 65];
/// Victim ship groups that never make a killmail solo: Capsule, Shuttle, Corvette (rookie ship).
pub const NOT_SOLO_GROUPS: [u32; 3] = [29, 31, 237];

/// Type → group → category tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticData {
    pub type_group: HashMap<u32, u32>,
    pub group_category: HashMap<u32, u32>,
    pub group_name: HashMap<u32, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StaticDataError {
    #[error("static data: cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("static data: {path}: {message}")]
    Format { path: String, message: String },
    #[error("static data: none of {candidates} found in {dir}")]
    Missing { dir: String, candidates: String },
}

#[derive(serde::Deserialize)]
struct ItemRow {
    #[serde(rename = "typeID")]
    type_id: u32,
    #[serde(rename = "groupID")]
    group_id: u32,
}

/// What was derived from static data for one killmail, stored with it so a retraction always
/// subtracts exactly what was added, whatever static data a later run loads.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Derived {
    /// The victim ship's group, when the static data knows the type.
    pub victim_group: Option<u32>,
    /// zKillboard's solo rule applied to the ESI part; `None` when it cannot be decided.
    pub solo: Option<bool>,
}

impl StaticData {
    /// Loads the tables from `dir` (see the module docs for the files read).
    pub fn load(dir: &Path) -> Result<StaticData, StaticDataError> {
        let items = first_existing(dir, &["zkillboard-items.json", "items.json"])?;
        let text = read(&items)?;
        let rows: Vec<ItemRow> =
            serde_json::from_str(&text).map_err(|e| StaticDataError::Format {
                path: items.display().to_string(),
                message: e.to_string(),
            })?;
        let type_group = rows.into_iter().map(|r| (r.type_id, r.group_id)).collect();

        let groups = first_existing(dir, &["invGroups.csv"])?;
        let text = read(&groups)?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        if !header.starts_with("groupID,categoryID,groupName") {
            return Err(StaticDataError::Format {
                path: groups.display().to_string(),
                message: format!(
                    "expected header groupID,categoryID,groupName,..., got {header:?}"
                ),
            });
        }
        let mut group_category = HashMap::new();
        let mut group_name = HashMap::new();
        for (n, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut cols = line.splitn(4, ',');
            let parse = |c: Option<&str>| c.and_then(|s| s.trim().parse::<u32>().ok());
            let (Some(g), Some(c)) = (parse(cols.next()), parse(cols.next())) else {
                return Err(StaticDataError::Format {
                    path: groups.display().to_string(),
                    message: format!("line {}: expected numeric groupID,categoryID", n + 2),
                });
            };
            group_category.insert(g, c);
            if let Some(name) = cols.next() {
                group_name.insert(g, name.trim_matches('"').to_string());
            }
        }
        Ok(StaticData {
            type_group,
            group_category,
            group_name,
        })
    }

    pub fn group_of(&self, type_id: u32) -> Option<u32> {
        self.type_group.get(&type_id).copied()
    }

    pub fn category_of(&self, type_id: u32) -> Option<u32> {
        self.group_category.get(&self.group_of(type_id)?).copied()
    }

    /// The derived facts of `km` (see [`Derived`]).
    pub fn derive(&self, km: &Killmail) -> Derived {
        let victim_group = km.victim.ship_type_id.and_then(|t| self.group_of(t));
        Derived {
            victim_group,
            solo: self.solo(km),
        }
    }

    /// zKillboard's solo rule: exactly one player attacker, no structure among the attackers,
    /// and the victim a ship that is not a capsule, shuttle or rookie ship. `None` when a type
    /// involved is unknown to the static data.
    pub fn solo(&self, km: &Killmail) -> Option<bool> {
        let players = km
            .attackers
            .iter()
            .filter(|a| a.character_id.is_some_and(|c| c >= MIN_PLAYER_CHARACTER_ID))
            .count();
        if players != 1 {
            return Some(false);
        }
        let victim_type = km.victim.ship_type_id?;
        let victim_group = self.group_of(victim_type)?;
        let victim_category = self.group_category.get(&victim_group).copied()?;
        if victim_category != CATEGORY_SHIP || NOT_SOLO_GROUPS.contains(&victim_group) {
            return Some(false);
        }
        for a in &km.attackers {
            // An attacker without a ship type (rare) cannot be a structure.
            if let Some(t) = a.ship_type_id {
                if STRUCTURE_CATEGORIES.contains(&self.category_of(t)?) {
                    return Some(false);
                }
            }
        }
        Some(true)
    }
}

fn first_existing(dir: &Path, names: &[&str]) -> Result<std::path::PathBuf, StaticDataError> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| StaticDataError::Missing {
            dir: dir.display().to_string(),
            candidates: names.join(" or "),
        })
}

fn read(path: &Path) -> Result<String, StaticDataError> {
    std::fs::read_to_string(path).map_err(|source| StaticDataError::Io {
        path: path.display().to_string(),
        source,
    })
}
