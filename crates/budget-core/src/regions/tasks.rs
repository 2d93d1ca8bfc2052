//! The task API of a region: [`Scope::spawn`], [`Scope::join`] and
//! [`Scope::for_each`], over the protocols of `job.rs` (heap tasks, `join`'s lent
//! half) and the wake-cost heuristic of `clock.rs`. `scope.rs` holds the region's
//! entry, exit and handle.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::regions::clock;
use crate::regions::context;
use crate::regions::items::{sealed::Indexed, ForEachInput};
use crate::regions::job::{self, erase, AbortOnUnwind, Outliving};
use crate::regions::region::Region;
use crate::regions::scope::Scope;

impl<'scope> Scope<'scope> {
    /// Queues `f` to run on the region's threads; the region waits for it before it
    /// ends.
    ///
    /// `f` receives the scope and may spawn more tasks. A panic in `f` is kept and
    /// resumed by the [`scope`](crate::scope) call after all tasks have finished.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let count = AtomicUsize::new(0);
    /// budget::scope(|s| {
    ///     for _ in 0..10 {
    ///         s.spawn(|s| {
    ///             s.spawn(|_| { count.fetch_add(1, Ordering::Relaxed); });
    ///         });
    ///     }
    /// });
    /// assert_eq!(count.into_inner(), 10);
    /// ```
    pub fn spawn<F>(&self, f: F)
    where
        F: FnOnce(&Scope<'scope>) + Send + 'scope,
    {
        let shared = self.open.shared();
        shared.pending.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the scope outlives its tasks: `scope_with` waits for
        // `pending == 0` before `Scope` is dropped.
        let scope = unsafe { Outliving::new(self) };
        let frame = self.frame(true);
        let body = Box::new(move |shared: &Region| {
            let _task = context::set_frame(frame);
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(scope.get()))) {
                shared.store_panic(payload);
            }
            // Last touch of the scope: after this the scope may end.
            shared.pending.fetch_sub(1, Ordering::SeqCst);
        });
        // SAFETY: `pending` keeps the scope (and so 'scope) alive until this runs.
        shared.push(unsafe { erase(body) });
    }

    /// Runs `a` and `b`, in parallel when the region has a free core, and returns
    /// both results.
    ///
    /// `b` is queued and `a` runs on the calling thread; if no other thread took `b`
    /// by then, the caller runs it too. A region of width 1 that cannot grow runs
    /// both inline without allocating.
    ///
    /// # Panics
    ///
    /// If either closure panics, the panic is resumed after both have finished
    /// (`a`'s payload first).
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// fn fib(s: &budget::Scope<'_>, n: u64) -> u64 {
    ///     if n < 12 {
    ///         return if n < 2 { n } else { fib(s, n - 1) + fib(s, n - 2) };
    ///     }
    ///     let (a, b) = s.join(|| fib(s, n - 1), || fib(s, n - 2));
    ///     a + b
    /// }
    /// assert_eq!(budget::scope(|s| fib(s, 20)), 6765);
    /// ```
    pub fn join<A, B, RA, RB>(&self, a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        // `a` and `b` are tasks of this region, whichever thread runs them.
        let task = context::set_frame(self.frame(true));
        // From the region's body (the frame just replaced): its opener, who may take
        // lane 0 (`lanes.rs`).
        let from_body = task.previous() == self.frame(false);
        if self.requested() == 1 || self.open.alone() {
            // Queuing `b` could not get it run sooner: run both here, `b` even if
            // `a` panicked, as on the queued path.
            let result_a = catch_unwind(AssertUnwindSafe(a));
            let result_b = catch_unwind(AssertUnwindSafe(b));
            return both(result_a, result_b);
        }
        let frame = self.frame(true);
        let (result_a, result_b) = self.open.shared().join(from_body, a, move || {
            let _task = context::set_frame(frame);
            b()
        });
        both(result_a, result_b)
    }

    /// Calls `f` on every element of `items` (a `Range<usize>`, `&[T]` or
    /// `&mut [T]`), in chunks claimed dynamically by the region's threads, and
    /// returns when all are done.
    ///
    /// The input is cut into about eight chunks per requested core, so a region that
    /// grows while the loop runs puts its new threads to work at once. A region of
    /// width 1 runs the loop alone for its first few microseconds (about what waking
    /// a parked helper costs), so a short loop is never slowed by a helper that would
    /// arrive after its end.
    ///
    /// # Panics
    ///
    /// If `f` panics, the remaining chunks are skipped and the first panic is resumed
    /// here after every thread has left the loop.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let mut v = vec![0u32; 10_000];
    /// budget::scope(|s| s.for_each(&mut v[..], |x| *x += 1));
    /// assert!(v.iter().all(|&x| x == 1));
    /// ```
    pub fn for_each<I, F>(&self, items: I, f: F)
    where
        I: ForEachInput,
        F: Fn(I::Item) + Sync,
    {
        // Every call of `f` is a task of this region, whichever thread runs it.
        let _task = context::set_frame(self.frame(true));
        let source = items.into_indexed();
        let len = source.len();
        let chunk = len.div_ceil(self.requested() * 8).max(1);
        let chunks = len.div_ceil(chunk);
        let helpers = (self.requested() - 1).min(chunks.saturating_sub(1));
        let item = |i| {
            // SAFETY: every caller below fetches each index below `len` once: the
            // inline phases move `start` up, the parallel one hands out disjoint
            // chunks from `start` on.
            f(unsafe { source.get(i) })
        };
        let mut start = 0;
        if helpers == 0 {
            (0..len).for_each(item);
            return;
        }
        if self.width() == 1 {
            // Nobody of the region's own is there to help: any helper (a grown slot
            // or an idle thread of the tree) would have to be woken first. Go on
            // alone until the loop has run about as long as a wake costs, so that a
            // short loop never pays for a helper that would arrive after it ended
            // (`clock.rs`).
            start = run_until_help_pays(0, len, item);
            // Then chunk by chunk while nobody could take the next one (width 1, no
            // token free, nobody of the tree idle), looking again before each.
            while start < len && self.open.alone() {
                let end = (start + chunk).min(len);
                (start..end).for_each(item);
                start = end;
            }
        }
        if start >= len {
            return;
        }
        let helpers = helpers.min((len - start).div_ceil(chunk) - 1);
        if helpers == 0 {
            (start..len).for_each(item);
            return;
        }
        let cursor = AtomicUsize::new(start);
        let first_panic = crate::sync::plain::Mutex::new(None);
        let drain = || {
            let outcome = catch_unwind(AssertUnwindSafe(|| loop {
                // Relaxed: the counter only hands out disjoint index ranges; the data
                // they cover is published by the join below (task `done`, SeqCst).
                let start = cursor.fetch_add(chunk, Ordering::Relaxed);
                if start >= len {
                    break;
                }
                // `fetch_add` hands each chunk, so each index, out once.
                (start..(start + chunk).min(len)).for_each(item);
            }));
            if let Err(payload) = outcome {
                cursor.store(len, Ordering::Relaxed);
                let mut first = first_panic.lock();
                if first.is_none() {
                    *first = Some(payload);
                } else {
                    drop(first);
                    job::discard(payload);
                }
            }
        };
        let shared = self.open.shared();
        // SAFETY: for_each waits for every helper it did not cancel to be done before
        // `drain` goes out of scope (on every path: `armed` aborts otherwise); `drain`
        // is Sync (it captures Sync state only: F: Sync, Indexed: Sync, atomics, mutex).
        let drain_ref = unsafe { Outliving::new(&drain) };
        let frame = self.frame(true);
        let armed = AbortOnUnwind;
        let tasks: Vec<_> = (0..helpers)
            .map(|_| {
                let body = Box::new(move |_: &Region| {
                    let _task = context::set_frame(frame);
                    (drain_ref.get())();
                });
                // SAFETY: see above.
                shared.push(unsafe { erase(body) })
            })
            .collect();
        drain();
        // Cancel helpers nobody started; wait for the ones that did.
        let started: Vec<_> = tasks
            .iter()
            .filter(|task| shared.claim(task).is_none())
            .collect();
        shared.help_until(|| started.iter().all(|t| t.done.load(Ordering::SeqCst)));
        std::mem::forget(armed);
        if let Some(payload) = first_panic.into_inner() {
            resume_unwind(payload);
        }
    }
}

