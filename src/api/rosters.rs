//! Corporation rosters (`GET /v1/corporations/{id}/members`): members sorted by any numeric
//! statistic over a window, paged by an opaque cursor, each page costing a binary search plus
//! `limit` rows once the sorted roster is cached for the checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use kmflow_dataflows::contrib::StatsLevel;
use kmflow_dataflows::Stats;

use super::body::{danger_ratio, AsOf, Fields, Range, Selected};
use super::entities::parse_fields;
use super::error::{ApiError, ErrorBody};
use super::params::{
    choice, from_hex, to_hex, Id, Limit, MembersQuery, Order, Params, PathParam, Window,
};
use super::AppState;
use crate::state::CheckpointMeta;
use kmflow_dataflows::store::StateStore as _;

choice!(
    /// Sort fields of a roster: every numeric statistic, and `character_id`.
    RosterSort, "sort" {
        Kills = "kills",
        Losses = "losses",
        Involved = "involved",
        NpcLosses = "npc_losses",
        FinalBlows = "final_blows",
        DamageDone = "damage_done",
        DamageTaken = "damage_taken",
        IskDestroyed = "isk_destroyed",
        IskLost = "isk_lost",
        PointsDestroyed = "points_destroyed",
        PointsLost = "points_lost",
        SoloKills = "solo_kills",
        SoloLosses = "solo_losses",
        FirstSeen = "first_seen",
        LastSeen = "last_seen",
        DangerRatio = "danger_ratio",
        CharacterId = "character_id",
    }
);

impl RosterSort {
    fn value(self, id: u64, s: &Stats) -> i128 {
        let u = &s.sums;
        match self {
            RosterSort::Kills => u.kills as i128,
            RosterSort::Losses => u.losses as i128,
            RosterSort::Involved => u.involved as i128,
            RosterSort::NpcLosses => u.npc_losses as i128,
            RosterSort::FinalBlows => u.final_blows as i128,
            RosterSort::DamageDone => u.damage_done as i128,
            RosterSort::DamageTaken => u.damage_taken as i128,
            RosterSort::IskDestroyed => u.isk_destroyed_cents,
            RosterSort::IskLost => u.isk_lost_cents,
            RosterSort::PointsDestroyed => u.points_destroyed as i128,
            RosterSort::PointsLost => u.points_lost as i128,
            RosterSort::SoloKills => u.solo_kills as i128,
            RosterSort::SoloLosses => u.solo_losses as i128,
            RosterSort::FirstSeen => s.seen.first.unwrap_or(i64::MIN) as i128,
            RosterSort::LastSeen => s.seen.last.unwrap_or(i64::MIN) as i128,
            RosterSort::DangerRatio => danger_ratio(s).unwrap_or(-1) as i128,
            RosterSort::CharacterId => id as i128,
        }
    }
}

