//! Leaderboards (`GET /v1/leaderboards/{kind}`): the top entities of a kind by a metric, all
//! time or over a rolling window, exactly as a ranking from scratch would give them.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use kmflow_dataflows::contrib::StatsLevel;
use kmflow_dataflows::keys::Metric;

use super::body::{isk, AsOf, Range, Selected};
use super::entities::parse_fields;
use super::error::{ApiError, ErrorBody};
use super::params::{Kind, LeaderboardQuery, Limit, Params, PathParam, Window};
use super::AppState;

#[derive(Serialize, ToSchema)]
pub struct LeaderboardBody {
    pub kind: Kind,
    /// The ranking metric.
    pub by: String,
    pub window: Window,
    pub entries: Vec<LeaderboardEntry>,
    pub as_of: Option<AsOf>,
    /// The days a rolling window covers (absent for `all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Range>)]
    pub range: Option<Option<Range>>,
}

#[derive(Serialize, ToSchema)]
pub struct LeaderboardEntry {
    /// 1 for the first.
    pub rank: usize,
    pub id: u64,
    /// The metric's value (ISK for `isk_destroyed`).
    #[schema(value_type = f64)]
    pub value: MetricValue,
    /// The entity's statistics over the window (null if it has none stored).
    pub stats: Option<Selected>,
    /// The exact value (ISK in cents), only in answers to another process of a cluster, which
    /// ranks the processes' entries together as one process ranks its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub exact: Option<String>,
}

/// A count, or ISK.
#[derive(Serialize)]
#[serde(untagged)]
pub enum MetricValue {
    Count(i64),
    Isk(f64),
}

/// The top entities of a kind by a metric.
#[utoipa::path(get, path = "/v1/leaderboards/{kind}", tag = "statistics",
    params(("kind" = Kind, Path), LeaderboardQuery),
    responses(
        (status = 200, body = LeaderboardBody),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
pub async fn get_leaderboard(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    PathParam(kind): PathParam<Kind>,
    Params(q): Params<LeaderboardQuery>,
) -> Result<Json<LeaderboardBody>, ApiError> {
    let by = q.by.map_or(Metric::Kills, |b| b.0);
    let window = q.window.unwrap_or(Window::All);
    let limit = Limit::or_default(q.limit);
    let fields = parse_fields(q.fields.as_deref())?;
    let w = window.index();
    if w.is_some() && s.level != StatsLevel::Full {
        return Err(ApiError::not_found(
            "window leaderboards are not maintained: stats.level is all-time",
        ));
    }
    let entity = kind.entity();
    let (rows, meta) = s
        .read(move |st| st.leaderboard(entity, w.map_or(0, |w| w + 1), by, limit))
        .await?;
    let entries = rows
        .iter()
        .enumerate()
        .map(|(i, (r, st))| LeaderboardEntry {
            rank: i + 1,
            id: r.id,
            value: match by {
                Metric::IskDestroyed => MetricValue::Isk(isk(r.value)),
                _ => MetricValue::Count(r.value as i64),
            },
            stats: st.map(|st| Selected::new(&st, w.is_none(), &fields)),
            exact: headers
                .contains_key(super::cluster::LOCAL)
                .then(|| r.value.to_string()),
        })
        .collect();
    Ok(Json(LeaderboardBody {
        kind,
        by: by.as_str().to_string(),
        window,
        entries,
        as_of: AsOf::of(&meta),
        range: w.map(|w| Range::of(&meta, w)),
    }))
}
