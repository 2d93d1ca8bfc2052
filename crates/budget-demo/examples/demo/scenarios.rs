//! The six scenarios, each run four ways: serially (for the ideal, serial / cores),
//! every layer at all cores, the best static setting (several candidates measured,
//! the one with the lowest median kept), and budget. Every strategy of a scenario,
//! static candidates included, runs once per round, interleaved (see `probe`). The
//! first five run in this process; the sixth runs three worker processes at once
//! (see `processes`).

use std::hint::black_box;
use std::path::Path;
use std::sync::Mutex;

use budget::prelude::*;
use rayon::prelude::*;

use super::probe::{interleave, Measured, Strategy};
use super::processes::{Group, Launcher, NodeFile, Setting};
use budget_testkit::kernels::{Blas, Omp};
use budget_testkit::workloads::*;

/// The scenarios' names, in the order they run and print.
pub(crate) const NAMES: [&str; 6] = [
    "rayon × OpenBLAS QR",
    "rayon × OpenMP kernel",
    "nested rayon",
    "imbalanced nested",
    "mixed big+small BLAS",
    "3 processes × rayon × QR",
];

/// How much work and how many runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Cores in the budget.
    pub(crate) cores: usize,
    /// Work scale: 1 for the full demo.
    pub(crate) scale: f64,
    /// Timed rounds; each runs every strategy once.
    pub(crate) reps: usize,
    /// How the processes scenario starts its worker processes.
    pub(crate) worker: Launcher,
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
    /// The static setting with the lowest median among the candidates, and its name.
    pub(crate) best_static: (String, Measured),
    /// Every layer in a budget region.
    pub(crate) budget: Measured,
}

/// What a scenario's strategies report while they run: the round (0 = the warm-up)
/// and the strategy's label.
pub(crate) type Progress<'a> = &'a dyn Fn(usize, &str);

