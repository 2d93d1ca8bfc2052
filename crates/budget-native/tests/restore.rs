//! Set-and-restore for each family (also after a panic), per-thread isolation for the
//! OpenMP runtimes and MKL, and `s.native` inside regions: each in a child process
//! that loads the library by path.

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Barrier;

use budget_native::{limit, NativeExt};
use budget_testkit::blas::Dgemm;
use budget_testkit::{in_child, in_child_env, Lib};

/// How a library's count behaves under nested guards.
#[derive(Clone, Copy, PartialEq)]
enum Rule {
    /// The newest guard's count.
    PerThread,
    /// The smallest width in flight.
    ProcessWide,
    /// OpenBLAS on OpenMP: with a multi-threaded call in flight at `outer`, a nested
    /// call runs at `outer` if it may, else at 1 (the global never changes).
    OpenBlasOpenMp,
}

impl Rule {
    /// The count inside `limit(inner)` nested in `limit(outer)`.
    fn nested(self, outer: usize, inner: usize) -> usize {
        match self {
            Rule::PerThread => inner,
            Rule::ProcessWide => outer.min(inner),
            // limit(1) leaves no multi-threaded call in flight.
            Rule::OpenBlasOpenMp if outer == 1 => inner,
            Rule::OpenBlasOpenMp if inner >= outer => outer,
            Rule::OpenBlasOpenMp => 1,
        }
    }
}

/// `limit(n)` sets `read()` to `n` for its duration and puts back exactly what was
/// there, on a normal drop and on unwinding; nested guards follow `rule`.
fn set_and_restore(read: &dyn Fn() -> c_int, rule: Rule) {
    let before = read();
    for n in [1, 3, 7] {
        {
            let g = limit(n);
            assert!(g.changed() >= 1 || before == n as c_int);
            assert_eq!(read(), n as c_int);
            for inner in [2, 9] {
                let _inner = limit(inner); // nested guards restore in stack order
                let want = rule.nested(n, inner);
                assert_eq!(read(), want as c_int, "limit({inner}) inside limit({n})");
            }
            assert_eq!(read(), n as c_int);
        }
        assert_eq!(read(), before);
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _g = limit(5);
        assert_eq!(read(), 5);
        panic!("boom");
    }));
    assert!(r.is_err());
    assert_eq!(read(), before, "restored after a panic");
    // Inside a region: the width of the region.
    budget_core::scope_with(4, |s| {
        s.native(|| assert_eq!(read() as usize, s.width()));
    });
    let r = catch_unwind(AssertUnwindSafe(|| {
        budget_core::scope(|s| s.native(|| panic!("in native")));
    }));
    assert!(r.is_err());
    assert_eq!(read(), before, "restored after a panic inside s.native");
    assert_eq!(budget_core::stats().in_use, 0);
}

/// Two threads with different widths each see their own count, at the same time.
fn per_thread_isolation(read: &(dyn Fn() -> c_int + Sync)) {
    let before = read();
    let barrier = Barrier::new(2);
    std::thread::scope(|t| {
        for n in [2usize, 3] {
            let barrier = &barrier;
            t.spawn(move || {
                let own = read();
                {
                    let _g = limit(n);
                    barrier.wait(); // both have set their count
                    assert_eq!(read(), n as c_int);
                    barrier.wait(); // both have checked before either restores
                }
                assert_eq!(read(), own);
            });
        }
    });
    assert_eq!(read(), before, "the main thread was never touched");
}

/// The spin window of the lease tests: 2^30 cycles, ~0.5 s.
const LONG_WINDOW: &[(&str, &str)] = &[("OPENBLAS_THREAD_TIMEOUT", "30")];

fn omp(lib: &Lib) -> impl Fn() -> c_int + Sync + '_ {
    move || lib.get_int("omp_get_max_threads")
}

#[test]
fn libgomp() {
    in_child("libgomp", &["BUDGET_NATIVE_GOMP"], |l| {
        set_and_restore(&omp(&l[0]), Rule::PerThread);
        per_thread_isolation(&omp(&l[0]));
    });
}

#[test]
fn llvm_libomp() {
    in_child("llvm_libomp", &["BUDGET_NATIVE_LLVM_OMP"], |l| {
        set_and_restore(&omp(&l[0]), Rule::PerThread);
        per_thread_isolation(&omp(&l[0]));
        // Idle threads sleep at once instead of spinning 200 ms.
        assert_eq!(l[0].get_int("kmp_get_blocktime"), 0);
    });
}

