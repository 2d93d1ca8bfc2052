//! The five scenarios, each run four ways: serially (for the ideal, serial / cores),
//! every layer at all cores, the best static setting (several candidates measured,
//! the fastest kept), and budget.

use std::hint::black_box;
use std::sync::Mutex;

use budget::prelude::*;
use rayon::prelude::*;

use super::native::{Blas, Omp};
use super::probe::{measure, Measured};
use super::workloads::*;

/// The scenarios' names, in the order they run and print.
pub(crate) const NAMES: [&str; 5] = [
    "rayon × OpenBLAS QR",
    "rayon × OpenMP kernel",
    "nested rayon",
    "imbalanced nested",
    "mixed big+small BLAS",
];

/// How much work and how many runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Cores in the budget.
    pub(crate) cores: usize,
    /// Work scale: 1 for the full demo.
    pub(crate) scale: f64,
    /// Runs per strategy (best of).
    pub(crate) reps: usize,
}

impl Plan {
    fn count(&self, full: usize, min: usize) -> usize {
        ((full as f64 * self.scale).round() as usize).max(min)
    }
}

/// One scenario's four measurements.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// One thread, every layer serial.
    pub(crate) serial: Measured,
    /// Every layer at its default: all cores.
    pub(crate) all_cores: Measured,
    /// The best fixed setting among the candidates, and its name.
    pub(crate) best_static: (String, Measured),
    /// Every layer in a budget region.
    pub(crate) budget: Measured,
}

