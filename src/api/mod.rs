//! The read API (axum). Requests and answers are typed ([`params`], [`body`] and the
//! endpoint modules), and the same types generate the OpenAPI document served at
//! `GET /openapi.json` ([`ApiDoc`]). Point reads (an entity, a killmail) run on the runtime:
//! from the block cache they take microseconds. Reads whose cost depends on the data run on
//! a bounded blocking pool ([`AppState::read`]). Every answer comes from one snapshot, so it
//! reflects exactly one committed epoch (`as_of`).

pub mod body;
pub mod cluster;
pub mod entities;
pub mod error;
pub mod killmails;
pub mod leaderboards;
pub mod params;
pub mod rosters;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;

use kmflow_dataflows::contrib::StatsLevel;
use kmflow_dataflows::static_data::StaticData;

use crate::metrics::Metrics;
use crate::state::RocksState;
pub use body::stat_fields;
pub use error::ApiError;
use kmflow_dataflows::store::StateStore as _;

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
    /// Requests handled at once (`api.max-in-flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// RocksDB reads queued or running (`api.max-in-flight`).
    pub reads: Arc<tokio::sync::Semaphore>,
    /// `api.request-timeout-ms`.
    pub request_timeout: Duration,
    /// Sorted rosters, reused until the next checkpoint (see [`rosters::RosterCache`]).
    pub rosters: Arc<rosters::RosterCache>,
    /// The live feed `GET /v1/stream` reads (published by the checkpointer).
    pub feed: Arc<crate::feed::Feed>,
    pub stream: crate::config::StreamConfig,
    /// `api.idle-timeout-ms` (the live feed's keep-alives come more often).
    pub idle_timeout: Duration,
    /// Open stream subscribers.
    pub subscribers: Arc<std::sync::atomic::AtomicUsize>,
    /// In a cluster: the other processes, that answer what this one does not own.
    pub peers: Option<Arc<cluster::Peers>>,
}

impl AppState {
    /// The handlers' state for `state`, with the API's limits and a live feed starting at
    /// the state's committed epoch, as `config` sets them.
    pub fn new(state: Arc<RocksState>, metrics: Metrics, config: &crate::config::Config) -> Self {
        let (api, stream) = (&config.api, config.stream.clone());
        let committed = state.committed_epoch();
        AppState {
            state,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            topics: Arc::new(Vec::new()),
            static_data: None,
            level: StatsLevel::Full,
            in_flight: Arc::new(tokio::sync::Semaphore::new(api.max_in_flight)),
            reads: Arc::new(tokio::sync::Semaphore::new(api.max_in_flight)),
            request_timeout: Duration::from_millis(api.request_timeout_ms),
            rosters: Default::default(),
            feed: Arc::new(crate::feed::Feed::new(&stream, committed)),
            stream,
            idle_timeout: Duration::from_millis(api.idle_timeout_ms),
            subscribers: Default::default(),
            peers: cluster::peers(config),
        }
    }

    /// Runs a bounded point read (an entity, a killmail: a `multi_get` of at most 90 keys and
    /// breakdown scans of at most `MAX_BREAKDOWN_ROWS`) right here, on the runtime: a hand-off
    /// to the pool would cost more than the read (measured: p50 1.7 ms instead of 0.6 ms).
    pub(crate) fn read_point<T>(
        &self,
        f: impl FnOnce(&RocksState) -> Result<T, crate::state::StateError>,
    ) -> Result<T, ApiError> {
        f(&self.state).map_err(ApiError::internal)
    }

    /// Runs a RocksDB read whose cost depends on the data (rosters, leaderboards, batches,
    /// dead letters) on the runtime's blocking pool (`api.read-threads` threads), so
    /// reads never hold the threads that accept connections and answer `/healthz`. Reads
    /// queued or running are bounded by `api.max-in-flight`, even those whose request timed
    /// out (the permit travels with the read).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&RocksState) -> Result<T, crate::state::StateError> + Send + 'static,
    {
        let Ok(permit) = self.reads.clone().try_acquire_owned() else {
            self.metrics
                .http
                .rejected
                .with_label_values(&["overloaded"])
                .inc();
            return Err(ApiError::Overloaded(
                "too many reads in flight; retry later".into(),
            ));
        };
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            lower_priority_once();
            f(&state)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
    }
}

/// Gives the calling read-pool thread a lower CPU priority (nice +10) than ingestion and the
/// runtime that accepts connections and answers `/healthz`, once per thread: on a machine
/// with no spare core, heavy reads (rosters, leaderboards) get what is left. Linux applies it
/// to the thread alone; elsewhere it does nothing.
fn lower_priority_once() {
    thread_local!(static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    LOWERED.with(|lowered| {
        if lowered.replace(true) {
            return;
        }
        #[cfg(target_os = "linux")]
        // SAFETY: plain syscalls on this thread's own id; a failure only leaves the priority.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, READ_NICE);
        }
    });
}

/// The nice value of the API's read-pool threads (see [`lower_priority_once`]).
#[cfg(target_os = "linux")]
const READ_NICE: libc::c_int = 10;

