//! End to end against a real Kafka-protocol broker (Tansu) with kmflow as its own process.
//!
//! Imports every real killmail under ../shared/data/killmails into a 4-partition topic, waits
//! for kmflow to commit all of it, compares the API's answers for hundreds of characters,
//! corporations and alliances with an independent fold of the same files, then checks dead
//! letters, an overlapping re-import, a clean restart (nothing re-read, answers unchanged) and
//! a crash (SIGKILL) restart.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{get_json, get_text, metric_sum, post_json, wait_until, Broker, Kmflow};
use kmflow::files::for_each_message;
use kmflow_dataflows::decode::decode;
use kmflow_dataflows::reference::ReferenceFold;
use kmflow_dataflows::time::format_rfc3339;
use kmflow_dataflows::{EntityKey, EntityKind, Stats};

const TOPIC: &str = "killmails";

fn fold(paths: &[PathBuf]) -> (usize, ReferenceFold) {
    let mut n = 0;
    let mut f = ReferenceFold::default();
    for_each_message(paths, &mut |r| {
        let (_, bytes) = r.unwrap();
        n += 1;
        f.apply(&decode(&bytes).unwrap());
    });
    (n, f)
}

fn path_for(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::Character => "characters",
        EntityKind::Corporation => "corporations",
        EntityKind::Alliance => "alliances",
    }
}

/// A few hundred entities of each kind: the 100 most active and an even spread of the rest.
fn sample(expected: &BTreeMap<EntityKey, Stats>) -> Vec<(EntityKind, Vec<u64>)> {
    EntityKind::ALL
        .iter()
        .map(|&kind| {
            let mut all: Vec<(&EntityKey, &Stats)> =
                expected.iter().filter(|(k, _)| k.kind == kind).collect();
            all.sort_by_key(|(k, s)| (std::cmp::Reverse(s.kills + s.losses), k.id));
            let mut ids: Vec<u64> = all.iter().take(100).map(|(k, _)| k.id).collect();
            let step = (all.len() / 250).max(1);
            ids.extend(
                all.iter()
                    .skip(100)
                    .step_by(step)
                    .take(250)
                    .map(|(k, _)| k.id),
            );
            (kind, ids)
        })
        .collect()
}

fn assert_matches(
    k: &Kmflow,
    expected: &BTreeMap<EntityKey, Stats>,
    picks: &[(EntityKind, Vec<u64>)],
) -> Value {
    let mut answers = Vec::new();
    for (kind, ids) in picks {
        let (status, v) = post_json(
            &k.url(&format!("/v1/{}:batch", path_for(*kind))),
            &json!({ "ids": ids }),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["missing"], json!([]), "{kind:?} missing");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), ids.len());
        for r in results {
            let id = r["id"].as_u64().unwrap();
            let e = &expected[&EntityKey::new(*kind, id)];
            let s = &r["stats"];
            let ctx = format!("{kind:?} {id}: {s}");
            for (field, want) in [
                ("kills", e.kills),
                ("losses", e.losses),
                ("npc_losses", e.npc_losses),
                ("final_blows", e.final_blows),
                ("damage_done", e.damage_done),
                ("damage_taken", e.damage_taken),
                ("points_destroyed", e.points_destroyed),
                ("points_lost", e.points_lost),
                ("solo_kills", e.solo_kills),
                ("solo_losses", e.solo_losses),
            ] {
                assert_eq!(s[field].as_i64(), Some(want), "{field} of {ctx}");
            }
            assert_eq!(
                (s["isk_destroyed"].as_f64().unwrap() * 100.0).round() as i128,
                e.isk_destroyed_cents,
                "{ctx}"
            );
            assert_eq!(
                (s["isk_lost"].as_f64().unwrap() * 100.0).round() as i128,
                e.isk_lost_cents,
                "{ctx}"
            );
            assert_eq!(
                s["first_seen"].as_str(),
                e.first_seen.map(format_rfc3339).as_deref(),
                "{ctx}"
            );
            assert_eq!(
                s["last_seen"].as_str(),
                e.last_seen.map(format_rfc3339).as_deref(),
                "{ctx}"
            );
        }
        answers.push(json!({"kind": format!("{kind:?}"), "results": v["results"].clone()}));
    }
    Value::Array(answers)
}

