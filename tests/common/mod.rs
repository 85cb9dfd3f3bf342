//! Test helpers: the shared data, a real Tansu broker, and kmflow as its own process.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use kmflow_dataflows::time::format_rfc3339;

/// `../shared/data` beside the repository.
pub fn shared_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(
        p.is_dir(),
        "test data not found at {} (it lives beside the clone)",
        p.display()
    );
    p
}

/// The EVE static data tests configure (`stats.static-dir`).
pub fn static_dir() -> PathBuf {
    shared_data().join("static")
}

/// The static data, loaded once.
pub fn static_data() -> &'static kmflow_dataflows::static_data::StaticData {
    static SD: std::sync::OnceLock<kmflow_dataflows::static_data::StaticData> =
        std::sync::OnceLock::new();
    SD.get_or_init(|| {
        kmflow_dataflows::static_data::StaticData::load(&static_dir()).expect("static data")
    })
}

/// Decodes a message and derives what kmflow derives from the static data.
pub fn decode_derived(
    bytes: &[u8],
) -> Result<kmflow_dataflows::Killmail, kmflow_dataflows::decode::DecodeError> {
    let mut km = kmflow_dataflows::decode::decode(bytes)?;
    km.derived = static_data().derive(&km);
    Ok(km)
}

/// A solo field as the API serves it: null when some killmail's solo status is unknown.
pub fn solo_field(value: i64, e: &kmflow_dataflows::Stats) -> Option<i64> {
    (e.sums.solo_unknown == 0).then_some(value)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The tansu binary: $TANSU, then PATH, then ~/.cargo/bin.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return PathBuf::from(p);
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v tansu"]).output() {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() {
            return PathBuf::from(s);
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cargo/bin/tansu");
    assert!(p.exists(), "tansu not found: run scripts/provision.sh (or `cargo install tansu --version 0.6.0 --locked`)");
    p
}

/// A Tansu broker on a free loopback port, in memory, killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// The port clients are told to connect to (a proxy's, or `port`).
    advertised: u16,
}

impl Broker {
    pub fn start() -> Broker {
        // A port found free can be taken by another test's process before the broker binds it
        // (the broker then exits and the port answers for someone else): try another port.
        for _ in 0..5 {
            let port = free_port();
            let mut b = Broker {
                child: None,
                port,
                advertised: port,
            };
            b.spawn();
            std::thread::sleep(Duration::from_millis(200));
            if b.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            {
                return b;
            }
        }
        panic!("the broker did not stay up on any of 5 free ports");
    }

