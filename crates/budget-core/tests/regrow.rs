//! Nested regions on budget's own pool regrow: at total 2, an outer
//! `for_each` over 16 tasks, one of them much bigger and running an inner region's
//! `for_each`. Once the small tasks are done, the outer region's other thread is idle
//! (waiting in the loop, or its slot left empty) and must help the inner region: its
//! work then runs on 2 threads at once, never more than 2. Before the fix it ran on
//! one thread to the end. Child processes with `BUDGET_NUM_THREADS=2` and a watchdog.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

const TOTAL: usize = 2;
const TASKS: usize = 16;
const ROWS: usize = 400;

#[derive(Default)]
struct Counts {
    /// Bodies (small tasks and inner rows) running now, and the most at once.
    now: AtomicUsize,
    max: AtomicUsize,
    /// The most inner rows at once after every small task finished.
    max_after: AtomicUsize,
    inner_now: AtomicUsize,
    threads_after: Mutex<HashSet<thread::ThreadId>>,
    small_done: AtomicUsize,
}

impl Counts {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn row(&self) {
        self.enter();
        let inner = self.inner_now.fetch_add(1, Ordering::SeqCst) + 1;
        if self.small_done.load(Ordering::SeqCst) == TASKS - 1 {
            self.max_after.fetch_max(inner, Ordering::SeqCst);
            self.threads_after
                .lock()
                .unwrap()
                .insert(thread::current().id());
        }
        thread::sleep(Duration::from_millis(1));
        self.inner_now.fetch_sub(1, Ordering::SeqCst);
        self.leave();
    }

    fn small(&self) {
        self.enter();
        thread::sleep(Duration::from_millis(3));
        self.small_done.fetch_add(1, Ordering::SeqCst);
        self.leave();
    }
}

fn child_case(big: usize) {
    budget_testkit::child::exit_after("the imbalanced nested loop", 60);
    assert_eq!(budget_core::stats().total, TOTAL);
    let counts = Counts::default();
    budget_core::scope(|s| {
        assert_eq!(s.width(), TOTAL);
        s.for_each(0..TASKS, |task| {
            if task == big {
                budget_core::scope(|inner| inner.for_each(0..ROWS, |_| counts.row()));
            } else {
                counts.small();
            }
        });
    });
    let max = counts.max.load(Ordering::SeqCst);
    let after = counts.max_after.load(Ordering::SeqCst);
    let threads = counts.threads_after.lock().unwrap().len();
    println!("MAX={max} MAX_AFTER={after} THREADS_AFTER={threads}");
    assert!(max <= TOTAL, "{max} bodies at once on a budget of {TOTAL}");
    assert!(
        threads >= 2 && after == 2,
        "after the small tasks, the inner region ran on {threads} thread(s), at most {after} \
         at once: it did not regrow"
    );
    assert_eq!(budget_core::stats().in_use, 0);
    println!("CHILD-OK");
}

/// The child side: does nothing unless started by `run_child`.
#[test]
fn child() {
    if let Some(big) = budget_testkit::child::mode() {
        child_case(big.parse().expect("the big task's index"));
    }
}

/// Runs the child with the big task at index `big` at total 2 and prints its MAX= lines.
fn regrows_with_big_task_at(big: &str) {
    let out = budget_testkit::child::rerun("child", big, &[("BUDGET_NUM_THREADS", "2")]);
    assert!(out.contains("CHILD-OK"), "{out}");
    let max_lines: Vec<_> = out.lines().filter(|l| l.contains("MAX=")).collect();
    println!("{}", max_lines.join("\n"));
}

#[test]
fn inner_region_regrows_when_the_big_task_comes_first() {
    regrows_with_big_task_at("0");
}

#[test]
fn inner_region_regrows_when_the_big_task_comes_last() {
    regrows_with_big_task_at("15");
}
