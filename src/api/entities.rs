//! One entity's statistics (`GET /v1/{characters|corporations|alliances}/{id}`) with its
//! windows, months, breakdowns and derived values, and batches of them
//! (`POST /v1/{kind}:batch`).

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use kmflow_dataflows::contrib::StatsLevel;
use kmflow_dataflows::keys::{tag, WINDOW_NAMES};
use kmflow_dataflows::{EntityKey, EntityKind, Stats};

use super::body::{isk, stat_fields, AsOf, Clock, Fields, Range, Selected, StatsBody};
use super::error::ApiError;
use super::params::{parse_list, EntityQuery, Id, Params, PathParam};
use super::AppState;
use crate::state::{CheckpointMeta, EntityView, ViewParts};

/// The optional sections of an entity answer.
pub const SECTIONS: [&str; 6] = [
    "windows",
    "months",
    "groups",
    "top_ships",
    "top_systems",
    "activity",
];

/// How many entries the top lists hold.
pub const TOP_N: usize = 10;

/// An entity's statistics: all time, and the sections asked for with `include`. A section
/// not maintained (`stats.level`) or needing static data that is not configured is null, with
/// the reason in `unavailable`.
#[derive(Serialize, ToSchema)]
pub struct EntityBody {
    pub id: u64,
    pub stats: Selected,
    /// `7d`, `30d`, `90d` → statistics over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, WindowBody>>)]
    pub windows: Option<Option<BTreeMap<&'static str, WindowBody>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Clock>)]
    pub clock: Option<Option<Clock>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<MonthBody>>)]
    pub months: Option<Option<Vec<MonthBody>>>,
    /// Victim ship groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<GroupRow>>)]
    pub groups: Option<Option<Vec<GroupRow>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<ShipRow>>)]
    pub top_ships: Option<Option<Vec<ShipRow>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<SystemRow>>)]
    pub top_systems: Option<Option<Vec<SystemRow>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Activity>)]
    pub activity: Option<Option<Activity>>,
    /// Section or field → why it is null.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<String, String>,
    /// Sections computed from part of their buckets: the entity has more than 10,000 of one
    /// breakdown (ships flown, systems, ...; only unusual input makes that many), and only
    /// the first 10,000 by id were read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<&'static str>,
    pub as_of: Option<AsOf>,
}

#[derive(Serialize, ToSchema)]
pub struct WindowBody {
    pub stats: Selected,
    pub range: Option<Range>,
}

/// A calendar month's statistics.
#[derive(Serialize, ToSchema)]
pub struct MonthBody {
    /// `YYYY-MM`.
    pub month: String,
    #[serde(flatten)]
    pub stats: Selected,
}

#[derive(Serialize, ToSchema)]
pub struct GroupRow {
    /// Null for ship types missing from the static data.
    pub group_id: Option<u32>,
    pub group_name: Option<String>,
    pub ships_destroyed: i64,
    pub ships_lost: i64,
    pub isk_destroyed: f64,
    pub isk_lost: f64,
}

#[derive(Serialize, ToSchema)]
pub struct ShipRow {
    pub ship_type_id: u32,
    pub kills: i64,
}

#[derive(Serialize, ToSchema)]
pub struct SystemRow {
    pub solar_system_id: u32,
    pub kills: i64,
    pub losses: i64,
    pub involved: i64,
}

/// Kills by hour of the week (UTC): `kills[day][hour]`, Monday first.
#[derive(Serialize, ToSchema)]
pub struct Activity {
    pub days: [&'static str; 7],
    pub hours_utc: Vec<u8>,
    pub kills: Vec<Vec<i64>>,
}

/// Why solo fields are null, if they are.
fn solo_reason(s: &Stats, static_loaded: bool) -> Option<String> {
    (s.sums.solo_unknown > 0).then(|| {
        let why = if static_loaded {
            "a ship type is missing from the static data"
        } else {
            "no static data is configured (stats.static-dir)"
        };
        format!(
            "solo status unknown for {} killmail(s): no zkb, and {why}",
            s.sums.solo_unknown
        )
    })
}

/// Top `n` of `entries` by `key` descending, then id ascending.
fn top<K: Ord>(
    mut entries: Vec<(u32, Stats)>,
    key: impl Fn(&Stats) -> K,
    n: usize,
) -> Vec<(u32, Stats)> {
    entries.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then(a.0.cmp(&b.0)));
    entries.truncate(n);
    entries
}

/// Parses `fields`: a subset of [`stat_fields`].
pub(crate) fn parse_fields(raw: Option<&str>) -> Result<Fields, ApiError> {
    parse_list("fields", raw, stat_fields())
}

macro_rules! entity_route {
    ($name:ident, $kind:expr, $path:literal, $what:literal) => {
        #[doc = concat!("The statistics of one ", $what, ".")]
        #[utoipa::path(get, path = $path, tag = "statistics", params(("id" = u64, Path, minimum = 1), EntityQuery), responses((status = 200, body = EntityBody), (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
        pub async fn $name(
            State(s): State<AppState>,
            PathParam(id): PathParam<Id>,
            Params(q): Params<EntityQuery>,
        ) -> Result<Json<EntityBody>, ApiError> {
            entity(&s, $kind, id.0, q).map(Json)
        }
    };
}

