//! Every route and error case of the read API, through `Router::oneshot` over a real RocksDB.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use kmflow::api::{app, AppState};
use kmflow::metrics::Metrics;
use kmflow::state::RocksState;
use kmflow_dataflows::model::{DeadLetter, SourcePos};

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksState::open(dir.path(), 16).unwrap();
    let kms = [
        common::killmail(
            10,
            (90_000_001, 98_000_001, 99_000_001),
            &[
                (90_000_002, 98_000_002, 99_000_002),
                (90_000_003, 98_000_002, 99_000_002),
            ],
            Some(1234.56),
        ),
        common::killmail(
            11,
            (90_000_003, 98_000_002, 99_000_002),
            &[(90_000_001, 98_000_001, 99_000_001)],
            None,
        ),
    ];
    let mut batch = common::batch_of(&kms, 3);
    batch.dead_letters.push(DeadLetter {
        pos: SourcePos {
            topic: 0,
            partition: 1,
            offset: 7,
        },
        reason: "malformed_json".into(),
        error: "malformed JSON: EOF".into(),
        payload: b"{".to_vec(),
        payload_len: 1,
    });
    let offsets = BTreeMap::from([("killmails".to_string(), BTreeMap::from([(0, 5i64), (1, 8)]))]);
    s.commit(
        &batch,
        &["killmails".to_string()],
        &offsets,
        &BTreeMap::new(),
        i64::MAX,
    )
    .unwrap();
    let state = AppState {
        state: s,
        metrics: Metrics::new(),
        ready: Arc::new(AtomicBool::new(true)),
        topics: Arc::new(vec!["killmails".to_string()]),
        static_data: None,
        level: kmflow_dataflows::contrib::StatsLevel::Full,
    };
    Fixture { _dir: dir, state }
}

