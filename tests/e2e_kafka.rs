//! End to end against a real Kafka-protocol broker (Tansu) with kmflow as its own process.
//!
//! Imports every real killmail under ../shared/data/killmails into a 4-partition topic, waits
//! for kmflow to write all of it, compares the API's answers for hundreds of characters,
//! corporations and alliances with an independent fold of the same files, then checks dead
//! letters, an overlapping re-import, a clean restart (nothing re-read, answers unchanged) and
//! a crash (SIGKILL) restart.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{get_json, get_text, metric_sum, path_for, post_json, wait_until, Broker, Kmflow};
use kmflow::files::for_each_message;
use std::collections::BTreeSet;

use kmflow_dataflows::keys::{Dim, Metric, RankKey, StatKey, WINDOW_NAMES};
use kmflow_dataflows::reference::ReferenceFold;
use kmflow_dataflows::time::{day_of, format_rfc3339, parse_rfc3339};
use kmflow_dataflows::{EntityKey, EntityKind, Stats};

const TOPIC: &str = "killmails";

fn fold(paths: &[PathBuf]) -> (usize, ReferenceFold) {
    let mut n = 0;
    let mut f = ReferenceFold::default();
    for_each_message(paths, &mut |r| {
        let (_, bytes) = r.unwrap();
        n += 1;
        f.apply(&common::decode_derived(&bytes).unwrap(), true); // all on the live topic
    });
    (n, f)
}

/// A few hundred entities of each kind: the 100 most active and an even spread of the rest.
fn sample(expected: &BTreeMap<EntityKey, Stats>) -> Vec<(EntityKind, Vec<u64>)> {
    EntityKind::ALL
        .iter()
        .map(|&kind| {
            let mut all: Vec<(&EntityKey, &Stats)> =
                expected.iter().filter(|(k, _)| k.kind == kind).collect();
            all.sort_by_key(|(k, s)| (std::cmp::Reverse(s.sums.kills + s.sums.losses), k.id));
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
            stat_fields(s, e, &ctx);
            assert_eq!(
                s["first_seen"].as_str(),
                e.seen.first.map(format_rfc3339).as_deref(),
                "{ctx}"
            );
            assert_eq!(
                s["last_seen"].as_str(),
                e.seen.last.map(format_rfc3339).as_deref(),
                "{ctx}"
            );
        }
        answers.push(json!({"kind": format!("{kind:?}"), "results": v["results"].clone()}));
    }
    Value::Array(answers)
}

/// The clock the test pins: the data's last day (the EVE Ref week ends 2021-12-03).
const PINNED: &str = "2021-12-03T23:59:59Z";

type Full = (BTreeMap<StatKey, Stats>, BTreeSet<RankKey>);

fn stat_fields(s: &Value, e: &Stats, ctx: &str) {
    for (field, want) in [
        ("involved", e.sums.involved),
        ("kills", e.sums.kills),
        ("losses", e.sums.losses),
        ("npc_losses", e.sums.npc_losses),
        ("final_blows", e.sums.final_blows),
        ("damage_done", e.sums.damage_done),
        ("damage_taken", e.sums.damage_taken),
        ("points_destroyed", e.sums.points_destroyed),
        ("points_lost", e.sums.points_lost),
    ] {
        assert_eq!(s[field].as_i64(), Some(want), "{field} of {ctx}: {s}");
    }
    for (field, want) in [
        ("solo_kills", e.sums.solo_kills),
        ("solo_losses", e.sums.solo_losses),
    ] {
        assert_eq!(
            s[field].as_i64(),
            common::solo_field(want, e),
            "{field} of {ctx}"
        );
    }
    for (field, want) in [
        ("isk_destroyed", e.sums.isk_destroyed_cents),
        ("isk_lost", e.sums.isk_lost_cents),
    ] {
        let got = (s[field].as_f64().unwrap() * 100.0).round() as i128;
        assert_eq!(got, want, "{field} of {ctx}");
    }
}

