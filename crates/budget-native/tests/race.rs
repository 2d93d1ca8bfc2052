//! The pattern that crashes OpenBLAS 0.3.21–0.3.34 when threads set the process-wide
//! count concurrently (16 threads, each setting a count in 1..=16 before a `dgemm`
//! 256²), run through budget: 200 runs of 16 racing threads per library, each run's
//! threads entering `scope_with(k, |s| s.native(|| dgemm))` with varied `k` under a
//! budget of 64 tokens (on a 2-core machine a smaller budget would only ever grant
//! width 1 or 2, and the crash needs counts that vary). Each library in a child
//! process; every product is checked.

use std::sync::Barrier;

use budget_native::NativeExt;
use budget_testkit::blas::Dgemm;
use budget_testkit::{in_child, in_child_env, Lib};

const RUNS: usize = 200;
const THREADS: usize = 16;
const N: usize = 256;

fn race(dgemm: Dgemm) {
    race_runs(dgemm, RUNS, &|| None)
}

/// `runs` runs of the race; `count()` (read inside each call, if it gives one) must
/// never exceed the region's width.
fn race_runs(dgemm: Dgemm, runs: usize, count: &(dyn Fn() -> Option<usize> + Sync)) {
    budget_core::Builder::new()
        .num_threads(64)
        .build_global()
        .expect("the budget is not started yet");
    let a = vec![1.0f64; N * N];
    let b = vec![1.0f64; N * N];
    let mut widths = std::collections::BTreeSet::new();
    for run in 0..runs {
        let barrier = Barrier::new(THREADS);
        let got: Vec<usize> = std::thread::scope(|t| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (a, b, barrier) = (&a, &b, &barrier);
                    t.spawn(move || {
                        // A varied request in 1..=16 per thread and run.
                        let k = 1 + (i * 7 + run * 5 + (run * i) % 11) % 16;
                        let mut c = vec![0.0f64; N * N];
                        barrier.wait();
                        let w = budget_core::scope_with(k, |s| {
                            s.native(|| {
                                if let Some(n) = count() {
                                    assert!(n <= s.width(), "{n} threads for width {}", s.width());
                                }
                                dgemm.run(N, a, b, &mut c)
                            });
                            s.width()
                        });
                        assert!(
                            c.iter().all(|&x| x == N as f64),
                            "wrong product in run {run}"
                        );
                        w
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        widths.extend(got);
    }
    println!("{runs} runs of {THREADS} racing threads passed; widths granted: {widths:?}");
    assert!(
        widths.len() >= 4,
        "the counts must vary for the test to mean anything: {widths:?}"
    );
}

#[test]
fn debian_openblas_pthreads_200_runs() {
    in_child(
        "debian_openblas_pthreads_200_runs",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        |l| race(Dgemm::of(&l[0], false, "cblas_dgemm")),
    );
}

#[test]
fn scipy_openblas64_200_runs() {
    in_child(
        "scipy_openblas64_200_runs",
        &["BUDGET_NATIVE_SCIPY_OPENBLAS64"],
        |l| race(Dgemm::of(&l[0], true, "scipy_cblas_dgemm64_")),
    );
}

/// The same race on OpenBLAS built on OpenMP (Debian's 0.3.21), with
/// `OMP_WAIT_POLICY=passive`: when each thread's OpenMP count was its own width, 2 of 4
/// children of 20 runs hung (the library keeps one global count that every call
/// re-syncs to the caller's `omp_get_max_threads()`; a call split its work for more
/// threads than its team had). Each call's OpenMP count must stay within its width. A
/// watchdog fails the child instead of hanging the suite.
#[test]
fn debian_openblas_openmp_30_runs() {
    in_child_env(
        "debian_openblas_openmp_30_runs",
        &["BUDGET_NATIVE_OPENBLAS_OPENMP"],
        &[("OMP_WAIT_POLICY", "passive")],
        |l| {
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_secs(60));
                eprintln!("watchdog: 30 runs of 16 racing OpenMP OpenBLAS calls hung for 60 s");
                std::process::exit(1);
            });
            let gomp = Lib::load("BUDGET_NATIVE_GOMP");
            let omp_count = || Some(gomp.get_int("omp_get_max_threads") as usize);
            race_runs(Dgemm::of(&l[0], false, "cblas_dgemm"), 30, &omp_count)
        },
    );
}

/// The control experiment, not part of the suite: the same pattern calling
/// `openblas_set_num_threads` directly, without budget. Run it by hand with
/// `cargo test -p budget-threads-native --test race -- --ignored --nocapture`; it reports how many
/// of 30 child runs crashed or failed (each run is a child process of its own).
#[test]
#[ignore = "a by-hand control experiment: it crashes OpenBLAS on purpose"]
fn control_without_budget_crashes() {
    if std::env::var("BUDGET_NATIVE_CONTROL_CHILD").is_ok() {
        let lib = Lib::load("BUDGET_NATIVE_OPENBLAS_PTHREAD");
        let dgemm = Dgemm::of(&lib, false, "cblas_dgemm");
        // SAFETY: `void openblas_set_num_threads(int)`.
        let set = unsafe { lib.func::<unsafe extern "C" fn(i32)>("openblas_set_num_threads") };
        let a = vec![1.0f64; N * N];
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|t| {
            for i in 0..THREADS {
                let (a, barrier) = (&a, &barrier);
                t.spawn(move || {
                    let mut c = vec![0.0f64; N * N];
                    barrier.wait();
                    // SAFETY: the racing call under test.
                    unsafe { set(1 + (i * 7) as i32 % 16) };
                    dgemm.run(N, a, a, &mut c);
                    assert!(c.iter().all(|&x| x == N as f64));
                });
            }
        });
        return;
    }
    let (mut failed, mut hung) = (0, 0);
    for _ in 0..30 {
        let mut child = budget_testkit::child::test_command("control_without_budget_crashes")
            .arg("--ignored")
            .env("BUDGET_NATIVE_CONTROL_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        match budget_testkit::child::wait_or_kill(&mut child, std::time::Duration::from_secs(20)) {
            Some(status) => failed += usize::from(!status.success()),
            None => hung += 1,
        }
    }
    println!("without budget: {failed} of 30 runs crashed or failed, {hung} hung (> 20 s)");
}
