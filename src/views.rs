//! The statistics endpoints: one entity with its windows, months, breakdowns and derived
//! values; corporation rosters; leaderboards. Every answer comes from one RocksDB snapshot and
//! carries `as_of`; every parameter is validated and a bad one answers 400 naming it and the
//! values allowed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use kmflow_dataflows::keys::{Metric, WINDOW_DAYS, WINDOW_NAMES};
use kmflow_dataflows::model::CENTS_PER_ISK;
use kmflow_dataflows::store::StateStore;
use kmflow_dataflows::time::{format_day, format_rfc3339};
use kmflow_dataflows::{EntityKey, EntityKind, Stats};

use crate::api::{as_of_json, from_hex, parse_decimal, parse_id, to_hex, ApiError, AppState};
use crate::state::{CheckpointMeta, EntityView, ViewParts};

/// Every statistic field the API serves, in the order it serves them.
pub const STAT_FIELDS: [&str; 19] = [
    "involved",
    "kills",
    "losses",
    "npc_losses",
    "final_blows",
    "damage_done",
    "damage_taken",
    "isk_destroyed",
    "isk_lost",
    "points_destroyed",
    "points_lost",
    "solo_kills",
    "solo_losses",
    "solo_unknown",
    "danger_ratio",
    "gang_ratio",
    "first_seen",
    "last_seen",
    "isk_efficiency",
];

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

fn isk(cents: i128) -> f64 {
    cents as f64 / CENTS_PER_ISK as f64
}

/// zKillboard's danger ratio: the share (0-100) of ships and points destroyed in ships and
/// points destroyed or lost; 100 with kills and no losses; `None` without either.
pub fn danger_ratio(s: &Stats) -> Option<i64> {
    if s.sums.losses > 0 {
        let destroyed = s.sums.kills + s.sums.points_destroyed;
        let lost = s.sums.losses + s.sums.points_lost;
        (destroyed + lost > 0).then(|| destroyed * 100 / (destroyed + lost))
    } else if s.sums.kills > 0 {
        Some(100)
    } else {
        None
    }
}

/// zKillboard's gang ratio: 100 minus the solo share of kills, or, without solo kills, 100
/// minus five times the average points per kill (clamped to 0-100). `None` without kills or
/// when the solo status of some kill is unknown.
pub fn gang_ratio(s: &Stats) -> Option<i64> {
    if s.sums.kills <= 0 || s.sums.solo_unknown > 0 {
        return None;
    }
    if s.sums.solo_kills > 0 {
        Some(100 - s.sums.solo_kills * 100 / s.sums.kills)
    } else {
        Some((100 - (s.sums.points_destroyed * 5).div_euclid(s.sums.kills)).clamp(0, 100))
    }
}

