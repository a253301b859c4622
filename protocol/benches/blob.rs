//! What an attachment costs in CPU: sealing a file into blob chunks (ChaCha20-Poly1305 and
//! SHA-256 per 60 KiB chunk) and opening them again (hash check, then decryption), per
//! MiB. Run with `cargo bench -p sotto-protocol --bench blob`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, SeedableRng};
use sotto_protocol::blob::{Opener, Sealer, CHUNK_BYTES};

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let size = 16 * 1024 * 1024;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut g = c.benchmark_group("blob");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(10);
    g.throughput(Throughput::Bytes(size as u64));

    g.bench_function("seal_16_mib", |b| {
        b.iter(|| {
            let mut sealer = Sealer::new(size as u64, &mut rng).unwrap();
            for chunk in data.chunks(CHUNK_BYTES) {
                black_box(sealer.push(chunk).unwrap());
            }
            sealer.finish().unwrap()
        })
    });

    let mut sealer = Sealer::new(size as u64, &mut rng).unwrap();
    let chunks: Vec<Vec<u8>> = data
        .chunks(CHUNK_BYTES)
        .map(|c| sealer.push(c).unwrap().bytes)
        .collect();
    let (manifest, blob) = sealer.finish().unwrap();
    g.bench_function("open_16_mib", |b| {
        b.iter(|| {
            let opener = Opener::new(&blob, &manifest.bytes).unwrap();
            for (i, chunk) in chunks.iter().enumerate() {
                black_box(opener.open_chunk(i as u32, chunk).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
