//! The read API (axum). Handlers read RocksDB directly: point reads from the block cache take
//! microseconds, never wait for the timely workers, and every answer comes from one snapshot,
//! so it reflects exactly one committed epoch (`as_of`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use kmflow_dataflows::contrib::StatsLevel;
use kmflow_dataflows::model::CENTS_PER_ISK;
use kmflow_dataflows::static_data::StaticData;
use kmflow_dataflows::time::format_rfc3339;
use kmflow_dataflows::{EntityKey, EntityKind, StoredKillmail};

use crate::metrics::Metrics;
use crate::state::{CommitMeta, RocksState};
use crate::views;
pub use crate::views::stats_json;

/// Most ids one batch request may ask for.
pub const MAX_BATCH_IDS: usize = 1000;
/// Batch request bodies larger than this are refused.
const MAX_BATCH_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub state: Arc<RocksState>,
    pub metrics: Metrics,
    /// Set once state is restored and the source connected; cleared during a broker outage.
    pub ready: Arc<AtomicBool>,
    /// Topic names, for `applied_from` in killmail answers.
    pub topics: Arc<Vec<String>>,
    /// The static data loaded, if any (group names; why fields are unknown).
    pub static_data: Option<Arc<StaticData>>,
    /// Which statistics the pipeline maintains.
    pub level: StatsLevel,
}

/// The one error type of the API: client mistakes are 4xx with a message, internal errors are
/// logged and answered 500 without details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
    pub(crate) fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "api: internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"status": self.status.as_u16(), "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// Builds the router (separate from serving it, so tests call it with `oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/characters/{id}", get(get_character))
        .route("/v1/corporations/{id}", get(get_corporation))
        .route("/v1/alliances/{id}", get(get_alliance))
        .route("/v1/characters:batch", post(batch_characters))
        .route("/v1/corporations:batch", post(batch_corporations))
        .route("/v1/alliances:batch", post(batch_alliances))
        .route("/v1/corporations/{id}/members", get(get_members))
        .route("/v1/leaderboards/{kind}", get(get_leaderboard))
        .route("/v1/killmails/{id}", get(get_killmail))
        .route("/v1/dead-letters", get(get_dead_letters))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "method not allowed".into(),
            }
        })
        .layer(middleware::from_fn_with_state(state.clone(), track_latency))
        .with_state(state)
}

async fn track_latency(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    s.metrics
        .http_latency
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// Parses an entity or killmail id: a positive integer.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<u64, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "{what} id must be a positive integer, got {raw:?}"
        ))),
    }
}

pub(crate) fn as_of_json(meta: &Option<CommitMeta>) -> Value {
    match meta {
        None => Value::Null,
        Some(m) => json!({
            "epoch": m.epoch,
            "committed_at": format_rfc3339((m.committed_at / 1000) as i64),
            "committed_at_ms": m.committed_at,
            "offsets": m.offsets,
        }),
    }
}

async fn get_character(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    views::entity(&s, EntityKind::Character, &id, q)
        .await
        .map(Json)
}
async fn get_corporation(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    views::entity(&s, EntityKind::Corporation, &id, q)
        .await
        .map(Json)
}
async fn get_alliance(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    views::entity(&s, EntityKind::Alliance, &id, q)
        .await
        .map(Json)
}
async fn get_members(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    views::members(&s, &id, q).await.map(Json)
}
async fn get_leaderboard(
    State(s): State<AppState>,
    Path(kind): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    views::leaderboard(&s, &kind, q).await.map(Json)
}

async fn batch(s: &AppState, kind: EntityKind, body: &Bytes) -> Result<Json<Value>, ApiError> {
    if body.len() > MAX_BATCH_BODY {
        return Err(ApiError::bad_request(format!(
            "body exceeds {MAX_BATCH_BODY} bytes"
        )));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body must be JSON {{\"ids\": [...]}}: {e}")))?;
    let ids = v
        .get("ids")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("body must be JSON {\"ids\": [...]}"))?;
    if ids.len() > MAX_BATCH_IDS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_BATCH_IDS} ids per request, got {}",
            ids.len()
        )));
    }
    let ids: Vec<u64> = ids
        .iter()
        .map(|x| match x.as_u64() {
            Some(id) if id > 0 => Ok(id),
            _ => Err(ApiError::bad_request(format!(
                "ids must be positive integers, got {x}"
            ))),
        })
        .collect::<Result<_, _>>()?;
    let keys: Vec<EntityKey> = ids.iter().map(|id| EntityKey::new(kind, *id)).collect();
    let (found, meta) = s.state.stats_many(&keys).map_err(ApiError::internal)?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for (id, st) in ids.iter().zip(found) {
        match st {
            Some(st) => results.push(json!({"id": id, "stats": stats_json(&st, true)})),
            None => missing.push(*id),
        }
    }
    Ok(Json(
        json!({"results": results, "missing": missing, "as_of": as_of_json(&meta)}),
    ))
}

async fn batch_characters(State(s): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    batch(&s, EntityKind::Character, &body).await
}
async fn batch_corporations(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    batch(&s, EntityKind::Corporation, &body).await
}
async fn batch_alliances(State(s): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    batch(&s, EntityKind::Alliance, &body).await
}

/// The stored summary of a killmail and which `zkb` version is applied.
pub fn killmail_json(stored: &StoredKillmail, topics: &[String]) -> Value {
    let km = &stored.killmail;
    let person = |c: Option<u64>, corp: Option<u64>, a: Option<u64>| json!({"character_id": c, "corporation_id": corp, "alliance_id": a});
    let mut victim = person(
        km.victim.character_id,
        km.victim.corporation_id,
        km.victim.alliance_id,
    );
    victim["ship_type_id"] = json!(km.victim.ship_type_id);
    victim["damage_taken"] = json!(km.victim.damage_taken);
    let attackers: Vec<Value> = km
        .attackers
        .iter()
        .map(|a| {
            let mut o = person(a.character_id, a.corporation_id, a.alliance_id);
            o["ship_type_id"] = json!(a.ship_type_id);
            o["damage_done"] = json!(a.damage_done);
            o["final_blow"] = json!(a.final_blow);
            o
        })
        .collect();
    let pos = stored.applied_from;
    json!({
        "killmail_id": km.killmail_id,
        "killmail_time": format_rfc3339(km.time),
        "solar_system_id": km.solar_system_id,
        "npc": km.is_npc(),
        "victim": victim,
        "attackers": attackers,
        "zkb": km.zkb.map(|z| json!({
            "totalValue": z.total_value_cents as f64 / CENTS_PER_ISK as f64,
            "points": z.points, "npc": z.npc, "solo": z.solo, "awox": z.awox,
        })),
        "zkb_version": stored.zkb_version,
        "applied_from": {
            "topic": topics.get(pos.topic as usize),
            "partition": pos.partition,
            "offset": pos.offset,
        },
        "epoch": stored.epoch,
    })
}

async fn get_killmail(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "killmail")?;
    match s.state.killmail(id).map_err(ApiError::internal)? {
        Some(stored) => Ok(Json(killmail_json(&stored, &s.topics))),
        None => Err(ApiError::not_found(format!("no killmail with id {id}"))),
    }
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<String>,
}

async fn get_dead_letters(
    State(s): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "limit must be an integer from 1 to 1000",
                ))
            }
        },
    };
    let letters = s.state.dead_letters(limit).map_err(ApiError::internal)?;
    Ok(Json(json!({"dead_letters": letters})))
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.state_size.set(s.state.size_bytes() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