entity_route!(
    get_character,
    EntityKind::Character,
    "/v1/characters/{id}",
    "character"
);
entity_route!(
    get_corporation,
    EntityKind::Corporation,
    "/v1/corporations/{id}",
    "corporation"
);
entity_route!(
    get_alliance,
    EntityKind::Alliance,
    "/v1/alliances/{id}",
    "alliance"
);

fn entity(s: &AppState, kind: EntityKind, id: u64, q: EntityQuery) -> Result<EntityBody, ApiError> {
    let fields = parse_fields(q.fields.as_deref())?;
    let include = parse_list("include", q.include.as_deref(), &SECTIONS)?
        .unwrap_or_else(|| BTreeSet::from(["windows".to_string()]));
    let has = |k: &str| include.contains(k);
    let parts = ViewParts {
        windows: has("windows"),
        months: has("months"),
        groups: has("groups"),
        ships: has("top_ships"),
        systems: has("top_systems"),
        activity: has("activity"),
    };
    let (view, meta) = s.read_point(|st| st.entity_view(EntityKey::new(kind, id), &parts))?;
    let Some(view) = view else {
        return Err(ApiError::not_found(format!(
            "no {} with id {id}",
            kind.as_str()
        )));
    };
    Ok(entity_body(s, id, &view, &parts, &fields, &meta))
}

fn entity_body(
    s: &AppState,
    id: u64,
    v: &EntityView,
    parts: &ViewParts,
    fields: &Fields,
    meta: &Option<CheckpointMeta>,
) -> EntityBody {
    let full = s.level == StatsLevel::Full;
    let mut unavailable = BTreeMap::new();
    if let Some(r) = solo_reason(&v.all, s.static_data.is_some()) {
        unavailable.insert("solo".into(), r);
    }
    let mut sec = Sections {
        full,
        unavailable: &mut unavailable,
    };
    let windows = sec.section(parts.windows, "windows", || {
        Some(windows_body(v, fields, meta))
    });
    let clock = windows
        .as_ref()
        .and_then(|w| w.as_ref().map(|_| Clock::of(meta)));
    let months = sec.section(parts.months, "months", || Some(months_body(v, fields)));
    let groups = sec.section(parts.groups, "groups", || groups_body(s, v));
    let top_ships = sec.section(parts.ships, "top_ships", || Some(top_ships(v)));
    let top_systems = sec.section(parts.systems, "top_systems", || Some(top_systems(v)));
    let activity = sec.section(parts.activity, "activity", || Some(activity_body(v)));
    EntityBody {
        id,
        stats: Selected::new(&v.all, true, fields),
        windows,
        clock,
        months,
        groups,
        top_ships,
        top_systems,
        activity,
        unavailable,
        truncated: v.truncated.iter().filter_map(|&t| section_of(t)).collect(),
        as_of: AsOf::of(meta),
    }
}

/// The section of the answer a breakdown tag feeds.
fn section_of(t: u8) -> Option<&'static str> {
    match t {
        tag::MONTH => Some("months"),
        tag::GROUP => Some("groups"),
        tag::SHIP => Some("top_ships"),
        tag::SYSTEM => Some("top_systems"),
        tag::HOUR => Some("activity"),
        _ => None,
    }
}

/// Answers the sections asked for, and says in `unavailable` why one is null.
struct Sections<'a> {
    full: bool,
    unavailable: &'a mut BTreeMap<String, String>,
}

impl Sections<'_> {
    /// `None` when not asked for; `Some(None)` (null) when not maintained or when `value`
    /// needs static data that is not configured.
    fn section<T>(
        &mut self,
        asked: bool,
        name: &str,
        value: impl FnOnce() -> Option<T>,
    ) -> Option<Option<T>> {
        if !asked {
            return None;
        }
        if !self.full {
            self.unavailable.insert(
                name.into(),
                "not maintained: stats.level is all-time".into(),
            );
            return Some(None);
        }
        let v = value();
        if v.is_none() {
            self.unavailable.insert(
                name.into(),
                "victim ship groups need static data: set stats.static-dir".into(),
            );
        }
        Some(v)
    }
}

fn windows_body(
    v: &EntityView,
    fields: &Fields,
    meta: &Option<CheckpointMeta>,
) -> BTreeMap<&'static str, WindowBody> {
    WINDOW_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let st = v.windows[i].unwrap_or_default();
            let body = WindowBody {
                stats: Selected::new(&st, false, fields),
                range: Range::of(meta, i as u8),
            };
            (*name, body)
        })
        .collect()
}

fn months_body(v: &EntityView, fields: &Fields) -> Vec<MonthBody> {
    v.months
        .iter()
        .map(|(m, st)| MonthBody {
            month: format!("{}-{:02}", m / 100, m % 100),
            stats: Selected::new(st, true, fields),
        })
        .collect()
}