/// One statistics object. `times`: whether first/last seen are kept for this dimension.
/// Solo fields are null when some killmail's solo status is unknown (see `unavailable`).
pub fn stats_json(s: &Stats, times: bool) -> Map<String, Value> {
    let solo_known = s.sums.solo_unknown == 0;
    let known = |v: i64| if solo_known { json!(v) } else { Value::Null };
    let efficiency = {
        let total = s.sums.isk_destroyed_cents + s.sums.isk_lost_cents;
        (total > 0)
            .then(|| (s.sums.isk_destroyed_cents as f64 * 1000.0 / total as f64).round() / 10.0)
    };
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("involved", json!(s.sums.involved));
    put("kills", json!(s.sums.kills));
    put("losses", json!(s.sums.losses));
    put("npc_losses", json!(s.sums.npc_losses));
    put("final_blows", json!(s.sums.final_blows));
    put("damage_done", json!(s.sums.damage_done));
    put("damage_taken", json!(s.sums.damage_taken));
    put("isk_destroyed", json!(isk(s.sums.isk_destroyed_cents)));
    put("isk_lost", json!(isk(s.sums.isk_lost_cents)));
    put("points_destroyed", json!(s.sums.points_destroyed));
    put("points_lost", json!(s.sums.points_lost));
    put("solo_kills", known(s.sums.solo_kills));
    put("solo_losses", known(s.sums.solo_losses));
    put("solo_unknown", json!(s.sums.solo_unknown));
    put("danger_ratio", json!(danger_ratio(s)));
    put("gang_ratio", json!(gang_ratio(s)));
    if times {
        put("first_seen", json!(s.seen.first.map(format_rfc3339)));
        put("last_seen", json!(s.seen.last.map(format_rfc3339)));
    }
    put("isk_efficiency", json!(efficiency));
    m
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

/// The parsed query of an endpoint: rejects parameters it does not know.
struct Params(HashMap<String, String>);

impl Params {
    fn new(q: HashMap<String, String>, known: &[&str]) -> Result<Params, ApiError> {
        for k in q.keys() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {k:?}; allowed: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(Params(q))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// A comma-separated list whose items must all be in `allowed`.
    fn list(&self, k: &str, allowed: &[&str]) -> Result<Option<BTreeSet<String>>, ApiError> {
        let Some(raw) = self.get(k) else {
            return Ok(None);
        };
        let mut out = BTreeSet::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item != "all" && !allowed.contains(&item) {
                return Err(bad_param(k, item, allowed));
            }
            out.insert(item.to_string());
        }
        if out.contains("all") {
            out = allowed.iter().map(|s| s.to_string()).collect();
        }
        Ok(Some(out))
    }

    fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(raw) => match parse_decimal(raw).map(|n| n as usize) {
                Some(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "invalid limit {raw:?}: must be an integer from 1 to {max}"
                ))),
            },
        }
    }

    /// `window`: `7d`, `30d`, `90d` or `all`; `None` means all time.
    fn window(&self, default: &str) -> Result<Option<u8>, ApiError> {
        let raw = self.get("window").unwrap_or(default);
        if raw == "all" {
            return Ok(None);
        }
        match WINDOW_NAMES.iter().position(|w| *w == raw) {
            Some(i) => Ok(Some(i as u8)),
            None => Err(bad_param("window", raw, &["7d", "30d", "90d", "all"])),
        }
    }
}

fn bad_param(name: &str, got: &str, allowed: &[&str]) -> ApiError {
    ApiError::bad_request(format!(
        "invalid {name} {got:?}; allowed: {}",
        allowed.join(", ")
    ))
}

/// Keeps only the requested fields of a statistics object.
fn select(mut m: Map<String, Value>, fields: &Option<BTreeSet<String>>) -> Value {
    if let Some(f) = fields {
        m.retain(|k, _| f.contains(k));
    }
    Value::Object(m)
}

fn window_bounds(meta: &Option<CheckpointMeta>, w: usize) -> Value {
    match meta.as_ref().and_then(|m| m.clock.day()) {
        Some(day) => json!({"from": format_day(day - WINDOW_DAYS[w] + 1), "to": format_day(day)}),
        None => Value::Null,
    }
}

