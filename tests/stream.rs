//! The live feed's limits through the router (`Router::oneshot`, reading the event stream as a
//! client does): subscribers bounded, a subscriber too slow for the retention dropped with a
//! final event, a resume from before the retention told to resync, filters validated. The
//! end-to-end feed through a broker with a real SSE client is in `ecosystem.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use kmflow::api::{app, AppState};
use kmflow::config::{Config, StreamConfig};
use kmflow::feed::Feed;
use kmflow::metrics::Metrics;
use kmflow::state::RocksState;
use kmflow_dataflows::checkpoint::CheckpointBatch;
use kmflow_dataflows::{SourcePos, StoredKillmail};

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
}

fn fixture(max_subscribers: usize, retain_checkpoints: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksState::open(dir.path(), 16).unwrap();
    let mut state = AppState::new(s, Metrics::new(), &Config::defaults());
    state.stream = StreamConfig {
        max_subscribers,
        retain_checkpoints,
        retain_mb: 64,
        max_filter_ids: 3,
    };
    state.feed = Arc::new(Feed::new(&state.stream, None));
    state.topics = Arc::new(vec!["killmails".to_string()]);
    Fixture { _dir: dir, state }
}

/// Publishes a checkpoint at `epoch` that applied killmail `id` (worth `isk`).
fn publish(f: &Fixture, epoch: u64, id: u64, isk: f64) {
    let km = common::killmail(
        id,
        (90_000_001, 98_000_001, 99_000_001),
        &[(90_000_002, 98_000_002, 99_000_002)],
        Some(isk),
    );
    let stored = StoredKillmail {
        killmail: km,
        zkb_version: 0,
        applied_from: SourcePos {
            topic: 0,
            partition: 0,
            offset: id as i64,
        },
        epoch,
    };
    let mut batch = CheckpointBatch::<()> {
        last_epoch: epoch,
        upserts: vec![(id, stored)],
        applied: vec![id],
        ..Default::default()
    };
    f.state.feed.publish(&mut batch);
}

async fn get(f: &Fixture, uri: &str, last_event_id: Option<&str>) -> (StatusCode, Body) {
    let mut req = Request::builder().uri(uri);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = app(f.state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    (resp.status(), resp.into_body())
}

/// One server-sent event.
#[derive(Debug)]
struct Event {
    event: String,
    id: Option<String>,
    data: Value,
}

/// The next event that carries data for the client (`subscribed` and `checkpoint`, which move
/// its position only, skipped).
async fn next_event(body: &mut Body, buf: &mut String) -> Option<Event> {
    loop {
        let e = next_any(body, buf).await?;
        if e.event != "subscribed" && e.event != "checkpoint" {
            return Some(e);
        }
    }
}

/// Reads the next event (keep-alive comments skipped); `None` when the stream ended or nothing
/// came within a second.
async fn next_any(body: &mut Body, buf: &mut String) -> Option<Event> {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if event.is_empty() {
                continue; // a comment
            }
            let data = serde_json::from_str(&data).unwrap();
            return Some(Event { event, id, data });
        }
        let frame = tokio::time::timeout(Duration::from_secs(1), body.frame())
            .await
            .ok()??
            .ok()?;
        if let Ok(bytes) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&bytes).unwrap());
        }
    }
}

#[tokio::test]
async fn subscribers_are_bounded_and_counted() {
    let f = fixture(1, 10);
    let (s1, first) = get(&f, "/v1/stream", None).await;
    assert_eq!(s1, StatusCode::OK);
    let (s2, body) = get(&f, "/v1/stream", None).await;
    assert_eq!(s2, StatusCode::SERVICE_UNAVAILABLE);
    let bytes = body.collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stream.max-subscribers"));
    let m = &f.state.metrics;
    assert_eq!(m.stream.dropped.with_label_values(&["limit"]).get(), 1);
    assert_eq!(m.stream.subscribers.get(), 1);
    drop(first); // the client leaves: its slot is free again
    assert_eq!(m.stream.subscribers.get(), 0);
    let (s3, _third) = get(&f, "/v1/stream", None).await;
    assert_eq!(s3, StatusCode::OK);
}

