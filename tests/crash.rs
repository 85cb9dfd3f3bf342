//! Exactly-once under crashes: kmflow is killed with SIGKILL at random moments (mid-fetch,
//! mid-epoch, mid-commit, under API load) while it ingests the real killmails from a history
//! topic and a live topic, restarted each time, and at the end every entity's statistics must
//! equal the from-scratch fold of everything produced. Deterministic by seed:
//! `KMFLOW_CRASH_SEED=n cargo test --release --test crash`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use common::{wait_until, Broker, Kmflow};
use kmflow::files::for_each_message;
use kmflow_dataflows::reference::ReferenceFold;
use kmflow_dataflows::EntityKind;

/// The zKillboard sample with an older appraisal (other values), written to `dir`.
fn older_appraisals(data: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("older-appraisals.json");
    let mut kms: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(data.join("zkb-api/elit-kbresponse.json")).unwrap())
            .unwrap();
    for km in &mut kms {
        let z = &mut km["zkb"];
        z["totalValue"] = serde_json::json!(z["totalValue"].as_f64().unwrap_or(0.0) * 0.5 + 1.0);
        z["points"] = serde_json::json!(z["points"].as_i64().unwrap_or(0) + 3);
    }
    std::fs::write(&file, serde_json::to_vec(&kms).unwrap()).unwrap();
    file
}

/// Character lookups until `stop`, on whatever port kmflow listens on now: any answer but a
/// 5xx is fine while kmflow restarts.
fn api_load(
    ids: Vec<u64>,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    port: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let agent = common::agent();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let url = format!(
                "http://127.0.0.1:{}/v1/characters/{}",
                port.load(Ordering::Relaxed),
                ids[i % ids.len()]
            );
            i += 7;
            if let Ok(r) = agent.get(&url).call() {
                assert!(r.status().as_u16() < 500, "{url}: {}", r.status());
                served.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Imports each (topic, file) of `schedule` in turn, 0.7 s apart.
fn produce(
    addr: String,
    schedule: Vec<(&'static str, std::path::PathBuf)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for (topic, p) in schedule {
            let out = std::process::Command::new(common::kmflow_bin())
                .args(["import", "--topic", topic, "--brokers", &addr])
                .args(common::TANSU_PRODUCER)
                .arg(&p)
                .env("KMFLOW_LOG", "error")
                .output()
                .unwrap();
            assert!(out.status.success());
            std::thread::sleep(Duration::from_millis(700));
        }
    })
}

