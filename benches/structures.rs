//! `cargo bench --bench structures`: each structure the seed chose against the
//! naive alternative, at two sizes, with criterion's statistics. The same
//! workloads as `vivachat bench structures` (src/bench/structures.rs).

use std::collections::{BTreeSet, HashSet};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vivachat::bench::structures::Workload;
use vivachat::names::Name;

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

/// `presence` as the seed's `Set` against an ordered set, for what a
/// connect does with it: one insert (the join), then the welcome's online
/// list in name order. A hash set needs a sort per welcome; an ordered set
/// pays O(log n) per insert and walks in order.
fn presence_for_the_welcome(c: &mut Criterion) {
    let mut group = c.benchmark_group("presence: a join, then the welcome's list in name order");
    for n in [1_000usize, 10_000] {
        // Names arrive in no order (a multiplicative scramble of 0..n).
        let names: Vec<Name> = (0..n)
            .map(|i| Name::parse(&format!("u{:07}", (i * 7_919) % 1_000_003)).unwrap())
            .collect();
        let (newcomer, online) = names.split_last().unwrap();
        let hashed: HashSet<Name> = online.iter().cloned().collect();
        let ordered: BTreeSet<Name> = online.iter().cloned().collect();
        group.bench_function(BenchmarkId::new("HashSet insert + sort", n), |b| {
            let mut set = hashed.clone();
            b.iter(|| {
                set.insert(newcomer.clone());
                let mut list: Vec<Name> = set.iter().cloned().collect();
                list.sort_unstable();
                set.remove(newcomer);
                black_box(list)
            })
        });
        group.bench_function(BenchmarkId::new("BTreeSet insert + walk", n), |b| {
            let mut set = ordered.clone();
            b.iter(|| {
                set.insert(newcomer.clone());
                let list: Vec<Name> = set.iter().cloned().collect();
                set.remove(newcomer);
                black_box(list)
            })
        });
        group.bench_function(BenchmarkId::new("HashSet insert only", n), |b| {
            let mut set = hashed.clone();
            b.iter(|| {
                black_box(set.insert(newcomer.clone()));
                set.remove(newcomer)
            })
        });
        group.bench_function(BenchmarkId::new("BTreeSet insert only", n), |b| {
            let mut set = ordered.clone();
            b.iter(|| {
                black_box(set.insert(newcomer.clone()));
                set.remove(newcomer)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2));
    targets = structures, presence_for_the_welcome
}
criterion_main!(benches);
