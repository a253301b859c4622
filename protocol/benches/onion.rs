//! What a private path costs in CPU, per cell: the sender building a three-relay cell, one
//! relay peeling its layer (the per-hop cost), the exit sealing its answer, a relay wrapping
//! the reply, and the sender opening it. Run with
//! `cargo bench -p sotto-protocol --bench onion`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use rand::{rngs::StdRng, SeedableRng};
use sotto_protocol::onion::{self, Hop, Peeled, RelayKey};

const NOW: u32 = 1_800_000_000;

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let keys: Vec<RelayKey> = (0..3).map(|_| RelayKey::generate(&mut rng)).collect();
    let path: Vec<Hop> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Hop {
            peer: vec![i as u8; 38],
            addr: vec![i as u8; 8],
            key: k.public(),
        })
        .collect();
    // A deposit of a 512-byte envelope, about what a chat message takes.
    let request = vec![7u8; 700];
    let mut g = c.benchmark_group("onion");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("build_3_hops", |b| {
        b.iter(|| onion::build(black_box(&path), &request, NOW, &mut rng).unwrap())
    });
    let (cell, pending) = onion::build(&path, &request, NOW, &mut rng).unwrap();
    g.bench_function("peel_one_hop", |b| {
        b.iter(|| onion::peel(&keys[0], black_box(&cell), &mut rng).unwrap())
    });
    // Carry the cell through, keep each layer for the way back.
    let mut layers = Vec::new();
    let mut inner = cell.clone();
    for key in &keys {
        let layer = onion::peel(key, &inner, &mut rng).unwrap();
        if let Peeled::Forward { cell, .. } = &layer.peeled {
            inner = cell.clone();
        }
        layers.push(layer);
    }
    let answer = vec![1u8; 200];
    g.bench_function("exit_reply", |b| {
        b.iter(|| onion::exit_reply(&layers[2], black_box(&answer)).unwrap())
    });
    let from_exit = onion::exit_reply(&layers[2], &answer).unwrap();
    g.bench_function("wrap_reply_one_hop", |b| {
        b.iter(|| onion::wrap_reply(&layers[1], black_box(&from_exit)).unwrap())
    });
    let mut reply = from_exit;
    for layer in layers[..2].iter().rev() {
        reply = onion::wrap_reply(layer, &reply).unwrap();
    }
    g.bench_function("open_reply_3_hops", |b| {
        b.iter_batched(
            || reply.clone(),
            |r| onion::open_reply(&pending, &r).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