/// The OpenAPI 3.1 document of the API, generated from the handlers and their types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kmflow",
        description = "Statistics of EVE Online killmails, maintained incrementally from Kafka. Every answer reflects one committed epoch (`as_of`). Errors are `{\"error\": {\"status\", \"message\"}}`."
    ),
    paths(
        entities::get_character,
        entities::get_corporation,
        entities::get_alliance,
        entities::batch_characters,
        entities::batch_corporations,
        entities::batch_alliances,
        rosters::get_members,
        leaderboards::get_leaderboard,
        killmails::get_killmail,
        killmails::get_dead_letters,
        stream::get_stream,
        healthz,
        readyz,
        metrics,
        openapi_json,
    ),
    components(schemas(stream::StatsEvent, params::Limit, params::By)),
    tags(
        (name = "statistics", description = "Characters, corporations, alliances, rosters and leaderboards"),
        (name = "killmails", description = "Killmails as stored"),
        (name = "operations", description = "Probes, metrics, dead letters and this document"),
    )
)]
pub struct ApiDoc;

/// Builds the router (separate from serving it, so tests call it with `oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/characters/{id}", get(entities::get_character))
        .route("/v1/corporations/{id}", get(entities::get_corporation))
        .route("/v1/alliances/{id}", get(entities::get_alliance))
        .route("/v1/characters:batch", post(entities::batch_characters))
        .route("/v1/corporations:batch", post(entities::batch_corporations))
        .route("/v1/alliances:batch", post(entities::batch_alliances))
        .route("/v1/corporations/{id}/members", get(rosters::get_members))
        .route(
            "/v1/leaderboards/{kind}",
            get(leaderboards::get_leaderboard),
        )
        .route("/v1/killmails/{id}", get(killmails::get_killmail))
        .route("/v1/dead-letters", get(killmails::get_dead_letters))
        .route("/v1/stream", get(stream::get_stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BATCH_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::route,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), limits))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), track_latency))
        .with_state(state)
}

/// The last line of defence of every request: at most `api.max-in-flight` at once (503 past
/// it), answered within `api.request-timeout-ms` (503), and a handler that panics is answered
/// 500 with the JSON error, never an empty reply. Each is counted in
/// `kmflow_http_rejected_total`.
async fn limits(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let reject = |reason: &str, err: ApiError| {
        s.metrics.http.rejected.with_label_values(&[reason]).inc();
        err.into_response()
    };
    // Probes and scrapes are never refused: an overloaded API is still alive.
    let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    let permit = s.in_flight.clone().try_acquire_owned();
    if permit.is_err() && !probe {
        return reject(
            "overloaded",
            ApiError::Overloaded("too many requests in flight; retry later".into()),
        );
    }
    let run = std::panic::AssertUnwindSafe(next.run(req));
    match tokio::time::timeout(
        s.request_timeout,
        futures_util::FutureExt::catch_unwind(run),
    )
    .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(_panic)) => {
            tracing::error!("api: a handler panicked; answered 500");
            reject("panic", ApiError::Internal)
        }
        Err(_) => reject("timeout", ApiError::Timeout),
    }
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
        .http
        .latency
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// URIs longer than this are answered 414 (with the JSON error).
const MAX_URI_BYTES: usize = 8 * 1024;

/// Every error the framework answers by itself (a body too large, an unsupported method, a
/// malformed body) gets the JSON error shape of [`ApiError`], like the handlers' own.
async fn json_errors(req: Request, next: Next) -> Response {
    if req.uri().to_string().len() > MAX_URI_BYTES {
        return ApiError::UriTooLong(format!("the URI exceeds {MAX_URI_BYTES} bytes"))
            .into_response();
    }
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    ApiError::Framework(status, message).into_response()
}

/// The process is alive (never refused, even when overloaded).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = body::Status)))]
async fn healthz() -> Json<body::Status> {
    Json(body::Status { status: "ok" })
}

/// Ready: state restored and the source connected (not during a broker outage).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = body::Status), (status = 503, body = body::Status)))]
async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        Json(body::Status { status: "ready" }).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(body::Status {
                status: "not ready",
            }),
        )
            .into_response()
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(s): State<AppState>) -> Response {
    if let Ok((size, memory)) = s.read(|st| Ok((st.size_bytes(), st.memory_bytes()))).await {
        s.metrics.state.size.set(size as i64);
        for (part, bytes) in memory {
            s.metrics
                .state
                .memory
                .with_label_values(&[part])
                .set(bytes as i64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// This document: the API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(openapi_document);
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}

/// The OpenAPI document as served and as kept in the repository (`openapi.json`).
pub fn openapi_document() -> String {
    let mut doc = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    doc.push('\n');
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use serde_json::Value;
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        panic!("a handler bug")
    }

    /// A handler that panics is answered 500 with the JSON error and counted, never an empty
    /// reply; a slow one gets a 503 at the request timeout.
    #[tokio::test]
    async fn panics_and_timeouts_are_answered_with_the_json_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = RocksState::open(dir.path(), 8).unwrap();
        let mut config = crate::config::Config::defaults();
        config.api.request_timeout_ms = 200;
        let s = AppState::new(state, Metrics::new(), &config);
        let router: Router = Router::new()
            .route("/panic", get(boom))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .layer(middleware::from_fn_with_state(s.clone(), limits))
            .with_state(s.clone());
        for (uri, status, reason) in [
            ("/panic", StatusCode::INTERNAL_SERVER_ERROR, "panic"),
            ("/slow", StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        ] {
            let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), status, "{uri}");
            let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["status"], status.as_u16());
            assert_eq!(
                s.metrics.http.rejected.with_label_values(&[reason]).get(),
                1,
                "{reason} counted"
            );
        }
    }
}
