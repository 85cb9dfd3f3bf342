//! Every route and error case of the read API, through `Router::oneshot` over a real RocksDB.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use kmflow::api::{app, AppState};
use kmflow::metrics::Metrics;
use kmflow::state::RocksState;
use kmflow_dataflows::checkpoint::CheckpointBatch;
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
    let mut batch = common::batch_of(&*s, &kms, 3);
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
    fixture_of(dir, s, &batch, &offsets)
}

/// The API, ready, over `s` (in `dir`) after one checkpoint of `batch` at `offsets`.
fn fixture_of(
    dir: tempfile::TempDir,
    s: Arc<RocksState>,
    batch: &CheckpointBatch<()>,
    offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
) -> Fixture {
    s.write_checkpoint(
        batch,
        &["killmails".to_string()],
        offsets,
        &BTreeMap::new(),
        i64::MAX,
    )
    .unwrap();
    let mut state = AppState::new(s, Metrics::new(), &kmflow::config::Config::defaults());
    state
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    state.topics = Arc::new(vec!["killmails".to_string()]);
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
    for field in kmflow::api::stat_fields() {
        assert!(st.get(field).is_some(), "missing {field}");
    }
    assert_eq!(
        st.as_object().unwrap().len(),
        kmflow::api::stat_fields().len()
    );
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

/// The OpenAPI document is served, documents every route, and is the one kept in the
/// repository (`openapi.json`, for clients and code generators).
#[tokio::test]
async fn openapi_document_is_served_and_kept_in_the_repository() {
    let f = fixture();
    let (s, v, _) = call(&f, "GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["openapi"], "3.1.0");
    let kept = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .expect("openapi.json in the repository");
    assert_eq!(
        v,
        serde_json::from_str::<Value>(&kept).unwrap(),
        "openapi.json is stale: regenerate it with `cargo run --release -- openapi > openapi.json`"
    );
    for path in [
        "/v1/characters/{id}",
        "/v1/corporations/{id}",
        "/v1/alliances/{id}",
        "/v1/characters:batch",
        "/v1/corporations:batch",
        "/v1/alliances:batch",
        "/v1/corporations/{id}/members",
        "/v1/leaderboards/{kind}",
        "/v1/killmails/{id}",
        "/v1/dead-letters",
        "/v1/stream",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(v["paths"].get(path).is_some(), "{path} undocumented");
    }
    let stats = &v["components"]["schemas"]["StatsBody"]["properties"];
    for field in kmflow::api::stat_fields() {
        assert!(
            stats.get(field).is_some(),
            "{field} missing from the StatsBody schema"
        );
    }
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
        "kmflow_checkpoint_seconds_bucket",
        "kmflow_state_read_errors_total 0",
        "kmflow_checkpoint_records_bucket",
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
    // RocksDB's memory by part; the fixture's writes are still in the memtables.
    let part = |p: &str| -> f64 {
        let prefix = format!("kmflow_state_rocksdb_memory_bytes{{part=\"{p}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no {prefix}:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(part("memtables") > 0.0);
    assert!(
        part("block_cache") <= 16.0 * 1024.0 * 1024.0,
        "the fixture opens a 16 MiB cache"
    );
    part("pinned");
    part("table_readers");
}

#[tokio::test]
async fn windows_sections_and_fields() {
    let f = fixture();
    let (s, v, text) = call(&f, "GET", "/v1/characters/90000001", None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    // The clock is the latest killmail (the wall clock is far ahead): 2021-11-27.
    assert_eq!(v["clock"]["day"], "2021-11-27");
    assert_eq!(v["windows"]["7d"]["stats"]["kills"], 1);
    assert_eq!(v["windows"]["7d"]["stats"]["losses"], 1);
    assert_eq!(
        v["windows"]["7d"]["range"],
        json!({"from": "2021-11-21", "to": "2021-11-27"})
    );
    assert_eq!(v["windows"]["90d"]["range"]["from"], "2021-08-30");
    assert!(
        v.get("months").is_none(),
        "sections beyond windows are opt-in"
    );
    // Killmail 11 has no zkb and there is no static data: solo is unknown, and says why.
    assert_eq!(v["stats"]["solo_kills"], Value::Null);
    assert_eq!(v["stats"]["gang_ratio"], Value::Null);
    assert!(v["unavailable"]["solo"]
        .as_str()
        .unwrap()
        .contains("stats.static-dir"));
    // zKillboard's danger ratio: (1 kill + 0 points) / (1 + 0 + 1 loss + 10 points lost).
    assert_eq!(v["stats"]["danger_ratio"], 8);

    let (s, v, _) = call(
        &f,
        "GET",
        "/v1/characters/90000002?fields=kills,gang_ratio",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["stats"], json!({"kills": 1, "gang_ratio": 50}));
    assert_eq!(
        v["windows"]["30d"]["stats"],
        json!({"kills": 1, "gang_ratio": 50})
    );

    let (s, v, _) = call(
        &f,
        "GET",
        "/v1/corporations/98000002?include=all&fields=kills",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["months"], json!([{"month": "2021-11", "kills": 1}]));
    assert_eq!(v["top_ships"], json!([{"ship_type_id": 587, "kills": 1}]));
    assert_eq!(v["top_systems"][0]["solar_system_id"], 30000142);
    assert_eq!(v["top_systems"][0]["kills"], 1);
    assert_eq!(v["top_systems"][0]["losses"], 1);
    let heat = &v["activity"]["kills"];
    // 2021-11-27 was a Saturday; 12:00 UTC.
    assert_eq!(heat[5][12], 1);
    let total: i64 = heat
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
        .sum();
    assert_eq!(total, 1);
    assert_eq!(v["groups"], Value::Null);
    assert!(v["unavailable"]["groups"]
        .as_str()
        .unwrap()
        .contains("static-dir"));
}

/// A parameter mistake is a 400 whose message names the parameter and the values allowed.
#[tokio::test]
async fn parameter_mistakes_name_the_parameter_and_the_values_allowed() {
    let f = fixture();
    for (uri, names) in [
        (
            "/v1/characters/90000001?fields=kils",
            vec!["fields", "\"kils\"", "kills"],
        ),
        (
            "/v1/characters/90000001?include=heatmap",
            vec!["include", "activity"],
        ),
        (
            "/v1/characters/90000001?frobnicate=1",
            vec!["unknown parameter", "frobnicate", "fields"],
        ),
        (
            "/v1/corporations/98000002/members?window=8d",
            vec!["window", "7d, 30d, 90d, all"],
        ),
        (
            "/v1/corporations/98000002/members?sort=bravery",
            vec!["sort", "isk_destroyed"],
        ),
        (
            "/v1/corporations/98000002/members?order=up",
            vec!["order", "desc, asc"],
        ),
        (
            "/v1/corporations/98000002/members?limit=0",
            vec!["limit", "1 to 1000"],
        ),
        (
            "/v1/corporations/98000002/members?cursor=zz",
            vec!["cursor"],
        ),
        (
            "/v1/corporations/98000002/members?window=7d&sort=first_seen",
            vec!["sort", "window=all"],
        ),
        (
            "/v1/leaderboards/ships",
            vec!["leaderboard", "characters, corporations, alliances"],
        ),
        (
            "/v1/leaderboards/characters?by=deaths",
            vec!["by", "kills, isk_destroyed, points_destroyed, solo_kills"],
        ),
        (
            "/v1/leaderboards/characters?window=1y",
            vec!["window", "7d, 30d, 90d, all"],
        ),
        ("/v1/leaderboards/characters?limit=5000", vec!["limit"]),
    ] {
        let (s, v, text) = call(&f, "GET", uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {text}");
        let msg = v["error"]["message"].as_str().unwrap();
        for n in names {
            assert!(msg.contains(n), "{uri}: {msg:?} should name {n}");
        }
    }
}

#[tokio::test]
async fn roster_pages_with_stable_cursors() {
    let f = fixture();
    let base = "/v1/corporations/98000002/members?window=all&sort=kills&order=desc&limit=1";
    let (s, p1, text) = call(&f, "GET", base, None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(p1["active_members"], 2);
    // 90000003: a kill (killmail 10) and a loss (11) under this corporation; 90000002: a kill.
    assert_eq!(p1["members"][0]["character_id"], 90000002);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2, _) = call(&f, "GET", &format!("{base}&cursor={cursor}"), None).await;
    assert_eq!(p2["members"][0]["character_id"], 90000003);
    assert_eq!(p2["members"][0]["stats"]["losses"], 1);
    assert_eq!(p2["next_cursor"], Value::Null);
    // The same cursor gives the same page again (stable), and is refused for another sort.
    let (_, again, _) = call(&f, "GET", &format!("{base}&cursor={cursor}"), None).await;
    assert_eq!(again["members"], p2["members"]);
    let (s, v, _) = call(
        &f,
        "GET",
        &format!("/v1/corporations/98000002/members?sort=losses&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sort=kills"));
    // Ascending by losses, 7-day window.
    let (_, v, _) = call(
        &f,
        "GET",
        "/v1/corporations/98000002/members?window=7d&sort=losses&order=asc",
        None,
    )
    .await;
    let ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["character_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [90000002, 90000003]);
    assert_eq!(v["range"]["to"], "2021-11-27");
    let (s, _, _) = call(&f, "GET", "/v1/corporations/5/members", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn leaderboards() {
    let f = fixture();
    let (s, v, text) = call(
        &f,
        "GET",
        "/v1/leaderboards/characters?by=isk_destroyed&window=7d",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0],
        json!({"rank": 1, "id": 90000002, "value": 1234.56, "stats": entries[0]["stats"].clone()})
    );
    assert_eq!(entries[1]["id"], 90000003);
    assert_eq!(entries[0]["stats"]["kills"], 1);
    let (_, v, _) = call(
        &f,
        "GET",
        "/v1/leaderboards/corporations?by=kills&limit=1",
        None,
    )
    .await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    assert_eq!(v["entries"][0]["id"], 98000001);
    assert_eq!(v["window"], "all");
    assert_eq!(v["as_of"]["epoch"], 3);
}

/// Every route, with random paths, parameters, cursors and bodies: never a 5xx, always the
/// JSON error shape on a 4xx (the framework's own rejections included).
#[tokio::test]
async fn no_request_gets_a_server_error_or_a_non_json_body() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let f = fixture();
    let mut rng = SmallRng::seed_from_u64(7);
    let routes = [
        "/v1/characters/{}",
        "/v1/corporations/{}",
        "/v1/alliances/{}",
        "/v1/corporations/{}/members",
        "/v1/leaderboards/{}",
        "/v1/killmails/{}",
        "/v1/dead-letters",
        "/v1/characters:batch",
        "/v1/corporations:batch",
        "/v1/alliances:batch",
        "/healthz",
        "/readyz",
        "/nope/{}",
    ];
    let atoms = [
        "1",
        "90000001",
        "98000002",
        "0",
        "-1",
        "+5",
        "%20%35",
        "18446744073709551616",
        "a%C3%A9b",
        "%FF%FE",
        "%",
        "characters",
        "kills",
        "isk_destroyed",
        "7d",
        "all",
        "desc",
        "asc",
        "",
        "\u{e9}",
        "%00",
        "1e3",
        "null",
        "windows,months",
        "all,top_ships",
    ];
    let names = [
        "window", "sort", "order", "limit", "cursor", "fields", "include", "by", "reason", "topic",
        "x", "limit",
    ];
    let bodies = [
        "",
        "{",
        "[]",
        "{\"ids\":[]}",
        "{\"ids\":[1,1,1,90000001]}",
        "{\"ids\":[-1]}",
        "{\"ids\":\"x\"}",
        "{\"ids\":[1.5]}",
        "{\"ids\":[18446744073709551616]}",
        "\u{0}",
    ];
    for _ in 0..1500 {
        let pick = |rng: &mut SmallRng, xs: &[&str]| xs[rng.random_range(0..xs.len())].to_string();
        let route = pick(&mut rng, &routes).replace("{}", &pick(&mut rng, &atoms));
        let mut query = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            let v = if rng.random_bool(0.2) {
                // A cursor-like value: random hex, sometimes non-ASCII.
                (0..rng.random_range(0..40))
                    .map(|_| ["a", "f", "0", "9", "z", "%C3%A9", "7c"][rng.random_range(0..7)])
                    .collect::<String>()
            } else {
                pick(&mut rng, &atoms)
            };
            query.push(format!("{}={v}", pick(&mut rng, &names)));
        }
        let uri = if query.is_empty() {
            route
        } else {
            format!("{route}?{}", query.join("&"))
        };
        let method = if uri.contains(":batch") || rng.random_bool(0.05) {
            "POST"
        } else {
            "GET"
        };
        let body = (method == "POST").then(|| pick(&mut rng, &bodies));
        let Ok(req) = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json")
            .body(body.clone().map_or_else(Body::empty, Body::from))
        else {
            continue; // not a URI the client can even send
        };
        let resp = app(f.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            !status.is_server_error(),
            "{method} {uri} {body:?}: {status}"
        );
        if status.is_client_error() {
            let v: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{method} {uri}: non-JSON {status} body {bytes:?}"));
            assert_eq!(v["error"]["status"], status.as_u16(), "{method} {uri}");
            assert!(v["error"]["message"].is_string());
            assert_eq!(ctype.as_deref(), Some("application/json"));
        }
    }
}

/// Regression tests of the hostile-client findings, one per finding.
#[tokio::test]
async fn hostile_requests_get_clear_json_errors() {
    let f = fixture();
    // A forged non-ASCII roster cursor used to panic the handler.
    let (s, v, _) = call(
        &f,
        "GET",
        "/v1/corporations/98000002/members?cursor=a%C3%A9b",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("cursor"));
    // Repeated parameters are a 400 on every route, never "the last one wins".
    for uri in [
        "/v1/characters/90000001?include=windows&include=months",
        "/v1/leaderboards/characters?by=kills&by=losses",
        "/v1/dead-letters?limit=1&limit=2",
    ] {
        let (s, v, _) = call(&f, "GET", uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than once"),
            "{uri}"
        );
    }
    // Ids are plain decimal.
    for uri in [
        "/v1/characters/+90000001",
        "/v1/killmails/%2B10",
        "/v1/characters/%2090000001",
    ] {
        let (s, _, _) = call(&f, "GET", uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
    }
    // Invalid UTF-8 in the path: the JSON error.
    let (s, v, _) = call(&f, "GET", "/v1/characters/%FF", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["status"], 400);
    // A body over the limit: 413 with the JSON error.
    let big = format!("{{\"ids\":[{}]}}", vec!["1"; 2_000_000].join(","));
    let (s, v, _) = call(&f, "POST", "/v1/characters:batch", Some(&big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["status"], 413);
    // A URI over the limit: 414 with the JSON error.
    let long = format!("/v1/characters/1?fields={}", "a".repeat(10_000));
    let (s, v, _) = call(&f, "GET", &long, None).await;
    assert_eq!(s, StatusCode::URI_TOO_LONG);
    assert_eq!(v["error"]["status"], 414);
    // Duplicate batch ids are answered once.
    let (s, v, _) = call(
        &f,
        "POST",
        "/v1/characters:batch",
        Some(&format!(
            "{{\"ids\":[{}]}}",
            vec!["90000001"; 1000].join(",")
        )),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
}

/// An entity with more buckets of a breakdown than a read decodes (10,000: only unusual input
/// makes that many, such as one character listed with 10,001 ship types) has the sections
/// computed from part of them named in `truncated`, not silently cut.
#[tokio::test]
async fn truncated_breakdowns_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksState::open(dir.path(), 16).unwrap();
    let attackers: Vec<Value> = (1..=10_001u32)
        .map(|t| {
            serde_json::json!({"character_id": 90_000_009u64, "corporation_id": 98_000_009u64,
                "damage_done": 1, "final_blow": t == 1, "ship_type_id": t})
        })
        .chain([serde_json::json!({"character_id": 90_000_010u64, "ship_type_id": 587})])
        .collect();
    let km = serde_json::json!({"killmail_id": 20, "killmail_time": "2021-11-27T12:00:00Z",
        "solar_system_id": 30000142, "victim": {"character_id": 90_000_011u64, "ship_type_id": 670},
        "attackers": attackers});
    let km = kmflow_dataflows::decode::decode(&serde_json::to_vec(&km).unwrap()).unwrap();
    let batch = common::batch_of(&*s, &[km], 1);
    let offsets = BTreeMap::from([("killmails".to_string(), BTreeMap::from([(0, 1i64)]))]);
    let f = fixture_of(dir, s, &batch, &offsets);
    let (status, body, text) = call(&f, "GET", "/v1/characters/90000009?include=all", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        body["truncated"],
        serde_json::json!(["top_ships"]),
        "{text}"
    );
    assert_eq!(body["stats"]["kills"], 1, "{text}");
    let (status, body, text) = call(&f, "GET", "/v1/characters/90000010?include=all", None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(body.get("truncated").is_none(), "{text}");
    assert_eq!(body["top_ships"][0]["ship_type_id"], 587, "{text}");
}
