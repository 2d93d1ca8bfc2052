//! Fork safety (Linux): a child forked while the parent's budget is busy gets a
//! fresh, consistent budget of its own, and a region whose tasks were running on
//! other threads at the fork does not hang in the child (it panics, saying so).
//!
//! The child never returns into the test harness: it reports through its exit code
//! (`libc::_exit`), and writes what went wrong straight to fd 2. The parent waits for
//! it with `waitpid(WNOHANG)` under a deadline, and kills it and fails if it hangs.
#![cfg(target_os = "linux")]

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::MutexGuard;
use std::thread;
use std::time::{Duration, Instant};

const TOTAL: usize = 4;
const DEADLINE: Duration = Duration::from_secs(30);

/// A child's exit code beside `forked::{OK, FAILED, PANICKED}`: in test (b): the region's end completed in the child instead of panicking.
const COMPLETED: i32 = 3;

use budget_testkit::forked::{exit as child_exit, message, run as child_run, FAILED, OK, PANICKED};

/// The tests fork and assert exact widths: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    budget_testkit::budget::exclusive_budget(TOTAL)
}

fn sleep_until(flag: &AtomicBool) {
    let deadline = Instant::now() + DEADLINE;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "a flag was never set");
        thread::sleep(Duration::from_millis(1));
    }
}

