//! [`install_blocking`]: runs a closure on a pool and blocks the calling thread,
//! which runs nothing else meanwhile.
//!
//! `ThreadPool::install` called on a worker of *another* rayon pool does not block
//! that worker: while it waits, rayon lets it run jobs of its own pool. For a
//! budget region that is one thread too many. The waiting thread's token (or, on a
//! worker of budget's pools, the enclosing region's token for it) is the one the
//! leased pool's first thread runs on; the jobs the waiting worker would take (the
//! application's loop, on the global pool) would run unpaid, and with the caller's
//! in-region flag set, so regions they open would not pay for their thread either.
//! A caller that is no rayon worker already blocks in `install`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;

/// Where the job leaves its outcome for the blocked caller.
struct Outcome<R> {
    value: Mutex<Option<thread::Result<R>>>,
    done: Condvar,
}

/// Runs `op` on `pool` and blocks until it returned, running no other job. A panic
/// in `op` is resumed here with its payload.
pub(crate) fn install_blocking<R, OP>(pool: &rayon::ThreadPool, op: OP) -> R
where
    OP: FnOnce() -> R + Send,
    R: Send,
{
    let outcome = Arc::new(Outcome {
        value: Mutex::new(None),
        done: Condvar::new(),
    });
    let report = outcome.clone();
    let job = move || {
        let value = panic::catch_unwind(AssertUnwindSafe(op));
        // `op` (and whatever it borrowed) is consumed before the caller can wake;
        // the job keeps only its own `Arc` of the outcome from here on.
        let mut slot = report.value.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = Some(value);
        report.done.notify_one();
    };
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(job);
    // SAFETY: `erase_job`'s contract: the job borrows from this
    // stack frame (through `op` and `R`), and this function does not return, nor
    // unwind (nothing below panics: poisoned locks are taken over), before the job
    // stored its outcome, after which the job touches nothing but its `Arc` (the
    // last owner may drop the `Outcome` after this frame is gone: its slot is
    // empty by then, as the caller took the value, so no `R` is dropped late). The
    // job does run: `pool` is alive (the caller's lease holds it) and rayon runs
    // every spawned job before its threads exit; a panic in `op` is caught above.
    let job: Box<dyn FnOnce() + Send + 'static> =
        unsafe { budget_core::integration::erase_job(job) };
    pool.spawn(job);
    let mut slot = outcome.value.lock().unwrap_or_else(PoisonError::into_inner);
    let value = loop {
        if let Some(value) = slot.take() {
            break value;
        }
        slot = outcome
            .done
            .wait(slot)
            .unwrap_or_else(PoisonError::into_inner);
    };
    drop(slot);
    value.unwrap_or_else(|payload| panic::resume_unwind(payload))
}
