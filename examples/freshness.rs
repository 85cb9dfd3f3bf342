//! Freshness under a live trickle, for `benches/e2e.sh`: produces generated killmails to a Kafka
//! topic at a set rate and measures, for each, the time from handing it to the producer to the
//! moment kmflow's API serves it (`GET /v1/killmails/{id}` answers 200, which happens in the same
//! RocksDB commit that applies its statistics).
//!
//!   cargo run --release --example freshness -- --brokers HOST:PORT --topic live \
//!       --api http://127.0.0.1:8080 [--rate 50] [--seconds 20] [--first-id N] [--start-time UNIX]
//!
//! The killmails are dated from `--start-time` (default: today, UTC): the bench passes the day
//! after its history ends, so the trickle continues the history instead of jumping years ahead.
//!
//! With `--stream`, the moment is instead the arrival of its `killmail` event on the live feed
//! (`GET /v1/stream`, server-sent events, read here line by line as any SSE client does).
//!
//! Prints `freshness: N killmails at R/s: p50 .. ms, p99 .. ms, max .. ms (M never seen)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kmflow_dataflows::gen::{GenConfig, Generator};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut brokers, mut topic, mut api) = (String::new(), String::new(), String::new());
    let (mut rate, mut seconds, mut first_id) = (50u64, 20u64, 900_000_000_000u64);
    let mut start_time = None;
    let mut stream = false;
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--brokers" => brokers = value(),
            "--topic" => topic = value(),
            "--api" => api = value(),
            "--rate" => rate = value().parse().expect("--rate: a number"),
            "--seconds" => seconds = value().parse().expect("--seconds: a number"),
            "--first-id" => first_id = value().parse().expect("--first-id: a number"),
            "--start-time" => start_time = Some(value().parse().expect("--start-time: a number")),
            "--stream" => stream = true,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !brokers.is_empty() && !topic.is_empty() && !api.is_empty(),
        "--brokers, --topic and --api are required"
    );
    let count = rate * seconds;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    // Fresh ids: the trickle is new killmails arriving live.
    let start_time: i64 = start_time.unwrap_or(now);
    let generator = Generator::new(GenConfig {
        seed: now as u64,
        count,
        first_id,
        start_time: start_time - start_time % 86_400,
        per_day: 86_400,
    });
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("acks", "all")
        .create()
        .expect("producer");

    // Ids produced and not yet seen, with the instant they were handed to the producer.
    let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = if stream {
        subscribe(&api, pending.clone(), latencies.clone(), done.clone())
    } else {
        poll(&api, pending.clone(), latencies.clone(), done.clone())
    };

    let start = Instant::now();
    for (i, (id, payload)) in generator.enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = id.to_string();
        pending.lock().unwrap().insert(id, Instant::now());
        let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    eprintln!("freshness: produce: {e}; retrying");
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush the producer");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().expect("poller");

    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let unseen = pending.lock().unwrap().len();
    let ms = |q: f64| {
        l.get(((l.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let what = if stream {
        "event on /v1/stream"
    } else {
        "visible in the API"
    };
    println!(
        "freshness ({what}): {} killmails at {rate}/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({unseen} never seen)",
        l.len(),
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
}

type Pending = Arc<Mutex<HashMap<u64, Instant>>>;

/// Polls `GET /v1/killmails/{id}` for every produced killmail until it answers 200.
fn poll(
    api: &str,
    pending: Pending,
    latencies: Arc<Mutex<Vec<Duration>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let api = api.to_string();
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut give_up = None;
        loop {
            let ids: Vec<(u64, Instant)> = pending
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect();
            if ids.is_empty() && done.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if done.load(std::sync::atomic::Ordering::Relaxed) {
                let deadline = *give_up.get_or_insert(Instant::now() + Duration::from_secs(30));
                if Instant::now() > deadline {
                    break;
                }
            }
            for (id, sent) in ids {
                let url = format!("{api}/v1/killmails/{id}");
                if let Ok(r) = agent.get(&url).call() {
                    if r.status() == 200 {
                        latencies.lock().unwrap().push(sent.elapsed());
                        pending.lock().unwrap().remove(&id);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Follows `GET /v1/stream` and records, for each produced killmail, when its event arrives.
fn subscribe(
    api: &str,
    pending: Pending,
    latencies: Arc<Mutex<Vec<Duration>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::BufRead;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let mut resp = agent
        .get(&format!("{api}/v1/stream"))
        .call()
        .expect("subscribe to /v1/stream");
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(resp.body_mut().as_reader());
        let mut event = String::new();
        let mut give_up = None;
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event == "killmail" {
                    let v: serde_json::Value = serde_json::from_str(data).expect("event data");
                    let id = v["killmail_id"].as_u64().expect("killmail_id");
                    if let Some(sent) = pending.lock().unwrap().remove(&id) {
                        latencies.lock().unwrap().push(sent.elapsed());
                    }
                }
            }
            if done.load(std::sync::atomic::Ordering::Relaxed) {
                // Keep-alives arrive every 10 s, so this is looked at even when quiet.
                let deadline = *give_up.get_or_insert(Instant::now() + Duration::from_secs(30));
                if pending.lock().unwrap().is_empty() || Instant::now() > deadline {
                    break;
                }
            }
        }
    })
}