/// A page of a corporation's roster.
#[derive(Serialize, ToSchema)]
pub struct RosterBody {
    pub corporation_id: u64,
    pub window: Window,
    pub sort: RosterSort,
    pub order: Order,
    /// Members with statistics in the window.
    pub active_members: usize,
    pub members: Vec<MemberRow>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    pub as_of: Option<AsOf>,
    /// The days a rolling window covers (absent for `all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Range>)]
    pub range: Option<Option<Range>>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberRow {
    pub character_id: u64,
    pub stats: Selected,
}

/// A roster cursor: the last row of the previous page and the ordering it belongs to. Opaque
/// to clients (hex of `window|sort|order|value|id`).
fn encode_cursor(key: &RosterKey, value: i128, id: u64) -> String {
    let (w, s, o) = key.names();
    to_hex(format!("{w}|{s}|{o}|{value}|{id}").as_bytes())
}

fn decode_cursor(raw: &str, key: &RosterKey) -> Result<(i128, u64), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid cursor {raw:?}: pass next_cursor from the previous page unchanged"
        ))
    };
    // Byte pairs, not string slices: a non-ASCII cursor is a 400, never a panic.
    let bytes = from_hex(raw).filter(|b| b.len() <= 128).ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let parts: Vec<&str> = text.split('|').collect();
    let [w, s, o, v, id] = parts[..] else {
        return Err(bad());
    };
    let expect = key.names();
    if (w, s, o) != expect {
        return Err(ApiError::bad_request(format!(
            "invalid cursor: it was issued for window={w}, sort={s}, order={o}; this request asks for window={}, sort={}, order={}",
            expect.0, expect.1, expect.2
        )));
    }
    Ok((
        v.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// A corporation's members and their statistics over a window, sorted and paged.
#[utoipa::path(get, path = "/v1/corporations/{id}/members", tag = "statistics",
    params(("id" = u64, Path, minimum = 1), MembersQuery),
    responses(
        (status = 200, body = RosterBody),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub async fn get_members(
    State(s): State<AppState>,
    PathParam(Id(corp)): PathParam<Id>,
    Params(q): Params<MembersQuery>,
) -> Result<Json<RosterBody>, ApiError> {
    let key = RosterKey {
        corp,
        window: q.window.unwrap_or(Window::All),
        sort: q.sort.unwrap_or(RosterSort::Kills),
        order: q.order.unwrap_or(Order::Desc),
    };
    if key.window != Window::All && matches!(key.sort, RosterSort::FirstSeen | RosterSort::LastSeen)
    {
        return Err(ApiError::bad_request(format!(
            "invalid sort {:?} for window {}: first_seen/last_seen are kept for window=all only",
            key.sort.as_str(),
            key.window.as_str()
        )));
    }
    let limit = Limit::or_default(q.limit);
    let fields = parse_fields(q.fields.as_deref())?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| decode_cursor(c, &key))
        .transpose()?;
    if s.level != StatsLevel::Full {
        return Err(ApiError::not_found(
            "corporation rosters are not maintained: stats.level is all-time",
        ));
    }
    let cache = s.rosters.clone();
    // The page is cut and rendered on the read pool too, never on the threads that answer
    // probes.
    s.read(move |st| {
        let epoch = st.committed_epoch();
        let roster = match cache.get(&key, epoch) {
            Some(hit) => hit,
            None => {
                let (rows, meta) = st.members(corp, key.window.index())?;
                let sorted = Arc::new(SortedRoster::new(rows, meta, &key));
                cache.put(key, sorted.clone());
                sorted
            }
        };
        Ok(roster_page(&roster, &key, after, limit, &fields))
    })
    .await?
    .map(Json)
}

/// One page of a sorted roster, after the cursor's row.
fn roster_page(
    roster: &SortedRoster,
    key: &RosterKey,
    after: Option<(i128, u64)>,
    limit: usize,
    fields: &Fields,
) -> Result<RosterBody, ApiError> {
    let (rows, meta, window) = (&roster.rows, &roster.meta, key.window.index());
    if rows.is_empty() && window.is_none() {
        return Err(ApiError::not_found(format!(
            "no corporation with id {} (or no members seen)",
            key.corp
        )));
    }
    let desc = key.order == Order::Desc;
    let start = match after {
        None => 0,
        Some((v, id)) => rows.partition_point(|r| {
            let before_value = if desc { r.0 > v } else { r.0 < v };
            before_value || (r.0 == v && r.1 <= id)
        }),
    };
    let page = &rows[start..rows.len().min(start + limit)];
    let next_cursor = (start + page.len() < rows.len())
        .then(|| page.last().map(|r| encode_cursor(key, r.0, r.1)))
        .flatten();
    Ok(RosterBody {
        corporation_id: key.corp,
        window: key.window,
        sort: key.sort,
        order: key.order,
        active_members: rows.len(),
        members: page
            .iter()
            .map(|(_, c, st)| MemberRow {
                character_id: *c,
                stats: Selected::new(st, window.is_none(), fields),
            })
            .collect(),
        next_cursor,
        as_of: AsOf::of(meta),
        range: window.map(|w| Range::of(meta, w)),
    })
}

/// Which sorted roster a request reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RosterKey {
    corp: u64,
    window: Window,
    sort: RosterSort,
    order: Order,
}

impl RosterKey {
    fn names(&self) -> (&'static str, &'static str, &'static str) {
        (
            self.window.as_str(),
            self.sort.as_str(),
            self.order.as_str(),
        )
    }
}

/// A corporation's members sorted for one [`RosterKey`], as of one checkpoint. Desc: value
/// descending, id ascending. Asc: value ascending, id ascending.
pub struct SortedRoster {
    meta: Option<CheckpointMeta>,
    rows: Vec<(i128, u64, Stats)>,
}

impl SortedRoster {
    fn new(rows: Vec<(u64, Stats)>, meta: Option<CheckpointMeta>, key: &RosterKey) -> Self {
        let mut rows: Vec<(i128, u64, Stats)> = rows
            .into_iter()
            .map(|(c, st)| (key.sort.value(c, &st), c, st))
            .collect();
        let desc = key.order == Order::Desc;
        rows.sort_by(|a, b| {
            let by_value = if desc { b.0.cmp(&a.0) } else { a.0.cmp(&b.0) };
            by_value.then(a.1.cmp(&b.1))
        });
        SortedRoster { meta, rows }
    }
}

/// Roster rows the cache holds at most, over all rosters (~220 bytes each: ~55 MiB).
const ROSTER_CACHE_ROWS: usize = 256 * 1024;

/// Sorted rosters, each reused until the next checkpoint: reading a roster sorts it once per
/// checkpoint, and every page after that costs a binary search plus `limit` rows, whatever
/// the roster's size. Bounded by rows ([`ROSTER_CACHE_ROWS`]), least recently used evicted
/// first; a roster larger than the whole bound is sorted per request and not kept.
#[derive(Default)]
pub struct RosterCache {
    inner: parking_lot::Mutex<RosterLru>,
}

#[derive(Default)]
struct RosterLru {
    map: HashMap<RosterKey, (u64, Arc<SortedRoster>)>,
    rows: usize,
    tick: u64,
}

impl RosterCache {
    fn epoch_of(r: &SortedRoster) -> Option<u64> {
        r.meta.as_ref().map(|m| m.epoch)
    }

    fn get(&self, key: &RosterKey, epoch: Option<u64>) -> Option<Arc<SortedRoster>> {
        let mut lru = self.inner.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let (used, roster) = lru.map.get_mut(key)?;
        if Self::epoch_of(roster) != epoch {
            return None;
        }
        *used = tick;
        Some(roster.clone())
    }

    fn put(&self, key: RosterKey, roster: Arc<SortedRoster>) {
        let n = roster.rows.len();
        if n > ROSTER_CACHE_ROWS {
            return;
        }
        let mut lru = self.inner.lock();
        if let Some((_, old)) = lru.map.remove(&key) {
            lru.rows -= old.rows.len();
        }
        while lru.rows + n > ROSTER_CACHE_ROWS {
            let Some(oldest) = lru.map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k) else {
                break;
            };
            if let Some((_, r)) = lru.map.remove(&oldest) {
                lru.rows -= r.rows.len();
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.rows += n;
        lru.map.insert(key, (tick, roster));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A roster sorts by statistics of the API, named as the API names them.
    #[test]
    fn every_sort_field_but_the_id_is_a_statistic() {
        for name in RosterSort::NAMES.iter().filter(|n| **n != "character_id") {
            assert!(super::super::body::stat_fields().contains(name), "{name}");
        }
    }
}