/// Windows, months and breakdowns of the most active entities of each kind.
fn assert_entity_views(k: &Kmflow, full: &Full, picks: &[(EntityKind, Vec<u64>)]) {
    let get = |key: StatKey| full.0.get(&key).copied().unwrap_or_default();
    for (kind, ids) in picks {
        for &id in ids.iter().take(15) {
            let e = EntityKey::new(*kind, id);
            let (status, v) =
                get_json(&k.url(&format!("/v1/{}/{id}?include=all", path_for(*kind))));
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["clock"]["day"], "2021-12-03");
            for (w, name) in WINDOW_NAMES.iter().enumerate() {
                let want = get(StatKey::new(e, Dim::Window(w as u8)));
                stat_fields(
                    &v["windows"][name]["stats"],
                    &want,
                    &format!("{kind:?} {id} {name}"),
                );
            }
            assert_eq!(v["windows"]["7d"]["range"]["from"], "2021-11-27");
            let months: Vec<(String, i64)> = full
                .0
                .range(StatKey::new(e, Dim::Month(0))..StatKey::new(e, Dim::Month(u32::MAX)))
                .map(|(k, s)| match k.dim {
                    Dim::Month(m) => (format!("{}-{:02}", m / 100, m % 100), s.sums.kills),
                    _ => unreachable!(),
                })
                .collect();
            let got: Vec<(String, i64)> = v["months"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m["month"].as_str().unwrap().to_string(),
                        m["kills"].as_i64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(got, months, "{kind:?} {id} months");
            // Heatmap and group breakdown sum to the all-time kills.
            let all = get(StatKey::all(e));
            let heat: i64 = v["activity"]["kills"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|d| d.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
                .sum();
            assert_eq!(heat, all.sums.kills, "{kind:?} {id} heatmap");
            let destroyed: i64 = v["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["ships_destroyed"].as_i64().unwrap())
                .sum();
            assert_eq!(destroyed, all.sums.kills, "{kind:?} {id} groups");
            // Top ships: the ten best, by kills then type id.
            let mut ships: Vec<(i64, u32)> = full
                .0
                .range(StatKey::new(e, Dim::Ship(0))..=StatKey::new(e, Dim::Ship(u32::MAX)))
                .map(|(k, s)| match k.dim {
                    Dim::Ship(t) => (-s.sums.kills, t),
                    _ => unreachable!(),
                })
                .collect();
            ships.sort();
            ships.truncate(10);
            let got: Vec<(i64, u32)> = v["top_ships"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        -x["kills"].as_i64().unwrap(),
                        x["ship_type_id"].as_u64().unwrap() as u32,
                    )
                })
                .collect();
            assert_eq!(got, ships, "{kind:?} {id} top ships");
        }
    }
}

/// The rosters of the three largest corporations, every page, in two windows and two orders.
fn assert_rosters(k: &Kmflow, full: &Full) {
    let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
    for key in full.0.keys() {
        if let Dim::Member(_) = key.dim {
            *sizes.entry(key.entity.id).or_default() += 1;
        }
    }
    let mut largest: Vec<(usize, u64)> = sizes.into_iter().map(|(c, n)| (n, c)).collect();
    largest.sort_by(|a, b| b.cmp(a));
    assert!(largest[0].0 >= 200, "a large corporation: {:?}", largest[0]);
    for &(_, corp) in largest.iter().take(3) {
        let e = EntityKey::new(EntityKind::Corporation, corp);
        for (window, order) in [("all", "desc"), ("7d", "desc"), ("30d", "asc")] {
            // Windows end at the pinned clock's day.
            let clock = day_of(parse_rfc3339(PINNED).unwrap());
            let mut sums: BTreeMap<u64, Stats> = BTreeMap::new();
            for (key, s) in full.0.iter().filter(|(key, _)| key.entity == e) {
                match (key.dim, window) {
                    (Dim::Member(c), "all") => sums.entry(c).or_default().merge(s),
                    (Dim::MemberDay(d, c), "7d") if d <= clock && d > clock - 7 => {
                        sums.entry(c).or_default().merge(s)
                    }
                    (Dim::MemberDay(d, c), "30d") if d <= clock && d > clock - 30 => {
                        sums.entry(c).or_default().merge(s)
                    }
                    _ => {}
                }
            }
            let mut want: Vec<(u64, Stats)> =
                sums.into_iter().filter(|(_, s)| !s.is_empty()).collect();
            want.sort_by(|a, b| {
                let v = if order == "desc" {
                    b.1.sums.kills.cmp(&a.1.sums.kills)
                } else {
                    a.1.sums.kills.cmp(&b.1.sums.kills)
                };
                v.then(a.0.cmp(&b.0))
            });
            let mut got: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut url = format!("/v1/corporations/{corp}/members?window={window}&sort=kills&order={order}&limit=37");
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={c}"));
                }
                let (status, v) = get_json(&k.url(&url));
                assert_eq!(status, 200, "{v}");
                assert_eq!(
                    v["active_members"].as_u64(),
                    Some(want.len() as u64),
                    "{corp} {window}"
                );
                got.extend(v["members"].as_array().unwrap().iter().cloned());
                match v["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            assert_eq!(got.len(), want.len(), "{corp} {window}: every member once");
            for (g, (c, s)) in got.iter().zip(&want) {
                assert_eq!(
                    g["character_id"].as_u64(),
                    Some(*c),
                    "{corp} {window} {order} order"
                );
                stat_fields(&g["stats"], s, &format!("member {c} of {corp} in {window}"));
            }
        }
    }
}