#[test]
fn intel_libiomp5() {
    in_child("intel_libiomp5", &["BUDGET_NATIVE_IOMP5"], |l| {
        set_and_restore(&omp(&l[0]), Rule::PerThread);
        per_thread_isolation(&omp(&l[0]));
        assert_eq!(l[0].get_int("kmp_get_blocktime"), 0);
    });
}

#[test]
fn mkl() {
    in_child(
        "mkl",
        &["BUDGET_NATIVE_IOMP5", "BUDGET_NATIVE_MKL_RT"],
        |l| {
            let read = || l[1].get_int("MKL_Get_Max_Threads");
            set_and_restore(&read, Rule::PerThread);
            per_thread_isolation(&read);
        },
    );
}

#[test]
fn openblas_openmp_follows_its_runtime() {
    in_child(
        "openblas_openmp_follows_its_runtime",
        &["BUDGET_NATIVE_OPENBLAS_OPENMP"],
        |l| {
            // The OpenMP OpenBLAS is sized by libgomp's per-thread count, which budget
            // sets; with a multi-threaded call in flight, a nested guard runs at that
            // call's count if it may, else at 1 (never wider, the global never changes).
            let gomp = Lib::load("BUDGET_NATIVE_GOMP");
            set_and_restore(&omp(&gomp), Rule::OpenBlasOpenMp);
            let _three = limit(3);
            let _two = limit(2);
            assert_eq!(
                l[0].get_int("openblas_get_num_threads"),
                3,
                "the global is left alone"
            );
        },
    );
}

#[test]
fn openblas_pthreads() {
    in_child(
        "openblas_pthreads",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        |l| {
            set_and_restore(
                &|| l[0].get_int("openblas_get_num_threads"),
                Rule::ProcessWide,
            );
        },
    );
}

#[test]
fn scipy_openblas64() {
    in_child(
        "scipy_openblas64",
        &["BUDGET_NATIVE_SCIPY_OPENBLAS64"],
        |l| {
            set_and_restore(
                &|| l[0].get_int("scipy_openblas_get_num_threads64_"),
                Rule::ProcessWide,
            );
        },
    );
}

#[test]
fn blis_pthreads() {
    in_child("blis_pthreads", &["BUDGET_NATIVE_BLIS_PTHREAD"], |l| {
        // SAFETY: `dim_t bli_thread_get_num_threads(void)`, dim_t = int64_t.
        let get =
            unsafe { l[0].func::<unsafe extern "C" fn() -> i64>("bli_thread_get_num_threads") };
        // BLIS says -1 until a count is set; budget restores exactly that.
        // SAFETY: no preconditions.
        let read = || unsafe { get() } as c_int;
        let before = read();
        set_and_restore(&read, Rule::ProcessWide);
        assert_eq!(read(), before);
    });
}

/// A process-wide count is the smallest width in flight, and the saved count comes
/// back when the last call ends.
#[test]
fn process_wide_count_is_the_smallest_in_flight() {
    in_child(
        "process_wide_count_is_the_smallest_in_flight",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        |l| {
            let read = || l[0].get_int("openblas_get_num_threads");
            let before = read();
            let wide = limit(6);
            assert_eq!(read(), 6);
            std::thread::scope(|t| {
                t.spawn(|| {
                    let narrow = limit(2);
                    assert_eq!(read(), 2);
                    let wider = limit(9);
                    assert_eq!(read(), 2, "not raised above a call in flight");
                    drop(wider);
                    assert_eq!(read(), 2);
                    drop(narrow);
                });
            });
            assert_eq!(read(), 6, "back to the smallest width in flight");
            drop(wide);
            assert_eq!(read(), before);
        },
    );
}

/// Builds a budget of `total` and returns OpenBLAS's `cblas_dgemm` with 256² operands.
fn openblas_on_budget(lib: &Lib, total: usize) -> (Dgemm, usize, Vec<f64>, Vec<f64>) {
    budget_core::Builder::new()
        .num_threads(total)
        .build_global()
        .unwrap();
    let n = 256;
    (
        Dgemm::of(lib, false, "cblas_dgemm"),
        n,
        vec![1.0; n * n],
        vec![0.0; n * n],
    )
}

