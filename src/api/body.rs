//! What the API answers, typed: every response body is a struct here, and these structs are
//! the OpenAPI document's schemas. A statistics object is [`StatsBody`]; the `fields`
//! parameter selects among its fields, whose names ([`stat_fields`]) are defined once, by
//! the struct.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use kmflow_dataflows::model::CENTS_PER_ISK;
use kmflow_dataflows::time::{format_day, format_rfc3339};
use kmflow_dataflows::Stats;

use crate::state::CheckpointMeta;

pub(crate) fn isk(cents: i128) -> f64 {
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

/// One statistics object. With `fields=`, only the fields asked for are present, so none is
/// required in the schema.
#[derive(Serialize, ToSchema)]
pub struct StatsBody {
    /// Killmails the entity took part in, as attacker or victim.
    #[schema(required = false)]
    pub involved: i64,
    #[schema(required = false)]
    pub kills: i64,
    #[schema(required = false)]
    pub losses: i64,
    /// Losses to NPCs only.
    #[schema(required = false)]
    pub npc_losses: i64,
    #[schema(required = false)]
    pub final_blows: i64,
    #[schema(required = false)]
    pub damage_done: i64,
    #[schema(required = false)]
    pub damage_taken: i64,
    /// ISK (zKillboard's appraisal, `zkb.totalValue`).
    #[schema(required = false)]
    pub isk_destroyed: f64,
    #[schema(required = false)]
    pub isk_lost: f64,
    #[schema(required = false)]
    pub points_destroyed: i64,
    #[schema(required = false)]
    pub points_lost: i64,
    /// Null when the solo status of some killmail is unknown (see `unavailable.solo`).
    #[schema(required = false)]
    pub solo_kills: Option<i64>,
    #[schema(required = false)]
    pub solo_losses: Option<i64>,
    #[schema(required = false)]
    pub solo_unknown: i64,
    #[schema(required = false, minimum = 0, maximum = 100)]
    pub danger_ratio: Option<i64>,
    #[schema(required = false, minimum = 0, maximum = 100)]
    pub gang_ratio: Option<i64>,
    /// RFC 3339; kept for all-time statistics only (absent in windows).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub first_seen: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub last_seen: Option<Option<String>>,
    /// Percent of ISK destroyed in ISK destroyed and lost, one decimal.
    #[schema(required = false)]
    pub isk_efficiency: Option<f64>,
}

impl StatsBody {
    /// `times`: whether first/last seen are kept for this dimension.
    pub fn new(s: &Stats, times: bool) -> Self {
        let solo_known = s.sums.solo_unknown == 0;
        let total = s.sums.isk_destroyed_cents + s.sums.isk_lost_cents;
        StatsBody {
            involved: s.sums.involved,
            kills: s.sums.kills,
            losses: s.sums.losses,
            npc_losses: s.sums.npc_losses,
            final_blows: s.sums.final_blows,
            damage_done: s.sums.damage_done,
            damage_taken: s.sums.damage_taken,
            isk_destroyed: isk(s.sums.isk_destroyed_cents),
            isk_lost: isk(s.sums.isk_lost_cents),
            points_destroyed: s.sums.points_destroyed,
            points_lost: s.sums.points_lost,
            solo_kills: solo_known.then_some(s.sums.solo_kills),
            solo_losses: solo_known.then_some(s.sums.solo_losses),
            solo_unknown: s.sums.solo_unknown,
            danger_ratio: danger_ratio(s),
            gang_ratio: gang_ratio(s),
            first_seen: times.then(|| s.seen.first.map(format_rfc3339)),
            last_seen: times.then(|| s.seen.last.map(format_rfc3339)),
            isk_efficiency: (total > 0).then(|| {
                (s.sums.isk_destroyed_cents as f64 * 1000.0 / total as f64).round() / 10.0
            }),
        }
    }
}

/// The statistic fields the API serves, in order: the fields of [`StatsBody`].
pub fn stat_fields() -> &'static [&'static str] {
    static FIELDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let Ok(Value::Object(m)) = serde_json::to_value(StatsBody::new(&Stats::default(), true))
        else {
            unreachable!("StatsBody serializes to an object")
        };
        m.keys()
            .map(|k| &*Box::leak(k.clone().into_boxed_str()))
            .collect()
    })
}

/// A [`StatsBody`] with only the fields asked for (`fields=`).
#[derive(Serialize)]
#[serde(transparent)]
pub struct Selected(pub Map<String, Value>);

/// The selection of `fields`: `None` for every field.
pub type Fields = Option<std::collections::BTreeSet<String>>;

impl Selected {
    pub fn new(s: &Stats, times: bool, fields: &Fields) -> Selected {
        let Ok(Value::Object(mut m)) = serde_json::to_value(StatsBody::new(s, times)) else {
            unreachable!("StatsBody serializes to an object")
        };
        if let Some(f) = fields {
            m.retain(|k, _| f.contains(k));
        }
        Selected(m)
    }
}

impl PartialSchema for Selected {
    fn schema() -> RefOr<Schema> {
        RefOr::Ref(utoipa::openapi::Ref::from_schema_name(StatsBody::name()))
    }
}
impl ToSchema for Selected {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((StatsBody::name().into(), StatsBody::schema()));
    }
}

/// The committed epoch an answer reflects. Null before the first checkpoint.
#[derive(Serialize, ToSchema)]
pub struct AsOf {
    pub epoch: u64,
    /// RFC 3339.
    pub committed_at: String,
    /// Unix milliseconds.
    pub committed_at_ms: u64,
    /// topic → partition → the next offset to read.
    #[schema(value_type = BTreeMap<String, BTreeMap<String, i64>>)]
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl AsOf {
    pub fn of(meta: &Option<CheckpointMeta>) -> Option<AsOf> {
        meta.as_ref().map(|m| AsOf {
            epoch: m.epoch,
            committed_at: format_rfc3339((m.committed_at / 1000) as i64),
            committed_at_ms: m.committed_at,
            offsets: m.offsets.clone(),
        })
    }
}

/// The days a rolling window covers (UTC, inclusive).
#[derive(Serialize, ToSchema)]
pub struct Range {
    /// `YYYY-MM-DD`.
    pub from: String,
    pub to: String,
}

impl Range {
    pub fn of(meta: &Option<CheckpointMeta>, window: u8) -> Option<Range> {
        let day = meta.as_ref()?.clock.day()?;
        let days = kmflow_dataflows::keys::WINDOW_DAYS[window as usize];
        Some(Range {
            from: format_day(day - days + 1),
            to: format_day(day),
        })
    }
}

/// The stream clock the rolling windows end at.
#[derive(Serialize, ToSchema)]
pub struct Clock {
    /// RFC 3339.
    pub now: String,
    /// `YYYY-MM-DD`.
    pub day: String,
}

impl Clock {
    pub fn of(meta: &Option<CheckpointMeta>) -> Option<Clock> {
        let now = meta.as_ref()?.clock.now?;
        Some(Clock {
            now: format_rfc3339(now),
            day: format_day(kmflow_dataflows::time::day_of(now)),
        })
    }
}

/// `{"status": ...}` of the probes.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok`, `ready` or `not ready`.
    pub status: &'static str,
}
