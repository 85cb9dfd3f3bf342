//! A kmflow cluster on localhost, through a real Kafka-protocol broker (Tansu): two processes
//! of one worker each import a day of real killmails (plus the zKillboard, R2Z2, RedisQ and
//! 500+ attacker samples), and
//!
//! 1. both processes' APIs answer every entity as the independent fold does, and answer
//!    entities, leaderboards and killmails exactly as a single process does;
//! 2. a SIGTERM on one process stops both cleanly;
//! 3. a SIGKILL of one process mid-replay makes the other exit with a clear error; a SIGTERM
//!    during the catch-up stops both at one checkpoint; restarted, the cluster loses nothing
//!    and counts nothing twice;
//! 4. `kmflow rescale` hands the state of 2 processes to 1 and back to 2 (of 2 workers each:
//!    changing the workers per process moves nothing): answers unchanged, nothing read again
//!    from the broker.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{get_json, get_text, metric_sum, wait_until, Broker, Kmflow};
use kmflow::files::for_each_message;
use kmflow_dataflows::reference::ReferenceFold;
use kmflow_dataflows::EntityKind;

const TOPIC: &str = "killmails";
/// The clock the test pins: the last day imported.
const PINNED: &str = "2021-12-02T23:59:59Z";

fn data() -> Vec<PathBuf> {
    let k = common::shared_data().join("killmails");
    vec![
        k.join("everef/killmails-2021-12-02.tar.bz2"),
        k.join("zkb-api"),
        k.join("esi-large"),
        k.join("r2z2"),
        k.join("redisq"),
    ]
}

fn env(broker: &Broker, workers: usize) -> Vec<(&'static str, String)> {
    vec![
        ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
        ("KMFLOW__KAFKA__BROKERS", broker.addr()),
        ("KMFLOW__KAFKA__LIVE_TOPIC", TOPIC.to_string()),
        ("KMFLOW__PIPELINE__WORKERS", workers.to_string()),
        ("KMFLOW__STATS__WALL_CLOCK", PINNED.to_string()),
    ]
}

fn wait_committed(k: &Kmflow, messages: usize) {
    wait_until("every message committed", Duration::from_secs(600), || {
        common::committed_total(k) == Some(messages as i64)
    });
}

/// An answer without what depends on the run rather than the data: its `as_of`, and the
/// ingestion epoch that applied a killmail.
fn answer(k: &Kmflow, path: &str) -> (u16, Value) {
    let (status, mut v) = get_json(&k.url(path));
    if let Some(o) = v.as_object_mut() {
        o.remove("as_of");
        if path.starts_with("/v1/killmails/") {
            o.remove("epoch");
        }
    }
    (status, v)
}

/// Entities, leaderboards and killmails: the same answers from every process as from `single`.
fn assert_same_answers(single: &Kmflow, cluster: &[Kmflow], reference: &ReferenceFold) {
    let stats = reference.stats();
    let mut paths = Vec::new();
    for kind in EntityKind::ALL {
        let name = common::path_for(kind);
        let ids = stats.keys().filter(|e| e.kind == kind).map(|e| e.id);
        paths.extend(
            ids.step_by(7)
                .take(150)
                .map(|id| format!("/v1/{name}/{id}")),
        );
        for q in [
            "by=kills",
            "by=isk_destroyed&limit=25",
            "by=points_destroyed&window=7d&limit=40",
            "by=solo_kills&window=30d",
        ] {
            paths.push(format!("/v1/leaderboards/{name}?{q}"));
        }
    }
    let corp = stats
        .keys()
        .find(|e| e.kind == EntityKind::Corporation)
        .expect("a corporation");
    paths.push(format!("/v1/corporations/{}/members?limit=50", corp.id));
    let mut ids: Vec<u64> = reference.killmails.keys().copied().collect();
    ids.sort_unstable();
    paths.extend(
        ids.iter()
            .step_by(97)
            .map(|id| format!("/v1/killmails/{id}")),
    );
    for path in &paths {
        let want = answer(single, path);
        assert_eq!(want.0, 200, "{path}: {}", want.1);
        for (p, k) in cluster.iter().enumerate() {
            assert_eq!(answer(k, path), want, "process {p}: {path}");
        }
    }
    eprintln!("cluster: {} answers equal a single process's", paths.len());
}

/// Nothing was read from the broker by this run of `k`.
fn assert_read_nothing(k: &Kmflow) {
    let (_, metrics) = get_text(&k.url("/metrics"));
    assert_eq!(
        metric_sum(&metrics, "kmflow_source_records_total"),
        0.0,
        "nothing read again"
    );
}

