//! Thread-count variables set at start (`OMP_NUM_THREADS` and its kin, as Ray, Spark
//! and Dask's nanny set them per worker) cap what `s.native` and `limit` set: narrower
//! than the region is allowed, wider never. Each case in a child process with the
//! real library and a made-up environment; `BUDGET_NATIVE_ENV_CAP=off` lifts the cap.

use std::ffi::c_int;

use budget_native::{limit, NativeExt};
use budget_testkit::{in_child_env, Lib};

/// The budget's total in the children: wide enough to show a cap below the width.
const TOTAL: (&str, &str) = ("BUDGET_NUM_THREADS", "4");

/// Inside a region of `width` threads, `read()` sees `want`; after it, `before`.
fn region_sees(read: &dyn Fn() -> c_int, width: usize, want: c_int) {
    let before = read();
    budget_core::scope_with(width, |s| {
        assert_eq!(s.width(), width, "the region itself is not narrowed");
        s.native(|| assert_eq!(read(), want, "inside a region of width {width}"));
    });
    assert_eq!(read(), before, "restored after the region");
    {
        let _g = limit(width);
        assert_eq!(read(), want, "limit({width})");
    }
    assert_eq!(read(), before, "restored after the guard");
}

fn omp(l: &Lib) -> impl Fn() -> c_int + '_ {
    move || l.get_int("omp_get_max_threads")
}

#[test]
fn libgomp_respects_omp_num_threads() {
    in_child_env(
        "libgomp_respects_omp_num_threads",
        &["BUDGET_NATIVE_GOMP"],
        &[TOTAL, ("OMP_NUM_THREADS", "1")],
        |l| {
            let read = omp(&l[0]);
            assert_eq!(read(), 1, "libgomp read OMP_NUM_THREADS itself");
            region_sees(&read, 4, 1);
        },
    );
}

#[test]
fn libgomp_narrower_than_the_cap_is_kept() {
    in_child_env(
        "libgomp_narrower_than_the_cap_is_kept",
        &["BUDGET_NATIVE_GOMP"],
        // A list: the first level is the cap.
        &[TOTAL, ("OMP_NUM_THREADS", "3,1")],
        |l| {
            let read = omp(&l[0]);
            region_sees(&read, 2, 2);
            region_sees(&read, 4, 3);
        },
    );
}

#[test]
fn libgomp_cap_off() {
    in_child_env(
        "libgomp_cap_off",
        &["BUDGET_NATIVE_GOMP"],
        &[
            TOTAL,
            ("OMP_NUM_THREADS", "1"),
            ("BUDGET_NATIVE_ENV_CAP", "off"),
        ],
        |l| region_sees(&omp(&l[0]), 4, 4),
    );
}

#[test]
fn openblas_pthreads_reads_its_own_variable_then_omp() {
    // Dask's nanny: all three at 1.
    in_child_env(
        "openblas_pthreads_reads_its_own_variable_then_omp",
        &["BUDGET_NATIVE_OPENBLAS_PTHREAD"],
        &[
            TOTAL,
            ("OPENBLAS_NUM_THREADS", "2"),
            ("OMP_NUM_THREADS", "1"),
        ],
        |l| {
            let read = || l[0].get_int("openblas_get_num_threads");
            region_sees(&read, 4, 2);
            region_sees(&read, 1, 1);
        },
    );
}
