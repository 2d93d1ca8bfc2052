//! Library-only adoption: the application's loop is plain rayon (the global pool,
//! outside any budget region) and only the library it calls uses budget.
//!
//! Run: `cargo bench --bench adoption` (needs `scripts/setup-native.sh` for OpenBLAS
//! on pthreads and libgomp, and a C compiler for the OpenMP kernel; a missing part
//! is reported and its cases skipped). `ADOPTION_ROUNDS=N` sets the rounds of the
//! interleaved summary (default 7); `ADOPTION_SUMMARY_ONLY=1` skips criterion.
//!
//! Two libraries, each called from `par_iter` on rayon's global pool:
//! - `qr`: 128 OpenBLAS `dgeqrf` of 256×256 (OpenBLAS on pthreads: one process-wide
//!   thread count);
//! - `omp`: 2,000 calls of an OpenMP kernel of ~25 µs single-threaded (libgomp: a
//!   count per calling thread).
//!
//! Strategies, for each:
//! - `default`: the library at all cores (what each layer does on its own);
//! - `static_lib1`: the library at 1 thread, the loop on every core;
//! - `static_outer1`: the loop serial, the library at all cores;
//! - `budget`: the loop as before, the library wraps each call in
//!   `budget::scope(|s| s.native(..))` (the application knows nothing of budget).
//!   A region on a worker of the application's (foreign) rayon pool asks for its
//!   share, `total / rayon::current_num_threads()` (budget-core's rule).
//! - `budget_app_too`: the application's loop also in a budget region
//!   (`budget::scope(|app| app.install(..))`): the same library, adopted end to end.
//!
//! After the criterion groups, an interleaved summary runs every strategy once per
//! round and prints, per strategy, the median time and the spread (min–max) over
//! the rounds, the median over rounds of `budget / best static` (the best static
//! setting of the same round) and of `budget / budget_app_too`. The goals: at most
//! 1.1 each.
#![allow(missing_docs)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use budget::prelude::*;
use criterion::Criterion;
use rayon::prelude::*;

use budget_testkit::kernels::{Blas, Omp};

const QR_N: usize = 256;
const QR_CALLS: usize = 128;
const OMP_CALLS: usize = 2000;
const OMP_LEN: usize = 4096;

fn cores() -> usize {
    budget::stats().total
}

use budget_testkit::blas::matrices;

/// A strategy: its name and one run of the whole loop.
type Strategy<'a> = (&'static str, Box<dyn Fn() + 'a>);

/// The QR case, or what to install where OpenBLAS is missing.
fn qr_strategies() -> Result<Vec<Strategy<'static>>, String> {
    // Leaked so that the closures are 'static (a bench process runs once).
    let blas: &'static Blas = Box::leak(Box::new(Blas::load()?));
    let mats: &'static [Vec<f64>] = Box::leak(matrices(QR_CALLS, QR_N).into_boxed_slice());
    let all = blas.default_threads;
    Ok(vec![
        (
            "default",
            Box::new(move || {
                blas.set_threads(all);
                mats.par_iter().for_each(|m| blas.qr(m, QR_N));
            }),
        ),
        (
            "static_lib1",
            Box::new(move || {
                blas.set_threads(1);
                mats.par_iter().for_each(|m| blas.qr(m, QR_N));
                blas.set_threads(all);
            }),
        ),
        (
            "static_outer1",
            Box::new(move || {
                blas.set_threads(all);
                mats.iter().for_each(|m| blas.qr(m, QR_N));
            }),
        ),
        (
            "budget",
            Box::new(move || {
                blas.set_threads(all);
                mats.par_iter()
                    .for_each(|m| budget::scope(|s| s.native(|| blas.qr(m, QR_N))));
            }),
        ),
        (
            "budget_app_too",
            Box::new(move || {
                blas.set_threads(all);
                budget::scope(|app| {
                    app.install(|| {
                        mats.par_iter()
                            .for_each(|m| budget::scope(|s| s.native(|| blas.qr(m, QR_N))))
                    })
                });
            }),
        ),
    ])
}

