//! Native calls sized by the budget, against static settings, on real libraries
//! (Debian's OpenBLAS on pthreads, libgomp through a C kernel built here with `cc`).
//!
//! ```sh
//! scripts/setup-native.sh
//! cargo bench -p budget-native --bench native
//! taskset -c 0 cargo bench -p budget-native --bench native   # the 1-CPU cases
//! ```
//!
//! Scenarios (from the issue), each variant timed in the same run, and a ratio table
//! printed at the end (median per-iteration times of criterion's samples):
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
use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use budget_native::NativeExt;
use budget_rayon::RayonExt;
use criterion::Criterion;
use rayon::prelude::*;

static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

use budget_testkit::blas::{self as ffi, Cdgemm, Dgeqrf};
use budget_testkit::Lib;

type Kernel = unsafe extern "C" fn(*mut f64, c_int);

struct Blas {
    dgeqrf: Dgeqrf,
    dgemm: Cdgemm,
    set: unsafe extern "C" fn(c_int),
    get: unsafe extern "C" fn() -> c_int,
}

impl Blas {
    /// The QR factorisation (`dgeqrf`) of a copy of the n×n matrix `src`.
    fn qr(&self, src: &[f64], n: usize) {
        ffi::qr(self.dgeqrf, src, n);
    }
    /// `c = a · b` for n×n row-major matrices.
    fn gemm(&self, a: &[f64], b: &[f64], c: &mut [f64], n: usize) {
        ffi::gemm(self.dgemm, a, b, c, n);
    }
    fn set_threads(&self, n: usize) {
        // SAFETY: called from one thread, outside any BLAS call (no race).
        unsafe { (self.set)(n as c_int) };
    }
}

/// The OpenMP kernel: a parallel loop of `n` elements, ~25 µs in all single-threaded.
const KERNEL_C: &str = r#"
#include <math.h>
void kernel(double *x, int n) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        double v = x[i];
        for (int k = 0; k < 8; k++) v = sqrt(v * v + 1.0) * 0.5;
        x[i] = v;
    }
}
"#;

fn build_kernel() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/budget-native-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("kernel.c");
    let so = dir.join("libkernel_omp.so");
    std::fs::write(&src, KERNEL_C).unwrap();
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-fopenmp", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-lm")
        .status()
        .expect("cc (gcc) is needed to build the OpenMP kernel: run scripts/setup.sh");
    assert!(status.success());
    so
}

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
    let blas_lib = Lib::load("BUDGET_NATIVE_OPENBLAS_PTHREAD");
    // SAFETY: LAPACK/CBLAS/OpenBLAS prototypes as declared above.
    let blas = unsafe {
        Blas {
            dgeqrf: blas_lib.func("dgeqrf_"),
            dgemm: blas_lib.func("cblas_dgemm"),
            set: blas_lib.func("openblas_set_num_threads"),
            get: blas_lib.func("openblas_get_num_threads"),
        }
    };
    // SAFETY: as above.
    let default_threads = unsafe { (blas.get)() } as usize;
    let kernel_lib = Lib::open(&build_kernel()).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: `void kernel(double *, int)`.
    let kernel: Kernel = unsafe { kernel_lib.func("kernel") };
    let gomp = Lib::load("BUDGET_NATIVE_GOMP");
    // SAFETY: `void omp_set_num_threads(int)`.
    let omp_set: unsafe extern "C" fn(c_int) = unsafe { gomp.func("omp_set_num_threads") };
    eprintln!("{}", budget_native::libraries());
    eprintln!("budget total {cores}; OpenBLAS default {default_threads} threads");

    let mut c = Criterion::default().configure_from_args();
    let n = 256;
    let mats: Vec<Vec<f64>> = (0..128)
        .map(|s| {
            (0..n * n)
                .map(|i| ((i * 7919 + s * 104729) % 1000) as f64 / 1000.0 + 0.5)
                .collect()
        })
        .collect();

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
    let call = |x: &Mutex<Vec<f64>>| {
        let mut x = x.lock().unwrap();
        // SAFETY: x holds len doubles.
        unsafe { kernel(x.as_mut_ptr(), len as c_int) };
    };
    let omp_threads = |k: usize| {
        rayon::broadcast(|_| {
            // SAFETY: omp_set_num_threads sets the calling worker thread's ICV.
            unsafe { omp_set(k as c_int) }
        })
    };
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
        // SAFETY: see above.
        unsafe { omp_set(1) };
        inputs.iter().for_each(call);
        // SAFETY: see above.
        unsafe { omp_set(cores as c_int) };
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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_ratios() {
    let times = TIMES.lock().unwrap();
    let m = |id: &str| times.get(id).map(|v| median(v));
    println!(
        "\nratios (median per iteration, this run; {} CPUs):",
        budget_core::stats().total
    );
    let line = |what: &str, a: &str, b: &str| {
        if let (Some(x), Some(y)) = (m(a), m(b)) {
            println!(
                "  {what:<46} {:>8.1} ms / {:>8.1} ms = {:.2}",
                x * 1e3,
                y * 1e3,
                x / y
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