    fn spawn(&mut self) {
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", self.advertised),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(30));
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        // A broker that has just opened its port can still reset the first connections.
        let create = || {
            Command::new(tansu_bin())
                .args([
                    "topic",
                    "create",
                    name,
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
                .env("RUST_LOG", "warn")
                .status()
                .expect("tansu topic create")
                .success()
        };
        for attempt in 1..=5 {
            if create() {
                return;
            }
            assert!(attempt < 5, "creating topic {name}: failed 5 times");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "port {port} did not open within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn kmflow_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kmflow")
}

/// Producer settings for Tansu: one record per batch. Tansu 0.6 answers a fetch from an offset
/// inside a record batch with the *next* batch, so a consumer resuming mid-batch would miss the
/// rest of that batch; with single-record batches every offset starts a batch. (kmflow reports
/// such skipped offsets in `kmflow_source_offset_gaps_total`; real Kafka does not skip.)
pub const TANSU_PRODUCER: [&str; 2] = ["-X", "batch.num.messages=1"];

/// `kmflow import` into `topic`; returns its stdout.
pub fn import(broker: &Broker, topic: &str, paths: &[PathBuf]) -> String {
    let out = Command::new(kmflow_bin())
        .arg("import")
        .args(TANSU_PRODUCER)
        .args(paths)
        .args(["--topic", topic, "--brokers", &broker.addr()])
        .env("KMFLOW_LOG", "warn")
        .output()
        .expect("run kmflow import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kmflow running as its own process against a broker.
pub struct Kmflow {
    child: Option<Child>,
    pub port: u16,
    pub state_dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Where stderr goes (inherited when `None`).
    pub stderr_file: Option<PathBuf>,
    /// Arguments after `run`.
    pub args: Vec<String>,
}

impl Kmflow {
    pub fn start(state_dir: &Path, env: &[(&str, String)]) -> Kmflow {
        let mut k = Kmflow::new(state_dir, env);
        k.spawn();
        k
    }

    /// Configured but not started.
    pub fn new(state_dir: &Path, env: &[(&str, String)]) -> Kmflow {
        Kmflow {
            child: None,
            port: free_port(),
            state_dir: state_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.clone()))
                .collect(),
            stderr_file: None,
            args: Vec::new(),
        }
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new(kmflow_bin());
        cmd.arg("run")
            .args(&self.args)
            .env("KMFLOW__STATE__DIR", &self.state_dir)
            .env("KMFLOW__API__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("KMFLOW__STATS__STATIC_DIR", static_dir())
            .env("KMFLOW_LOG", "warn")
            .stdout(Stdio::null());
        match &self.stderr_file {
            Some(f) => cmd.stderr(std::fs::File::create(f).expect("stderr file")),
            None => cmd.stderr(Stdio::inherit()),
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = self.child.insert(cmd.spawn().expect("start kmflow"));
        // Until its API listens; a process that exits first (a configuration error) fails
        // the test at once, with its status, rather than after the whole wait.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = child.try_wait().expect("kmflow's status") {
                panic!("kmflow exited before its API listened: {status} (see its stderr)");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kmflow's API did not listen on {} within 60 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("kmflow runs").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        unsafe_kill(c.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, no chance to finish anything.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the process exits by itself; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Kmflow {
    fn drop(&mut self) {
        self.crash();
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

pub fn get_json(url: &str) -> (u16, Value) {
    let mut r = agent()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

pub fn get_text(url: &str) -> (u16, String) {
    let mut r = agent()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let mut r = agent()
        .post(url)
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sum of a Prometheus counter family over all its series.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The writes that apply `deltas` to `store`, as one shard would plan them.
pub fn writes_of(
    store: &dyn kmflow_dataflows::store::StateStore,
    deltas: &kmflow_dataflows::checkpoint::DeltaMap,
) -> kmflow_dataflows::aggregate::Writes {
    let mut cache = kmflow_dataflows::shard::AllTimeCache::new(1 << 16);
    kmflow_dataflows::shard::plan_flush(store, &mut cache, deltas.clone())
        .map_err(|(e, _)| e)
        .expect("state reads")
}

/// The statistics deltas of `kms` at full statistics.
pub fn deltas_of(kms: &[kmflow_dataflows::Killmail]) -> kmflow_dataflows::checkpoint::DeltaMap {
    use kmflow_dataflows::contrib::contributions;
    let mut deltas = kmflow_dataflows::checkpoint::DeltaMap::default();
    for km in kms {
        for (k, s) in contributions(km, kmflow_dataflows::contrib::StatsLevel::Full) {
            deltas.merge(k, &s);
        }
    }
    deltas
}

/// A commit batch that inserts `kms` as new killmails at `epoch` into `store`.
pub fn batch_of(
    store: &dyn kmflow_dataflows::store::StateStore,
    kms: &[kmflow_dataflows::Killmail],
    epoch: u64,
) -> kmflow_dataflows::checkpoint::CheckpointBatch<()> {
    let mut b = kmflow_dataflows::checkpoint::CheckpointBatch::<()> {
        last_epoch: epoch,
        writes: writes_of(store, &deltas_of(kms)),
        ..Default::default()
    };
    for (i, km) in kms.iter().enumerate() {
        b.max_time = b.max_time.max(Some(km.time));
        b.upserts.push((
            km.killmail_id,
            kmflow_dataflows::StoredKillmail {
                killmail: km.clone(),
                zkb_version: 0,
                applied_from: kmflow_dataflows::SourcePos {
                    topic: 0,
                    partition: 0,
                    offset: i as i64,
                },
                epoch,
            },
        ));
    }
    b
}

/// A small real-shaped killmail: `attackers` (character, corporation, alliance) kill `victim`.
pub fn killmail(
    id: u64,
    victim: (u64, u64, u64),
    attackers: &[(u64, u64, u64)],
    isk: Option<f64>,
) -> kmflow_dataflows::Killmail {
    let atk: Vec<Value> = attackers
        .iter()
        .enumerate()
        .map(|(i, (c, corp, a))| {
            serde_json::json!({"character_id": c, "corporation_id": corp, "alliance_id": a,
            "damage_done": 100, "final_blow": i == 0, "ship_type_id": 587})
        })
        .collect();
    let mut v = serde_json::json!({"killmail_id": id, "killmail_time": "2021-11-27T12:00:00Z", "solar_system_id": 30000142,
        "victim": {"character_id": victim.0, "corporation_id": victim.1, "alliance_id": victim.2, "damage_taken": 300, "ship_type_id": 670},
        "attackers": atk});
    if let Some(isk) = isk {
        v["zkb"] = serde_json::json!({"totalValue": isk, "points": 10, "npc": false, "solo": attackers.len() == 1, "awox": false});
    }
    kmflow_dataflows::decode::decode(&serde_json::to_vec(&v).unwrap()).unwrap()
}

/// A loopback TCP proxy in front of a broker that can be cut: while down it closes every
/// connection and refuses new ones, as a broker outage looks to its clients.
pub struct Proxy {
    pub port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(port: u16, target: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy port");
        listener.set_nonblocking(true).unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (d, s, c) = (down.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if d.load(Ordering::Relaxed) {
                            drop(client);
                            continue;
                        }
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut list = c.lock().unwrap();
                        list.push(client.try_clone().unwrap());
                        list.push(server.try_clone().unwrap());
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            port,
            down,
            conns,
            stop,
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
        if down {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.set_down(true);
    }
}

impl Broker {
    /// A broker that tells clients to connect through `advertised` (a proxy's port).
    pub fn start_advertising(advertised: u16) -> Broker {
        let mut b = Broker {
            child: None,
            port: free_port(),
            advertised,
        };
        b.spawn();
        b
    }

    pub fn delete_topic(&self, name: &str) {
        let status = Command::new(tansu_bin())
            .args([
                "topic",
                "delete",
                name,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .env("RUST_LOG", "warn")
            .status()
            .expect("tansu topic delete");
        assert!(status.success(), "deleting topic {name}");
    }
}

/// Sum of the committed next offsets of every partition, as the API reports them.
pub fn committed_total(k: &Kmflow) -> Option<i64> {
    let mut r = agent()
        .post(&k.url("/v1/characters:batch"))
        .send_json(serde_json::json!({"ids": []}))
        .ok()?;
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    let offsets = v["as_of"]["offsets"].as_object()?;
    Some(
        offsets
            .values()
            .filter_map(Value::as_object)
            .flat_map(|m| m.values())
            .filter_map(Value::as_i64)
            .sum(),
    )
}

/// The API's path segment of an entity kind.
pub fn path_for(kind: kmflow_dataflows::EntityKind) -> &'static str {
    match kind {
        kmflow_dataflows::EntityKind::Character => "characters",
        kmflow_dataflows::EntityKind::Corporation => "corporations",
        kmflow_dataflows::EntityKind::Alliance => "alliances",
    }
}

/// Every entity of the fold, asked of the API 1,000 at a time.
pub fn assert_all_equal(
    k: &Kmflow,
    expected: &std::collections::BTreeMap<kmflow_dataflows::EntityKey, kmflow_dataflows::Stats>,
) {
    for kind in kmflow_dataflows::EntityKind::ALL {
        let ids: Vec<u64> = expected
            .keys()
            .filter(|e| e.kind == kind)
            .map(|e| e.id)
            .collect();
        let path = path_for(kind);
        for chunk in ids.chunks(1000) {
            let (status, v) = post_json(
                &k.url(&format!("/v1/{path}:batch")),
                &serde_json::json!({ "ids": chunk }),
            );
            assert_eq!(status, 200);
            assert_eq!(v["missing"], serde_json::json!([]), "{kind:?}");
            for r in v["results"].as_array().unwrap() {
                let id = r["id"].as_u64().unwrap();
                let e = &expected[&kmflow_dataflows::EntityKey::new(kind, id)];
                let s = &r["stats"];
                let got = (
                    s["kills"].as_i64().unwrap(),
                    s["losses"].as_i64().unwrap(),
                    s["npc_losses"].as_i64().unwrap(),
                    s["final_blows"].as_i64().unwrap(),
                    s["damage_done"].as_i64().unwrap(),
                    s["damage_taken"].as_i64().unwrap(),
                    (s["isk_destroyed"].as_f64().unwrap() * 100.0).round() as i128,
                    (s["isk_lost"].as_f64().unwrap() * 100.0).round() as i128,
                    s["points_destroyed"].as_i64().unwrap(),
                    s["solo_kills"].as_i64(),
                );
                let want = (
                    e.sums.kills,
                    e.sums.losses,
                    e.sums.npc_losses,
                    e.sums.final_blows,
                    e.sums.damage_done,
                    e.sums.damage_taken,
                    e.sums.isk_destroyed_cents,
                    e.sums.isk_lost_cents,
                    e.sums.points_destroyed,
                    solo_field(e.sums.solo_kills, e),
                );
                assert_eq!(got, want, "{kind:?} {id}");
                assert_eq!(
                    s["first_seen"].as_str(),
                    e.seen.first.map(format_rfc3339).as_deref()
                );
                assert_eq!(
                    s["last_seen"].as_str(),
                    e.seen.last.map(format_rfc3339).as_deref()
                );
            }
        }
    }
}

/// Processes of one cluster, configured alike (`kmflow run --process p --peers .. --apis ..`),
/// each with its own state directory; their logs go to `logs/p{N}.log`.
pub fn cluster(dirs: &[&Path], env: &[(&str, String)], logs: &Path) -> Vec<Kmflow> {
    let peers: Vec<String> = dirs
        .iter()
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut ks: Vec<Kmflow> = dirs.iter().map(|d| Kmflow::new(d, env)).collect();
    let apis: Vec<String> = ks
        .iter()
        .map(|k| format!("http://127.0.0.1:{}", k.port))
        .collect();
    for (p, k) in ks.iter_mut().enumerate() {
        k.args = vec![
            "--process".into(),
            p.to_string(),
            "--peers".into(),
            peers.join(","),
            "--apis".into(),
            apis.join(","),
        ];
        k.stderr_file = Some(logs.join(format!("p{p}.log")));
    }
    for k in &mut ks {
        k.spawn();
    }
    ks
}
