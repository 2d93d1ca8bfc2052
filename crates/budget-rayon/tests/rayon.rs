//! budget-rayon: rayon code inside regions, with a budget of exactly 2 cores: the
//! gate (a narrowed region's pool runs at its width and grows), the pool cache (built
//! once, reused), the relay (`install` from outside a pool) and foreign rayon pools.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::Duration;

use budget_rayon::RayonExt;
use rayon::prelude::*;

/// `budget::install`: `scope(|s| s.install(op))`.
fn install<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    budget_core::scope(|s| s.install(op))
}

fn two_cores() -> std::sync::MutexGuard<'static, ()> {
    budget_testkit::budget::exclusive_budget(2)
}

#[test]
fn width_inside_install_is_rayons_thread_count() {
    let _g = two_cores();
    budget_core::scope(|s| {
        assert_eq!(s.width(), 2);
        let (inside, on_pool) = s.install(|| {
            (
                rayon::current_num_threads(),
                rayon::current_thread_index().is_some(),
            )
        });
        assert_eq!(inside, s.width());
        assert!(on_pool, "install runs on a pool thread");
    });
    budget_core::scope_with(1, |s| {
        assert_eq!(s.install(rayon::current_num_threads), 1);
    });
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn nested_install_on_a_budget_worker_builds_no_pool() {
    let _g = two_cores();
    install(|| ()); // warm: the 2-thread pool exists
    let before = budget_rayon::stats();
    let inner_regions = AtomicUsize::new(0);
    let total: u64 = budget_core::scope(|s| {
        s.install(|| {
            (0..64u64)
                .into_par_iter()
                .map(|i| {
                    // A library call inside the application's parallel loop.
                    budget_core::scope(|inner| {
                        inner_regions.fetch_add(1, Ordering::Relaxed);
                        assert_eq!(inner.width(), 1, "the outer region holds both cores");
                        inner.install(|| {
                            assert_eq!(rayon::current_num_threads(), 2, "in place");
                            (0..100u64).into_par_iter().map(|j| i * j).sum::<u64>()
                        })
                    })
                })
                .sum()
        })
    });
    assert_eq!(total, (0..64u64).map(|i| i * 4950).sum());
    assert_eq!(inner_regions.into_inner(), 64);
    let after = budget_rayon::stats();
    assert_eq!(
        after.pools_built, before.pools_built,
        "a nested install built a pool"
    );
    assert_eq!(
        after.leases,
        before.leases + 1,
        "only the outer region leased"
    );
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn pools_are_reused_not_built_per_call() {
    let _g = two_cores();
    install(|| ());
    let before = budget_rayon::stats();
    for _ in 0..50 {
        install(|| (0..10).into_par_iter().for_each(|_| ()));
    }
    let after = budget_rayon::stats();
    assert_eq!(after.pools_built, before.pools_built);
    assert_eq!(after.leases, before.leases + 50);
}

#[test]
fn narrowed_region_grows_and_runs_on_two_threads() {
    let _g = two_cores();
    let held = Barrier::new(2);
    let release = AtomicBool::new(false);
    thread::scope(|t| {
        t.spawn(|| {
            budget_core::scope(|s| {
                assert_eq!(s.width(), 2);
                held.wait();
                budget_testkit::budget::wait_for("the release signal", || {
                    release.load(Ordering::SeqCst)
                });
            })
        });
        held.wait();
        let threads = Mutex::new(HashSet::new());
        let concurrent = AtomicUsize::new(0);
        let max_concurrent = AtomicUsize::new(0);
        budget_core::scope(|s| {
            assert_eq!(s.width(), 1, "the other region holds both cores");
            s.install(|| {
                assert_eq!(rayon::current_num_threads(), 2, "capacity is the request");
                (0..64).into_par_iter().for_each(|i| {
                    let now = concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                    max_concurrent.fetch_max(now, Ordering::SeqCst);
                    assert!(
                        now <= s.width(),
                        "{now} threads busy at width {}",
                        s.width()
                    );
                    threads.lock().unwrap().insert(thread::current().id());
                    if i == 8 {
                        release.store(true, Ordering::SeqCst);
                    }
                    thread::sleep(Duration::from_millis(5));
                    concurrent.fetch_sub(1, Ordering::SeqCst);
                });
            });
            assert_eq!(s.width(), 2, "the region grew");
        });
        assert_eq!(threads.lock().unwrap().len(), 2, "work ran on both threads");
        assert_eq!(max_concurrent.load(Ordering::SeqCst), 2);
    });
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn mutual_and_self_install_finish() {
    let _g = two_cores();
    budget_testkit::budget::watchdog("mutual install", || {
        // rayon's mutual_install shape: a region's work enters another region,
        // whose work enters a third, all from inside pool threads.
        let r = budget_core::scope(|a| {
            a.install(|| {
                budget_core::scope(|b| {
                    b.install(|| install(|| (0..100).into_par_iter().sum::<i32>()))
                })
            })
        });
        assert_eq!(r, 4950);
        // Self install: the same region's install nested in itself.
        let r = budget_core::scope(|a| a.install(|| a.install(|| a.install(|| 7))));
        assert_eq!(r, 7);
        // Two outside threads installing at once, each nesting into the other shape.
        thread::scope(|t| {
            for _ in 0..2 {
                t.spawn(|| {
                    for _ in 0..20 {
                        budget_core::scope(|s| {
                            s.install(|| rayon::join(|| install(|| rayon::join(|| 1, || 2)), || 3))
                        });
                    }
                });
            }
        });
    });
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn panics_in_rayon_work_keep_payload_and_tokens() {
    let _g = two_cores();
    for round in 0..10 {
        let err = std::panic::catch_unwind(|| {
            budget_core::scope(|s| {
                s.install(|| {
                    (0..100).into_par_iter().for_each(|i| {
                        if i == 37 + round {
                            std::panic::panic_any(format!("item {i}"));
                        }
                    })
                })
            })
        })
        .unwrap_err();
        assert_eq!(
            err.downcast_ref::<String>().unwrap(),
            &format!("item {}", 37 + round)
        );
        assert_eq!(budget_core::stats().in_use, 0);
    }
    // A panic in a narrowed (gated) region opens the gate and returns the tokens.
    let lease = budget_core::Lease::try_new(1);
    let err = std::panic::catch_unwind(|| {
        budget_core::scope(|s| {
            assert_eq!(s.width(), 1);
            s.install(|| (0..10).into_par_iter().for_each(|_| panic!("gated")))
        })
    })
    .unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"gated"));
    drop(lease);
    assert_eq!(budget_core::stats().in_use, 0);
    // The pool is whole again: a full-width region uses both threads.
    budget_core::scope(|s| assert_eq!(s.install(rayon::current_num_threads), 2));
}

#[test]
fn a_user_global_pool_is_left_alone() {
    let _g = two_cores();
    // Either this call builds the global pool or someone did; both are fine.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global();
    let global = rayon::current_num_threads();
    let inside = install(rayon::current_num_threads);
    assert_eq!(inside, 2);
    assert_eq!(rayon::current_num_threads(), global);
    let sum: i32 = (0..10).into_par_iter().sum();
    assert_eq!(sum, 45);
}

/// `rayon::broadcast` in the pool of `install` returns one result per thread.
fn broadcast_indices() -> Vec<usize> {
    let mut seen = rayon::broadcast(|ctx| ctx.index());
    seen.sort_unstable();
    seen
}

#[test]
fn broadcast_in_a_nested_narrowed_region_completes() {
    let _g = two_cores();
    // The inner region gets width 1 (the outer holds both tokens
    // until its task ends), so its pool gates one thread, which only the end of the
    // outer region would have let through.
    let seen = budget_testkit::budget::watchdog("broadcast in a nested narrowed region", || {
        let seen = Mutex::new(Vec::new());
        budget_core::scope(|s| {
            s.spawn(|_| {
                let indices = budget_core::scope(|i| {
                    assert_eq!(i.width(), 1);
                    i.install(broadcast_indices)
                });
                *seen.lock().unwrap() = indices;
            })
        });
        seen.into_inner().unwrap()
    });
    assert_eq!(seen, vec![0, 1], "the broadcast ran on every pool thread");
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn broadcast_in_a_narrowed_top_level_region_completes() {
    let _g = two_cores();
    budget_testkit::budget::watchdog("broadcast in a narrowed top-level region", || {
        // This thread keeps a token until the region ended: the region never grows.
        let lease = budget_core::Lease::try_new(1);
        let seen = budget_core::scope(|s| {
            assert_eq!(s.width(), 1);
            s.install(broadcast_indices)
        });
        drop(lease);
        assert_eq!(seen, vec![0, 1]);
        // From inside the gated pool: a nested region runs in place on it, and a
        // region opened in a budget task of a gated region gets a gated pool too.
        let lease = budget_core::Lease::try_new(1);
        let (in_place, from_task) = budget_core::scope(|s| {
            assert_eq!(s.width(), 1);
            s.install(|| {
                let in_place = install(broadcast_indices);
                let from_task = Mutex::new(Vec::new());
                budget_core::scope(|i| {
                    i.spawn(|_| *from_task.lock().unwrap() = install(broadcast_indices))
                });
                (in_place, from_task.into_inner().unwrap())
            })
        });
        drop(lease);
        assert_eq!(in_place, vec![0, 1]);
        assert_eq!(from_task, vec![0, 1]);
    });
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn rayon_spawn_left_running_does_not_block_the_next_narrowed_region() {
    let _g = two_cores();
    budget_testkit::budget::watchdog(
        "a narrowed region after a rayon::spawn left running",
        || {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            // Full width: the spawned job holds one of the pool's threads after install
            // returned, until the next region sends it the signal.
            budget_core::scope(|s| {
                assert_eq!(s.width(), 2);
                s.install(|| {
                    rayon::spawn(move || {
                        rx.recv().unwrap();
                        done_tx.send(()).unwrap();
                    })
                })
            });
            let lease = budget_core::Lease::try_new(1);
            let sum = budget_core::scope(|s| {
                assert_eq!(s.width(), 1);
                s.install(|| {
                    tx.send(()).unwrap();
                    (0..100).into_par_iter().sum::<i32>()
                })
            });
            drop(lease);
            assert_eq!(sum, 4950);
            done_rx.recv().unwrap();
        },
    );
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn a_nested_region_with_free_tokens_on_a_pool_thread_uses_them() {
    let _g = two_cores();
    // The outer region asks for one core: its pool has one thread, and one token
    // stays free. A library region opened on that thread takes the free token; run
    // in place (on the one-thread pool) it would leave that token unused.
    let (width, threads, sum) =
        budget_testkit::budget::watchdog("nested region with free tokens", || {
            budget_core::scope_with(1, |s| {
                s.install(|| {
                    assert_eq!(rayon::current_num_threads(), 1);
                    budget_core::scope(|inner| {
                        let width = inner.width();
                        let (threads, sum) = inner.install(|| {
                            (
                                rayon::current_num_threads(),
                                (0..1000u64).into_par_iter().sum::<u64>(),
                            )
                        });
                        (width, threads, sum)
                    })
                })
            })
        });
    assert_eq!(width, 2, "the free token went to the nested region");
    assert_eq!(threads, width, "the nested region's tokens run threads");
    assert_eq!(sum, 499_500);
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn a_foreign_rayon_worker_runs_none_of_its_pools_jobs_while_waiting_in_install() {
    let _g = two_cores();
    // The application's own rayon pool (here one thread, like a busy global pool).
    let app = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let ran_during_install =
        budget_testkit::budget::watchdog("install from a foreign rayon worker", move || {
            let waiting = AtomicBool::new(false);
            let ran_during_install = AtomicBool::new(false);
            app.install(|| {
                rayon::join(
                    || {
                        // The library call, on the application's worker: it waits for its
                        // region's pool. Its token is the one that pool's first thread runs
                        // on, so the waiting worker must not run the application's jobs.
                        budget_core::scope(|s| {
                            waiting.store(true, Ordering::SeqCst);
                            let sum = s.install(|| (0..1000u64).into_par_iter().sum::<u64>());
                            waiting.store(false, Ordering::SeqCst);
                            assert_eq!(sum, 499_500);
                        })
                    },
                    || {
                        // Queued on the waiting worker's deque: only it can run this job.
                        ran_during_install.store(waiting.load(Ordering::SeqCst), Ordering::SeqCst);
                    },
                )
            });
            ran_during_install.into_inner()
        });
    assert!(
        !ran_during_install,
        "the application's job ran, unpaid, on the thread waiting in install"
    );
    assert_eq!(budget_core::stats().in_use, 0);
}

#[test]
fn a_regions_own_install_inside_its_install_runs_in_place() {
    let _g = two_cores();
    install(|| ()); // warm
    let before = budget_rayon::stats();
    let seen = budget_testkit::budget::watchdog("self install", || {
        budget_core::scope(|a| {
            assert_eq!(a.width(), 2);
            a.install(|| {
                (0..8)
                    .into_par_iter()
                    .map(|_| a.install(rayon::current_num_threads))
                    .collect::<Vec<_>>()
            })
        })
    });
    assert_eq!(seen, vec![2; 8]);
    assert_eq!(
        budget_rayon::stats().leases,
        before.leases + 1,
        "the region's own handle leased a second pool: its tokens would pay two"
    );
    assert_eq!(budget_core::stats().in_use, 0);
}

/// Library-only adoption: a plain-rayon application loop (its own pool, 2 threads)
/// calls a library that opens a budget region per item. Each region on a worker of
/// that foreign pool asks for its share, `total / pool threads` = 1, so the loop's
/// two threads hold the two tokens and no region runs unpaid. Before, the first
/// region took both tokens and its sibling overcommitted (rayon #1105's pattern).
#[test]
fn a_library_under_a_plain_rayon_loop_takes_its_share_and_never_overcommits() {
    let _g = two_cores();
    let app = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let before = budget_core::stats().overcommit;
    let requested = budget_testkit::budget::watchdog("library-only adoption", move || {
        app.install(|| {
            (0..16u64)
                .into_par_iter()
                .map(|image| {
                    // The library: parallel inside, whatever calls it.
                    budget_core::scope(|s| {
                        let sum = s.install(|| {
                            (0..200_000u64)
                                .into_par_iter()
                                .map(|x| std::hint::black_box(x ^ image))
                                .sum::<u64>()
                        });
                        std::hint::black_box(sum);
                        s.requested()
                    })
                })
                .collect::<Vec<usize>>()
        })
    });
    assert!(requested.iter().all(|&r| r == 1), "{requested:?}");
    assert_eq!(
        budget_core::stats().overcommit - before,
        0,
        "regions ran unpaid"
    );
    // Outside any foreign pool the request is the whole budget, as before.
    assert_eq!(budget_core::scope(|s| s.requested()), 2);
    assert_eq!(budget_core::stats().in_use, 0);
}