/// OpenBLAS's pthreads workers busy-wait after a wide call (here for a long window,
/// ~0.5 s), yielding the core to any thread that wants it. They hold no token: a
/// region on another thread right after the call, still inside the window, gets the
/// whole budget, and so does a region opened on the same thread; nothing is leased.
#[test]
fn openblas_spinning_workers_hold_no_token() {
    in_child_env(
        "openblas_spinning_workers_hold_no_token",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        LONG_WINDOW,
        |l| {
            let (dgemm, n, a, mut c) = openblas_on_budget(&l[0], 4);
            budget_core::scope_with(4, |s| {
                assert_eq!(s.width(), 4);
                s.native(|| dgemm.run(n, &a, &a, &mut c));
            });
            let stats = budget_core::stats();
            assert_eq!((stats.in_use, stats.leased), (0, 0), "{stats}");
            let other = std::thread::spawn(|| budget_core::scope(|o| o.width()))
                .join()
                .unwrap();
            assert_eq!(other, 4, "another thread's region right after the call");
            budget_core::scope_with(4, |s| assert_eq!(s.width(), 4, "the same thread"));
            let stats = budget_core::stats();
            assert_eq!(stats.grants_below_request, 0, "{stats}");
        },
    );
}

/// OpenBLAS built on OpenMP takes its count from the calling thread's OpenMP ICV at each
/// call (`num_cpu_avail`), so a BLAS call under `limit(k)` re-syncs OpenBLAS's own count
/// to `k`. (Under `limit(1)` it returns 1 thread early without touching its variable, so
/// only widths above 1 can be observed this way.)
#[test]
fn openblas_openmp_call_uses_the_limit() {
    in_child(
        "openblas_openmp_call_uses_the_limit",
        &["BUDGET_NATIVE_OPENBLAS_OPENMP"],
        |l| {
            let dgemm = Dgemm::of(&l[0], false, "cblas_dgemm");
            let n = 128;
            let (a, mut c) = (vec![1.0; n * n], vec![0.0; n * n]);
            let mut seen = Vec::new();
            for k in [1, 2, 1, 3, 2] {
                let _g = limit(k);
                dgemm.run(n, &a, &a, &mut c);
                seen.push(l[0].get_int("openblas_get_num_threads"));
            }
            println!("openblas_get_num_threads after calls under limit(1, 2, 1, 3, 2): {seen:?}");
            assert_eq!([seen[1], seen[3], seen[4]], [2, 3, 2], "{seen:?}");
        },
    );
}

/// Three guards dropped in each of the six orders: after every drop the count is that
/// of the newest live guard (per-thread) or the smallest live width (process-wide),
/// and the count found before the first guard once all are gone.
fn any_drop_order(read: &dyn Fn() -> c_int, rule: Rule) {
    let before = read();
    let widths = [3usize, 1, 2];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut guards: Vec<Option<budget_native::Limit>> =
            widths.iter().map(|&w| Some(limit(w))).collect();
        for (step, &i) in order.iter().enumerate() {
            drop(guards[i].take());
            let live: Vec<usize> = (0..3).filter(|&j| guards[j].is_some()).collect();
            let want = match live.last() {
                None => before,
                Some(_) if rule == Rule::ProcessWide => {
                    live.iter().map(|&j| widths[j]).min().unwrap() as c_int
                }
                Some(&newest) => widths[newest] as c_int,
            };
            assert_eq!(
                read(),
                want,
                "drop order {order:?}, after step {step} (live guards {live:?})"
            );
        }
    }
}

#[test]
fn libgomp_guards_dropped_in_any_order() {
    in_child(
        "libgomp_guards_dropped_in_any_order",
        &["BUDGET_NATIVE_GOMP"],
        |l| any_drop_order(&omp(&l[0]), Rule::PerThread),
    );
}

#[test]
fn openblas_pthreads_guards_dropped_in_any_order() {
    in_child(
        "openblas_pthreads_guards_dropped_in_any_order",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        |l| {
            any_drop_order(
                &|| l[0].get_int("openblas_get_num_threads"),
                Rule::ProcessWide,
            )
        },
    );
}

/// Back-to-back width-2 regions on an idle budget of 2, each making one BLAS call,
/// 0, 10 and 50 ms apart (inside the spin window of the previous call's worker, which
/// is the very thread the next call runs on): every region and every call has the
/// whole budget.
fn back_to_back_calls_keep_their_width(lib: &Lib, dgemm: Dgemm, get: &str) {
    budget_core::Builder::new()
        .num_threads(2)
        .build_global()
        .unwrap();
    let n = 256;
    let (a, mut c) = (vec![1.0; n * n], vec![0.0; n * n]);
    for gap in [0, 10, 50] {
        let widths: Vec<(usize, c_int)> = (0..12)
            .map(|_| {
                let w = budget_core::scope_with(2, |s| {
                    s.native(|| {
                        dgemm.run(n, &a, &a, &mut c);
                        (s.width(), lib.get_int(get))
                    })
                });
                std::thread::sleep(std::time::Duration::from_millis(gap));
                w
            })
            .collect();
        println!("{gap} ms apart: (region, OpenBLAS) widths {widths:?}");
        assert!(
            widths.iter().all(|&w| w == (2, 2)),
            "{gap} ms apart: {widths:?}"
        );
    }
    let stats = budget_core::stats();
    assert_eq!(stats.grants_below_request, 0, "{stats}");
}