/// In a forked child: the budget is fresh (nothing in use, a region gets every
/// token of it) and a region's tasks run on new workers.
fn fresh_budget_works() -> Result<(), String> {
    let before = budget::stats();
    if before.in_use != 0 {
        return Err(format!(
            "the child's budget starts with tokens in use: {before}"
        ));
    }
    let ran = AtomicUsize::new(0);
    let width = budget::scope(|s| {
        for _ in 0..8 {
            s.spawn(|_| {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        let (a, b) = s.join(|| 1, || 2);
        assert_eq!((a, b), (1, 2));
        s.for_each(0..1000, |_| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(budget::stats().in_use, s.width());
        s.width()
    });
    let after = budget::stats();
    if width != after.total {
        return Err(format!(
            "width {width} in an idle budget of {}",
            after.total
        ));
    }
    if ran.into_inner() != 1008 {
        return Err("not every task ran".to_owned());
    }
    if after.in_use != 0 {
        return Err(format!("tokens leaked in the child: {after}"));
    }
    Ok(())
}

/// (a) Another thread holds a region of every token with a task sleeping on a
/// worker; this thread, outside every region, forks.
#[test]
fn child_forked_while_another_thread_holds_every_token_gets_a_fresh_budget() {
    let _serial = serial();
    let (holding, task_started, release) = (
        AtomicBool::new(false),
        AtomicBool::new(false),
        AtomicBool::new(false),
    );
    thread::scope(|t| {
        let holder = t.spawn(|| {
            budget::scope(|s| {
                assert_eq!(s.width(), TOTAL);
                s.spawn(|_| {
                    task_started.store(true, Ordering::SeqCst);
                    sleep_until(&release);
                });
                sleep_until(&task_started);
                holding.store(true, Ordering::SeqCst);
                sleep_until(&release);
            })
        });
        sleep_until(&holding);
        assert_eq!(budget::stats().in_use, TOTAL);

        let pid = budget_testkit::forked::fork();
        if pid == 0 {
            child_run(fresh_budget_works);
        }
        release.store(true, Ordering::SeqCst);
        let code = budget_testkit::forked::wait(pid, DEADLINE);
        holder.join().expect("the holding thread");
        assert_eq!(code, OK, "the child's checks failed (see its stderr)");
    });
    assert_eq!(budget::stats().in_use, 0);
}

/// (b) This thread is inside a region whose task runs on a worker, and forks. In
/// the child that worker does not exist: the region's end must not wait for it
/// forever; it panics with a message about the fork (or completes).
#[test]
fn region_end_in_child_forked_with_a_task_on_another_thread_does_not_hang() {
    let _serial = serial();
    static IN_CHILD: AtomicBool = AtomicBool::new(false);
    let (task_started, release) = (AtomicBool::new(false), AtomicBool::new(false));
    let mut pid = 0;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        budget::scope(|s| {
            assert_eq!(s.width(), TOTAL);
            s.spawn(|_| {
                task_started.store(true, Ordering::SeqCst);
                sleep_until(&release);
            });
            // The task is on a worker, not in the queue: the child cannot run it.
            sleep_until(&task_started);
            pid = budget_testkit::forked::fork();
            if pid == 0 {
                IN_CHILD.store(true, Ordering::SeqCst);
                panic::set_hook(Box::new(|_| {})); // the expected panic: quiet
                return; // the region ends here, in the child
            }
            release.store(true, Ordering::SeqCst);
        })
    }));
    if IN_CHILD.load(Ordering::SeqCst) {
        let code = match outcome {
            Ok(()) => COMPLETED,
            Err(payload) => {
                let text = message(payload.as_ref());
                if !text.contains("forked") {
                    child_exit(PANICKED, &format!("unexpected panic: {text}"));
                }
                OK
            }
        };
        // After that, the child's own budget works.
        if let Err(why) = fresh_budget_works() {
            child_exit(FAILED, &why);
        }
        child_exit(code, "");
    }
    if let Err(payload) = outcome {
        panic::resume_unwind(payload);
    }
    let code = budget_testkit::forked::wait(pid, DEADLINE);
    assert!(
        code == OK || code == COMPLETED,
        "the child's region end failed with exit code {code} (see its stderr)"
    );
    assert_eq!(budget::stats().in_use, 0);
}

/// A child forked from a process whose budget was set by the `Builder` keeps that
/// total: the builder's setting overrides detection for the whole program.
#[test]
fn child_forked_after_builder_keeps_the_builder_total() {
    let _serial = serial();
    budget::scope(|s| assert_eq!(s.width(), TOTAL));
    let pid = budget_testkit::forked::fork();
    if pid == 0 {
        child_run(|| {
            let total = budget::stats().total;
            if total == TOTAL {
                Ok(())
            } else {
                Err(format!(
                    "the child's budget has {total} tokens, the parent's Builder set {TOTAL} \
                     (detected: {})",
                    budget::available_cores()
                ))
            }
        });
    }
    assert_eq!(
        budget_testkit::forked::wait(pid, DEADLINE),
        OK,
        "the child lost the Builder's total (see its stderr)"
    );
}

/// (c) This thread is inside a region whose task is still queued (a region of width
/// 1 never hands it to a worker), and forks. In the child the region's end runs the
/// task itself and returns normally; regions opened in the child, nested in the
/// parent's or not, use the child's fresh budget.
#[test]
fn region_open_at_fork_with_only_queued_tasks_ends_normally_in_child() {
    let _serial = serial();
    static IN_CHILD: AtomicBool = AtomicBool::new(false);
    static NESTED: AtomicUsize = AtomicUsize::new(0);
    let ran = AtomicUsize::new(0);
    let mut pid = 0;
    budget::scope_with(1, |s| {
        s.spawn(|_| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        pid = budget_testkit::forked::fork();
        if pid == 0 {
            IN_CHILD.store(true, Ordering::SeqCst);
            // Nested in a region: no token for this thread, every other one free.
            let width = budget::scope(|inner| inner.width());
            NESTED.store(width, Ordering::SeqCst);
        }
    });
    if IN_CHILD.load(Ordering::SeqCst) {
        child_run(|| {
            let total = budget::stats().total;
            let nested = NESTED.load(Ordering::SeqCst);
            if nested != total {
                return Err(format!(
                    "a region nested in the parent's got {nested} of {total}"
                ));
            }
            if ran.load(Ordering::SeqCst) != 1 {
                return Err("the queued task did not run in the child".to_owned());
            }
            fresh_budget_works()
        });
    }
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(
        budget_testkit::forked::wait(pid, DEADLINE),
        OK,
        "the child's checks failed (see its stderr)"
    );
    assert_eq!(budget::stats().in_use, 0);
}
