//! budget-core against the alternatives, measured in the same run.
//!
//! Run: `cargo bench --bench core` (BENCHMARKS.md lists the goals and figures). The run
//! ends with a table of the ratios each goal is stated in, read back from criterion's
//! estimates of this run.
//!
//! - `token/uncontended`: one token taken and returned through a [`budget::Lease`],
//!   against a bare `AtomicUsize` compare-exchange + fetch-add pair (goal: within 2×).
//! - `token/contended_2threads`: the same pairs run by two threads at once; time per
//!   pair per thread (goal: ≤ 50 ns for budget).
//! - `scope/inside_region`: entry + exit of an empty region from inside a region that
//!   holds every token (goal: ≤ 100 ns); `rayon::scope` on a rayon worker for scale.
//! - `scope/outside_thread`: entry + exit of a region from a thread outside every
//!   region, against `rayon::ThreadPool::install(|| ())` on a pool of 2 threads (goal:
//!   no slower than rayon).
//! - `scope/nested_for_each_32`: a region around a 32-item `for_each` inside a region
//!   that holds every token, asking for every core or for 1, on one thread and on two
//!   at once (no goal: it measures what a narrowed region that may grow pays).
//! - `pool/10k_tasks_50us`: 10,000 spawned tasks of ~50 µs of CPU work in one region,
//!   against the same work run serially (goal: budget ≤ 1.05 × serial / cores).
//! - `pool/imbalanced_nested`: 16 tasks of ~50 µs rows, one with 64× the rows of
//!   the others (8 rows each, 512 for the big one); an outer `for_each` over the tasks
//!   with an inner region's `for_each` over each task's rows (`nested`), against the
//!   outer loop alone (`outer_only`, each task's rows serial) and the serial run (goal:
//!   nested ≤ 1.15 × serial / cores: the big task's rows spread over every core once
//!   the small tasks are done).
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, Criterion, SamplingMode};

fn cores() -> usize {
    budget::stats().total
}

// ---------------------------------------------------------------------------
// token

/// The bare alternative to a lease of one token: take one by compare-exchange (retried
/// while others race), give it back by fetch-add, as `try_acquire` / `release` do.
#[inline]
fn bare_pair(free: &AtomicUsize) {
    let mut current = free.load(Ordering::Relaxed);
    while current > 0 {
        match free.compare_exchange_weak(current, current - 1, Ordering::SeqCst, Ordering::Relaxed)
        {
            Ok(_) => {
                free.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Err(seen) => current = seen,
        }
    }
}

#[inline]
fn lease_pair() {
    drop(black_box(budget::Lease::try_new(1)));
}

fn token(c: &mut Criterion) {
    let mut group = c.benchmark_group("token/uncontended");
    group.bench_function("budget_lease", |b| b.iter(lease_pair));
    let free = AtomicUsize::new(cores());
    group.bench_function("bare_atomic", |b| b.iter(|| bare_pair(black_box(&free))));
    group.finish();

    let mut group = c.benchmark_group("token/contended_2threads");
    group.bench_function("budget_lease", |b| {
        b.iter_custom(|iters| two_threads(iters, &lease_pair))
    });
    let free = AtomicUsize::new(cores());
    group.bench_function("bare_atomic", |b| {
        b.iter_custom(|iters| two_threads(iters, &|| bare_pair(black_box(&free))))
    });
    group.finish();
}

/// Runs `op` `iters` times on each of two threads started together; returns the
/// slower thread's time, so time / iters is the time per pair per thread.
fn two_threads(iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            start.elapsed()
        };
        let other = s.spawn(run);
        let mine = run();
        mine.max(other.join().expect("the bench thread ran"))
    })
}

// ---------------------------------------------------------------------------
// scope entry

fn rayon_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

