//! Decoding each input shape, isolated from everything else.
//!
//! Run: `cargo bench -p kmflow-dataflows --bench decode`. Reads the samples from
//! ../shared/data/killmails beside the repository (falls back to generated killmails).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kmflow_dataflows::decode::decode;
use kmflow_dataflows::gen::{GenConfig, Generator};

fn shared(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/killmails")
            .join(rel),
    )
    .ok()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let mut shapes: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(lines) = shared("everef-jsonl/killmails-2021-11-27.first1000.jsonl") {
        let first = lines.split(|b| *b == b'\n').next().unwrap().to_vec();
        shapes.push(("esi_everef", first));
    }
    if let Some(arr) = shared("zkb-api/elit-kellyl_one_kill_one_loss.json") {
        let v: Vec<serde_json::Value> = serde_json::from_slice(&arr).unwrap();
        shapes.push(("esi_with_zkb", serde_json::to_vec(&v[0]).unwrap()));
    }
    if let Some(b) = shared("r2z2/aa-killtracker-r2z2_example.json") {
        shapes.push(("r2z2", b));
    }
    if let Some(b) = shared("redisq/killmail-router-payload1.json") {
        shapes.push(("redisq", b));
    }
    if let Some(b) = shared("esi-large/zkillboard-km_108794056.json") {
        shapes.push(("esi_982_attackers", b));
    }
    let generated: Vec<Vec<u8>> = Generator::new(GenConfig {
        count: 1000,
        ..GenConfig::default()
    })
    .map(|(_, p)| p)
    .collect();
    for (name, payload) in &shapes {
        g.throughput(Throughput::Bytes(payload.len() as u64));
        g.bench_function(*name, |b| b.iter(|| decode(payload).unwrap()));
    }
    g.throughput(Throughput::Elements(generated.len() as u64));
    g.bench_function("generated_x1000", |b| {
        b.iter(|| {
            generated
                .iter()
                .map(|p| decode(p).unwrap().attackers.len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