/// SIGKILLs kmflow `kills` times at random moments, each after its last run committed
/// something of its own, and restarts it; midway, a second history topic joins its
/// configuration. Returns the restart times and the committed offsets each kill landed at.
fn kill_and_restart(
    k: &mut Kmflow,
    rng: &mut SmallRng,
    port: &AtomicU64,
    total: i64,
    kills: usize,
) -> (Vec<Duration>, std::collections::BTreeSet<Option<i64>>) {
    let mut restarts = Vec::new();
    let mut kill_points = std::collections::BTreeSet::new();
    for i in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..2000)));
        let before = common::committed_total(k);
        kill_points.insert(before);
        k.crash();
        if i == kills / 2 {
            k.env
                .retain(|(key, _)| key != "KMFLOW__KAFKA__HISTORY_TOPICS");
            k.env.push((
                "KMFLOW__KAFKA__HISTORY_TOPICS".into(),
                "[\"history\", \"history-replay\"]".into(),
            ));
        }
        let t = Instant::now();
        k.spawn();
        port.store(k.port as u64, Ordering::Relaxed);
        wait_until("ready after SIGKILL", Duration::from_secs(60), || {
            common::get_json(&k.url("/readyz")).0 == 200
        });
        restarts.push(t.elapsed());
        let ready = t.elapsed();
        // The next kill lands after this run has committed something of its own, so every kill
        // interrupts a different point of the ingestion (however slow the machine is).
        wait_until("progress after restart", Duration::from_secs(120), || {
            let now = common::committed_total(k);
            now > before || now == Some(total)
        });
        eprintln!(
            "crash {i}: killed at {before:?} committed offsets; ready again in {ready:?}, \
             committing again after {:?}",
            t.elapsed()
        );
    }
    (restarts, kill_points)
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_counts_nothing_twice() {
    let seed: u64 = std::env::var("KMFLOW_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20211127);
    let mut rng = SmallRng::seed_from_u64(seed);
    eprintln!("crash: seed {seed}");
    let data = common::shared_data().join("killmails");
    let broker = Broker::start();
    broker.create_topic("live", 4);
    broker.create_topic("history", 3);

    // The history topic holds the EVE Ref week; the live topic gets the zkb samples (and an
    // overlapping slice of the week) while kmflow is being killed.
    let history = vec![data.join("everef")];
    let live = vec![
        data.join("zkb-api"),
        data.join("r2z2"),
        data.join("redisq"),
        data.join("esi-large"),
        data.join("everef-jsonl"),
    ];
    // The first day is there before kmflow starts; the rest arrives during the kills.
    // A second history topic, added to kmflow's configuration midway through the kills, replays
    // a slice that overlaps what the live topic carries: the same killmails with an older
    // appraisal (other values), which must never replace the live one, whatever the order
    // they are read in (the version order), and some with the same zkb.
    let older = tempfile::tempdir().unwrap();
    let replay = vec![older_appraisals(&data, older.path()), data.join("redisq")];
    broker.create_topic("history-replay", 2);
    common::import(&broker, "history-replay", &replay);
    let mut fold = ReferenceFold::default();
    let mut total = 0i64;
    for (paths, live) in [(&history, false), (&live, true), (&replay, false)] {
        for_each_message(paths, &mut |r| {
            fold.apply(&common::decode_derived(&r.unwrap().1).unwrap(), live);
            total += 1;
        });
    }
    let expected = fold.stats();

    let state = tempfile::tempdir().unwrap();
    let env = [
        ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
        ("KMFLOW__KAFKA__BROKERS", broker.addr()),
        ("KMFLOW__KAFKA__LIVE_TOPIC", "live".to_string()),
        ("KMFLOW__KAFKA__HISTORY_TOPICS", "[\"history\"]".to_string()),
        ("KMFLOW__PIPELINE__WORKERS", "2".to_string()),
        // Small epochs: many commits to land a kill in the middle of.
        ("KMFLOW__PIPELINE__EPOCH_MAX_RECORDS", "1500".to_string()),
        ("KMFLOW__PIPELINE__EPOCH_MAX_MS", "20".to_string()),
    ];
    let mut k = Kmflow::start(state.path(), &env);

    // API load throughout: any answer but a 5xx is fine while kmflow restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let port = Arc::new(AtomicU64::new(k.port as u64));
    let ids: Vec<u64> = expected
        .keys()
        .filter(|e| e.kind == EntityKind::Character)
        .map(|e| e.id)
        .take(5000)
        .collect();
    let load = api_load(ids, stop.clone(), served.clone(), port.clone());
    // The live producer, concurrently.
    let mut days: Vec<std::path::PathBuf> = std::fs::read_dir(&history[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    days.sort();
    common::import(&broker, "history", &days[..1]);
    // Days of history and live files interleaved, produced while kmflow is being killed.
    let mut schedule: Vec<(&'static str, std::path::PathBuf)> = Vec::new();
    for (i, day) in days.iter().enumerate().skip(1) {
        schedule.push(("history", day.clone()));
        if let Some(l) = live.get(i - 1) {
            schedule.push(("live", l.clone()));
        }
    }
    schedule.extend(
        live.iter()
            .skip(days.len() - 1)
            .map(|l| ("live", l.clone())),
    );
    let producer = produce(broker.addr(), schedule);

    let kills = 12;
    let (restarts, kill_points) = kill_and_restart(&mut k, &mut rng, &port, total, kills);
    producer.join().unwrap();
    // The kills must land at many points of the ingestion, not all before or after it.
    assert!(
        kill_points.len() >= 6,
        "kills landed at only {kill_points:?}"
    );
    wait_until("everything committed", Duration::from_secs(600), || {
        common::committed_total(&k) == Some(total)
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    eprintln!(
        "crash: {kills} SIGKILLs, {} API answers under load, slowest restart {:?}",
        served.load(Ordering::Relaxed),
        restarts.iter().max().unwrap()
    );
    common::assert_all_equal(&k, &expected);
    assert!(k.stop());
}
