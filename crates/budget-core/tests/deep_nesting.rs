//! 10,000 nested regions on one thread: the outermost takes what it asks for, every
//! deeper one gets what is left (width 1 once the budget is used up), nothing waits,
//! and the tokens held at each depth are exactly the sum of the open grants. A panic
//! at the bottom unwinds through every level and returns every token.
//!
//! Runs on a thread with a 512 MiB stack (reserved, touched only as deep as used).
//! One test function: the phases must not share the budget with each other.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

const TOTAL: usize = 4;
const DEPTH: usize = 10_000;

fn on_big_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .name("deep".into())
        .stack_size(512 << 20)
        .spawn(f)
        .expect("a thread with a 512 MiB stack")
        .join()
        .unwrap_or_else(|payload| panic::resume_unwind(payload))
}

/// Opens `budget_core::scope` `DEPTH - level` times, checking at every level that the
/// width is what is left and that `in_use` is the sum of the open grants.
fn all_cores(level: usize, held: usize, innermost: &mut Vec<usize>, ran: &AtomicUsize) {
    if level == DEPTH {
        return;
    }
    budget_core::scope(|s| {
        let own = usize::from(level == 0); // the thread was outside every region
        let expected = if level == 0 { TOTAL } else { 1 };
        assert_eq!(s.width(), expected, "width at depth {level}");
        let held = held + s.width() - 1 + own;
        assert_eq!(budget_core::stats().in_use, held, "in_use at depth {level}");
        if level >= DEPTH - 3 {
            innermost.push(s.width());
        }
        all_cores(level + 1, held, innermost, ran);
        if level == DEPTH - 1 {
            // Tasks still work at the bottom: they run on this thread at width 1.
            s.spawn(move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            let (a, b) = s.join(|| 1, || 2);
            s.for_each(0..100, |_| {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!((a, b), (1, 2));
            assert_eq!(budget_core::stats().in_use, held);
        }
        assert_eq!(
            budget_core::stats().in_use,
            held,
            "in_use at depth {level} after the inner ones closed"
        );
    });
}

/// Requests that vary with depth (1, 2, 3, 4, 5, ...), so the budget is used up
/// over several levels: width = 1 + min(requested - 1, free) at each.
fn varied(level: usize, free: usize, widths: &mut Vec<usize>) {
    if level == DEPTH {
        return;
    }
    let max = 1 + level % 3;
    budget_core::scope_with(max, |s| {
        let own = usize::from(level == 0 && free > 0);
        let requested = max.min(TOTAL);
        let free = free - own;
        assert_eq!(s.width(), 1 + (requested - 1).min(free), "depth {level}");
        let free = free - (s.width() - 1);
        assert_eq!(budget_core::stats().in_use, TOTAL - free, "depth {level}");
        widths.push(s.width());
        varied(level + 1, free, widths);
    });
}

/// Panics at the bottom of `DEPTH` nested regions.
fn panics_at_bottom(level: usize) {
    budget_core::scope(|s| {
        if level + 1 == DEPTH {
            // From a task, so the payload crosses the task machinery first.
            s.spawn(|_| panic::panic_any(DEPTH as u64));
        } else {
            panics_at_bottom(level + 1);
        }
    });
}

#[test]
fn ten_thousand_nested_regions() {
    budget_core::Builder::new()
        .num_threads(TOTAL)
        .build_global()
        .expect("this test binary builds the budget first");

    let (innermost, ran) = on_big_stack(|| {
        let mut innermost = Vec::new();
        let ran = AtomicUsize::new(0);
        all_cores(0, 0, &mut innermost, &ran);
        (innermost, ran.into_inner())
    });
    assert_eq!(innermost, [1, 1, 1], "the innermost regions run at width 1");
    assert_eq!(ran, 101, "the bottom region's task and for_each ran");
    assert_eq!(budget_core::stats().in_use, 0);

    let widths = on_big_stack(|| {
        let mut widths = Vec::with_capacity(DEPTH);
        varied(0, TOTAL, &mut widths);
        widths
    });
    assert_eq!(widths.len(), DEPTH);
    assert_eq!(
        &widths[..4],
        [1, 2, 3, 1],
        "requests 1, 2, 3, 1 on 4 tokens"
    );
    assert!(widths[4..].iter().all(|&w| w == 1), "the budget is used up");
    assert_eq!(budget_core::stats().in_use, 0);

    let outcome = on_big_stack(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(|_| {})); // the expected panic: keep stderr quiet
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| panics_at_bottom(0)));
        panic::set_hook(default);
        outcome
            .expect_err("the panic at the bottom surfaces")
            .downcast::<u64>()
            .map(|b| *b)
    });
    assert_eq!(outcome.ok(), Some(DEPTH as u64), "the original payload");
    let stats = budget_core::stats();
    assert_eq!(stats.in_use, 0, "{stats}");
    assert!(stats.regions >= 3 * DEPTH as u64, "{stats}");
}
