//! `s.native(..)` called from the region's own tasks sizes the call
//! as the nested region the task is: the OpenMP threads of calls in flight at once
//! never exceed the budget. Real libgomp, in a child process with
//! `BUDGET_NUM_THREADS=4`. Before the fix each of four tasks got 4 threads (16).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use budget_native::NativeExt;
use budget_testkit::child::in_child_env;

const TOTAL: usize = 4;

#[test]
fn native_from_for_each_tasks_stays_within_the_budget() {
    in_child_env(
        "native_from_for_each_tasks_stays_within_the_budget",
        &["BUDGET_NATIVE_GOMP"],
        &[("BUDGET_NUM_THREADS", "4")],
        |libs| {
            let gomp = &libs[0];
            assert_eq!(budget_core::stats().total, TOTAL);
            let in_flight = AtomicUsize::new(0);
            let max = AtomicUsize::new(0);
            let arrived = AtomicUsize::new(0);
            budget_core::scope(|s| {
                assert_eq!(s.width(), TOTAL);
                // The region's own thread gets the full width.
                let own = s.native(|| gomp.get_int("omp_get_max_threads"));
                assert_eq!(own as usize, TOTAL);
                s.for_each(0..TOTAL, |_| {
                    s.native(|| {
                        let width = gomp.get_int("omp_get_max_threads") as usize;
                        let now = in_flight.fetch_add(width, Ordering::SeqCst) + width;
                        max.fetch_max(now, Ordering::SeqCst);
                        // Hold the call until every task is in one (at most 5 s).
                        arrived.fetch_add(1, Ordering::SeqCst);
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while arrived.load(Ordering::SeqCst) < TOTAL && Instant::now() < deadline {
                            thread::sleep(Duration::from_millis(1));
                        }
                        in_flight.fetch_sub(width, Ordering::SeqCst);
                    })
                });
            });
            let max = max.load(Ordering::SeqCst);
            println!("MAX_THREADS_IN_FLIGHT={max}");
            assert!(
                max <= TOTAL,
                "{max} OpenMP threads in flight at once on a budget of {TOTAL}"
            );
            assert_eq!(budget_core::stats().in_use, 0);
        },
    );
}