fn rescale(from: &[&Path], to: &[&Path]) {
    let join = |ds: &[&Path]| {
        ds.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = std::process::Command::new(common::kmflow_bin())
        .args(["rescale", "--from", &join(from), "--to", &join(to)])
        .output()
        .expect("run kmflow rescale");
    assert!(
        out.status.success(),
        "rescale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_two_process_cluster_equals_the_fold_survives_sigkill_and_rescales() {
    let paths = data();
    let broker = Broker::start();
    broker.create_topic(TOPIC, 4);
    common::import(&broker, TOPIC, &paths);
    let mut messages = 0;
    let mut reference = ReferenceFold::default();
    for_each_message(&paths, &mut |r| {
        let (_, bytes) = r.unwrap();
        messages += 1;
        reference.apply(&common::decode_derived(&bytes).unwrap(), true);
    });
    let expected = reference.stats();
    assert!(reference.killmails.len() > 5_000, "a day of real killmails");
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf { tmp.path().join(name) };

    // 1. Two processes of one worker: both equal the fold, and a single process.
    let t0 = Instant::now();
    let (a, b) = (dir("a"), dir("b"));
    let mut two = common::cluster(&[&a, &b], &env(&broker, 1), tmp.path());
    wait_committed(&two[0], messages);
    eprintln!(
        "cluster: {messages} messages committed by 2 processes in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    for k in &two {
        common::assert_all_equal(k, &expected);
        let (status, ready) = get_json(&k.url("/readyz"));
        assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    }
    let single_dir = dir("single");
    let single = Kmflow::start(&single_dir, &env(&broker, 2));
    wait_committed(&single, messages);
    assert_same_answers(&single, &two, &reference);
    drop(single);

    // 2. SIGTERM on process 1 stops both, cleanly.
    assert!(two[1].stop(), "process 1 stops cleanly");
    let status = two[0].wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "process 0 follows the shutdown: {status:?}"
    );

    // 3. A SIGKILL of one process mid-replay makes the other exit with a clear error; then a
    //    SIGTERM during the catch-up stops both at one checkpoint; restarted, the cluster loses
    //    nothing and counts nothing twice.
    let (c, d) = (dir("c"), dir("d"));
    let mut two = common::cluster(&[&c, &d], &env(&broker, 1), tmp.path());
    wait_until("a part committed", Duration::from_secs(300), || {
        common::committed_total(&two[0]).is_some_and(|n| n > messages as i64 / 4)
    });
    two[1].crash();
    let status = two[0].wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "process 0 exits when process 1 is lost: {status:?}"
    );
    let log = std::fs::read_to_string(two[0].stderr_file.as_ref().unwrap()).unwrap();
    assert!(
        log.contains("lost the connection to process 1"),
        "a clear error: {log}"
    );
    for k in &mut two {
        k.spawn();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(two[1].stop(), "process 1 stops cleanly during the catch-up");
    let status = two[0].wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    for k in &mut two {
        k.spawn();
    }
    wait_committed(&two[0], messages);
    for k in &two {
        common::assert_all_equal(k, &expected);
    }
    assert!(two[0].stop() && two[1].wait_exit(Duration::from_secs(60)).is_some());

    // 4. Rescale 2 -> 1 -> 2 on the stored state, then 2 workers per process: answers
    //    unchanged, nothing read again. A cluster's state alone is refused, by rescale and
    //    by `kmflow run`.
    let one = dir("one");
    let alone = std::process::Command::new(common::kmflow_bin())
        .args(["rescale", "--from", &c.display().to_string(), "--to"])
        .arg(dir("partial"))
        .output()
        .unwrap();
    assert!(!alone.status.success());
    assert!(String::from_utf8_lossy(&alone.stderr).contains("pass every process's state"));
    let alone = std::process::Command::new(common::kmflow_bin())
        .arg("run")
        .envs(env(&broker, 1))
        .env("KMFLOW__STATE__DIR", &d)
        .env("KMFLOW__API__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!alone.status.success());
    let log = String::from_utf8_lossy(&alone.stderr);
    assert!(
        log.contains("was written by process 1 of a 2-process cluster"),
        "{log}"
    );
    rescale(&[&c, &d], &[&one]);
    let k = Kmflow::start(&one, &env(&broker, 2));
    wait_committed(&k, messages);
    common::assert_all_equal(&k, &expected);
    assert_read_nothing(&k);
    drop(k);
    let (e, f) = (dir("e"), dir("f"));
    rescale(&[&one], &[&e, &f]);
    let two = common::cluster(&[&e, &f], &env(&broker, 2), tmp.path());
    wait_committed(&two[0], messages);
    for k in &two {
        common::assert_all_equal(k, &expected);
        assert_read_nothing(k);
    }
}