/// Debian's OpenBLAS 0.3.21 on pthreads.
#[test]
fn openblas_back_to_back_calls_keep_their_width() {
    in_child(
        "openblas_back_to_back_calls_keep_their_width",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        |l| {
            let dgemm = Dgemm::of(&l[0], false, "cblas_dgemm");
            back_to_back_calls_keep_their_width(&l[0], dgemm, "openblas_get_num_threads");
        },
    );
}

/// The OpenBLAS NumPy ships (scipy-openblas64, ILP64, `scipy_` symbols).
#[test]
fn numpy_openblas_back_to_back_calls_keep_their_width() {
    in_child(
        "numpy_openblas_back_to_back_calls_keep_their_width",
        &["BUDGET_NATIVE_SCIPY_OPENBLAS64"],
        |l| {
            let dgemm = Dgemm::of(&l[0], true, "scipy_cblas_dgemm64_");
            back_to_back_calls_keep_their_width(&l[0], dgemm, "scipy_openblas_get_num_threads64_");
        },
    );
}

/// The calling thread's CPUs: (how many, the lowest), from its affinity mask.
#[cfg(target_os = "linux")]
fn my_cpus() -> (usize, usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; the kernel writes within its size;
    // CPU_COUNT/CPU_ISSET read within it.
    unsafe {
        let mut mask: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mask),
            0
        );
        let count = libc::CPU_COUNT(&mask) as usize;
        let lowest = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &mask))
            .unwrap();
        (count, lowest)
    }
}

/// Right after a wide call of Debian's OpenBLAS (its workers spin for the default
/// window, no variable set), two narrow `s.native` calls on two threads each run on a
/// CPU of their own, and their threads get their masks back when the calls end; a
/// call as wide as the spinning one, a `limit` guard, and a narrow call after the
/// window are left alone. (Needs 2 CPUs, as CI's machine has; the window is OpenBLAS's
/// default ~0.1 s, and the narrow calls start right after the wide one.)
/// (Without it the scheduler put both threads of a loop on one core beside the
/// spinner: `--bench after_wide`, ~2× in most rounds.)
#[cfg(target_os = "linux")]
#[test]
fn narrow_calls_beside_spinning_workers_get_a_cpu_each() {
    in_child(
        "narrow_calls_beside_spinning_workers_get_a_cpu_each",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        |l| {
            let before = my_cpus();
            assert!(
                before.0 >= 2,
                "this test needs 2 CPUs, the thread has {before:?}"
            );
            let (dgemm, n, a, mut c) = openblas_on_budget(&l[0], 2);
            budget_core::scope_with(2, |s| s.native(|| dgemm.run(n, &a, &a, &mut c)));
            let both = Barrier::new(2);
            let seen: Vec<((usize, usize), (usize, usize))> = std::thread::scope(|t| {
                let calls: Vec<_> = (0..2)
                    .map(|_| {
                        t.spawn(|| {
                            let outside = my_cpus();
                            let inside = budget_core::scope_with(1, |s| {
                                s.native(|| {
                                    both.wait();
                                    let inside = my_cpus();
                                    both.wait();
                                    inside
                                })
                            });
                            assert_eq!(my_cpus(), outside, "the mask comes back");
                            (inside, outside)
                        })
                    })
                    .collect();
                calls.into_iter().map(|c| c.join().unwrap()).collect()
            });
            println!("narrow calls inside the window (cpus, lowest): {seen:?}");
            assert!(seen.iter().all(|(inside, _)| inside.0 == 1), "{seen:?}");
            assert_ne!(seen[0].0 .1, seen[1].0 .1, "one CPU each: {seen:?}");
            let wide = budget_core::scope_with(2, |s| s.native(my_cpus));
            assert_eq!(wide, before, "a call as wide as the spinning one");
            let guard = limit(1);
            assert_eq!(my_cpus(), before, "a limit guard (not a native call)");
            drop(guard);
            std::thread::sleep(std::time::Duration::from_millis(400));
            let late = budget_core::scope_with(1, |s| s.native(my_cpus));
            assert_eq!(late, before, "a narrow call after the window");
        },
    );
}
