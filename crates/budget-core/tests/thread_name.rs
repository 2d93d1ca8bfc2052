//! A `Builder::thread_name` callback that panics, or returns a name with a NUL byte,
//! cannot unwind out of budget: workers are started inside `join` (a half lent from
//! the stack) and inside a release's hand-off. The worker gets the default name, or
//! the name without the NUL. (Before, the panic unwound out of a `join` whose half
//! was lent, and the next worker ran it on a dead frame.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set when the callback panicked (for the first worker the process starts).
static PANICKED: AtomicBool = AtomicBool::new(false);

#[test]
fn a_panicking_or_nul_thread_name_still_starts_workers() {
    budget_core::Builder::new()
        .num_threads(2)
        .thread_name(|i| {
            if !PANICKED.swap(true, Ordering::SeqCst) {
                panic!("a name callback that fails (worker {i})");
            }
            format!("named\0{i}")
        })
        .build_global()
        .expect("the first use of the budget in this binary");
    let names = Mutex::new(HashSet::new());
    let main = std::thread::current().id();
    // Joins until a half ran on a worker, for each of two rounds (a worker is started
    // per round at most): every half that ran elsewhere records its thread's name.
    for _ in 0..2 {
        let stolen = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !stolen.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "no half ran on a worker");
            budget_core::scope_with(2, |s| {
                s.join(
                    || std::thread::sleep(Duration::from_millis(2)),
                    || {
                        let me = std::thread::current();
                        if me.id() != main {
                            stolen.store(true, Ordering::SeqCst);
                            names.lock().unwrap().insert(me.name().map(str::to_owned));
                        }
                    },
                );
            });
        }
    }
    let names = names.into_inner().unwrap();
    assert!(PANICKED.load(Ordering::SeqCst), "the callback was called");
    // The worker whose callback panicked has the default name; the others, theirs
    // without the NUL byte.
    for name in &names {
        let name = name.as_deref().unwrap_or("");
        assert!(
            name.starts_with("budget-worker-") || name.starts_with("named"),
            "{name:?}"
        );
        assert!(!name.contains('\0'), "{name:?}");
    }
    assert_eq!(budget_core::stats().in_use, 0);
}