/// Every leaderboard's first 100, against the ranking computed from scratch.
fn assert_leaderboards(k: &Kmflow, full: &Full) {
    for kind in EntityKind::ALL {
        for metric in Metric::ALL {
            for (w, window) in [(0u8, "all"), (1, "7d"), (2, "30d"), (3, "90d")] {
                let mut want: Vec<(u64, i128)> = full
                    .1
                    .iter()
                    .filter(|r| r.kind == kind && r.metric == metric && r.window == w)
                    .map(|r| (r.id, r.value))
                    .collect();
                // Value descending, then id ascending.
                want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                want.truncate(100);
                let (status, v) = get_json(&k.url(&format!(
                    "/v1/leaderboards/{}?by={}&window={window}&limit=100",
                    path_for(kind),
                    metric.as_str()
                )));
                assert_eq!(status, 200, "{v}");
                let got: Vec<(u64, i128)> = v["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| {
                        let value = match metric {
                            Metric::IskDestroyed => {
                                (x["value"].as_f64().unwrap() * 100.0).round() as i128
                            }
                            _ => x["value"].as_i64().unwrap() as i128,
                        };
                        (x["id"].as_u64().unwrap(), value)
                    })
                    .collect();
                assert_eq!(got, want, "{kind:?} by {} in {window}", metric.as_str());
                assert!(!got.is_empty() || metric != Metric::Kills);
            }
        }
    }
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
    let full: Full = reference.full(Some(day_of(parse_rfc3339(PINNED).unwrap())));
    assert_eq!(reference.killmails.len(), 83_637, "distinct real killmails");

    let state = tempfile::tempdir().unwrap();
    let env = [
        ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
        ("KMFLOW__KAFKA__BROKERS", broker.addr()),
        ("KMFLOW__KAFKA__LIVE_TOPIC", TOPIC.to_string()),
        ("KMFLOW__PIPELINE__WORKERS", "2".to_string()),
        ("KMFLOW__STATS__WALL_CLOCK", PINNED.to_string()),
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
    let t = Instant::now();
    assert_entity_views(&k, &full, &picks);
    assert_rosters(&k, &full);
    assert_leaderboards(&k, &full);
    eprintln!(
        "e2e: windows, rosters and leaderboards checked in {:.1}s",
        t.elapsed().as_secs_f64()
    );
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

    dead_letters_are_kept(&broker, &k, messages);

    // Overlapping replay of the zkb samples: duplicates only, no answer changes.
    common::import(&broker, TOPIC, &[data.join("zkb-api")]);
    let total = messages as i64 + 3 + 427;
    wait_until("re-import", Duration::from_secs(120), || {
        common::committed_total(&k) == Some(total)
    });
    assert_eq!(assert_matches(&k, &expected, &picks), before);

    let answers = Answers {
        expected: &expected,
        picks: &picks,
        before: &before,
        full: &full,
    };
    same_after_stop_and_crash(&mut k, &answers, total);
    assert!(k.stop());
}

/// Undecodable messages: counted, kept with their position, nothing else changes.
fn dead_letters_are_kept(broker: &Broker, k: &Kmflow, messages: usize) {
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
        common::committed_total(k) == Some(messages as i64 + 3)
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
}

/// What a kmflow that imported the real killmails must keep answering.
struct Answers<'a> {
    expected: &'a BTreeMap<EntityKey, Stats>,
    picks: &'a [(EntityKind, Vec<u64>)],
    before: &'a Value,
    full: &'a Full,
}

