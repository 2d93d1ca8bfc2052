//! Native calls sized by the budget, against static settings, on real libraries
//! (Debian's OpenBLAS on pthreads, libgomp through a C kernel built with `cc`: the
//! demo's kernels, `budget_testkit::kernels`).
//!
//! ```sh
//! scripts/setup-native.sh
//! cargo bench -p budget-threads-native --bench native
//! taskset -c 0 cargo bench -p budget-threads-native --bench native   # the 1-CPU cases
//! ```
//!
//! Scenarios (from the issue), each variant timed in the same run, and a ratio table
//! printed at the end (median per-iteration times of criterion's samples, and the
//! fastest and slowest sample against the other variant's median):
//!
//! - `qr`: a rayon loop over 128 `dgeqrf` of 256×256. `default` (OpenBLAS at all
//!   cores in every call), `blas1` (the best static setting), `budget` (each call in a
//!   region: `s.native`), `serial` (one thread, BLAS = 1).
//! - `omp`: a rayon loop over 2,000 calls of an OpenMP C kernel whose parallel region
//!   takes ~25 µs single-threaded. `default`, `inner1` (omp_set_num_threads(1) on each
//!   worker), `budget`, `serial`.
//! - `mixed`: one `dgemm` 2048² and 128 QR 256², in both orders (`big_first`,
//!   `big_last`). `blas1`, `blas_all` (static settings), `hand` (the big call at all
//!   cores, the small ones in a rayon loop at BLAS = 1), `budget`.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use budget_native::NativeExt;
use budget_rayon::RayonExt;
use criterion::Criterion;
use rayon::prelude::*;

static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

use budget_testkit::kernels::{Blas, Omp};
use budget_testkit::measure::median;

fn record(id: &str, iters: u64, d: Duration) -> Duration {
    TIMES
        .lock()
        .unwrap()
        .entry(id.to_string())
        .or_default()
        .push(d.as_secs_f64() / iters as f64);
    d
}

fn bench(c: &mut Criterion, group: &str, name: &str, mut f: impl FnMut()) {
    let id = format!("{group}/{name}");
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            record(&id, iters, t.elapsed())
        })
    });
    g.finish();
}

