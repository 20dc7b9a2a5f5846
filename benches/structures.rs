//! `cargo bench --bench structures`: each structure the seed chose against the
//! naive alternative, at two sizes, with criterion's statistics. The same
//! workloads as `vivachat bench structures` (src/bench/structures.rs).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vivachat::bench::structures::Workload;

fn structures(c: &mut Criterion) {
    for workload in Workload::ALL {
        let title = workload.title().split(':').next().unwrap_or("workload");
        let mut group = c.benchmark_group(title);
        for n in [1_000usize, 10_000] {
            for (i, variant) in workload.variants().iter().enumerate() {
                // A batch of operations per iteration; criterion reports time per op.
                let ops = workload.ops_at(n, if variant.linear { 50 } else { 1_000 });
                group.throughput(Throughput::Elements(ops as u64));
                group.bench_with_input(BenchmarkId::new(variant.name, n), &n, |b, &n| {
                    b.iter_custom(|iters| {
                        let per_op: f64 = (0..iters)
                            .map(|_| workload.run::<String>(i, n, ops, 1)[0])
                            .sum();
                        std::time::Duration::from_nanos((per_op * ops as f64) as u64)
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = structures
}
criterion_main!(benches);
