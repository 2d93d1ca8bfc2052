//! Behaviour of regions: widths when nested (shrink), growth when tokens come back,
//! the task API, and panics. Runs with a budget of exactly 2 cores.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::Duration;

fn two_cores() -> std::sync::MutexGuard<'static, ()> {
    budget_testkit::budget::exclusive_budget(2)
}

#[test]
fn shrink_nested_region_runs_at_width_one() {
    let _g = two_cores();
    budget_core::scope(|outer| {
        assert_eq!(outer.width(), 2);
        budget_core::scope(|inner| assert_eq!(inner.width(), 1));
        outer.join(
            || budget_core::scope(|inner| assert_eq!(inner.width(), 1)),
            || budget_core::scope(|inner| assert_eq!(inner.width(), 1)),
        );
    });
    assert_eq!(budget_core::stats().in_use, 0);
    budget_core::scope(|again| assert_eq!(again.width(), 2));
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn growth_after_release_runs_queued_tasks_on_two_threads() {
    let _g = two_cores();
    let hold = Barrier::new(2);
    let release = AtomicBool::new(false);
    thread::scope(|t| {
        // Another thread takes both cores and keeps them until told.
        t.spawn(|| {
            budget_core::scope(|s| {
                assert_eq!(s.width(), 2);
                hold.wait();
                while !release.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
            })
        });
        hold.wait();
        let threads = Mutex::new(HashSet::new());
        let started = AtomicUsize::new(0);
        let before = budget_core::stats().tokens_regrown;
        budget_core::scope(|s| {
            assert_eq!(s.width(), 1, "the other region holds every core");
            for _ in 0..8 {
                s.spawn(|_| {
                    started.fetch_add(1, Ordering::SeqCst);
                    threads.lock().unwrap().insert(thread::current().id());
                    // Long enough that two threads overlap once the region grew.
                    thread::sleep(Duration::from_millis(20));
                });
            }
            release.store(true, Ordering::SeqCst);
            // The other region ends and its tokens are handed to this one.
            budget_testkit::budget::wait_for("the region to grow", || s.width() == 2);
        });
        assert_eq!(started.load(Ordering::SeqCst), 8);
        assert!(budget_core::stats().tokens_regrown > before);
        assert!(
            threads.lock().unwrap().len() >= 2,
            "queued tasks ran on one thread only"
        );
    });
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn spawn_join_for_each_compute_right_answers() {
    let _g = two_cores();
    fn fib(s: &budget_core::Scope<'_>, n: u64) -> u64 {
        if n < 10 {
            return if n < 2 {
                n
            } else {
                fib(s, n - 1) + fib(s, n - 2)
            };
        }
        let (a, b) = s.join(|| fib(s, n - 1), || fib(s, n - 2));
        a + b
    }
    assert_eq!(budget_core::scope(|s| fib(s, 25)), 75025);
    let mut v: Vec<u64> = (0..100_000).collect();
    budget_core::scope(|s| s.for_each(&mut v[..], |x| *x *= 2));
    assert_eq!(v.iter().sum::<u64>(), 2 * (99_999 * 100_000 / 2));
    let sum = AtomicUsize::new(0);
    budget_core::scope(|s| {
        s.for_each(&v[..10], |x| {
            sum.fetch_add(*x as usize, Ordering::Relaxed);
        })
    });
    assert_eq!(sum.into_inner(), 90);
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn panics_keep_their_payload_and_return_every_token() {
    let _g = two_cores();
    let finished = AtomicUsize::new(0);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        budget_core::scope(|s| {
            for i in 0..16 {
                let finished = &finished;
                s.spawn(move |_| {
                    if i == 7 {
                        std::panic::panic_any(42_u32);
                    }
                    thread::sleep(Duration::from_millis(2));
                    finished.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    }))
    .unwrap_err();
    assert_eq!(err.downcast_ref::<u32>(), Some(&42));
    assert_eq!(
        finished.load(Ordering::SeqCst),
        15,
        "every other task finished"
    );
    assert_eq!(budget_core::stats().in_use, 0);

    let err = std::panic::catch_unwind(|| {
        budget_core::scope(|s| s.join(|| 1, || -> i32 { panic!("right side") }))
    })
    .unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"right side"));
    let err = std::panic::catch_unwind(|| {
        budget_core::scope(|s| s.for_each(0..1000, |i| assert!(i != 500, "element 500")))
    })
    .unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"element 500"));
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn a_wanting_lease_is_paid_by_the_next_release_before_a_new_taker() {
    let _g = two_cores();
    let (entered, leave) = (Barrier::new(2), Barrier::new(2));
    thread::scope(|t| {
        // A region on another thread holds both cores until told.
        let holder = t.spawn(|| {
            budget_core::scope(|s| {
                assert_eq!(s.width(), 2);
                entered.wait();
                leave.wait();
            })
        });
        entered.wait();
        let mut lease = budget_core::Lease::try_new(1);
        assert_eq!(lease.count(), 0, "the region holds every core");
        assert_eq!(lease.want(2), 0, "nothing free: the demand is registered");
        assert_eq!(lease.wanting(), 2);
        leave.wait();
        holder.join().unwrap();
        // The region's exit handed both tokens to the lease, none was left free.
        assert_eq!((lease.count(), lease.wanting()), (2, 0));
        assert_eq!(budget_core::Lease::try_new(1).count(), 0);
        assert_eq!(budget_core::stats().in_use, 2);
        assert_eq!(lease.shrink(1), 1);
        lease.stop_wanting();
        assert_eq!(lease.count(), 1);
    });
    assert_eq!(budget_core::stats().in_use, 0);
}

/// `stats()` says why a region was narrowed: by other regions of this process, or by
/// leases (the third cause, other processes, is tested with real processes in
/// budget-cli's `tests/entry.rs`). Each narrowed region counts under one cause.
#[test]
fn stats_tell_why_a_region_was_narrowed() {
    let _g = two_cores();
    let before = budget_core::stats();
    budget_core::scope(|outer| {
        assert_eq!(outer.width(), 2);
        budget_core::scope(|inner| assert_eq!(inner.width(), 1));
    });
    let by_region = budget_core::stats();
    assert_eq!(
        by_region.narrowed_by_regions,
        before.narrowed_by_regions + 1,
        "{by_region}"
    );
    assert_eq!(by_region.narrowed_by_leases, before.narrowed_by_leases);

    let lease = budget_core::Lease::try_new(2);
    assert_eq!(budget_core::stats().leased, 2);
    thread::scope(|t| {
        t.spawn(|| budget_core::scope(|s| assert_eq!(s.width(), 1)));
    });
    drop(lease);
    let by_lease = budget_core::stats();
    assert_eq!(by_lease.leased, 0);
    assert_eq!(
        by_lease.narrowed_by_leases,
        before.narrowed_by_leases + 1,
        "{by_lease}"
    );
    assert_eq!(by_lease.narrowed_by_regions, by_region.narrowed_by_regions);
    assert_eq!(by_lease.narrowed_by_processes, 0, "no outside budget here");
    assert_eq!(
        by_lease.grants_below_request,
        before.grants_below_request + 2,
        "{by_lease}"
    );
}

/// `lo + .. + hi - 1` by recursive joins, down to 64 numbers.
fn sum(s: &budget_core::Scope<'_>, lo: u64, hi: u64) -> u64 {
    if hi - lo <= 64 {
        return (lo..hi).sum();
    }
    let mid = (lo + hi) / 2;
    let (a, b) = s.join(|| sum(s, lo, mid), || sum(s, mid, hi));
    a + b
}

/// Joins in tasks that the region's opener runs before its body ever joined (here,
/// at the region's end) come from a thread that holds no lane of the region: they
/// lend through the region's table (`lent.rs`), with the worker stealing from it.
/// They run right, and every token comes back.
#[test]
fn joins_in_tasks_the_opener_runs_lend_through_the_table() {
    let _g = two_cores();
    let totals: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
    for _ in 0..20 {
        budget_core::scope_with(2, |s| {
            assert_eq!(s.width(), 2);
            for total in &totals {
                s.spawn(move |s| {
                    total.fetch_add(sum(s, 0, 20_000) as usize, Ordering::Relaxed);
                });
            }
            // No join here: the opener takes no lane, and runs tasks at the end.
        });
    }
    for total in &totals {
        assert_eq!(total.load(Ordering::Relaxed), 20 * 199_990_000);
    }
    assert_eq!(budget_core::stats().in_use, 0);
}

/// A region whose thread found no token (its own token owed) joins alone, then
/// grows when the tokens come back (the first repays the owed one) and joins on
/// two threads; every token comes back.
#[test]
fn joins_of_an_owed_region_run_alone_then_grown() {
    let _g = two_cores();
    let lease = budget_core::Lease::try_new(2);
    assert_eq!(lease.count(), 2);
    let grew = AtomicBool::new(false);
    thread::scope(|t| {
        let worker = t.spawn(|| {
            budget_core::scope(|s| {
                assert_eq!(s.width(), 1);
                assert_eq!(sum(s, 0, 100_000), 4_999_950_000, "alone");
                while s.width() < 2 {
                    // The lease goes back below: the first token repays the owed
                    // one, the second grows the region (it has demand while a join
                    // waits in the table).
                    assert_eq!(sum(s, 0, 100_000), 4_999_950_000);
                    thread::yield_now();
                }
                grew.store(true, Ordering::SeqCst);
                for _ in 0..20 {
                    assert_eq!(sum(s, 0, 100_000), 4_999_950_000, "grown");
                }
            })
        });
        thread::sleep(Duration::from_millis(20));
        drop(lease);
        worker.join().unwrap();
    });
    assert!(grew.load(Ordering::SeqCst));
    assert_eq!(budget_core::stats().in_use, 0);
}

/// A root task queued while a thread of the tree waits idle in a nested region is run
/// by that thread (the root posts its tasks on the tree's board): here the nested
/// region's task, on the root's only worker, waits for the root task, so nobody else
/// could run it. A version that posted the root only while a thread already waited
/// left the root task queued for good (cut here after 20 s).
#[test]
fn an_idle_waiter_of_a_nested_region_runs_a_root_task() {
    let _g = two_cores();
    let nested_started = AtomicBool::new(false);
    let root_task_ran = AtomicBool::new(false);
    let gave_up = AtomicBool::new(false);
    budget_core::scope(|s| {
        assert_eq!(s.width(), 2);
        budget_core::scope(|n| {
            assert_eq!(n.width(), 1);
            // Goes to the root's idle slot through the board (`tree.rs`).
            n.spawn(|_| {
                nested_started.store(true, Ordering::SeqCst);
                let start = std::time::Instant::now();
                while !root_task_ran.load(Ordering::SeqCst) {
                    if start.elapsed() > Duration::from_secs(20) {
                        gave_up.store(true, Ordering::SeqCst);
                        return;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            });
            while !nested_started.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            s.spawn(|_| root_task_ran.store(true, Ordering::SeqCst));
            // The end of `n`'s body: this thread waits for `n`'s task, holding its
            // token, and must run the root task meanwhile.
        });
    });
    assert!(
        !gave_up.load(Ordering::SeqCst),
        "the root task stayed queued while the only idle thread slept"
    );
    assert!(root_task_ran.load(Ordering::SeqCst));
    assert_eq!(budget_core::stats().in_use, 0);
}

/// Regions entered without a closure may end in any order: when the outermost one
/// ends first, the thread still runs inside the others, so its own token stays held
/// until the last one ends, a region or a `RegionThread` mark.
#[test]
fn the_threads_token_outlives_an_outermost_region_that_ends_first() {
    use budget_core::integration::{OpenRegion, RegionThread};
    let _g = two_cores();
    let outer = OpenRegion::enter(2);
    assert_eq!(outer.width(), 2);
    let inner = OpenRegion::enter(2);
    assert_eq!(inner.width(), 1, "nested: no token for the thread itself");
    drop(outer);
    assert_eq!(
        budget_core::stats().in_use,
        1,
        "the thread is still inside `inner`"
    );
    let again = OpenRegion::enter(2);
    assert_eq!(again.width(), 2, "nested, and one token free");
    assert_eq!(budget_core::stats().in_use, 2);
    drop(inner);
    drop(again);
    assert_eq!(budget_core::stats().in_use, 0);

    // The last to leave is a mark, not a region.
    let outer = OpenRegion::enter(1);
    let mark = RegionThread::enter();
    drop(outer);
    assert_eq!(budget_core::stats().in_use, 1);
    drop(mark);
    assert_eq!(budget_core::stats().in_use, 0);
    budget_core::scope(|s| assert_eq!(s.width(), 2));
}

/// A token kept for the thread goes back when its last region ends, also when that
/// is a `scope_with` region (an `OpenRegion` dropped inside the scope's body).
#[test]
fn a_kept_token_goes_back_when_a_scope_ends_last() {
    use budget_core::integration::OpenRegion;
    let _g = two_cores();
    let outer = OpenRegion::enter(1);
    budget_core::scope_with(1, move |_| {
        drop(outer);
        assert_eq!(budget_core::stats().in_use, 1, "kept for the thread");
    });
    assert_eq!(budget_core::stats().in_use, 0);
    budget_core::scope(|s| assert_eq!(s.width(), 2));
    assert_eq!(budget_core::stats().in_use, 0);
}
