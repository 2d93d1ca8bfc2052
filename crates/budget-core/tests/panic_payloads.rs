//! Panic payloads whose `Drop` panics. A region must never return
//! early (its tasks borrow the caller's stack) and never hang, whichever thread drops
//! an extra payload. Each case runs in a child process with a watchdog: before the
//! fix, some returned while a task still ran, some hung, some aborted.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A payload whose drop panics.
struct Payload;

static DROPS: AtomicUsize = AtomicUsize::new(0);

impl Drop for Payload {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
        panic!("the payload's drop panics");
    }
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if payload.is::<Payload>() {
        "Payload".to_owned()
    } else {
        "?".to_owned()
    }
}

/// Waits (bounded: the watchdog ends a hang) until `flag` is set.
fn until(flag: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` under `catch_unwind`, returns the message of its panic, and forgets the
/// payload (it may be a `Payload`).
fn caught(f: impl FnOnce()) -> String {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => "no panic".to_owned(),
        Err(payload) => {
            let text = message(&*payload);
            std::mem::forget(payload);
            text
        }
    }
}

fn child_case(mode: &str) {
    budget_testkit::child::exit_after("a region with a panicking payload", 30);
    let total = budget_core::stats().total;
    match mode {
        // The extra payload is dropped on the region's own thread while another task
        // of the region still runs: the region must wait for that task.
        "spawn-on-opener" => {
            assert_eq!(total, 2);
            let long_started = AtomicBool::new(false);
            let long_done = AtomicBool::new(false);
            let text = caught(|| {
                budget_core::scope(|s| {
                    s.spawn(|_| {
                        long_started.store(true, Ordering::SeqCst);
                        while DROPS.load(Ordering::SeqCst) == 0 {
                            thread::sleep(Duration::from_millis(1));
                        }
                        // Leaves time for a region that returns early to do so.
                        thread::sleep(Duration::from_millis(200));
                        long_done.store(true, Ordering::SeqCst);
                    });
                    // The worker is busy with the long task: the next two run here.
                    until(&long_started);
                    s.spawn(|_| panic!("first"));
                    s.spawn(|_| panic::panic_any(Payload));
                })
            });
            assert!(
                long_done.load(Ordering::SeqCst),
                "the region returned early"
            );
            assert_eq!(text, "first");
        }
        // The extra payload is dropped on a worker thread: the worker must survive
        // and the region end.
        "spawn-on-worker" => {
            assert_eq!(total, 2);
            let text = caught(|| {
                budget_core::scope(|s| {
                    s.spawn(|_| panic!("first"));
                    s.spawn(|_| panic::panic_any(Payload));
                    // Busy here, so the worker runs both tasks.
                    while DROPS.load(Ordering::SeqCst) == 0 {
                        thread::sleep(Duration::from_millis(1));
                    }
                })
            });
            assert_eq!(text, "first");
            // The worker is still alive and serves the next region.
            let ran = AtomicUsize::new(0);
            budget_core::scope(|s| {
                s.for_each(0..64, |_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            });
            assert_eq!(ran.load(Ordering::SeqCst), 64);
        }
        // join: `a` panics, `b`'s payload is the extra one.
        "join" => {
            let text = caught(|| {
                budget_core::scope(|s| {
                    s.join(|| panic!("a"), || panic::panic_any(Payload));
                })
            });
            assert_eq!(text, "a");
        }
        // for_each: two chunks panic at once, on two threads, both with a payload
        // whose drop panics; whichever is recorded second is dropped.
        "for-each" => {
            assert_eq!(total, 2);
            let arrived = AtomicUsize::new(0);
            let text = caught(|| {
                budget_core::scope(|s| {
                    s.for_each(0..2, |_| {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        let deadline = Instant::now() + Duration::from_secs(20);
                        while arrived.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                            thread::sleep(Duration::from_millis(1));
                        }
                        panic::panic_any(Payload);
                    })
                })
            });
            assert_eq!(arrived.load(Ordering::SeqCst), 2, "both chunks ran");
            assert_eq!(text, "Payload");
        }
        // The scope's body panics after a task stored its (panicking) payload.
        "scope-body" => {
            let stored = AtomicBool::new(false);
            let text = caught(|| {
                budget_core::scope(|s| {
                    s.spawn(|_| {
                        stored.store(true, Ordering::SeqCst);
                        panic::panic_any(Payload);
                    });
                    until(&stored);
                    thread::sleep(Duration::from_millis(50));
                    panic!("body");
                })
            });
            assert_eq!(text, "body");
        }
        other => panic!("unknown child mode {other}"),
    }
    assert!(DROPS.load(Ordering::SeqCst) >= 1, "the payload was dropped");
    assert_eq!(budget_core::stats().in_use, 0);
    println!("CHILD-OK");
}

/// The child side: does nothing unless started by `run_child`.
#[test]
fn child() {
    if let Some(mode) = budget_testkit::child::mode() {
        child_case(&mode);
    }
}

fn parent(mode: &str, total: &str) {
    let out = budget_testkit::child::rerun("child", mode, &[("BUDGET_NUM_THREADS", total)]);
    assert!(out.contains("CHILD-OK"), "{out}");
}

#[test]
fn extra_payload_dropped_on_the_opener_does_not_end_the_region_early() {
    parent("spawn-on-opener", "2");
}

#[test]
fn extra_payload_dropped_on_a_worker_does_not_hang_the_region() {
    parent("spawn-on-worker", "2");
}

#[test]
fn join_with_two_panics_and_a_panicking_payload() {
    parent("join", "1");
    parent("join", "2");
}

#[test]
fn for_each_with_two_panics_and_a_panicking_payload() {
    parent("for-each", "2");
}

#[test]
fn scope_body_panic_after_a_task_payload_that_panics_on_drop() {
    parent("scope-body", "2");
}