/// Runs scenario `index` of [`NAMES`]; `Err` says why it was skipped (what to install).
pub(crate) fn run(index: usize, plan: &Plan, progress: &dyn Fn(&str)) -> Result<Outcome, String> {
    match index {
        0 => qr(plan, progress),
        1 => omp(plan, progress),
        2 => Ok(nested(plan, progress)),
        3 => Ok(imbalanced(plan, progress)),
        _ => mixed(plan, progress),
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

/// A static setting to try: its name and the run.
type Candidate<'a> = (&'a str, Box<dyn FnMut() + 'a>);

/// Measures each candidate and keeps the fastest.
fn best_of(
    plan: &Plan,
    progress: &dyn Fn(&str),
    candidates: Vec<Candidate<'_>>,
) -> (String, Measured) {
    let mut best: Option<(String, Measured)> = None;
    for (name, mut f) in candidates {
        progress(&format!("static: {name}"));
        let m = measure(plan.reps, &mut *f);
        if best.as_ref().map_or(true, |(_, b)| m.seconds < b.seconds) {
            best = Some((name.to_string(), m));
        }
    }
    best.expect("at least one candidate")
}

fn matrices(count: usize, n: usize) -> Vec<Vec<f64>> {
    (0..count)
        .map(|s| {
            (0..n * n)
                .map(|i| ((i * 7919 + s * 104729) % 1000) as f64 / 1000.0 + 0.5)
                .collect()
        })
        .collect()
}

const QR_N: usize = 256;

/// A rayon loop over 128 `dgeqrf` of 256×256.
fn qr(plan: &Plan, progress: &dyn Fn(&str)) -> Result<Outcome, String> {
    let blas = Blas::load()?;
    let mats = matrices(plan.count(128, 4), QR_N);
    let outer = pool(plan.cores);
    let default = blas.default_threads;
    let par = || outer.install(|| mats.par_iter().for_each(|m| blas.qr(m, QR_N)));
    let seq = || mats.iter().for_each(|m| blas.qr(m, QR_N));

    progress("serial");
    blas.set_threads(1);
    let serial = measure(plan.reps, seq);
    blas.set_threads(default);
    progress("all cores");
    let all_cores = measure(plan.reps, par);
    let best_static = best_of(
        plan,
        progress,
        vec![
            (
                "rayon loop, BLAS = 1",
                Box::new(|| {
                    blas.set_threads(1);
                    par();
                    blas.set_threads(default);
                }),
            ),
            ("serial loop, BLAS = all", Box::new(seq)),
        ],
    );
    progress("budget");
    let budget = measure(plan.reps, || budget_qr_loop(&blas, &mats));
    Ok(Outcome {
        serial,
        all_cores,
        best_static,
        budget,
    })
}

/// A rayon loop over 2,000 calls of an OpenMP kernel of ~25 µs single-threaded.
fn omp(plan: &Plan, progress: &dyn Fn(&str)) -> Result<Outcome, String> {
    let omp = Omp::load()?;
    let len = 4096;
    let inputs: Vec<Mutex<Vec<f64>>> = (0..plan.count(2000, 20))
        .map(|i| Mutex::new(vec![i as f64; len]))
        .collect();
    let call = |x: &Mutex<Vec<f64>>| omp.call(&mut x.lock().unwrap());
    let outer = pool(plan.cores);
    let outer_threads = |k: usize| outer.broadcast(|_| omp.set_threads(k));
    let par = || outer.install(|| inputs.par_iter().for_each(call));
    let seq = || inputs.iter().for_each(call);

    progress("serial");
    omp.set_threads(1);
    let serial = measure(plan.reps, seq);
    omp.set_threads(plan.cores);
    progress("all cores");
    outer_threads(plan.cores);
    let all_cores = measure(plan.reps, par);
    let best_static = best_of(
        plan,
        progress,
        vec![
            (
                "rayon loop, OpenMP = 1",
                Box::new(|| {
                    outer_threads(1);
                    par();
                    outer_threads(plan.cores);
                }),
            ),
            ("serial loop, OpenMP = all", Box::new(seq)),
        ],
    );
    progress("budget");
    let budget = measure(plan.reps, || {
        budget::scope(|s| {
            s.install(|| {
                inputs
                    .par_iter()
                    .for_each(|x| budget::scope(|i| i.native(|| call(x))))
            })
        })
    });
    Ok(Outcome {
        serial,
        all_cores,
        best_static,
        budget,
    })
}

/// 8 outer tasks × 20,000 inner parallel sums of 2,000 elements. The static settings
/// are pool sizes (the knob a library with its own pool has): "inner = 1" runs each
/// inner sum on a 1-thread pool of its outer task.
fn nested(plan: &Plan, progress: &dyn Fn(&str)) -> Outcome {
    let regions = plan.count(INNER_REGIONS, 10);
    let shared = pool(plan.cores);
    let own: Vec<rayon::ThreadPool> = (0..OUTER).map(|_| pool(plan.cores)).collect();
    let ones: Vec<rayon::ThreadPool> = (0..OUTER).map(|_| pool(1)).collect();

    progress("serial");
    let serial = measure(plan.reps, || {
        for _ in 0..OUTER * regions {
            black_box(inner_sum_seq(ELEMENTS));
        }
    });
    progress("all cores");
    let all_cores = measure(plan.reps, || {
        shared.install(|| {
            own.par_iter().for_each(|mine| {
                for _ in 0..regions {
                    black_box(mine.install(|| inner_sum(ELEMENTS)));
                }
            })
        })
    });
    let best_static = best_of(
        plan,
        progress,
        vec![
            (
                "outer = all, inner = 1",
                Box::new(|| {
                    shared.install(|| {
                        ones.par_iter().for_each(|mine| {
                            for _ in 0..regions {
                                black_box(mine.install(|| inner_sum(ELEMENTS)));
                            }
                        })
                    })
                }),
            ),
            (
                "outer = 1, inner = all",
                Box::new(|| {
                    shared.install(|| {
                        for _ in 0..OUTER * regions {
                            black_box(inner_sum(ELEMENTS));
                        }
                    })
                }),
            ),
            (
                "one rayon pool, nested",
                Box::new(|| {
                    shared.install(|| {
                        (0..OUTER).into_par_iter().for_each(|_| {
                            for _ in 0..regions {
                                black_box(inner_sum(ELEMENTS));
                            }
                        })
                    })
                }),
            ),
        ],
    );
    progress("budget");
    let budget = measure(plan.reps, || {
        budget::scope(|s| {
            s.install(|| {
                (0..OUTER).into_par_iter().for_each(|_| {
                    for _ in 0..regions {
                        black_box(budget::scope(|inner| inner.install(|| inner_sum(ELEMENTS))));
                    }
                })
            })
        })
    });
    Outcome {
        serial,
        all_cores,
        best_static,
        budget,
    }
}

/// One task of weight 24 and eight of weight 1, each an inner parallel region.
fn imbalanced(plan: &Plan, progress: &dyn Fn(&str)) -> Outcome {
    let per_unit = ((UNIT_ITERATIONS as f64 * plan.scale).round() as u64).max(10);
    let outer = pool(plan.cores);
    let inner_all: Vec<rayon::ThreadPool> = (0..WEIGHTS.len()).map(|_| pool(plan.cores)).collect();
    let inner_one: Vec<rayon::ThreadPool> = (0..WEIGHTS.len()).map(|_| pool(1)).collect();
    let half = plan.cores.div_ceil(2);
    let outer_half = pool(half);
    let inner_half: Vec<rayon::ThreadPool> = (0..WEIGHTS.len()).map(|_| pool(half)).collect();
    let nested_on = |outer: &rayon::ThreadPool, inner: &[rayon::ThreadPool]| {
        outer.install(|| {
            WEIGHTS
                .par_iter()
                .zip(inner.par_iter())
                .map(|(&w, mine)| weighted_region(w, per_unit, |f| mine.install(f)))
                .reduce(|| 0, u64::wrapping_add)
        })
    };

    progress("serial");
    let serial = measure(plan.reps, || {
        black_box(
            WEIGHTS
                .iter()
                .map(|&w| weighted_serial(w, per_unit))
                .fold(0, u64::wrapping_add),
        );
    });
    progress("all cores");
    let all_cores = measure(plan.reps, || {
        black_box(nested_on(&outer, &inner_all));
    });
    let best_static = best_of(
        plan,
        progress,
        vec![
            (
                "outer = all, inner = 1",
                Box::new(|| {
                    black_box(nested_on(&outer, &inner_one));
                }),
            ),
            (
                "outer = 1, inner = all",
                Box::new(|| {
                    black_box(
                        WEIGHTS
                            .iter()
                            .map(|&w| weighted_region(w, per_unit, |f| outer.install(f)))
                            .fold(0, u64::wrapping_add),
                    );
                }),
            ),
            (
                "outer = half, inner = half",
                Box::new(|| {
                    black_box(nested_on(&outer_half, &inner_half));
                }),
            ),
        ],
    );
    progress("budget");
    let budget = measure(plan.reps, || {
        black_box(budget::scope(|s| {
            s.install(|| {
                WEIGHTS
                    .par_iter()
                    .map(|&w| {
                        weighted_region(w, per_unit, |f| budget::scope(|inner| inner.install(f)))
                    })
                    .reduce(|| 0, u64::wrapping_add)
            })
        }));
    });
    Outcome {
        serial,
        all_cores,
        best_static,
        budget,
    }
}

/// One `dgemm` of 2048² followed by a rayon loop over 128 QR of 256².
fn mixed(plan: &Plan, progress: &dyn Fn(&str)) -> Result<Outcome, String> {
    let blas = Blas::load()?;
    let default = blas.default_threads;
    let big = (((2048.0 * plan.scale.cbrt()) as usize / 64) * 64).max(128);
    let (ga, gb) = (vec![1.0f64; big * big], vec![0.5f64; big * big]);
    let gc = Mutex::new(vec![0.0f64; big * big]);
    let gemm = || blas.gemm(&ga, &gb, &mut gc.lock().unwrap(), big);
    let mats = matrices(plan.count(128, 4), QR_N);
    let outer = pool(plan.cores);
    let small_par = || outer.install(|| mats.par_iter().for_each(|m| blas.qr(m, QR_N)));

    progress("serial");
    blas.set_threads(1);
    let serial = measure(plan.reps, || {
        gemm();
        mats.iter().for_each(|m| blas.qr(m, QR_N));
    });
    blas.set_threads(default);
    progress("all cores");
    let all_cores = measure(plan.reps, || {
        gemm();
        small_par();
    });
    let best_static = best_of(
        plan,
        progress,
        vec![
            (
                "BLAS = 1 everywhere",
                Box::new(|| {
                    blas.set_threads(1);
                    gemm();
                    small_par();
                    blas.set_threads(default);
                }),
            ),
            (
                "big at all, small at 1",
                Box::new(|| {
                    blas.set_threads(default);
                    gemm();
                    blas.set_threads(1);
                    small_par();
                    blas.set_threads(default);
                }),
            ),
        ],
    );
    progress("budget");
    let budget = measure(plan.reps, || {
        budget::scope(|s| s.native(gemm));
        budget_qr_loop(&blas, &mats);
    });
    Ok(Outcome {
        serial,
        all_cores,
        best_static,
        budget,
    })
}

/// The small-QR loop with a budget region at both levels: rayon outside, each QR in
/// `s.native` (so at width 1 while the loop holds every core).
fn budget_qr_loop(blas: &Blas, mats: &[Vec<f64>]) {
    budget::scope(|s| {
        s.install(|| {
            mats.par_iter()
                .for_each(|m| budget::scope(|i| i.native(|| blas.qr(m, QR_N))))
        })
    });
}
