//! Reads in a cluster: every process answers every request.
//!
//! - A lookup of one entity (its statistics, a corporation's roster) or one killmail is
//!   forwarded over HTTP to the process that owns it, and its answer returned as is.
//! - Batches and leaderboards are sent to every process: each answers from what it owns, and
//!   the answers are merged (a batch's rows in the order asked; a leaderboard's entries
//!   ranked again and cut to `limit`). Every part must be of one checkpoint: the processes
//!   write each checkpoint within milliseconds of each other, so parts of different epochs
//!   are asked again, briefly, and the merged answer carries that one `as_of`.
//! - `/readyz` is ready when every process is.
//!
//! A request a process sends another carries [`LOCAL`]: it is answered from the receiver's own
//! state, never forwarded again. Dead letters and the live feed are each process's own (its
//! sources' dead letters; the killmails whose upsert state it owns).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use kmflow_dataflows::{EntityKey, EntityKind};

use super::error::ApiError;
use super::params::{parse_decimal, Limit};
use super::AppState;
use crate::cluster::Topology;

/// The header of a request from another process: answer from local state only.
pub const LOCAL: &str = "x-kmflow-local";

/// Headers of one connection, not of the request: not forwarded (the body is sent whole).
const HOP_BY_HOP: [&str; 10] = [
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// Parts of different checkpoints are asked again this many times.
const CONSISTENT_TRIES: usize = 20;

/// The other processes' APIs.
pub struct Peers {
    topology: Topology,
    client: Client<HttpConnector, Body>,
    timeout: Duration,
}

/// What a request needs in a cluster.
enum Route {
    /// Answered by one process.
    Owner(usize),
    /// Answered by every process, merged.
    Gather(Merge),
    /// Answered here.
    Here,
}

#[derive(Clone, Copy)]
enum Merge {
    Batch,
    Leaderboard,
    Ready,
}

impl Peers {
    pub fn new(topology: Topology, timeout: Duration) -> Peers {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Peers {
            topology,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    fn route(&self, method: &Method, path: &str) -> Route {
        let t = &self.topology;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let entity = |kind: &str, id: &str| {
            let kind = match kind {
                "characters" => EntityKind::Character,
                "corporations" => EntityKind::Corporation,
                "alliances" => EntityKind::Alliance,
                _ => return None,
            };
            let id = parse_decimal(id)?;
            Some(t.entity_process(EntityKey::new(kind, id)))
        };
        // HEAD is answered like GET.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let owner = match (method, segments.as_slice()) {
            (&Method::GET, ["v1", kind, id]) if *kind != "killmails" && *kind != "leaderboards" => {
                entity(kind, id)
            }
            (&Method::GET, ["v1", "corporations", id, "members"]) => entity("corporations", id),
            (&Method::GET, ["v1", "killmails", id]) => {
                parse_decimal(id).map(|id| t.killmail_process(id))
            }
            (&Method::GET, ["v1", "leaderboards", _]) => return Route::Gather(Merge::Leaderboard),
            (&Method::POST, ["v1", batch]) if batch.ends_with(":batch") => {
                return Route::Gather(Merge::Batch)
            }
            (&Method::GET, ["readyz"]) => return Route::Gather(Merge::Ready),
            _ => None,
        };
        match owner {
            Some(p) if p != t.process => Route::Owner(p),
            _ => Route::Here,
        }
    }

    /// Sends the request to process `p`'s API, marked [`LOCAL`].
    async fn send(
        &self,
        s: &AppState,
        p: usize,
        method: &Method,
        uri: &Uri,
        headers: &axum::http::HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let url = format!("{}{}", self.topology.apis[p], path);
        let mut req = Request::builder().method(method.clone()).uri(&url);
        for (name, value) in headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                req = req.header(name, value);
            }
        }
        let req = req
            .header(LOCAL, HeaderValue::from_static("1"))
            .body(Body::from(body))
            .map_err(|e| ApiError::Cluster(format!("cluster: cannot forward to {url}: {e}")))?;
        let outcome = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        let unavailable = |why: String| {
            s.metrics.http.forwarded.with_label_values(&["error"]).inc();
            ApiError::Cluster(format!(
                "cluster: process {p} ({}) did not answer: {why}",
                self.topology.apis[p]
            ))
        };
        match outcome {
            Err(_) => Err(unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Ok(Ok(resp)) => {
                s.metrics.http.forwarded.with_label_values(&["ok"]).inc();
                Ok(resp.map(Body::new))
            }
        }
    }

    /// Every process's answer to the request, as (status, JSON).
    async fn ask_all(
        &self,
        s: &AppState,
        method: &Method,
        uri: &Uri,
        headers: &axum::http::HeaderMap,
        body: &Bytes,
    ) -> Result<Vec<(StatusCode, Value)>, ApiError> {
        let asks = (0..self.topology.processes)
            .map(|p| self.send(s, p, method, uri, headers, body.clone()));
        let mut parts = Vec::with_capacity(self.topology.processes);
        for answer in futures_util::future::join_all(asks).await {
            let resp = answer?;
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
                .await
                .map_err(|e| ApiError::Cluster(format!("cluster: reading an answer: {e}")))?;
            let json = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::Cluster(format!("cluster: an answer is not JSON: {e}")))?;
            parts.push((status, json));
        }
        Ok(parts)
    }
}