fn main() {
    let cores = budget_core::stats().total;
    let blas = Blas::load().unwrap_or_else(|e| panic!("{e}"));
    let default_threads = blas.default_threads;
    let omp = Omp::load().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", budget_native::libraries());
    eprintln!("budget total {cores}; OpenBLAS default {default_threads} threads");

    let mut c = Criterion::default().configure_from_args();
    let n = 256;
    let mats = budget_testkit::blas::matrices(128, n);

    // --- qr: rayon outer × 128 dgeqrf 256².
    bench(&mut c, "qr", "default", || {
        blas.set_threads(default_threads);
        mats.par_iter().for_each(|m| blas.qr(m, n));
    });
    bench(&mut c, "qr", "blas1", || {
        blas.set_threads(1);
        mats.par_iter().for_each(|m| blas.qr(m, n));
        blas.set_threads(default_threads);
    });
    bench(&mut c, "qr", "budget", || {
        budget_core::scope(|s| {
            s.install(|| {
                mats.par_iter()
                    .for_each(|m| budget_core::scope(|i| i.native(|| blas.qr(m, n))))
            })
        });
    });
    bench(&mut c, "qr", "serial", || {
        blas.set_threads(1);
        mats.iter().for_each(|m| blas.qr(m, n));
        blas.set_threads(default_threads);
    });

    // --- omp: rayon outer × 2,000 OpenMP kernel calls of ~25 µs.
    let len = 4096;
    let inputs: Vec<Mutex<Vec<f64>>> = (0..2000).map(|i| Mutex::new(vec![i as f64; len])).collect();
    let call = |x: &Mutex<Vec<f64>>| omp.call(&mut x.lock().unwrap());
    // Each rayon worker's own OpenMP count (libgomp's count is per thread).
    let omp_threads = |k: usize| rayon::broadcast(|_| omp.set_threads(k));
    bench(&mut c, "omp", "default", || {
        omp_threads(cores);
        inputs.par_iter().for_each(call);
    });
    bench(&mut c, "omp", "inner1", || {
        omp_threads(1);
        inputs.par_iter().for_each(call);
        omp_threads(cores);
    });
    bench(&mut c, "omp", "budget", || {
        budget_core::scope(|s| {
            s.install(|| {
                inputs
                    .par_iter()
                    .for_each(|x| budget_core::scope(|i| i.native(|| call(x))))
            })
        });
    });
    bench(&mut c, "omp", "serial", || {
        omp.set_threads(1);
        inputs.iter().for_each(call);
        omp.set_threads(cores);
    });

    // --- mixed: one dgemm 2048² and 128 QR 256², in both orders.
    let big = 2048;
    let (ga, gb) = (vec![1.0f64; big * big], vec![0.5f64; big * big]);
    let gc = Mutex::new(vec![0.0f64; big * big]);
    let gemm = || blas.gemm(&ga, &gb, &mut gc.lock().unwrap(), big);
    let small_par = || mats.par_iter().for_each(|m| blas.qr(m, n));
    let small_budget = || {
        budget_core::scope(|s| {
            s.install(|| {
                mats.par_iter()
                    .for_each(|m| budget_core::scope(|i| i.native(|| blas.qr(m, n))))
            })
        })
    };
    for (order, big_first) in [("big_first", true), ("big_last", false)] {
        let group = format!("mixed_{order}");
        let run = |first: &dyn Fn(), second: &dyn Fn()| {
            if big_first {
                first();
                second();
            } else {
                second();
                first();
            }
        };
        bench(&mut c, &group, "blas1", || {
            blas.set_threads(1);
            run(&gemm, &small_par);
            blas.set_threads(default_threads);
        });
        bench(&mut c, &group, "blas_all", || {
            blas.set_threads(default_threads);
            run(&gemm, &small_par);
        });
        bench(&mut c, &group, "hand", || {
            let big_call = || {
                blas.set_threads(cores);
                gemm();
            };
            let small_calls = || {
                blas.set_threads(1);
                small_par();
            };
            run(&big_call, &small_calls);
            blas.set_threads(default_threads);
        });
        bench(&mut c, &group, "budget", || {
            run(&|| budget_core::scope(|s| s.native(gemm)), &small_budget);
        });
    }

    c.final_summary();
    print_ratios();
}

fn print_ratios() {
    let times = TIMES.lock().unwrap();
    let m = |id: &str| times.get(id).map(|v| median(v));
    println!(
        "\nratios (median per iteration, this run; {} CPUs):",
        budget_core::stats().total
    );
    // The spread of `a`'s samples against `b`'s median: the slowest sample counts.
    let spread = |a: &str| {
        let v = times.get(a)?;
        Some((
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        ))
    };
    let line = |what: &str, a: &str, b: &str| {
        if let (Some(x), Some(y), Some((lo, hi))) = (m(a), m(b), spread(a)) {
            println!(
                "  {what:<46} {:>8.1} ms / {:>8.1} ms = {:.2} (samples {:.2}-{:.2})",
                x * 1e3,
                y * 1e3,
                x / y,
                lo / y,
                hi / y
            );
        }
    };
    line("qr: budget / blas1 (goal <= 1.1)", "qr/budget", "qr/blas1");
    line(
        "qr: default / budget (goal >= 4 on many cores)",
        "qr/default",
        "qr/budget",
    );
    line(
        "qr: budget / serial (1 CPU: goal <= 1.1)",
        "qr/budget",
        "qr/serial",
    );
    line(
        "omp: budget / inner1 (goal <= 1.1)",
        "omp/budget",
        "omp/inner1",
    );
    line("omp: default / budget", "omp/default", "omp/budget");
    line(
        "omp: budget / serial (1 CPU: goal <= 1.1)",
        "omp/budget",
        "omp/serial",
    );
    for order in ["big_first", "big_last"] {
        let g = format!("mixed_{order}");
        for other in ["blas1", "blas_all", "hand"] {
            line(
                &format!("{order}: budget / {other}"),
                &format!("{g}/budget"),
                &format!("{g}/{other}"),
            );
        }
    }
}