fn clock_json(meta: &Option<CheckpointMeta>) -> Value {
    match meta.as_ref().and_then(|m| m.clock.now) {
        Some(now) => {
            json!({"now": format_rfc3339(now), "day": format_day(kmflow_dataflows::time::day_of(now))})
        }
        None => Value::Null,
    }
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

/// `GET /v1/{characters|corporations|alliances}/{id}`: `fields` selects statistic fields,
/// `include` the sections (default `windows`; `all` for every section).
pub async fn entity(
    s: &AppState,
    kind: EntityKind,
    raw: &str,
    q: HashMap<String, String>,
) -> Result<Value, ApiError> {
    let id = parse_id(raw, kind.as_str())?;
    let p = Params::new(q, &["fields", "include"])?;
    let fields = p.list("fields", &STAT_FIELDS)?;
    let include = p
        .list("include", &SECTIONS)?
        .unwrap_or_else(|| ["windows".to_string()].into());
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
    Ok(entity_json(s, id, &view, &parts, &fields, &meta))
}

fn entity_json(
    s: &AppState,
    id: u64,
    v: &EntityView,
    parts: &ViewParts,
    fields: &Option<BTreeSet<String>>,
    meta: &Option<CheckpointMeta>,
) -> Value {
    let static_loaded = s.static_data.is_some();
    let mut out = json!({"id": id, "stats": select(stats_json(&v.all, true), fields)});
    let mut unavailable = Map::new();
    if let Some(r) = solo_reason(&v.all, static_loaded) {
        unavailable.insert("solo".into(), json!(r));
    }
    let full = s.level == kmflow_dataflows::contrib::StatsLevel::Full;
    let level_reason = json!("not maintained: stats.level is all-time");
    if parts.windows {
        if full {
            let mut w = Map::new();
            for (i, name) in WINDOW_NAMES.iter().enumerate() {
                let st = v.windows[i].unwrap_or_default();
                let mut o = json!({"stats": select(stats_json(&st, false), fields)});
                o["range"] = window_bounds(meta, i);
                w.insert(name.to_string(), o);
            }
            out["windows"] = Value::Object(w);
            out["clock"] = clock_json(meta);
        } else {
            out["windows"] = Value::Null;
            unavailable.insert("windows".into(), level_reason.clone());
        }
    }
    if parts.months {
        out["months"] = json!(v
            .months
            .iter()
            .map(|(m, st)| {
                let mut o = select(stats_json(st, true), fields);
                o["month"] = json!(format!("{}-{:02}", m / 100, m % 100));
                o
            })
            .collect::<Vec<_>>());
    }
    if parts.groups {
        if let Some(sd) = &s.static_data {
            out["groups"] = json!(v
                .groups
                .iter()
                .map(|(g, st)| json!({
                    "group_id": (*g != 0).then_some(*g),
                    "group_name": if *g == 0 { Some("unknown type") } else { sd.group_name.get(g).map(String::as_str) },
                    "ships_destroyed": st.sums.kills,
                    "ships_lost": st.sums.losses + st.sums.npc_losses,
                    "isk_destroyed": isk(st.sums.isk_destroyed_cents),
                    "isk_lost": isk(st.sums.isk_lost_cents),
                }))
                .collect::<Vec<_>>());
        } else {
            out["groups"] = Value::Null;
            unavailable.insert(
                "groups".into(),
                json!("victim ship groups need static data: set stats.static-dir"),
            );
        }
    }
    if parts.ships {
        out["top_ships"] = json!(top(v.ships.clone(), |s| s.sums.kills, TOP_N)
            .into_iter()
            .map(|(t, st)| json!({"ship_type_id": t, "kills": st.sums.kills}))
            .collect::<Vec<_>>());
    }
    if parts.systems {
        out["top_systems"] = json!(top(v.systems.clone(), |s| (s.sums.kills, s.sums.involved), TOP_N)
            .into_iter()
            .map(|(sys, st)| json!({"solar_system_id": sys, "kills": st.sums.kills, "losses": st.sums.losses, "involved": st.sums.involved}))
            .collect::<Vec<_>>());
    }
    if parts.activity {
        let mut grid = vec![vec![0i64; 24]; 7];
        for (cell, st) in &v.hours {
            let (d, h) = (*cell as usize / 24, *cell as usize % 24);
            if d < 7 {
                grid[d][h] = st.sums.kills;
            }
        }
        out["activity"] = json!({
            "days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
            "hours_utc": (0..24).collect::<Vec<_>>(),
            "kills": grid,
        });
    }
    if !full {
        for k in ["months", "groups", "top_ships", "top_systems", "activity"] {
            if out.get(k).is_some() {
                out[k] = Value::Null;
                unavailable.insert(k.into(), level_reason.clone());
            }
        }
    }
    if !unavailable.is_empty() {
        out["unavailable"] = Value::Object(unavailable);
    }
    out["as_of"] = as_of_json(meta);
    out
}

/// Sort fields of the roster: every numeric statistic, and `character_id`.
const SORT_FIELDS: [&str; 17] = [
    "kills",
    "losses",
    "involved",
    "npc_losses",
    "final_blows",
    "damage_done",
    "damage_taken",
    "isk_destroyed",
    "isk_lost",
    "points_destroyed",
    "points_lost",
    "solo_kills",
    "solo_losses",
    "first_seen",
    "last_seen",
    "danger_ratio",
    "character_id",
];

fn sort_value(field: &str, id: u64, s: &Stats) -> i128 {
    match field {
        "kills" => s.sums.kills as i128,
        "losses" => s.sums.losses as i128,
        "involved" => s.sums.involved as i128,
        "npc_losses" => s.sums.npc_losses as i128,
        "final_blows" => s.sums.final_blows as i128,
        "damage_done" => s.sums.damage_done as i128,
        "damage_taken" => s.sums.damage_taken as i128,
        "isk_destroyed" => s.sums.isk_destroyed_cents,
        "isk_lost" => s.sums.isk_lost_cents,
        "points_destroyed" => s.sums.points_destroyed as i128,
        "points_lost" => s.sums.points_lost as i128,
        "solo_kills" => s.sums.solo_kills as i128,
        "solo_losses" => s.sums.solo_losses as i128,
        "first_seen" => s.seen.first.unwrap_or(i64::MIN) as i128,
        "last_seen" => s.seen.last.unwrap_or(i64::MIN) as i128,
        "danger_ratio" => danger_ratio(s).unwrap_or(-1) as i128,
        _ => id as i128,
    }
}

/// A roster cursor: the last row of the previous page and the ordering it belongs to. Opaque
/// to clients (hex of `window|sort|order|value|id`).
fn encode_cursor(window: &str, sort: &str, order: &str, value: i128, id: u64) -> String {
    to_hex(format!("{window}|{sort}|{order}|{value}|{id}").as_bytes())
}

fn decode_cursor(raw: &str, expect: (&str, &str, &str)) -> Result<(i128, u64), ApiError> {
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

/// `GET /v1/corporations/{id}/members?window=&sort=&order=&limit=&cursor=`.
pub async fn members(
    s: &AppState,
    raw: &str,
    q: HashMap<String, String>,
) -> Result<Value, ApiError> {
    let corp = parse_id(raw, "corporation")?;
    let p = Params::new(q, &["window", "sort", "order", "limit", "cursor", "fields"])?;
    let window = p.window("all")?;
    let window_name = window.map_or("all", |w| WINDOW_NAMES[w as usize]);
    let sort = p.get("sort").unwrap_or("kills");
    if !SORT_FIELDS.contains(&sort) {
        return Err(bad_param("sort", sort, &SORT_FIELDS));
    }
    if window.is_some() && (sort == "first_seen" || sort == "last_seen") {
        return Err(ApiError::bad_request(format!(
            "invalid sort {sort:?} for window {window_name}: first_seen/last_seen are kept for window=all only"
        )));
    }
    let order = p.get("order").unwrap_or("desc");
    if order != "desc" && order != "asc" {
        return Err(bad_param("order", order, &["desc", "asc"]));
    }
    let limit = p.limit(100, 1000)?;
    let fields = p.list("fields", &STAT_FIELDS)?;
    let after = match p.get("cursor") {
        Some(c) => Some(decode_cursor(c, (window_name, sort, order))?),
        None => None,
    };
    if s.level != kmflow_dataflows::contrib::StatsLevel::Full {
        return Err(ApiError::not_found(
            "corporation rosters are not maintained: stats.level is all-time",
        ));
    }
    let key = RosterKey {
        corp,
        window,
        sort: SORT_FIELDS.iter().position(|f| *f == sort).unwrap_or(0),
        desc: order == "desc",
    };
    let cache = s.rosters.clone();
    let sort: &'static str = SORT_FIELDS[key.sort];
    let order: &'static str = if key.desc { "desc" } else { "asc" };
    // The page is cut and rendered on the read pool too, never on the threads that answer
    // probes.
    s.read(move |st| {
        let epoch = st.committed_epoch();
        let roster = match cache.get(&key, epoch) {
            Some(hit) => hit,
            None => {
                let (rows, meta) = st.members(corp, window)?;
                let sorted = Arc::new(SortedRoster::new(rows, meta, &key));
                cache.put(key, sorted.clone());
                sorted
            }
        };
        Ok(roster_page(
            &roster,
            &key,
            after,
            limit,
            &fields,
            (window_name, sort, order),
        ))
    })
    .await?
}

/// One page of a sorted roster, after the cursor's row.
fn roster_page(
    roster: &SortedRoster,
    key: &RosterKey,
    after: Option<(i128, u64)>,
    limit: usize,
    fields: &Option<BTreeSet<String>>,
    (window_name, sort, order): (&str, &str, &str),
) -> Result<Value, ApiError> {
    let (rows, meta, window, corp) = (&roster.rows, &roster.meta, key.window, key.corp);
    if rows.is_empty() && window.is_none() {
        return Err(ApiError::not_found(format!(
            "no corporation with id {corp} (or no members seen)"
        )));
    }
    let active = rows.len();
    let desc = key.desc;
    let start = match after {
        None => 0,
        Some((v, id)) => rows.partition_point(|r| {
            let before_value = if desc { r.0 > v } else { r.0 < v };
            before_value || (r.0 == v && r.1 <= id)
        }),
    };
    let page: Vec<&(i128, u64, Stats)> = rows[start..].iter().take(limit).collect();
    let next = (start + page.len() < rows.len())
        .then(|| {
            page.last()
                .map(|r| encode_cursor(window_name, sort, order, r.0, r.1))
        })
        .flatten();
    let members: Vec<Value> = page
        .iter()
        .map(|(_, c, st)| json!({"character_id": c, "stats": select(stats_json(st, window.is_none()), fields)}))
        .collect();
    let mut out = json!({
        "corporation_id": corp,
        "window": window_name,
        "sort": sort,
        "order": order,
        "active_members": active,
        "members": members,
        "next_cursor": next,
        "as_of": as_of_json(meta),
    });
    if let Some(w) = window {
        out["range"] = window_bounds(meta, w as usize);
    }
    Ok(out)
}

/// Which sorted roster a request reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RosterKey {
    corp: u64,
    window: Option<u8>,
    /// Index into [`SORT_FIELDS`].
    sort: usize,
    desc: bool,
}

/// A corporation's members sorted for one [`RosterKey`], as of one checkpoint. Desc: value
/// descending, id ascending. Asc: value ascending, id ascending.
pub struct SortedRoster {
    meta: Option<CheckpointMeta>,
    rows: Vec<(i128, u64, Stats)>,
}

impl SortedRoster {
    fn new(rows: Vec<(u64, Stats)>, meta: Option<CheckpointMeta>, key: &RosterKey) -> Self {
        let field = SORT_FIELDS[key.sort];
        let mut rows: Vec<(i128, u64, Stats)> = rows
            .into_iter()
            .map(|(c, st)| (sort_value(field, c, &st), c, st))
            .collect();
        rows.sort_by(|a, b| {
            let by_value = if key.desc {
                b.0.cmp(&a.0)
            } else {
                a.0.cmp(&b.0)
            };
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

/// `GET /v1/leaderboards/{characters|corporations|alliances}?by=&window=&limit=`.
pub async fn leaderboard(
    s: &AppState,
    kind_raw: &str,
    q: HashMap<String, String>,
) -> Result<Value, ApiError> {
    let kind = match kind_raw {
        "characters" => EntityKind::Character,
        "corporations" => EntityKind::Corporation,
        "alliances" => EntityKind::Alliance,
        other => {
            return Err(bad_param(
                "leaderboard",
                other,
                &["characters", "corporations", "alliances"],
            ))
        }
    };
    let p = Params::new(q, &["by", "window", "limit", "fields"])?;
    let by_raw = p.get("by").unwrap_or("kills");
    let metrics: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
    let by = Metric::parse(by_raw).ok_or_else(|| bad_param("by", by_raw, &metrics))?;
    let window = p.window("all")?;
    let limit = p.limit(100, 1000)?;
    let fields = p.list("fields", &STAT_FIELDS)?;
    if window.is_some() && s.level != kmflow_dataflows::contrib::StatsLevel::Full {
        return Err(ApiError::not_found(
            "window leaderboards are not maintained: stats.level is all-time",
        ));
    }
    let w = window.map_or(0, |w| w + 1);
    let (rows, meta) = s.read(move |st| st.leaderboard(kind, w, by, limit)).await?;
    let entries: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (r, st))| {
            let value = match by {
                Metric::IskDestroyed => json!(isk(r.value)),
                _ => json!(r.value as i64),
            };
            json!({
                "rank": i + 1,
                "id": r.id,
                "value": value,
                "stats": st.map(|st| select(stats_json(&st, window.is_none()), &fields)),
            })
        })
        .collect();
    let mut out = json!({
        "kind": kind.as_str(),
        "by": by.as_str(),
        "window": window.map_or("all", |w| WINDOW_NAMES[w as usize]),
        "entries": entries,
        "as_of": as_of_json(&meta),
    });
    if let Some(w) = window {
        out["range"] = window_bounds(&meta, w as usize);
    }
    Ok(out)
}