#[tokio::test]
async fn events_follow_checkpoints_and_filters_apply() {
    let f = fixture(10, 10);
    let (_, mut all) = get(&f, "/v1/stream", None).await;
    let (_, mut rich) = get(&f, "/v1/stream?min_isk=1000000", None).await;
    let (_, mut mine) = get(&f, "/v1/stream?characters=90000002", None).await;
    let (_, mut other) = get(&f, "/v1/stream?alliances=1", None).await;
    publish(&f, 0, 10, 5.0);
    publish(&f, 1, 11, 2_000_000.0);
    let (mut b1, mut b2, mut b3, mut b4) = Default::default();
    for (epoch, id) in [("0:0", 10), ("1:0", 11)] {
        let e = next_event(&mut all, &mut b1).await.unwrap();
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            ("killmail", Some(epoch))
        );
        assert_eq!(e.data["killmail_id"], id);
    }
    let e = next_event(&mut rich, &mut b2).await.unwrap();
    assert_eq!(
        e.data["killmail_id"], 11,
        "only the one worth 1M ISK or more"
    );
    assert_eq!(
        next_event(&mut mine, &mut b3).await.unwrap().data["killmail_id"],
        10
    );
    // A subscriber the filters skip entirely still learns its position: where it started,
    // then each checkpoint it has seen in full.
    for (event, id) in [
        ("subscribed", "start"),
        ("checkpoint", "0"),
        ("checkpoint", "1"),
    ] {
        let e = next_any(&mut other, &mut b4).await.unwrap();
        assert_eq!((e.event.as_str(), e.id.as_deref()), (event, Some(id)));
    }
    assert!(
        next_event(&mut other, &mut b4).await.is_none(),
        "no killmail of alliance 1"
    );

    for (uri, names) in [
        ("/v1/stream?characters=1,x", "characters"),
        ("/v1/stream?min_isk=-5", "min_isk"),
        ("/v1/stream?characters=1,2,3,4", "stream.max-filter-ids"),
        ("/v1/stream?channel=all", "channel"),
    ] {
        let (s, body) = get(&f, uri, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        let v: Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(names),
            "{uri}: {v}"
        );
    }
    // A catch-up read: what is kept after the position, then the end of the stream.
    let (s, mut catch_up) = get(&f, "/v1/stream?follow=false&last_event_id=start", None).await;
    assert_eq!(s, StatusCode::OK);
    let mut buf = String::new();
    for id in ["0:0", "1:0"] {
        assert_eq!(
            next_event(&mut catch_up, &mut buf)
                .await
                .unwrap()
                .id
                .as_deref(),
            Some(id)
        );
    }
    assert!(catch_up.frame().await.is_none(), "the catch-up read ended");
    let (s, _) = get(&f, "/v1/stream", Some("yesterday")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_slow_subscriber_is_dropped_and_an_old_cursor_resyncs() {
    let f = fixture(10, 2);
    let (_, mut slow) = get(&f, "/v1/stream", None).await;
    let mut buf = String::new();
    publish(&f, 0, 10, 5.0);
    let e = next_event(&mut slow, &mut buf).await.unwrap();
    assert_eq!(e.id.as_deref(), Some("0:0"));
    // The subscriber does not read while three more checkpoints come: two are kept.
    publish(&f, 1, 11, 5.0);
    publish(&f, 2, 12, 5.0);
    publish(&f, 3, 13, 5.0);
    let e = next_event(&mut slow, &mut buf).await.unwrap();
    assert_eq!(e.event, "dropped", "{e:?}");
    assert_eq!(e.data["reason"], "slow");
    assert!(
        next_event(&mut slow, &mut buf).await.is_none(),
        "dropped means closed"
    );
    let m = &f.state.metrics;
    assert_eq!(m.stream.dropped.with_label_values(&["slow"]).get(), 1);

    // Resuming after 0:0: checkpoint 1 is gone, so the client is told to resync, then
    // follows live from the head.
    let (_, mut late) = get(&f, "/v1/stream", Some("0:0")).await;
    let mut buf = String::new();
    let e = next_event(&mut late, &mut buf).await.unwrap();
    assert_eq!((e.event.as_str(), e.id.as_deref()), ("resync", Some("3")));
    publish(&f, 4, 14, 5.0);
    let e = next_event(&mut late, &mut buf).await.unwrap();
    assert_eq!(e.data["killmail_id"], 14);
    // Resuming after 3:0 (kept): exactly what followed.
    let (_, mut resumed) = get(&f, "/v1/stream?last_event_id=3:0", None).await;
    let mut buf = String::new();
    let e = next_event(&mut resumed, &mut buf).await.unwrap();
    assert_eq!(
        (e.id.as_deref(), &e.data["killmail_id"]),
        (Some("4:0"), &Value::from(14))
    );
    assert!(next_event(&mut resumed, &mut buf).await.is_none());
    assert_eq!(m.stream.events.with_label_values(&["resync"]).get(), 1);
}