/// Runs scenario `index` of [`NAMES`]; `Err` says why it was skipped (what to install).
pub(crate) fn run(index: usize, plan: &Plan, progress: Progress<'_>) -> Result<Outcome, String> {
    match index {
        0 => qr(plan, progress),
        1 => omp(plan, progress),
        2 => Ok(nested(plan, progress)),
        3 => Ok(imbalanced(plan, progress)),
        4 => mixed(plan, progress),
        _ => processes(plan, progress),
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

/// Times `serial`, `all_cores`, every static candidate and `budget`, interleaved
/// round by round, and keeps the candidate with the lowest median as the best static
/// setting.
fn timed<'a>(
    plan: &Plan,
    progress: Progress<'_>,
    serial: Strategy<'a>,
    all_cores: Strategy<'a>,
    statics: Vec<Strategy<'a>>,
    budget: Strategy<'a>,
) -> Outcome {
    let candidates = statics.len();
    assert!(candidates > 0, "at least one static candidate");
    let mut all = vec![serial, all_cores];
    all.extend(statics);
    all.push(budget);
    let labels: Vec<String> = all.iter().map(|s| s.label.clone()).collect();
    let mut measured = interleave(plan.reps, &mut all, progress).into_iter();
    let serial = measured.next().expect("serial");
    let all_cores = measured.next().expect("all cores");
    let mut best: Option<(String, Measured)> = None;
    for (label, m) in labels[2..2 + candidates].iter().zip(measured.by_ref()) {
        if best.as_ref().is_none_or(|(_, b)| m.median() < b.median()) {
            best = Some((label.clone(), m));
        }
    }
    let budget = measured.next().expect("budget");
    Outcome {
        serial,
        all_cores,
        best_static: best.expect("a candidate"),
        budget,
    }
}

use super::qr::{budget_qr_loop, QR_N};
use budget_testkit::blas::matrices;

/// A rayon loop over 128 `dgeqrf` of 256×256.
fn qr(plan: &Plan, progress: Progress<'_>) -> Result<Outcome, String> {
    let blas = Blas::load()?;
    let mats = matrices(plan.count(128, 4), QR_N);
    let outer = pool(plan.cores);
    let default = blas.default_threads;
    let par = || outer.install(|| mats.par_iter().for_each(|m| blas.qr(m, QR_N)));
    let seq = || mats.iter().for_each(|m| blas.qr(m, QR_N));
    let (blas, par, seq, mats) = (&blas, &par, &seq, &mats);
    let at = move |threads: usize, f: &dyn Fn()| {
        blas.set_threads(threads);
        f();
        blas.set_threads(default);
    };
    Ok(timed(
        plan,
        progress,
        Strategy::new("serial", move || at(1, seq)),
        Strategy::new("all cores", move || at(default, par)),
        vec![
            Strategy::new("rayon loop, BLAS = 1", move || at(1, par)),
            Strategy::new("serial loop, BLAS = all", move || at(default, seq)),
        ],
        Strategy::new("budget", move || budget_qr_loop(blas, mats)),
    ))
}

/// A rayon loop over 2,000 calls of an OpenMP kernel of ~25 µs single-threaded.
fn omp(plan: &Plan, progress: Progress<'_>) -> Result<Outcome, String> {
    let omp = Omp::load()?;
    let len = 4096;
    let inputs: Vec<Mutex<Vec<f64>>> = (0..plan.count(2000, 20))
        .map(|i| Mutex::new(vec![i as f64; len]))
        .collect();
    let call = |x: &Mutex<Vec<f64>>| omp.call(&mut x.lock().unwrap());
    let outer = pool(plan.cores);
    let cores = plan.cores;
    // OpenMP counts are per thread: the rayon workers' own, and this thread's.
    let outer_threads = |k: usize| outer.broadcast(|_| omp.set_threads(k));
    let par = || outer.install(|| inputs.par_iter().for_each(call));
    let seq = || inputs.iter().for_each(call);
    let (omp, par, seq, outer_threads, call, inputs) =
        (&omp, &par, &seq, &outer_threads, &call, &inputs);
    Ok(timed(
        plan,
        progress,
        Strategy::new("serial", move || {
            omp.set_threads(1);
            seq();
            omp.set_threads(cores);
        }),
        Strategy::new("all cores", move || {
            outer_threads(cores);
            par();
        }),
        vec![
            Strategy::new("rayon loop, OpenMP = 1", move || {
                outer_threads(1);
                par();
                outer_threads(cores);
            }),
            Strategy::new("serial loop, OpenMP = all", move || {
                omp.set_threads(cores);
                seq();
            }),
        ],
        Strategy::new("budget", move || {
            budget::scope(|s| {
                s.install(|| {
                    inputs
                        .par_iter()
                        .for_each(|x| budget::scope(|i| i.native(|| call(x))))
                })
            })
        }),
    ))
}

/// 8 outer tasks × 20,000 inner parallel sums of 2,000 elements. The static settings
/// are pool sizes (the knob a library with its own pool has): "inner = 1" runs each
/// inner sum on a 1-thread pool of its outer task.
fn nested(plan: &Plan, progress: Progress<'_>) -> Outcome {
    let regions = plan.count(INNER_REGIONS, 10);
    let shared = pool(plan.cores);
    let own: Vec<rayon::ThreadPool> = (0..OUTER).map(|_| pool(plan.cores)).collect();
    let ones: Vec<rayon::ThreadPool> = (0..OUTER).map(|_| pool(1)).collect();
    let (shared, own, ones) = (&shared, &own, &ones);
    let per_task_pools = move |pools: &[rayon::ThreadPool]| {
        shared.install(|| {
            pools.par_iter().for_each(|mine| {
                for _ in 0..regions {
                    black_box(mine.install(|| inner_sum(ELEMENTS)));
                }
            })
        })
    };
    timed(
        plan,
        progress,
        Strategy::new("serial", move || {
            for _ in 0..OUTER * regions {
                black_box(inner_sum_seq(ELEMENTS));
            }
        }),
        Strategy::new("all cores", move || per_task_pools(own)),
        vec![
            Strategy::new("outer = all, inner = 1", move || per_task_pools(ones)),
            Strategy::new("outer = 1, inner = all", move || {
                shared.install(|| {
                    for _ in 0..OUTER * regions {
                        black_box(inner_sum(ELEMENTS));
                    }
                })
            }),
            Strategy::new("one rayon pool, nested", move || {
                shared.install(|| {
                    (0..OUTER).into_par_iter().for_each(|_| {
                        for _ in 0..regions {
                            black_box(inner_sum(ELEMENTS));
                        }
                    })
                })
            }),
        ],
        Strategy::new("budget", move || {
            budget::scope(|s| {
                s.install(|| {
                    (0..OUTER).into_par_iter().for_each(|_| {
                        for _ in 0..regions {
                            black_box(budget::install(|| inner_sum(ELEMENTS)));
                        }
                    })
                })
            })
        }),
    )
}

/// One task of weight 24 and eight of weight 1, each an inner parallel region.
fn imbalanced(plan: &Plan, progress: Progress<'_>) -> Outcome {
    let per_unit = ((UNIT_ITERATIONS as f64 * plan.scale).round() as u64).max(10);
    let outer = pool(plan.cores);
    let inner_all: Vec<rayon::ThreadPool> = (0..WEIGHTS.len()).map(|_| pool(plan.cores)).collect();
    let inner_one: Vec<rayon::ThreadPool> = (0..WEIGHTS.len()).map(|_| pool(1)).collect();
    let half = plan.cores.div_ceil(2);
    let outer_half = pool(half);
    let inner_half: Vec<rayon::ThreadPool> = (0..WEIGHTS.len()).map(|_| pool(half)).collect();
    let nested_on = move |outer: &rayon::ThreadPool, inner: &[rayon::ThreadPool]| {
        outer.install(|| {
            WEIGHTS
                .par_iter()
                .zip(inner.par_iter())
                .map(|(&w, mine)| weighted_region(w, per_unit, |f| mine.install(f)))
                .reduce(|| 0, u64::wrapping_add)
        })
    };
    let (outer, inner_all, inner_one, outer_half, inner_half) =
        (&outer, &inner_all, &inner_one, &outer_half, &inner_half);
    timed(
        plan,
        progress,
        Strategy::new("serial", move || {
            black_box(
                WEIGHTS
                    .iter()
                    .map(|&w| weighted_serial(w, per_unit))
                    .fold(0, u64::wrapping_add),
            );
        }),
        Strategy::new("all cores", move || {
            black_box(nested_on(outer, inner_all));
        }),
        vec![
            Strategy::new("outer = all, inner = 1", move || {
                black_box(nested_on(outer, inner_one));
            }),
            Strategy::new("outer = 1, inner = all", move || {
                black_box(
                    WEIGHTS
                        .iter()
                        .map(|&w| weighted_region(w, per_unit, |f| outer.install(f)))
                        .fold(0, u64::wrapping_add),
                );
            }),
            Strategy::new("outer = half, inner = half", move || {
                black_box(nested_on(outer_half, inner_half));
            }),
        ],
        Strategy::new("budget", move || {
            black_box(budget::scope(|s| {
                s.install(|| {
                    WEIGHTS
                        .par_iter()
                        .map(|&w| weighted_region(w, per_unit, |f| budget::install(f)))
                        .reduce(|| 0, u64::wrapping_add)
                })
            }));
        }),
    )
}

/// One `dgemm` of 2048² followed by a rayon loop over 128 QR of 256².
fn mixed(plan: &Plan, progress: Progress<'_>) -> Result<Outcome, String> {
    let blas = Blas::load()?;
    let default = blas.default_threads;
    let big = (((2048.0 * plan.scale.cbrt()) as usize / 64) * 64).max(128);
    let (ga, gb) = (vec![1.0f64; big * big], vec![0.5f64; big * big]);
    let gc = Mutex::new(vec![0.0f64; big * big]);
    let gemm = || blas.gemm(&ga, &gb, &mut gc.lock().unwrap(), big);
    let mats = matrices(plan.count(128, 4), QR_N);
    let outer = pool(plan.cores);
    let small_par = || outer.install(|| mats.par_iter().for_each(|m| blas.qr(m, QR_N)));
    let (blas, gemm, small_par, mats) = (&blas, &gemm, &small_par, &mats);
    // Each strategy sets the counts it runs at and leaves OpenBLAS at its default.
    let big_then_small = move |big_threads: usize, small_threads: usize| {
        blas.set_threads(big_threads);
        gemm();
        blas.set_threads(small_threads);
        small_par();
        blas.set_threads(default);
    };
    Ok(timed(
        plan,
        progress,
        Strategy::new("serial", move || {
            blas.set_threads(1);
            gemm();
            mats.iter().for_each(|m| blas.qr(m, QR_N));
            blas.set_threads(default);
        }),
        Strategy::new("all cores", move || big_then_small(default, default)),
        vec![
            Strategy::new("BLAS = 1 everywhere", move || big_then_small(1, 1)),
            Strategy::new("big at all, small at 1", move || big_then_small(default, 1)),
        ],
        Strategy::new("budget", move || {
            budget::scope(|s| s.native(gemm));
            budget_qr_loop(blas, mats);
        }),
    ))
}

/// Worker processes run at once in the processes scenario.
const PROCESSES: usize = 3;

/// Three processes at once, each a rayon loop over 64 `dgeqrf` of 256² (the first
/// scenario's loop, half as long), as a process pool or `make -j` would run them.
/// The round's time is the makespan: from telling the three to start until the last
/// is done (the processes start, and make their matrices, before the rounds).
///
/// - serial: the three "rayon = 1, BLAS = 1" processes run one after another, so
///   the ideal is the three processes' serial work / cores;
/// - all cores: each process sizes rayon to every core, OpenBLAS at its default;
/// - static candidates, the same in each process: rayon = 1 and BLAS = 1 (three
///   single-threaded processes), rayon = all and BLAS = 1;
/// - budget: the three processes share one node budget of `cores` tokens (a file
///   made here, named by `BUDGET_NODE` as `budget run` does), each running the
///   budget QR loop of the first scenario.
fn processes(plan: &Plan, progress: Progress<'_>) -> Result<Outcome, String> {
    Blas::load()?; // where OpenBLAS is missing, say what to install before starting anything
    let node = NodeFile::create(plan.cores)?;
    let count = plan.count(64, 4);
    let spawn = |setting: Setting, node: Option<&Path>| {
        progress(
            0,
            &format!("starting {PROCESSES} processes: {}", setting_label(setting)),
        );
        Group::spawn(plan.worker, setting, PROCESSES, plan.cores, count, node)
    };
    // Dropped before `node`: the workers end before their node file goes.
    let ones = spawn(Setting::RayonOne, None)?;
    let all = spawn(Setting::AllCores, None)?;
    let rayon_all = spawn(Setting::RayonAll, None)?;
    let budget = spawn(Setting::Budget, Some(node.path()))?;
    let (ones, all, rayon_all, budget) = (&ones, &all, &rayon_all, &budget);
    Ok(timed(
        plan,
        progress,
        Strategy::new("serial", move || ones.in_turn()),
        Strategy::new("all cores", move || all.together()),
        vec![
            Strategy::new(setting_label(Setting::RayonOne), move || ones.together()),
            Strategy::new(setting_label(Setting::RayonAll), move || {
                rayon_all.together()
            }),
        ],
        Strategy::new("budget", move || budget.together()),
    ))
}

/// A processes-scenario setting as the table names it.
fn setting_label(setting: Setting) -> &'static str {
    match setting {
        Setting::AllCores => "all cores",
        Setting::RayonOne => "rayon = 1, BLAS = 1",
        Setting::RayonAll => "rayon = all, BLAS = 1",
        Setting::Budget => "budget",
    }
}