/// Calls `item(i)` for `i` from `start` up, reading the tick counter after 1, 8, 64,
/// ... items (a few reads for a short loop), until the items called took
/// [`clock::wake_ticks`] or `len` is reached; returns the first index not called.
#[inline]
fn run_until_help_pays(start: usize, len: usize, item: impl Fn(usize)) -> usize {
    let (t0, wake) = (clock::now(), clock::wake_ticks());
    let (mut next, mut check) = (start, 1);
    while next < len {
        item(next);
        next += 1;
        if next - start == check {
            if clock::since(t0) >= wake {
                break;
            }
            check = check.saturating_mul(8);
        }
    }
    next
}

/// The results of `join`'s two closures: both values, or the first panic (`a`'s),
/// the other payload discarded (see [`job::discard`]).
fn both<RA, RB>(a: std::thread::Result<RA>, b: std::thread::Result<RB>) -> (RA, RB) {
    match (a, b) {
        (Ok(ra), Ok(rb)) => (ra, rb),
        (Err(payload), Ok(rb)) => {
            drop(rb);
            resume_unwind(payload)
        }
        (Err(payload), Err(extra)) => job::resume_first(payload, Some(extra)),
        (Ok(ra), Err(payload)) => {
            drop(ra);
            resume_unwind(payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::run_until_help_pays;
    use crate::regions::clock;

    /// An item that takes longer than a wake ends the inline phase at once: the rest
    /// of the loop can still get help (a big task among small ones).
    #[test]
    fn a_long_item_ends_the_inline_phase_after_one() {
        let called = Cell::new(0);
        let next = run_until_help_pays(3, 100, |i| {
            assert_eq!(i, 3 + called.get(), "indices in order, each once");
            called.set(called.get() + 1);
            let t0 = clock::now();
            while clock::since(t0) < 2 * clock::wake_ticks() {
                std::hint::spin_loop();
            }
        });
        assert_eq!((next, called.get()), (4, 1));
    }

    /// Items that take no time run to the end without leaving the thread. A
    /// preemption in the few ns between two reads of the counter could end a run
    /// early (at 1 or 8), so of 20 runs 15 must reach the end.
    #[test]
    #[cfg_attr(miri, ignore = "timing: a heuristic on the tick counter")]
    fn a_short_loop_runs_to_its_end() {
        let mut whole = 0;
        for _ in 0..20 {
            let called = Cell::new(0);
            let next = run_until_help_pays(0, 32, |i| {
                assert_eq!(i, called.get(), "indices in order, each once");
                called.set(i + 1);
            });
            assert_eq!(next, called.get());
            assert!([1, 8, 32].contains(&next), "stopped at {next}");
            whole += usize::from(next == 32);
        }
        assert!(whole >= 15, "{whole} of 20 short loops ran to their end");
        let next = run_until_help_pays(5, 5, |_| unreachable!("an empty range"));
        assert_eq!(next, 5);
    }
}
