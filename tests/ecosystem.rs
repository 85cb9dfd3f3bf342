//! kmflow with the real clients of its ecosystem, each a separate process: schemathesis
//! against the OpenAPI document, Prometheus scraping `/metrics` and evaluating every
//! dashboard expression, promtool on the alert rules and the metrics, and an SSE client on the
//! live feed. The tools are installed by `scripts/provision.sh` (Prometheus from Debian,
//! schemathesis and the SSE client from PyPI into ~/.cache/kmflow/venv).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{free_port, get_json, get_text, metric_sum, wait_until, Broker, Kmflow};
use kmflow::files::for_each_message;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A Python tool of the test venv (provisioned by scripts/provision.sh).
fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("KMFLOW_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var("HOME").expect("HOME")).join(".cache/kmflow/venv")
        });
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} not found: run scripts/provision.sh",
        bin.display()
    );
    bin
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/provision.sh)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Real killmails from every sample source (zKillboard API, R2Z2, RedisQ, the large fights).
fn sample_paths() -> Vec<PathBuf> {
    let data = common::shared_data().join("killmails");
    ["zkb-api", "r2z2", "redisq", "esi-large"]
        .iter()
        .map(|d| data.join(d))
        .collect()
}

/// The distinct killmail ids in `paths` that decode.
fn killmail_ids(paths: &[PathBuf]) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for_each_message(paths, &mut |r| {
        let (_, bytes) = r.unwrap();
        if let Ok(km) = common::decode_derived(&bytes) {
            ids.insert(km.killmail_id);
        }
    });
    ids
}

/// kmflow reading `topic` from `broker`, with every killmail of `paths` written.
fn kmflow_on(broker: &Broker, state: &Path, topic: &str) -> Kmflow {
    broker.create_topic(topic, 2);
    Kmflow::start(
        state,
        &[
            ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
            ("KMFLOW__KAFKA__BROKERS", broker.addr()),
            ("KMFLOW__KAFKA__LIVE_TOPIC", topic.to_string()),
            ("KMFLOW__PIPELINE__WORKERS", "2".to_string()),
        ],
    )
}

fn wait_committed(k: &Kmflow, records: i64) {
    wait_until(
        "every record checkpointed",
        Duration::from_secs(120),
        || common::committed_total(k) == Some(records),
    );
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus scraping `target` every second, with kmflow's alert rules loaded.
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo("config/prometheus/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\nscrape_configs:\n  - job_name: kmflow\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (run scripts/provision.sh)");
        common::wait_for_port(port, Duration::from_secs(30));
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The served OpenAPI document is the one kept in the repository, schemathesis finds no
/// server error and no answer outside its schema on any route, Prometheus evaluates every
/// dashboard expression with data, promtool accepts the rules, their unit tests and the
/// metrics.
#[test]
fn contract_dashboard_and_alerts_hold_against_real_clients() {
    let broker = Broker::start();
    let state = tempfile::tempdir().unwrap();
    let k = kmflow_on(&broker, state.path(), "killmails");
    let paths = sample_paths();
    let out = common::import(&broker, "killmails", &paths);
    // "kmflow import: N killmails to ..."
    let records: i64 = out
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("import prints its count");
    wait_committed(&k, records);

    // Prometheus scrapes while schemathesis drives every route.
    let prom = Prometheus::start(&format!("127.0.0.1:{}", k.port));
    let report = tempfile::tempdir().unwrap();
    let schemathesis = Command::new(venv_bin("schemathesis"))
        .args(["run", &k.url("/openapi.json")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        // One worker: with two, schemathesis itself crashed once in CI ("AST constructor
        // recursion depth mismatch" from ast.parse, which hypothesis calls while describing
        // strategies, racing in CPython 3.11's parser between threads).
        .args(["--max-examples", "60", "--seed", "1", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "10", "--no-color"])
        .arg("--report-dir")
        .arg(report.path())
        // Its cache (.schemathesis/) goes there too, not into the repository.
        .current_dir(report.path())
        // /v1/stream is fuzzed as a catch-up read (follow=false), which ends.
        .env(
            "SCHEMATHESIS_HOOKS",
            repo("tests/ecosystem/schemathesis_hooks.py"),
        )
        .output()
        .expect("run schemathesis (scripts/provision.sh installs it)");
    let text = String::from_utf8_lossy(&schemathesis.stdout);
    assert!(
        schemathesis.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&schemathesis.stderr)
    );
    assert!(
        text.contains("/v1/characters/{id}"),
        "schemathesis tested nothing:\n{text}"
    );

    // Enough samples for the [1m] rates.
    std::thread::sleep(Duration::from_secs(8));
    run(Command::new(venv_bin("python"))
        .arg(repo("tests/ecosystem/check_dashboard.py"))
        .arg(repo("config/grafana/kmflow.json"))
        .arg(prom.url())
        // Series that exist only once their event happened (a broker skipping offsets, a
        // topic recreated).
        .args(["--allow-empty", "kmflow_source_offset_gaps_total"])
        .args(["--allow-empty", "kmflow_source_partition_reset"]));
    let (_, rules) = get_json(&format!("{}/api/v1/rules", prom.url()));
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    let loaded: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(loaded.len() >= 6, "alert rules loaded: {rules}");
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }

    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("config/prometheus/alerts.yml")));
    run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(repo("config/prometheus/alerts.test.yml")));
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(repo("config/prometheus/prometheus.yml")));
    let (_, metrics) = get_text(&k.url("/metrics"));
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}