async fn call(
    f: &Fixture,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

#[tokio::test]
async fn entity_lookups() {
    let f = fixture();
    let (s, v, _) = call(&f, "GET", "/v1/characters/90000001", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["id"], 90000001);
    let st = &v["stats"];
    assert_eq!(st["kills"], 1);
    assert_eq!(st["losses"], 1);
    assert_eq!(st["final_blows"], 1);
    assert_eq!(st["isk_lost"], 1234.56);
    assert_eq!(st["isk_destroyed"], 0.0);
    assert_eq!(st["first_seen"], "2021-11-27T12:00:00Z");
    for field in [
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
        "first_seen",
        "last_seen",
    ] {
        assert!(st.get(field).is_some(), "missing {field}");
    }
    assert_eq!(st.as_object().unwrap().len(), 14);
    assert_eq!(v["as_of"]["epoch"], 3);
    assert_eq!(v["as_of"]["offsets"]["killmails"]["1"], 8);
    assert!(v["as_of"]["committed_at"].as_str().unwrap().ends_with('Z'));

    // The corporation with two attackers on killmail 10 counts it once; damage sums both.
    let (s, v, _) = call(&f, "GET", "/v1/corporations/98000002", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["stats"]["kills"], 1);
    assert_eq!(v["stats"]["damage_done"], 200);
    assert_eq!(v["stats"]["losses"], 1);
    let (s, v, _) = call(&f, "GET", "/v1/alliances/99000002", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["stats"]["isk_destroyed"], 1234.56);
}

#[tokio::test]
async fn entity_errors() {
    let f = fixture();
    for (uri, status) in [
        ("/v1/characters/5", StatusCode::NOT_FOUND),
        ("/v1/corporations/5", StatusCode::NOT_FOUND),
        ("/v1/alliances/5", StatusCode::NOT_FOUND),
        ("/v1/characters/abc", StatusCode::BAD_REQUEST),
        ("/v1/characters/-1", StatusCode::BAD_REQUEST),
        ("/v1/characters/0", StatusCode::BAD_REQUEST),
        (
            "/v1/characters/99999999999999999999999",
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/alliances/1.5", StatusCode::BAD_REQUEST),
        ("/v1/killmails/x", StatusCode::BAD_REQUEST),
        ("/v1/killmails/999", StatusCode::NOT_FOUND),
        ("/v1/nothing", StatusCode::NOT_FOUND),
        ("/v1/dead-letters?limit=0", StatusCode::BAD_REQUEST),
        ("/v1/dead-letters?limit=x", StatusCode::BAD_REQUEST),
    ] {
        let (s, v, text) = call(&f, "GET", uri, None).await;
        assert_eq!(s, status, "{uri}: {text}");
        assert_eq!(v["error"]["status"], status.as_u16(), "{uri}: {text}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{uri}"
        );
    }
    let (s, v, _) = call(&f, "DELETE", "/v1/characters/1", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v["error"]["status"], 405);
}

#[tokio::test]
async fn batch_lookups() {
    let f = fixture();
    let (s, v, _) = call(
        &f,
        "POST",
        "/v1/characters:batch",
        Some(r#"{"ids":[90000001,90000002,42]}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["id"], 90000001);
    assert_eq!(results[1]["stats"]["kills"], 1);
    assert_eq!(v["missing"], json!([42]));
    assert_eq!(v["as_of"]["epoch"], 3);
    let (s, v, _) = call(
        &f,
        "POST",
        "/v1/corporations:batch",
        Some(r#"{"ids":[98000001]}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["results"][0]["stats"]["kills"], 1);
    let (s, v, _) = call(&f, "POST", "/v1/alliances:batch", Some(r#"{"ids":[]}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["results"], json!([]));

    let too_many = json!({"ids": (1..=1001).collect::<Vec<u64>>()}).to_string();
    let at_limit = json!({"ids": (1..=1000).collect::<Vec<u64>>()}).to_string();
    let (s, _, _) = call(&f, "POST", "/v1/characters:batch", Some(&at_limit)).await;
    assert_eq!(s, StatusCode::OK);
    for body in [
        too_many.as_str(),
        "",
        "{",
        "[1,2]",
        r#"{"ids":"x"}"#,
        r#"{"ids":[-1]}"#,
        r#"{"ids":["1"]}"#,
        r#"{"idz":[1]}"#,
    ] {
        let (s, v, text) = call(&f, "POST", "/v1/characters:batch", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert_eq!(v["error"]["status"], 400);
    }
}

#[tokio::test]
async fn killmail_and_dead_letters() {
    let f = fixture();
    let (s, v, _) = call(&f, "GET", "/v1/killmails/10", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["killmail_id"], 10);
    assert_eq!(v["zkb"]["totalValue"], 1234.56);
    assert_eq!(v["zkb_version"], 0);
    assert_eq!(v["attackers"].as_array().unwrap().len(), 2);
    assert_eq!(v["applied_from"]["topic"], "killmails");
    assert_eq!(v["npc"], false);
    let (_, v, _) = call(&f, "GET", "/v1/killmails/11", None).await;
    assert_eq!(v["zkb"], Value::Null);
    let (s, v, _) = call(&f, "GET", "/v1/dead-letters", None).await;
    assert_eq!(s, StatusCode::OK);
    let dl = &v["dead_letters"][0];
    assert_eq!(
        (
            dl["topic"].as_str(),
            dl["partition"].as_i64(),
            dl["offset"].as_i64()
        ),
        (Some("killmails"), Some(1), Some(7))
    );
    assert_eq!(dl["reason"], "malformed_json");
    assert_eq!(dl["payload"], "{");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let f = fixture();
    let (s, v, _) = call(&f, "GET", "/healthz", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, _, _) = call(&f, "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK);
    f.state.ready.store(false, Ordering::Release);
    let (s, v, _) = call(&f, "GET", "/readyz", None).await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("not ready"))
    );
    // A request first, so the latency histogram has a series.
    call(&f, "GET", "/v1/characters/90000001", None).await;
    let (s, _, text) = call(&f, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    for name in [
        "kmflow_decode_failures_total{reason=\"malformed_json\"}",
        "kmflow_commit_latency_seconds_bucket",
        "kmflow_state_read_errors_total 0",
        "kmflow_commit_records_bucket",
        "kmflow_state_rocksdb_size_bytes",
        "kmflow_http_request_duration_seconds_bucket{route=\"/v1/characters/{id}\",status=\"200\"",
        "kmflow_upsert_total{outcome=\"inserted\"}",
        "kmflow_committed_epoch",
        "kmflow_source_outage",
        "kmflow_ready",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let size = text
        .lines()
        .find(|l| l.starts_with("kmflow_state_rocksdb_size_bytes "))
        .unwrap();
    assert!(size.rsplit(' ').next().unwrap().parse::<f64>().unwrap() > 0.0);
}