/// The middleware that forwards or gathers what this process cannot answer alone.
pub async fn route(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(peers) = s.peers.clone() else {
        return next.run(req).await;
    };
    if req.headers().contains_key(LOCAL) {
        return next.run(req).await;
    }
    let route = peers.route(req.method(), req.uri().path());
    if matches!(route, Route::Here) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, super::MAX_BATCH_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::PayloadTooLarge(format!(
                "body exceeds {} bytes",
                super::MAX_BATCH_BODY
            ))
            .into_response()
        }
    };
    let answer = match route {
        Route::Owner(p) => {
            peers
                .send(&s, p, &parts.method, &parts.uri, &parts.headers, body)
                .await
        }
        Route::Gather(merge) => gather(&s, &peers, merge, &parts, &body).await,
        Route::Here => unreachable!("answered above"),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// Asks every process and merges their answers, all of one checkpoint.
async fn gather(
    s: &AppState,
    peers: &Peers,
    merge: Merge,
    req: &axum::http::request::Parts,
    body: &Bytes,
) -> Result<Response, ApiError> {
    for _ in 0..CONSISTENT_TRIES {
        let parts = peers
            .ask_all(s, &req.method, &req.uri, &req.headers, body)
            .await?;
        if let Some((status, json)) = parts.iter().find(|(st, _)| !st.is_success()) {
            if let Merge::Ready = merge {
                let waiting: Vec<usize> = parts
                    .iter()
                    .enumerate()
                    .filter(|(_, (st, _))| !st.is_success())
                    .map(|(p, _)| p)
                    .collect();
                let body =
                    serde_json::json!({"status": "not ready", "processes_not_ready": waiting});
                return Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
            }
            // Every process validates alike: the first refusal is the answer.
            return Ok((*status, Json(json.clone())).into_response());
        }
        let jsons: Vec<Value> = parts.into_iter().map(|(_, j)| j).collect();
        let merged = match merge {
            Merge::Ready => Some(jsons[0].clone()),
            Merge::Batch => merge_batch(jsons, body),
            Merge::Leaderboard => merge_leaderboard(jsons, &req.uri),
        };
        if let Some(m) = merged {
            return Ok(Json(m).into_response());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ApiError::Cluster(
        "cluster: the processes answered from different checkpoints; retry".into(),
    ))
}

/// One `as_of` for parts of one epoch (offsets: every process's own partitions; the latest
/// write time); `None` when the parts are of different epochs.
fn merge_as_of(parts: &[Value]) -> Option<Value> {
    let as_ofs: Vec<&Value> = parts.iter().map(|p| &p["as_of"]).collect();
    if as_ofs.iter().all(|a| a.is_null()) {
        return Some(Value::Null);
    }
    let epoch = as_ofs[0].get("epoch")?;
    if as_ofs.iter().any(|a| a.get("epoch") != Some(epoch)) {
        return None;
    }
    let latest = as_ofs
        .iter()
        .max_by_key(|a| a["committed_at_ms"].as_u64().unwrap_or(0))?;
    let mut merged = (*latest).clone();
    let mut offsets: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for a in &as_ofs {
        if let Some(topics) = a["offsets"].as_object() {
            for (topic, parts) in topics {
                let entry = offsets.entry(topic.clone()).or_default();
                for (p, o) in parts.as_object().into_iter().flatten() {
                    entry.insert(p.clone(), o.clone());
                }
            }
        }
    }
    merged["offsets"] = serde_json::to_value(offsets).ok()?;
    Some(merged)
}

/// Rows from every process (each has those it owns), in the order the ids were asked; an id
/// is missing when no process has it.
fn merge_batch(parts: Vec<Value>, body: &Bytes) -> Option<Value> {
    let as_of = merge_as_of(&parts)?;
    let asked: Vec<Value> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|b| b.get("ids").and_then(|i| i.as_array().cloned()))
        .unwrap_or_default();
    let order: HashMap<u64, usize> = asked
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let id = v.as_u64().or_else(|| v.as_str().and_then(parse_decimal))?;
            Some((id, i))
        })
        .rev()
        .collect();
    let mut results: Vec<Value> = Vec::new();
    let mut found: HashSet<u64> = HashSet::new();
    for p in &parts {
        for row in p["results"].as_array().into_iter().flatten() {
            if let Some(id) = row["id"].as_u64() {
                if found.insert(id) {
                    results.push(row.clone());
                }
            }
        }
    }
    results.sort_by_key(|r| {
        r["id"]
            .as_u64()
            .and_then(|id| order.get(&id).copied())
            .unwrap_or(usize::MAX)
    });
    let missing: Vec<Value> = parts[0]["missing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m.as_u64().is_some_and(|id| !found.contains(&id)))
        .cloned()
        .collect();
    Some(serde_json::json!({"results": results, "missing": missing, "as_of": as_of}))
}