/// The OpenMP case.
fn omp_strategies() -> Result<Vec<Strategy<'static>>, String> {
    let omp: &'static Omp = Box::leak(Box::new(Omp::load()?));
    let inputs: &'static [Mutex<Vec<f64>>] = Box::leak(
        (0..OMP_CALLS)
            .map(|i| Mutex::new(vec![i as f64; OMP_LEN]))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let call = move |x: &Mutex<Vec<f64>>| omp.call(&mut x.lock().unwrap());
    let cores = cores();
    // OpenMP's count is per thread: set it on every thread of the global pool.
    let everywhere = move |k: usize| {
        rayon::broadcast(|_| omp.set_threads(k));
        omp.set_threads(k);
    };
    Ok(vec![
        (
            "default",
            Box::new(move || {
                everywhere(cores);
                inputs.par_iter().for_each(call);
            }),
        ),
        (
            "static_lib1",
            Box::new(move || {
                everywhere(1);
                inputs.par_iter().for_each(call);
                everywhere(cores);
            }),
        ),
        (
            "static_outer1",
            Box::new(move || {
                everywhere(cores);
                inputs.iter().for_each(call);
            }),
        ),
        (
            "budget",
            Box::new(move || {
                everywhere(cores);
                inputs
                    .par_iter()
                    .for_each(|x| budget::scope(|s| s.native(|| call(x))));
            }),
        ),
        (
            "budget_app_too",
            Box::new(move || {
                everywhere(cores);
                budget::scope(|app| {
                    app.install(|| {
                        inputs
                            .par_iter()
                            .for_each(|x| budget::scope(|s| s.native(|| call(x))))
                    })
                });
            }),
        ),
    ])
}

fn criterion_group(c: &mut Criterion, name: &str, strategies: &[Strategy<'_>]) {
    let mut group = c.benchmark_group(format!("adoption/{name}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for (label, run) in strategies {
        group.bench_function(*label, |b| b.iter(run));
    }
    group.finish();
}

fn median(v: &mut [f64]) -> f64 {
    budget_testkit::measure::median(v)
}

/// Runs every strategy once per round, in turn, and prints medians, spreads and
/// the median ratio `budget / best static`.
fn summary(name: &str, strategies: &[Strategy<'_>], rounds: usize) {
    for (_, run) in strategies {
        run(); // warm: pools, libraries' threads, caches
    }
    let mut times = vec![Vec::new(); strategies.len()];
    let mut ratios = Vec::new();
    let mut vs_app = Vec::new();
    let index = |label: &str| strategies.iter().position(|(l, _)| *l == label);
    for _ in 0..rounds {
        for (i, (_, run)) in strategies.iter().enumerate() {
            let start = Instant::now();
            run();
            times[i].push(start.elapsed().as_secs_f64());
        }
        let last = |label| index(label).map(|i| *times[i].last().unwrap());
        if let (Some(budget), Some(a), Some(b)) =
            (last("budget"), last("static_lib1"), last("static_outer1"))
        {
            ratios.push(budget / a.min(b));
        }
        if let (Some(budget), Some(app)) = (last("budget"), last("budget_app_too")) {
            vs_app.push(budget / app);
        }
    }
    println!(
        "\nadoption/{name}: {rounds} interleaved rounds, {} cores",
        cores()
    );
    for (i, (label, _)) in strategies.iter().enumerate() {
        let (lo, hi) = times[i]
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        let med = median(&mut times[i]);
        println!(
            "  {label:<18} median {:>8.2} ms  (min {:.2}, max {:.2})",
            med * 1e3,
            lo * 1e3,
            hi * 1e3
        );
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "  budget / best static: median {:.3}  (min {lo:.3}, max {hi:.3}; goal <= 1.1)",
        median(&mut ratios)
    );
    let (lo, hi) = vs_app
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "  budget / budget_app_too (library-only vs adopted end to end): median {:.3}  \
         (min {lo:.3}, max {hi:.3}; goal <= 1.1)",
        median(&mut vs_app)
    );
}

fn main() {
    let rounds = std::env::var("ADOPTION_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let summary_only = std::env::var_os("ADOPTION_SUMMARY_ONLY").is_some();
    let mut cases: Vec<(&str, Vec<Strategy<'static>>)> = Vec::new();
    match qr_strategies() {
        Ok(strategies) => cases.push(("qr_256x128", strategies)),
        Err(why) => println!("adoption/qr_256x128 {why}"),
    }
    match omp_strategies() {
        Ok(strategies) => cases.push(("omp_25us_x2000", strategies)),
        Err(why) => println!("adoption/omp_25us_x2000 {why}"),
    }
    if !summary_only {
        let mut c = Criterion::default().configure_from_args();
        for (name, strategies) in &cases {
            criterion_group(&mut c, name, strategies);
        }
        c.final_summary();
    }
    for (name, strategies) in &cases {
        summary(name, strategies, rounds);
    }
}