fn scope_entry(c: &mut Criterion) {
    let mut group = c.benchmark_group("scope/inside_region");
    group.bench_function("budget_scope", |b| {
        budget::scope(|outer| {
            // The outer region holds every token: the inner one gets width 1.
            debug_assert_eq!(outer.width(), cores());
            b.iter(|| budget::scope(|inner| black_box(inner.width())))
        })
    });
    let pool = rayon_pool(2);
    group.bench_function("rayon_scope_on_worker", |b| {
        pool.install(|| {
            b.iter(|| {
                rayon::scope(|inner| {
                    black_box(inner);
                })
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("scope/outside_thread");
    group.bench_function("budget_scope", |b| {
        b.iter(|| budget::scope(|s| black_box(s.width())))
    });
    group.bench_function("rayon_install", |b| {
        b.iter(|| pool.install(|| black_box(())))
    });
    group.finish();
}

/// A binary tree of `join`s, 2^depth leaves of a little work each, inside one region
/// (budget) or one pool (rayon), both at 2 threads: what a queued and a stolen `join`
/// cost (the refactor's bar: budget within 1.2× of `rayon::join`).
fn join_tree(c: &mut Criterion) {
    const DEPTH: u32 = 10;
    fn leaf(i: u64) -> u64 {
        (0..64).fold(i, |a, k| a.wrapping_mul(31).wrapping_add(k))
    }
    fn budget_tree(s: &budget::Scope<'_>, depth: u32, i: u64) -> u64 {
        if depth == 0 {
            return leaf(i);
        }
        let (a, b) = s.join(
            || budget_tree(s, depth - 1, 2 * i),
            || budget_tree(s, depth - 1, 2 * i + 1),
        );
        a.wrapping_add(b)
    }
    fn rayon_tree(depth: u32, i: u64) -> u64 {
        if depth == 0 {
            return leaf(i);
        }
        let (a, b) = rayon::join(
            || rayon_tree(depth - 1, 2 * i),
            || rayon_tree(depth - 1, 2 * i + 1),
        );
        a.wrapping_add(b)
    }
    let mut group = c.benchmark_group("join/tree_1024_leaves");
    group.bench_function("budget_join", |b| {
        b.iter(|| budget::scope_with(2, |s| black_box(budget_tree(s, DEPTH, 1))))
    });
    let pool = rayon_pool(2);
    group.bench_function("rayon_join", |b| {
        b.iter(|| pool.install(|| black_box(rayon_tree(DEPTH, 1))))
    });
    group.finish();
    // The joins alone: every tree inside one region (budget) or one `install`
    // (rayon), so no iteration pays for opening a region and waking a worker.
    let mut group = c.benchmark_group("join/tree_1024_leaves_in_one_region");
    group.bench_function("budget_join", |b| {
        budget::scope_with(2, |s| b.iter(|| black_box(budget_tree(s, DEPTH, 1))))
    });
    group.bench_function("rayon_join", |b| {
        pool.install(|| b.iter(|| black_box(rayon_tree(DEPTH, 1))))
    });
    group.finish();
}

/// The library pattern inside an outer region that holds every token: a region
/// around a short parallel loop. A region that asks for every core may grow, so it
/// queues a helper (and registers with the budget) even at width 1; one that asks for
/// 1 runs inline. Per call, on one thread and on both threads of the outer region.
fn nested_loop(c: &mut Criterion) {
    fn call(max: usize) {
        budget::scope_with(max, |s| {
            s.for_each(0..32, |i| {
                black_box(i);
            })
        })
    }
    let mut group = c.benchmark_group("scope/nested_for_each_32");
    for (name, max) in [("asks_all", usize::MAX), ("asks_1", 1)] {
        group.bench_function(format!("{name}_1thread"), |b| {
            budget::scope(|_| b.iter(|| call(max)))
        });
        if cores() >= 2 {
            group.bench_function(format!("{name}_2threads"), |b| {
                b.iter_custom(|iters| on_both_threads_of_a_region(iters, &|| call(max)))
            });
        }
    }
    group.finish();
}

/// Runs `op` `iters` times on each of the two threads of an outer region of width 2
/// (started together); returns the slower thread's time.
fn on_both_threads_of_a_region(iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(2);
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    budget::scope_with(2, |outer| {
        assert_eq!(outer.width(), 2, "nothing else holds tokens");
        // Two items, two threads: each blocks in the barrier until the other
        // thread (the region's worker) takes the second item.
        outer.for_each(0..2, |_| {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            let elapsed = start.elapsed();
            let mut slowest = slowest.lock().unwrap();
            *slowest = (*slowest).max(elapsed);
        })
    });
    slowest.into_inner().unwrap()
}

// ---------------------------------------------------------------------------
// pool throughput

const TASKS: usize = 10_000;

/// CPU work: `iterations` steps of an LCG, each result black-boxed.
fn spin(iterations: u64) -> u64 {
    let mut x = iterations;
    for _ in 0..iterations {
        x = black_box(
            x.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        );
    }
    x
}

/// Spin iterations that take about 50 µs here (the median of a few calibrations).
fn iterations_for_50us() -> u64 {
    static ITERS: OnceLock<u64> = OnceLock::new();
    *ITERS.get_or_init(|| {
        let probe = 200_000;
        let mut rates: Vec<f64> = (0..7)
            .map(|_| {
                let start = Instant::now();
                black_box(spin(black_box(probe)));
                probe as f64 / start.elapsed().as_secs_f64()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        let iters = (rates[3] * 50e-6) as u64;
        println!("pool/10k_tasks_50us: one task = spin({iters}) ≈ 50 µs");
        iters.max(1)
    })
}

fn pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/10k_tasks_50us");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("budget_spawn", |b| {
        let iters = iterations_for_50us();
        b.iter(|| {
            let sum = AtomicU64::new(0);
            budget::scope(|s| {
                for i in 0..TASKS as u64 {
                    let sum = &sum;
                    s.spawn(move |_| {
                        sum.fetch_add(spin(iters + (i & 1)), Ordering::Relaxed);
                    });
                }
            });
            sum.into_inner()
        })
    });
    group.bench_function("serial", |b| {
        let iters = iterations_for_50us();
        b.iter(|| {
            (0..TASKS as u64)
                .map(|i| spin(iters + (i & 1)))
                .fold(0u64, u64::wrapping_add)
        })
    });
    group.finish();
}

const IMBALANCED_TASKS: usize = 16;
const SMALL_ROWS: usize = 8;

/// The rows of task `task` in `pool/imbalanced_nested`: task 0 is the big one.
fn rows_of(task: usize) -> usize {
    if task == 0 {
        SMALL_ROWS * 64
    } else {
        SMALL_ROWS
    }
}

fn imbalanced(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/imbalanced_nested");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let row = |sum: &AtomicU64, iters: u64| {
        sum.fetch_add(spin(iters), Ordering::Relaxed);
    };
    group.bench_function("nested", |b| {
        let iters = iterations_for_50us();
        b.iter(|| {
            let sum = AtomicU64::new(0);
            budget::scope(|s| {
                s.for_each(0..IMBALANCED_TASKS, |task| {
                    budget::scope(|inner| inner.for_each(0..rows_of(task), |_| row(&sum, iters)))
                })
            });
            sum.into_inner()
        })
    });
    group.bench_function("outer_only", |b| {
        let iters = iterations_for_50us();
        b.iter(|| {
            let sum = AtomicU64::new(0);
            budget::scope(|s| {
                s.for_each(0..IMBALANCED_TASKS, |task| {
                    (0..rows_of(task)).for_each(|_| row(&sum, iters))
                })
            });
            sum.into_inner()
        })
    });
    group.bench_function("serial", |b| {
        let iters = iterations_for_50us();
        b.iter(|| {
            let sum = AtomicU64::new(0);
            (0..IMBALANCED_TASKS)
                .for_each(|task| (0..rows_of(task)).for_each(|_| row(&sum, iters)));
            sum.into_inner()
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// summary: the goal ratios, from criterion's estimates of this run

/// Where criterion writes its estimates, as criterion itself decides it: the
/// `CRITERION_HOME` variable, else `$CARGO_TARGET_DIR/criterion`, else the `target`
/// folder above this executable. Passed to criterion so both agree.
fn output_directory() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&target).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
                .map(|target| target.join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The typical time per iteration in ns of a benchmark measured by this run (the
/// slope for linear sampling, else the mean), or `None` if it did not run.
fn estimate(dir: &Path, since: SystemTime, id: &str) -> Option<f64> {
    // criterion's layout: <group, '/' made '_'>/<function>/new/estimates.json.
    let (group, function) = id.rsplit_once('/')?;
    let path = dir
        .join(group.replace('/', "_"))
        .join(function)
        .join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None; // left over from an earlier run
    }
    let json = std::fs::read_to_string(path).ok()?;
    point_estimate(&json, "slope").or_else(|| point_estimate(&json, "mean"))
}

/// `"key":{ ... "point_estimate":X ...}` → X; `None` for `"key":null`.
fn point_estimate(json: &str, key: &str) -> Option<f64> {
    let rest = &json[json.find(&format!("\"{key}\":{{"))?..];
    let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn summary(dir: &Path, since: SystemTime) {
    let ns = |id: &str| estimate(dir, since, id);
    let show = |t: f64| {
        if t >= 1e6 {
            format!("{:.1} ms", t / 1e6)
        } else if t >= 1e3 {
            format!("{:.2} µs", t / 1e3)
        } else {
            format!("{t:.1} ns")
        }
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut rows = Vec::new();
    if let (Some(lease), Some(bare)) = (
        ns("token/uncontended/budget_lease"),
        ns("token/uncontended/bare_atomic"),
    ) {
        let ratio = lease / bare;
        rows.push(format!(
            "token/uncontended        lease {} / bare {} = {ratio:.2}×   goal ≤ 2×: {}",
            show(lease),
            show(bare),
            verdict(ratio <= 2.0)
        ));
    }
    for (group, label) in [
        (
            "join/tree_1024_leaves",
            "join/tree_1024_leaves (a region per tree)",
        ),
        (
            "join/tree_1024_leaves_in_one_region",
            "join/tree_1024_leaves (the joins alone)",
        ),
    ] {
        if let (Some(ours), Some(theirs)) = (
            ns(&format!("{group}/budget_join")),
            ns(&format!("{group}/rayon_join")),
        ) {
            let ratio = ours / theirs;
            rows.push(format!(
                "{label}    budget {} / rayon {} = {ratio:.2}×   goal ≤ 1.2×: {}",
                show(ours),
                show(theirs),
                verdict(ratio <= 1.2)
            ));
        }
    }
    if let Some(lease) = ns("token/contended_2threads/budget_lease") {
        let bare = ns("token/contended_2threads/bare_atomic").map_or(String::new(), |bare| {
            format!(" (bare {}, {:.2}×)", show(bare), lease / bare)
        });
        rows.push(format!(
            "token/contended_2threads lease {} per pair per thread{bare}   goal ≤ 50 ns: {}",
            show(lease),
            verdict(lease <= 50.0)
        ));
    }
    if let Some(inside) = ns("scope/inside_region/budget_scope") {
        let rayon = ns("scope/inside_region/rayon_scope_on_worker").map_or(String::new(), |r| {
            format!(
                " (rayon::scope on a worker {}, {:.2}×)",
                show(r),
                inside / r
            )
        });
        rows.push(format!(
            "scope/inside_region      budget {}{rayon}   goal ≤ 100 ns: {}",
            show(inside),
            verdict(inside <= 100.0)
        ));
    }
    if let (Some(budget), Some(rayon)) = (
        ns("scope/outside_thread/budget_scope"),
        ns("scope/outside_thread/rayon_install"),
    ) {
        let ratio = budget / rayon;
        rows.push(format!(
            "scope/outside_thread     budget {} / rayon install {} = {ratio:.3}×   goal ≤ 1×: {}",
            show(budget),
            show(rayon),
            verdict(ratio <= 1.0)
        ));
    }
    let nested: Vec<String> = [
        "asks_all_1thread",
        "asks_1_1thread",
        "asks_all_2threads",
        "asks_1_2threads",
    ]
    .iter()
    .filter_map(|f| {
        Some(format!(
            "{f} {}",
            show(ns(&format!("scope/nested_for_each_32/{f}"))?)
        ))
    })
    .collect();
    if !nested.is_empty() {
        rows.push(format!(
            "scope/nested_for_each_32 (no goal: a known slow path) {}",
            nested.join(", ")
        ));
    }
    if let (Some(budget), Some(serial)) = (
        ns("pool/10k_tasks_50us/budget_spawn"),
        ns("pool/10k_tasks_50us/serial"),
    ) {
        let ideal = serial / cores() as f64;
        let ratio = budget / ideal;
        rows.push(format!(
            "pool/10k_tasks_50us      budget {} / (serial {} / {}) = {ratio:.3}×   goal ≤ 1.05×: {}",
            show(budget),
            show(serial),
            cores(),
            verdict(ratio <= 1.05)
        ));
    }
    if let (Some(nested), Some(outer), Some(serial)) = (
        ns("pool/imbalanced_nested/nested"),
        ns("pool/imbalanced_nested/outer_only"),
        ns("pool/imbalanced_nested/serial"),
    ) {
        let ideal = serial / cores() as f64;
        let ratio = nested / ideal;
        rows.push(format!(
            "pool/imbalanced_nested   nested {} / (serial {} / {}) = {ratio:.3}× (outer only {:.3}×)   goal ≤ 1.15×: {}",
            show(nested),
            show(serial),
            cores(),
            outer / ideal,
            verdict(ratio <= 1.15)
        ));
    }
    if !rows.is_empty() {
        println!(
            "\nGoal ratios of this run ({} cores in the budget):",
            cores()
        );
        for row in rows {
            println!("  {row}");
        }
        println!("  {}", budget::stats());
    }
}

/// Short warm-up and measurement: the whole suite runs in about a minute, which
/// matters on a shared 2-core machine where quiet windows are short.
fn criterion() -> Criterion {
    Criterion::default()
        .output_directory(&output_directory())
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// The 1-minute load average (Linux): other work on the machine skews every figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = token, scope_entry, join_tree, nested_loop, pool, imbalanced
}

fn main() {
    let since = SystemTime::now();
    let load_before = load_average();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(&output_directory(), since);
    println!(
        "  load average (1 min) before the run {load_before}, after {}: figures assume an idle machine",
        load_average()
    );
}
