//! Fork safety of budget-rayon (Linux): a child forked after the parent used
//! `s.install` runs rayon regions on pools of its own.
//!
//! Its own test binary, apart from `tests/fork.rs`: a child that starts threads
//! reuses the stacks of the parent's threads (glibc's stack cache), while
//! parking_lot's process-wide parking table, which budget-core's workers park in,
//! still lists the parent's parked workers on those stacks. Next to `tests/fork.rs`'s
//! workers parked at fork time this test's pool threads made that hazard (a
//! budget-core matter) show up in 7 of 30 runs instead of about 1 in 20; apart, each
//! binary tests its own crate's fork handling.
//!
//! The child never returns into the test harness: it reports through its exit code
//! and writes what went wrong to fd 2. The parent waits for it under a deadline,
//! and kills it and fails if it hangs.
#![cfg(target_os = "linux")]

use std::time::Duration;

use budget::prelude::*;
use rayon::prelude::*;

const TOTAL: usize = 4;
const DEADLINE: Duration = Duration::from_secs(30);

use budget_testkit::forked::{run as child_run, wait};

/// Rayon regions through `s.install` work, at full width and narrowed (gated).
fn rayon_regions_work() -> Result<(), String> {
    let expected: u64 = (0..10_000u64).sum();
    let (threads, sum) = budget::scope_with(2, |s| {
        s.install(|| {
            (
                rayon::current_num_threads(),
                (0..10_000u64).into_par_iter().sum::<u64>(),
            )
        })
    });
    if (threads, sum) != (2, expected) {
        return Err(format!(
            "width-2 install: {threads} threads, sum {sum} (expected {expected})"
        ));
    }
    // Narrowed: the lease leaves one token, the region asks for 2 and gates one thread.
    let lease = budget::Lease::try_new(TOTAL - 1);
    let (width, threads, sum) = budget::scope_with(2, |s| {
        let width = s.width();
        let (threads, sum) = s.install(|| {
            (
                rayon::current_num_threads(),
                (0..10_000u64).into_par_iter().sum::<u64>(),
            )
        });
        (width, threads, sum)
    });
    drop(lease);
    if (width, threads, sum) != (1, 2, expected) {
        return Err(format!(
            "narrowed install: width {width}, {threads} threads, sum {sum}"
        ));
    }
    let full = budget::install(rayon::current_num_threads);
    if full != TOTAL {
        return Err(format!("full-width install: {full} threads"));
    }
    let in_use = budget::stats().in_use;
    if in_use != 0 {
        return Err(format!("tokens leaked: {in_use}"));
    }
    Ok(())
}

/// A child forked after the parent used `s.install` (its cached rayon pools have no
/// threads in the child) runs rayon regions, full and narrowed, instead of hanging.
#[test]
fn child_forked_after_install_runs_rayon_regions() {
    let _serial = budget_testkit::budget::exclusive_budget(TOTAL);
    // Fill the parent's pool cache: capacities 2 and TOTAL, one of them gated once.
    assert_eq!(rayon_regions_work(), Ok(()));
    // SAFETY: the child uses budget, rayon, malloc and thread creation (fine on
    // glibc) and ends in _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        child_run(rayon_regions_work);
    }
    assert_eq!(
        wait(pid, DEADLINE),
        0,
        "rayon regions failed in the forked child (see its stderr)"
    );
    // The parent's pools still work.
    assert_eq!(rayon_regions_work(), Ok(()));
}
