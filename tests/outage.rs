//! Broker outages and recreated topics, against a real broker.

mod common;

use std::time::Duration;

use serde_json::json;

use common::{
    committed_total, get_json, get_text, metric_sum, post_json, wait_until, Broker, Kmflow, Proxy,
};

/// `kmflow import` of one file into `killmails` through `brokers`.
fn import_via(brokers: &str, path: &std::path::Path) {
    let status = std::process::Command::new(common::kmflow_bin())
        .args(["import", "--topic", "killmails", "--brokers", brokers])
        .args(common::TANSU_PRODUCER)
        .arg(path)
        .env("KMFLOW_LOG", "error")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn metric(k: &Kmflow, name: &str) -> f64 {
    metric_sum(&get_text(&k.url("/metrics")).1, name)
}

/// While the broker is unreachable kmflow keeps serving reads, reports not-ready and the outage,
/// retries, and after it returns ingests what was produced, losing nothing.
#[test]
fn broker_outage_keeps_reads_and_loses_nothing() {
    let data = common::shared_data().join("killmails");
    let proxy_port = common::free_port();
    let broker = Broker::start_advertising(proxy_port);
    let proxy = Proxy::start(proxy_port, broker.port);
    broker.create_topic("killmails", 4);
    let via_proxy = format!("127.0.0.1:{proxy_port}");
    // Day one through the proxy.
    import_via(
        &via_proxy,
        &data.join("everef/killmails-2021-11-27.tar.bz2"),
    );
    let state = tempfile::tempdir().unwrap();
    let env = [
        ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
        ("KMFLOW__KAFKA__BROKERS", via_proxy.clone()),
        ("KMFLOW__KAFKA__LIVE_TOPIC", "killmails".to_string()),
    ];
    let mut k = Kmflow::start(state.path(), &env);
    wait_until("day one committed", Duration::from_secs(300), || {
        committed_total(&k) == Some(17_862)
    });
    let (status, before) = post_json(
        &k.url("/v1/corporations:batch"),
        &json!({"ids": [98677357, 1887411974]}),
    );
    assert_eq!(status, 200);

    proxy.set_down(true);
    wait_until(
        "not ready during the outage",
        Duration::from_secs(30),
        || get_json(&k.url("/readyz")).0 == 503,
    );
    assert_eq!(metric(&k, "kmflow_source_outage"), 1.0);
    assert_eq!(metric(&k, "kmflow_ready"), 0.0);
    // Reads go on, from the last committed epoch.
    for _ in 0..20 {
        let (status, now) = post_json(
            &k.url("/v1/corporations:batch"),
            &json!({"ids": [98677357, 1887411974]}),
        );
        assert_eq!(status, 200);
        assert_eq!(now["results"], before["results"]);
    }
    std::thread::sleep(Duration::from_secs(3));
    proxy.set_down(false);
    wait_until("ready after the outage", Duration::from_secs(60), || {
        get_json(&k.url("/readyz")).0 == 200
    });
    assert_eq!(metric(&k, "kmflow_source_outage"), 0.0);

    // Day two after the outage: everything arrives exactly once.
    import_via(
        &via_proxy,
        &data.join("everef/killmails-2021-11-28.tar.bz2"),
    );
    wait_until("day two committed", Duration::from_secs(300), || {
        committed_total(&k) == Some(17_862 + 17_047)
    });
    wait_until("upsert metrics", Duration::from_secs(10), || {
        metric(&k, "kmflow_upsert_total") == (17_862 + 17_047) as f64
    });
    assert!(k.stop());
}

/// A topic deleted and recreated behind kmflow's stored offsets is reported loudly: not
/// ready, `kmflow_source_partition_reset` = 1, the partition left unread (policy "stop");
/// with "reprocess" it is read again and nothing counts twice.
#[test]
fn recreated_topic_is_detected_not_skipped_or_double_counted() {
    let data = common::shared_data().join("killmails");
    let broker = Broker::start();
    broker.create_topic("t", 1);
    common::import(&broker, "t", &[data.join("zkb-api")]);
    let state = tempfile::tempdir().unwrap();
    let env = [
        ("KMFLOW__SOURCE__KIND", "kafka".to_string()),
        ("KMFLOW__KAFKA__BROKERS", broker.addr()),
        ("KMFLOW__KAFKA__LIVE_TOPIC", "t".to_string()),
    ];
    let mut k = Kmflow::start(state.path(), &env);
    wait_until("first load", Duration::from_secs(120), || {
        committed_total(&k) == Some(427)
    });
    let (_, before) = get_json(&k.url("/v1/characters/2112957068"));
    assert!(k.stop());

    // Recreate the topic with fewer messages than the stored offset.
    broker.delete_topic("t");
    broker.create_topic("t", 1);
    common::import(
        &broker,
        "t",
        &[
            data.join("zkb-api/elit-kellyl_one_kill_one_loss.json"),
            data.join("r2z2"),
        ],
    );

    k.spawn();
    // Verification reads the message before the stored offset; a shrunken partition has none,
    // which shows once the verification's timeout (10 s) passes.
    wait_until("reset detected", Duration::from_secs(60), || {
        metric(&k, "kmflow_source_partition_reset") == 1.0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        get_json(&k.url("/readyz")).0,
        503,
        "not ready with a reset partition"
    );
    assert_eq!(
        metric(&k, "kmflow_source_records_total"),
        0.0,
        "the partition is not read"
    );
    assert_eq!(committed_total(&k), Some(427), "stored offsets unchanged");
    assert!(k.stop());

    // The operator chooses to reprocess: the new topic is read from its beginning.
    k.env
        .push(("KMFLOW__KAFKA__ON_OFFSET_RESET".into(), "reprocess".into()));
    k.spawn();
    wait_until("reprocessed", Duration::from_secs(120), || {
        committed_total(&k) == Some(3)
    });
    assert_eq!(metric(&k, "kmflow_source_records_total"), 3.0);
    // The kill and loss re-delivered are duplicates of killmails already counted; the R2Z2
    // killmail is new.
    wait_until("upsert metrics", Duration::from_secs(10), || {
        metric(&k, "kmflow_upsert_total{outcome=\"inserted\"}") == 1.0
            && metric(&k, "kmflow_upsert_total{outcome=\"unchanged\"}") == 2.0
    });
    let (_, after) = get_json(&k.url("/v1/characters/2112957068"));
    assert_eq!(after["stats"], before["stats"]);
    assert_eq!(get_json(&k.url("/v1/killmails/134265477")).0, 200);
    assert!(k.stop());
}
