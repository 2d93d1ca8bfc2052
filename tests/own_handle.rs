//! A region's own handle used from its own tasks: `s.install(..)`
//! called inside `s.for_each`, `s.spawn` or `s.join` sizes itself as the nested region
//! the task is, so the rayon bodies running at once never exceed the budget. Each case
//! runs in a child process with `BUDGET_NUM_THREADS=4` and a watchdog. Before the fix,
//! four tasks each installed a pool of the full width: 16 bodies at once.
//! (`s.native` from tasks: `crates/budget-native/tests/own_handle.rs`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use budget::prelude::*;
use rayon::prelude::*;

const TOTAL: usize = 4;

/// Counts bodies running at once and remembers the most.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    fn body(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        // Long enough for the bodies of concurrent installs to overlap.
        thread::sleep(Duration::from_millis(2));
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until `n` tasks arrived (at most 5 s: a narrower run still finishes), so the
/// installs of all tasks run at the same time.
fn rendezvous(arrived: &AtomicUsize, n: usize) {
    arrived.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while arrived.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
}

fn child_case(mode: &str) {
    budget_testkit::child::exit_after("installs from a region's own tasks", 60);
    assert_eq!(budget::stats().total, TOTAL);
    let bodies = Concurrency::default();
    let arrived = AtomicUsize::new(0);
    let install = |s: &budget::Scope<'_>| {
        rendezvous(&arrived, TOTAL);
        s.install(|| (0..64).into_par_iter().for_each(|_| bodies.body()));
    };
    budget::scope(|s| {
        assert_eq!(s.width(), TOTAL);
        match mode {
            "for-each" => s.for_each(0..TOTAL, |_| install(s)),
            "spawn" => {
                for _ in 0..TOTAL {
                    s.spawn(|s| install(s));
                }
            }
            "join" => {
                s.join(
                    || s.join(|| install(s), || install(s)),
                    || s.join(|| install(s), || install(s)),
                );
            }
            other => panic!("unknown child mode {other}"),
        }
    });
    let max = bodies.max.load(Ordering::SeqCst);
    println!("MAX={max}");
    assert!(
        max <= TOTAL,
        "{max} rayon bodies ran at once on a budget of {TOTAL}"
    );
    assert!(max >= 1);
    // The region's own thread still gets the full width.
    budget::scope(|s| {
        let threads = s.install(rayon::current_num_threads);
        assert_eq!(threads, TOTAL, "install from the region's body");
    });
    assert_eq!(budget::stats().in_use, 0);
    println!("CHILD-OK");
}

/// The child side: does nothing unless started by `run_child`.
#[test]
fn child() {
    if let Some(mode) = budget_testkit::child::mode() {
        child_case(&mode);
    }
}

fn parent(mode: &str) {
    let out = budget_testkit::child::rerun("child", mode, &[("BUDGET_NUM_THREADS", "4")]);
    assert!(out.contains("CHILD-OK"), "{out}");
}

#[test]
fn install_from_for_each_tasks_stays_within_the_budget() {
    parent("for-each");
}

#[test]
fn install_from_spawned_tasks_stays_within_the_budget() {
    parent("spawn");
}

#[test]
fn install_from_join_halves_stays_within_the_budget() {
    parent("join");
}
