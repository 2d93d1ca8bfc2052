//! budget-rayon against the alternatives, measured in the same run.
//!
//! Run: `cargo bench --bench rayon` (BENCHMARKS.md lists the goals and figures).
//!
//! - `nested`: 8 outer tasks × 20,000 inner regions × 2,000 elements. budget
//!   (outer and inner regions, inner installs run in place) against each outer task
//!   using its own all-cores pool, building one, and plain nesting on one rayon pool.
//! - `imbalanced`: one task of weight 24 and eight of weight 1, each an inner
//!   parallel region. budget against outer-only parallelism, a static half/half
//!   split, and serial (the ideal is serial / cores).
//! - `entry`: region entry + in-place install from a budget worker; region entry +
//!   install from an outside thread against `rayon::ThreadPool::install`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use budget::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion};
use rayon::prelude::*;

use budget_testkit::workloads::{
    inner_sum, weighted_region, weighted_serial, ELEMENTS, INNER_REGIONS, OUTER, UNIT_ITERATIONS,
    WEIGHTS,
};

fn cores() -> usize {
    budget::stats().total
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

fn nested(c: &mut Criterion) {
    let cores = cores();
    let mut group = c.benchmark_group("rayon/nested_8x20000x2000");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("budget", |b| {
        b.iter(|| {
            budget::scope(|s| {
                s.install(|| {
                    (0..OUTER).into_par_iter().for_each(|_| {
                        for _ in 0..INNER_REGIONS {
                            black_box(budget::install(|| inner_sum(ELEMENTS)));
                        }
                    })
                })
            })
        })
    });
    let shared = pool(cores);
    group.bench_function("one_rayon_pool_nested", |b| {
        b.iter(|| {
            shared.install(|| {
                (0..OUTER).into_par_iter().for_each(|_| {
                    for _ in 0..INNER_REGIONS {
                        black_box(inner_sum(ELEMENTS));
                    }
                })
            })
        })
    });
    let own: Vec<rayon::ThreadPool> = (0..OUTER).map(|_| pool(cores)).collect();
    group.bench_function("own_pool_per_outer_task", |b| {
        b.iter(|| {
            shared.install(|| {
                own.par_iter().for_each(|mine| {
                    for _ in 0..INNER_REGIONS {
                        black_box(mine.install(|| inner_sum(ELEMENTS)));
                    }
                })
            })
        })
    });
    group.bench_function("own_pool_built_per_outer_task", |b| {
        b.iter(|| {
            shared.install(|| {
                (0..OUTER).into_par_iter().for_each(|_| {
                    let mine = pool(cores);
                    for _ in 0..INNER_REGIONS {
                        black_box(mine.install(|| inner_sum(ELEMENTS)));
                    }
                })
            })
        })
    });
    group.finish();
}

fn imbalanced(c: &mut Criterion) {
    let cores = cores();
    let mut group = c.benchmark_group("rayon/imbalanced_24_and_8x1");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("serial", |b| {
        b.iter(|| {
            WEIGHTS
                .iter()
                .map(|&w| weighted_serial(w, UNIT_ITERATIONS))
                .sum::<u64>()
        })
    });
    group.bench_function("budget", |b| {
        b.iter(|| {
            budget::scope(|s| {
                s.install(|| {
                    WEIGHTS
                        .par_iter()
                        .map(|&w| weighted_region(w, UNIT_ITERATIONS, |f| budget::install(f)))
                        .sum::<u64>()
                })
            })
        })
    });
    let outer_pool = pool(cores);
    group.bench_function("outer_only", |b| {
        b.iter(|| {
            outer_pool.install(|| {
                WEIGHTS
                    .par_iter()
                    .map(|&w| weighted_serial(w, UNIT_ITERATIONS))
                    .sum::<u64>()
            })
        })
    });
    let half = cores.div_ceil(2);
    let outer_half = pool(half);
    let inner_half: Vec<rayon::ThreadPool> = (0..WEIGHTS.len()).map(|_| pool(half)).collect();
    group.bench_function("static_half_half", |b| {
        b.iter(|| {
            outer_half.install(|| {
                WEIGHTS
                    .par_iter()
                    .zip(inner_half.par_iter())
                    .map(|(&w, mine)| weighted_region(w, UNIT_ITERATIONS, |f| mine.install(f)))
                    .sum::<u64>()
            })
        })
    });
    group.finish();
}

fn entry(c: &mut Criterion) {
    let mut group = c.benchmark_group("rayon/entry");
    group.bench_function("budget_region_install_on_budget_worker", |b| {
        b.iter_custom(|iters| {
            budget::scope(|s| {
                s.install(|| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(budget::install(|| black_box(1)));
                    }
                    start.elapsed()
                })
            })
        })
    });
    group.bench_function("budget_region_install_outside_thread", |b| {
        b.iter(|| budget::install(|| black_box(1)))
    });
    let rayon_pool = pool(cores());
    group.bench_function("rayon_pool_install_outside_thread", |b| {
        b.iter(|| rayon_pool.install(|| black_box(1)))
    });
    group.finish();
}

criterion_group!(benches, entry, nested, imbalanced);
criterion_main!(benches);