fn groups_body(s: &AppState, v: &EntityView) -> Option<Vec<GroupRow>> {
    let sd = s.static_data.as_ref()?;
    Some(
        v.groups
            .iter()
            .map(|(g, st)| GroupRow {
                group_id: (*g != 0).then_some(*g),
                group_name: if *g == 0 {
                    Some("unknown type".into())
                } else {
                    sd.group_name.get(g).cloned()
                },
                ships_destroyed: st.sums.kills,
                ships_lost: st.sums.losses + st.sums.npc_losses,
                isk_destroyed: isk(st.sums.isk_destroyed_cents),
                isk_lost: isk(st.sums.isk_lost_cents),
            })
            .collect(),
    )
}

/// The ships the entity destroyed most, by kills.
fn top_ships(v: &EntityView) -> Vec<ShipRow> {
    top(v.ships.clone(), |s| s.sums.kills, TOP_N)
        .into_iter()
        .map(|(t, st)| ShipRow {
            ship_type_id: t,
            kills: st.sums.kills,
        })
        .collect()
}

/// The systems the entity was most active in, by kills then involvement.
fn top_systems(v: &EntityView) -> Vec<SystemRow> {
    top(
        v.systems.clone(),
        |s| (s.sums.kills, s.sums.involved),
        TOP_N,
    )
    .into_iter()
    .map(|(sys, st)| SystemRow {
        solar_system_id: sys,
        kills: st.sums.kills,
        losses: st.sums.losses,
        involved: st.sums.involved,
    })
    .collect()
}

fn activity_body(v: &EntityView) -> Activity {
    let mut grid = vec![vec![0i64; 24]; 7];
    for (cell, st) in &v.hours {
        let (d, h) = (*cell as usize / 24, *cell as usize % 24);
        if d < 7 {
            grid[d][h] = st.sums.kills;
        }
    }
    Activity {
        days: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
        hours_utc: (0..24).collect(),
        kills: grid,
    }
}

/// Most ids one batch request may ask for.
pub const MAX_BATCH_IDS: usize = 1000;

/// The body of a batch request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Positive ids, at most 1,000; each is answered once.
    #[schema(max_items = 1000, value_type = Vec<u64>)]
    pub ids: Vec<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchBody {
    pub results: Vec<BatchRow>,
    /// Ids with no statistics.
    pub missing: Vec<u64>,
    pub as_of: Option<AsOf>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchRow {
    pub id: u64,
    pub stats: StatsBody,
}

async fn batch(s: &AppState, kind: EntityKind, body: &Bytes) -> Result<Json<BatchBody>, ApiError> {
    if body.len() > super::MAX_BATCH_BODY {
        return Err(ApiError::PayloadTooLarge(format!(
            "body exceeds {} bytes",
            super::MAX_BATCH_BODY
        )));
    }
    let req: BatchRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body must be JSON {{\"ids\": [...]}}: {e}")))?;
    if req.ids.len() > MAX_BATCH_IDS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_BATCH_IDS} ids per request, got {}",
            req.ids.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.ids.len());
    let mut ids = Vec::with_capacity(req.ids.len());
    for x in &req.ids {
        match x.as_u64() {
            // Each id is answered once, in the order first asked.
            Some(id) if id > 0 && id <= i64::MAX as u64 => {
                if seen.insert(id) {
                    ids.push(id)
                }
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "ids must be positive integers up to {}, got {x}",
                    i64::MAX
                )))
            }
        }
    }
    let keys: Vec<EntityKey> = ids.iter().map(|id| EntityKey::new(kind, *id)).collect();
    let (found, meta) = s.read(move |st| st.stats_many(&keys)).await?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for (id, st) in ids.iter().zip(found) {
        match st {
            Some(st) => results.push(BatchRow {
                id: *id,
                stats: StatsBody::new(&st, true),
            }),
            None => missing.push(*id),
        }
    }
    Ok(Json(BatchBody {
        results,
        missing,
        as_of: AsOf::of(&meta),
    }))
}

macro_rules! batch_route {
    ($name:ident, $kind:expr, $path:literal, $what:literal) => {
        #[doc = concat!("The all-time statistics of up to 1,000 ", $what, " at once.")]
        #[utoipa::path(post, path = $path, tag = "statistics", request_body = BatchRequest, responses((status = 200, body = BatchBody), (status = 400, body = super::error::ErrorBody), (status = 413, body = super::error::ErrorBody)))]
        pub async fn $name(
            State(s): State<AppState>,
            body: Bytes,
        ) -> Result<Json<BatchBody>, ApiError> {
            batch(&s, $kind, &body).await
        }
    };
}

batch_route!(
    batch_characters,
    EntityKind::Character,
    "/v1/characters:batch",
    "characters"
);
batch_route!(
    batch_corporations,
    EntityKind::Corporation,
    "/v1/corporations:batch",
    "corporations"
);
batch_route!(
    batch_alliances,
    EntityKind::Alliance,
    "/v1/alliances:batch",
    "alliances"
);
