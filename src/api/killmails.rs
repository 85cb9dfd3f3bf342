//! Killmails as stored (`GET /v1/killmails/{id}`: which `zkb` version is applied and where it
//! came from) and the dead letters (`GET /v1/dead-letters`).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use kmflow_dataflows::time::format_rfc3339;
use kmflow_dataflows::StoredKillmail;

use super::body::isk;
use super::error::{ApiError, ErrorBody};
use super::params::{from_hex, to_hex, DeadLettersQuery, Id, Limit, Params, PathParam};
use super::AppState;
use crate::state::{DeadLetterFilter, DeadLetterRecord};

/// The stored summary of a killmail and which `zkb` version is applied.
#[derive(Serialize, ToSchema)]
pub struct KillmailBody {
    pub killmail_id: u64,
    /// RFC 3339.
    pub killmail_time: String,
    pub solar_system_id: u32,
    /// Every attacker is an NPC.
    pub npc: bool,
    pub victim: VictimBody,
    pub attackers: Vec<AttackerBody>,
    /// zKillboard's appraisal, when a version carried one.
    pub zkb: Option<ZkbBody>,
    /// 0 for the first version applied, +1 for every `zkb` replacement.
    pub zkb_version: u32,
    pub applied_from: AppliedFrom,
    /// The ingestion epoch that applied it.
    pub epoch: u64,
}

#[derive(Serialize, ToSchema)]
pub struct VictimBody {
    pub character_id: Option<u64>,
    pub corporation_id: Option<u64>,
    pub alliance_id: Option<u64>,
    pub ship_type_id: Option<u32>,
    pub damage_taken: u64,
}

#[derive(Serialize, ToSchema)]
pub struct AttackerBody {
    pub character_id: Option<u64>,
    pub corporation_id: Option<u64>,
    pub alliance_id: Option<u64>,
    pub ship_type_id: Option<u32>,
    pub damage_done: u64,
    pub final_blow: bool,
}

/// zKillboard's names.
#[derive(Serialize, ToSchema)]
#[allow(non_snake_case)]
pub struct ZkbBody {
    /// ISK.
    pub totalValue: f64,
    pub points: i64,
    pub npc: bool,
    pub solo: bool,
    pub awox: bool,
}

/// Where the applied version was read.
#[derive(Serialize, ToSchema)]
pub struct AppliedFrom {
    pub topic: Option<String>,
    pub partition: u32,
    pub offset: i64,
}

impl KillmailBody {
    pub fn new(stored: &StoredKillmail, topics: &[String]) -> KillmailBody {
        let km = &stored.killmail;
        let pos = stored.applied_from;
        KillmailBody {
            killmail_id: km.killmail_id,
            killmail_time: format_rfc3339(km.time),
            solar_system_id: km.solar_system_id,
            npc: km.is_npc(),
            victim: VictimBody {
                character_id: km.victim.character_id,
                corporation_id: km.victim.corporation_id,
                alliance_id: km.victim.alliance_id,
                ship_type_id: km.victim.ship_type_id,
                damage_taken: km.victim.damage_taken,
            },
            attackers: km
                .attackers
                .iter()
                .map(|a| AttackerBody {
                    character_id: a.character_id,
                    corporation_id: a.corporation_id,
                    alliance_id: a.alliance_id,
                    ship_type_id: a.ship_type_id,
                    damage_done: a.damage_done,
                    final_blow: a.final_blow,
                })
                .collect(),
            zkb: km.zkb.map(|z| ZkbBody {
                totalValue: isk(z.total_value_cents as i128),
                points: z.points,
                npc: z.npc,
                solo: z.solo,
                awox: z.awox,
            }),
            zkb_version: stored.zkb_version,
            applied_from: AppliedFrom {
                topic: topics.get(pos.topic as usize).cloned(),
                partition: pos.partition,
                offset: pos.offset,
            },
            epoch: stored.epoch,
        }
    }
}

/// A killmail as stored, with the `zkb` version applied.
#[utoipa::path(get, path = "/v1/killmails/{id}", tag = "killmails",
    params(("id" = u64, Path, minimum = 1)),
    responses(
        (status = 200, body = KillmailBody),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_killmail(
    State(s): State<AppState>,
    PathParam(Id(id)): PathParam<Id>,
) -> Result<Json<KillmailBody>, ApiError> {
    match s.read_point(|st| st.killmail(id))? {
        Some(stored) => Ok(Json(KillmailBody::new(&stored, &s.topics))),
        None => Err(ApiError::not_found(format!("no killmail with id {id}"))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeadLettersBody {
    /// Newest first.
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// Dead letters kept now.
    pub retained: u64,
    /// Dead letters the retention dropped, oldest first, over the state's life.
    pub dropped: u64,
}

/// Messages that could not be decoded, newest first, paged by cursor.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "operations",
    params(DeadLettersQuery),
    responses(
        (status = 200, body = DeadLettersBody),
        (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub async fn get_dead_letters(
    State(s): State<AppState>,
    Params(q): Params<DeadLettersQuery>,
) -> Result<Json<DeadLettersBody>, ApiError> {
    let limit = Limit::or_default(q.limit);
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(from_hex(c).filter(|b| b.len() == 12).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid cursor {c:?}: pass next_cursor from the previous page unchanged"
            ))
        })?),
    };
    let filter = DeadLetterFilter {
        reason: q.reason,
        topic: q.topic,
    };
    let (letters, next, meta) = s
        .read(move |st| {
            let meta = st.checkpoint_meta();
            let (letters, next) = st.dead_letters(limit, cursor.as_deref(), &filter)?;
            Ok((letters, next, meta))
        })
        .await?;
    let totals = meta.map(|m| m.dead_letters).unwrap_or_default();
    Ok(Json(DeadLettersBody {
        dead_letters: letters,
        next_cursor: next.map(|k| to_hex(&k)),
        retained: totals.count,
        dropped: totals.dropped,
    }))
}