/// A clean stop and start, then a crash (SIGKILL) and start: the same answers, nothing read
/// again, nothing committed anew; `total` records committed throughout. Leaves it running.
fn same_after_stop_and_crash(k: &mut Kmflow, a: &Answers, total: i64) {
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
    assert_eq!(&assert_matches(k, a.expected, a.picks), a.before);
    std::thread::sleep(Duration::from_secs(2));
    let (_, metrics) = get_text(&k.url("/metrics"));
    assert_eq!(
        metric_sum(&metrics, "kmflow_source_records_total"),
        0.0,
        "no record re-read"
    );
    assert_eq!(common::committed_total(k), Some(total));

    // Crash (SIGKILL) and restart: still the same.
    k.crash();
    k.spawn();
    wait_until("ready after crash", Duration::from_secs(60), || {
        get_json(&k.url("/readyz")).0 == 200
    });
    assert_eq!(&assert_matches(k, a.expected, a.picks), a.before);
    assert_eq!(common::committed_total(k), Some(total));
    assert_leaderboards(k, a.full);
}

/// The version order through the broker and across a restart: a live re-appraisal, then a
/// history topic replaying the old appraisal, leaves the live one applied; an R2Z2 version
/// with a newer sequence replaces it from any topic.
#[test]
fn live_appraisal_survives_history_replay_across_restart() {
    let broker = Broker::start();
    broker.create_topic("live", 1);
    broker.create_topic("history", 1);
    let dir = tempfile::tempdir().unwrap();
    let esi = serde_json::json!({"killmail_id": 4242, "killmail_time": "2021-11-27T10:00:00Z",
        "solar_system_id": 30000142,
        "victim": {"character_id": 95000001, "corporation_id": 98000001, "damage_taken": 10, "ship_type_id": 587},
        "attackers": [{"character_id": 95000002, "corporation_id": 98000002, "damage_done": 10, "final_blow": true, "ship_type_id": 587}]});
    let with_zkb = |value: f64| {
        let mut km = esi.clone();
        km["zkb"] = serde_json::json!({"totalValue": value, "points": 1, "npc": false, "solo": true, "awox": false});
        km
    };
    let file = |name: &str, v: &Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
        p
    };
    let old = file("old.json", &with_zkb(100.0));
    let new = file("new.json", &with_zkb(200.0));
    let r2z2 = file(
        "r2z2.json",
        &serde_json::json!({"killmail_id": 4242, "hash": "h", "esi": esi,
            "zkb": {"totalValue": 300.0, "points": 1, "npc": false, "solo": true, "awox": false},
            "sequence_id": 7}),
    );
    let state = tempfile::tempdir().unwrap();
    let env = [
        ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
        ("KMFLOW__KAFKA__BROKERS", broker.addr()),
        ("KMFLOW__KAFKA__LIVE_TOPIC", "live".to_string()),
        ("KMFLOW__KAFKA__HISTORY_TOPICS", "[\"history\"]".to_string()),
        ("KMFLOW__PIPELINE__WORKERS", "2".to_string()),
        ("KMFLOW__STATS__WALL_CLOCK", PINNED.to_string()),
    ];
    let value = |k: &Kmflow| get_json(&k.url("/v1/killmails/4242")).1["zkb"]["totalValue"].as_f64();
    let consumed = |k: &Kmflow, n: i64| {
        wait_until("kmflow to commit", Duration::from_secs(60), || {
            common::committed_total(k) == Some(n)
        })
    };
    let mut k = Kmflow::start(state.path(), &env);
    common::import(&broker, "live", std::slice::from_ref(&old));
    common::import(&broker, "live", std::slice::from_ref(&new));
    consumed(&k, 2);
    assert_eq!(
        value(&k),
        Some(200.0),
        "the live re-appraisal replaced the first"
    );
    common::import(&broker, "history", std::slice::from_ref(&old));
    consumed(&k, 3);
    assert_eq!(
        value(&k),
        Some(200.0),
        "a history replay of the old appraisal is older"
    );
    assert!(k.stop());
    let mut k = Kmflow::start(state.path(), &env);
    common::import(&broker, "history", std::slice::from_ref(&old));
    consumed(&k, 4);
    assert_eq!(value(&k), Some(200.0), "and stays older after a restart");
    let (_, v) = get_json(&k.url("/v1/characters/95000001"));
    assert_eq!(
        v["stats"]["isk_lost"], 200.0,
        "statistics follow the applied version"
    );
    common::import(&broker, "history", std::slice::from_ref(&r2z2));
    consumed(&k, 5);
    assert_eq!(
        value(&k),
        Some(300.0),
        "an R2Z2 sequence is newer than no sequence"
    );
    common::import(&broker, "live", std::slice::from_ref(&new));
    consumed(&k, 6);
    assert_eq!(
        value(&k),
        Some(300.0),
        "a live version without a sequence is older"
    );
    assert!(k.stop());
}