/// Every process's top entries, ranked again (value descending, then id ascending, as each
/// process ranks) and cut to the request's `limit`.
fn merge_leaderboard(parts: Vec<Value>, uri: &Uri) -> Option<Value> {
    let as_of = merge_as_of(&parts)?;
    let range = &parts[0]["range"];
    if parts.iter().any(|p| &p["range"] != range) {
        return None;
    }
    let limit = uri
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "limit")
                .and_then(|(_, v)| parse_decimal(&v))
        })
        .map_or(Limit::DEFAULT, |l| l as usize);
    let mut entries: Vec<Value> = parts
        .iter()
        .flat_map(|p| p["entries"].as_array().cloned().unwrap_or_default())
        .collect();
    // The exact values (cents for ISK) each process adds for us, then the JSON value.
    let exact = |e: &Value| -> Option<i128> { e["exact"].as_str()?.parse().ok() };
    let value = |e: &Value| -> f64 { e["value"].as_f64().unwrap_or(0.0) };
    entries.sort_by(|a, b| {
        let by_value = match (exact(a), exact(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => value(b).total_cmp(&value(a)),
        };
        by_value.then(a["id"].as_u64().cmp(&b["id"].as_u64()))
    });
    entries.truncate(limit);
    for (i, e) in entries.iter_mut().enumerate() {
        e["rank"] = Value::from(i + 1);
        if let Some(o) = e.as_object_mut() {
            o.remove("exact");
        }
    }
    let mut merged = parts[0].clone();
    merged["entries"] = Value::Array(entries);
    merged["as_of"] = as_of;
    Some(merged)
}

/// The peers of this process, when it is part of a cluster.
pub fn peers(config: &crate::config::Config) -> Option<Arc<Peers>> {
    let topology = Topology::from_config(config);
    topology.is_cluster().then(|| {
        Arc::new(Peers::new(
            topology,
            Duration::from_millis(config.cluster.forward_timeout_ms),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(epoch: u64, entries: Value) -> Value {
        serde_json::json!({
            "kind": "character", "by": "kills", "window": "all", "entries": entries,
            "as_of": {"epoch": epoch, "committed_at": "x", "committed_at_ms": epoch * 10,
                      "offsets": {"t": {format!("{epoch}"): 1}}}
        })
    }

    #[test]
    fn leaderboards_merge_in_rank_order_and_need_one_epoch() {
        let uri: Uri = "/v1/leaderboards/characters?limit=3".parse().unwrap();
        let a = part(
            5,
            serde_json::json!([{"rank":1,"id":7,"value":9.0,"exact":"900"},{"rank":2,"id":3,"value":4.0,"exact":"401"}]),
        );
        let b = part(
            5,
            serde_json::json!([{"rank":1,"id":2,"value":9.0,"exact":"900"},{"rank":2,"id":1,"value":4.0,"exact":"400"}]),
        );
        let m = merge_leaderboard(vec![a.clone(), b], &uri).unwrap();
        let ids: Vec<u64> = m["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        // 401 cents outrank 400 although both show as 4.0.
        assert_eq!(ids, vec![2, 7, 3]);
        assert_eq!(m["entries"][2]["rank"], 3);
        assert!(
            m["entries"][0].get("exact").is_none(),
            "internal values are dropped"
        );
        let other = part(6, serde_json::json!([]));
        assert!(merge_leaderboard(vec![a, other], &uri).is_none());
    }

    #[test]
    fn batches_merge_in_the_order_asked() {
        let body = Bytes::from_static(br#"{"ids": [30, "10", 20, 40]}"#);
        let as_of = serde_json::json!({"epoch": 1, "committed_at_ms": 5, "offsets": {}});
        let a =
            serde_json::json!({"results": [{"id": 10}], "missing": [30, 20, 40], "as_of": as_of});
        let b = serde_json::json!({"results": [{"id": 30}, {"id": 20}], "missing": [10, 40], "as_of": as_of});
        let m = merge_batch(vec![a, b], &body).unwrap();
        let ids: Vec<u64> = m["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![30, 10, 20]);
        assert_eq!(m["missing"], serde_json::json!([40]));
    }
}