#[test]
fn real_killmails_through_kafka_with_restarts() {
    let data = common::shared_data().join("killmails");
    let paths = vec![data.clone()];
    let broker = Broker::start();
    broker.create_topic(TOPIC, 4);

    let t0 = Instant::now();
    let out = common::import(&broker, TOPIC, &paths);
    eprintln!("{}", out.trim());
    let (messages, reference) = fold(&paths);
    let expected = reference.stats();
    assert_eq!(reference.killmails.len(), 83_637, "distinct real killmails");

    let state = tempfile::tempdir().unwrap();
    let env = [
        ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
        ("KMFLOW__KAFKA__BROKERS", broker.addr()),
        ("KMFLOW__KAFKA__LIVE_TOPIC", TOPIC.to_string()),
        ("KMFLOW__PIPELINE__WORKERS", "2".to_string()),
    ];
    let mut k = Kmflow::start(state.path(), &env);
    wait_until(
        "kmflow to commit every message",
        Duration::from_secs(600),
        || common::committed_total(&k) == Some(messages as i64),
    );
    eprintln!(
        "e2e: {messages} messages imported and committed in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let (status, _) = get_json(&k.url("/readyz"));
    assert_eq!(status, 200);

    let picks = sample(&expected);
    assert!(
        picks.iter().all(|(_, ids)| ids.len() >= 200),
        "a few hundred of each kind"
    );
    let before = assert_matches(&k, &expected, &picks);
    // Upsert counters reach /metrics on the monitor's next tick.
    wait_until("upsert metrics", Duration::from_secs(10), || {
        metric_sum(&get_text(&k.url("/metrics")).1, "kmflow_upsert_total") == messages as f64
    });
    let (_, metrics) = get_text(&k.url("/metrics"));
    assert_eq!(
        metric_sum(&metrics, "kmflow_source_records_total"),
        messages as f64
    );
    assert_eq!(metric_sum(&metrics, "kmflow_decode_failures_total"), 0.0);

    // Undecodable messages: counted, kept with their position, nothing else changes.
    let bad = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    std::fs::write(
        bad.path(),
        "{\"killmail_id\": 5}\nnot json at all\n[1,2,3]\n",
    )
    .unwrap();
    let status = std::process::Command::new(common::kmflow_bin())
        .args([
            "import",
            "--send-invalid",
            "--topic",
            TOPIC,
            "--brokers",
            &broker.addr(),
        ])
        .args(common::TANSU_PRODUCER)
        .arg(bad.path())
        .env("KMFLOW_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "import exits non-zero when records fail");
    wait_until("dead letters", Duration::from_secs(120), || {
        common::committed_total(&k) == Some(messages as i64 + 3)
    });
    wait_until("dead letters counted", Duration::from_secs(10), || {
        metric_sum(
            &get_text(&k.url("/metrics")).1,
            "kmflow_decode_failures_total",
        ) == 3.0
    });
    let (_, dl) = get_json(&k.url("/v1/dead-letters"));
    let letters = dl["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|d| d["topic"] == TOPIC
        && d["offset"].is_i64()
        && !d["error"].as_str().unwrap().is_empty()));

    // Overlapping replay of the zkb samples: duplicates only, no answer changes.
    common::import(&broker, TOPIC, &[data.join("zkb-api")]);
    let total = messages as i64 + 3 + 427;
    wait_until("re-import", Duration::from_secs(120), || {
        common::committed_total(&k) == Some(total)
    });
    assert_eq!(assert_matches(&k, &expected, &picks), before);

    // Clean stop and start: same answers, nothing re-read, nothing committed anew.
    assert!(k.stop(), "kmflow exits cleanly on SIGTERM");
    let restart = Instant::now();
    k.spawn();
    wait_until("ready after restart", Duration::from_secs(60), || {
        get_json(&k.url("/readyz")).0 == 200
    });
    eprintln!(
        "e2e: restart to ready in {:.2}s",
        restart.elapsed().as_secs_f64()
    );
    assert_eq!(assert_matches(&k, &expected, &picks), before);
    std::thread::sleep(Duration::from_secs(2));
    let (_, metrics) = get_text(&k.url("/metrics"));
    assert_eq!(
        metric_sum(&metrics, "kmflow_source_records_total"),
        0.0,
        "no record re-read"
    );
    assert_eq!(common::committed_total(&k), Some(total));

    // Crash (SIGKILL) and restart: still the same.
    k.crash();
    k.spawn();
    wait_until("ready after crash", Duration::from_secs(60), || {
        get_json(&k.url("/readyz")).0 == 200
    });
    assert_eq!(assert_matches(&k, &expected, &picks), before);
    assert_eq!(common::committed_total(&k), Some(total));
    assert!(k.stop());
}