/// What the SSE client printed: one JSON object per event.
fn events(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A real SSE client (sseclient-py) follows the feed through a broker while killmails are
/// produced in two rounds, drops its connection halfway and resumes with `Last-Event-ID`: it
/// receives every killmail exactly once. A second client subscribed to one character gets
/// only that character's killmails, and its last `stats` event equals the API's answer.
#[test]
fn live_feed_delivers_every_killmail_once_across_a_reconnect() {
    let broker = Broker::start();
    let state = tempfile::tempdir().unwrap();
    let k = kmflow_on(&broker, state.path(), "live");
    wait_until("ready", Duration::from_secs(60), || {
        get_json(&k.url("/readyz")).0 == 200
    });
    let data = common::shared_data().join("killmails");
    let first = vec![data.join("zkb-api"), data.join("redisq")];
    let second = vec![data.join("r2z2"), data.join("esi-large")];
    let all: Vec<PathBuf> = first.iter().chain(&second).cloned().collect();
    let expected = killmail_ids(&all);

    // The busiest character of the samples, for the filtered subscription.
    let mut involvement: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for_each_message(&all, &mut |r| {
        if let Ok(km) = common::decode_derived(&r.unwrap().1) {
            let chars: BTreeSet<u64> = km
                .attackers
                .iter()
                .filter_map(|a| a.character_id)
                .chain(km.victim.character_id)
                .collect();
            for c in chars {
                involvement.entry(c).or_default().insert(km.killmail_id);
            }
        }
    });
    let (character, involved) = involvement
        .iter()
        .map(|(c, kms)| (*c, kms.len()))
        .max_by_key(|&(c, n)| (n, std::cmp::Reverse(c)))
        .unwrap();

    let client = |query: &str, stop_after: usize, reconnect_after: usize| {
        let mut c = Command::new(venv_bin("python"));
        c.arg(repo("tests/ecosystem/sse_client.py"))
            .arg(k.url(&format!("/v1/stream{query}")))
            .args(["--killmails", &stop_after.to_string()])
            .args(["--reconnect-after", &reconnect_after.to_string()])
            .args(["--timeout", "90"]);
        if !query.is_empty() {
            // The entity's stats event follows its last killmail event.
            c.arg("--until-stats");
        }
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the SSE client")
    };
    let everything = client("", expected.len(), expected.len() / 3);
    let one = client(&format!("?characters={character}"), involved, 0);
    // Both are connected before anything is produced.
    wait_until("two subscribers", Duration::from_secs(30), || {
        let (_, text) = get_text(&k.url("/metrics"));
        metric_sum(&text, "kmflow_stream_subscribers") >= 2.0
    });
    common::import(&broker, "live", &first);
    std::thread::sleep(Duration::from_millis(500));
    common::import(&broker, "live", &second);

    let out = everything.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evs = events(&text);
    let got: Vec<u64> = evs
        .iter()
        .filter(|e| e["event"] == "killmail")
        .map(|e| e["data"]["killmail_id"].as_u64().unwrap())
        .collect();
    let distinct: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(got.len(), distinct.len(), "a killmail was sent twice");
    assert_eq!(distinct, expected, "killmails missed or unknown");
    assert!(
        evs.iter().any(|e| e["event"] == "reconnected"),
        "the client never reconnected:\n{text}"
    );

    let out = one.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evs = events(&text);
    let mine: Vec<&Value> = evs.iter().filter(|e| e["event"] == "killmail").collect();
    assert_eq!(mine.len(), involved, "{character}'s killmails");
    for e in &mine {
        let d = &e["data"];
        let chars: Vec<u64> = d["attackers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(std::iter::once(&d["victim"]))
            .filter_map(|p| p["character_id"].as_u64())
            .collect();
        assert!(chars.contains(&character), "not {character}'s: {d}");
    }
    let last = evs
        .iter()
        .rfind(|e| e["event"] == "stats")
        .expect("a stats event");
    assert_eq!(last["data"]["id"], character);
    let (_, api) = get_json(&k.url(&format!("/v1/characters/{character}")));
    assert_eq!(last["data"]["stats"], api["stats"], "stats event vs API");
}

/// `KMFLOW_LOG_FORMAT=json` writes one JSON object per line (for log shippers); the default
/// text has no ANSI colours when stderr is not a terminal; an unknown format is refused.
#[test]
fn logs_are_json_lines_on_request_and_plain_off_a_terminal() {
    for format in ["json", "text"] {
        let state = tempfile::tempdir().unwrap();
        let log = state.path().join("stderr.log");
        let mut k = Kmflow::new(
            &state.path().join("state"),
            &[
                ("KMFLOW_LOG_FORMAT", format.to_string()),
                ("KMFLOW_LOG", "info".to_string()),
                ("KMFLOW__GENERATOR__COUNT", "100".to_string()),
            ],
        );
        k.stderr_file = Some(log.clone());
        k.spawn();
        wait_until("a checkpoint logged", Duration::from_secs(60), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready"))
        });
        assert!(k.stop(), "clean stop");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "ANSI escapes in {format} logs:\n{text}"
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() >= 2, "{text}");
        for line in lines {
            let parsed = serde_json::from_str::<Value>(line);
            if format == "json" {
                let v = parsed.unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            } else {
                assert!(parsed.is_err(), "text logs are not JSON: {line}");
            }
        }
    }
    let out = Command::new(common::kmflow_bin())
        .arg("run")
        .env("KMFLOW_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KMFLOW_LOG_FORMAT must be text or json"));
}

/// `docker-compose.yml` (Kafka, kmflow, Prometheus with the alerts, Grafana with the dashboard)
/// is valid for Docker Compose, and what it mounts exists. No Docker engine runs here:
/// `docker-compose config` validates without one.
#[test]
fn compose_file_is_valid_and_mounts_what_exists() {
    run(Command::new("docker-compose")
        .arg("-f")
        .arg(repo("docker-compose.yml"))
        .args(["config", "-q"]));
    let services = run(Command::new("docker-compose")
        .arg("-f")
        .arg(repo("docker-compose.yml"))
        .args(["config", "--services"]));
    for s in ["kafka", "kmflow", "prometheus", "grafana"] {
        assert!(
            services.lines().any(|l| l.trim() == s),
            "no {s} service:\n{services}"
        );
    }
    // The "cluster" profile: two kmflow processes of one cluster, each its own index.
    let cluster = run(Command::new("docker-compose")
        .arg("-f")
        .arg(repo("docker-compose.yml"))
        .args(["--profile", "cluster", "config"]));
    for (p, s) in ["kmflow-0", "kmflow-1"].iter().enumerate() {
        assert!(
            cluster.contains(&format!("  {s}:")),
            "no {s} service:\n{cluster}"
        );
        assert!(
            cluster.contains(&format!("KMFLOW__CLUSTER__PROCESS: '{p}'")),
            "{s} is process {p}:\n{cluster}"
        );
    }
    assert_eq!(
        cluster
            .matches("KMFLOW__CLUSTER__ADDRESSES: '[\"kmflow-0:7000\", \"kmflow-1:7000\"]'")
            .count(),
        2,
        "both list the same peers:\n{cluster}"
    );
    let compose = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    for line in compose.lines().map(str::trim) {
        // Bind mounts: "- ./path:/in/container[:ro]".
        if let Some(local) = line.strip_prefix("- ./") {
            let path = local.split(':').next().unwrap();
            assert!(
                repo(path).exists(),
                "docker-compose.yml mounts missing {path}"
            );
        }
    }
}
