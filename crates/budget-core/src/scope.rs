//! Parallel regions: [`scope`], [`scope_with`] and the [`Scope`] handle with its
//! task API (`spawn`, `join`, `for_each`).

use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::context;
use crate::items::{sealed::Source, ForEachInput};
use crate::region::{erase, AbortOnUnwind, Shared};
use crate::registry::{self, Registry};

/// Opens a parallel region that asks for every core in the budget.
///
/// The region starts at once with `width = 1 + min(total - 1, free)`: the calling
/// thread always counts, so a region that finds the cores busy runs at width 1
/// instead of waiting. Nested at any depth, on any thread, it therefore shrinks
/// rather than oversubscribes. A region that got less than it asked for grows back
/// when other regions release tokens while it still has queued tasks.
///
/// Returns what `f` returns, after every task spawned in the region has finished.
/// Every token the region held is back in the budget when `scope` returns or
/// unwinds.
///
/// # Panics
///
/// If `f` or a spawned task panics, the panic is resumed here with its original
/// payload once every task has finished (the panic of `f` wins over a task's; of
/// several tasks, the first recorded). In a child process forked while this region
/// had tasks running on other threads, waiting for them panics with an explanation
/// instead of hanging.
///
/// # Blocking
///
/// Never waits to start. At its end it waits for the region's tasks, running
/// queued ones on the calling thread meanwhile.
///
/// # Examples
///
/// ```
/// let total = budget_core::stats().total;
/// budget_core::scope(|outer| {
///     assert_eq!(outer.width(), total); // nothing else is running
///     budget_core::scope(|inner| {
///         // The outer region holds every core: the inner one runs inline.
///         assert_eq!(inner.width(), 1);
///     });
/// });
/// ```
pub fn scope<'scope, F, R>(f: F) -> R
where
    F: FnOnce(&Scope<'scope>) -> R,
{
    scope_with(usize::MAX, f)
}

/// Opens a parallel region that asks for at most `max` cores.
///
/// As [`scope`], with the request capped at `max` (and at the budget's total). A
/// `max` of 0 is taken as 1: a region always has its own thread.
///
/// # Panics
///
/// As [`scope`].
///
/// # Examples
///
/// ```
/// budget_core::scope_with(2, |s| {
///     assert!(s.width() <= 2);
///     assert_eq!(s.requested(), 2.min(budget_core::stats().total));
/// });
/// ```
pub fn scope_with<'scope, F, R>(max: usize, f: F) -> R
where
    F: FnOnce(&Scope<'scope>) -> R,
{
    let registry = registry::global();
    let tokens = &registry.tokens;
    let requested = max.clamp(1, tokens.total());
    let inherits = context::in_region();
    let own_token = !inherits && tokens.try_acquire(1) == 1;
    let width = 1 + tokens.try_acquire(requested - 1);
    tokens
        .counters
        .note_region(width < requested, !inherits && !own_token);
    let span = tracing::trace_span!(
        "budget.region",
        requested,
        granted = width,
        regrown = tracing::field::Empty
    );
    let _entered = span.enter();

    let scope = Scope {
        registry,
        requested,
        initial_width: width,
        overcommitted: !inherits && !own_token,
        shared: OnceLock::new(),
        marker: PhantomData,
    };
    if scope.overcommitted {
        // Runs unpaid: register now, so the first token freed pays for this thread
        // (rare path: an outside thread that found every token taken).
        scope.shared();
    }
    let result = {
        let _in_region = context::enter();
        let result = catch_unwind(AssertUnwindSafe(|| f(&scope)));
        // Tasks borrow from the caller's stack: wait for them even if `f` panicked.
        let waited = scope.shared.get().map(|shared| {
            catch_unwind(AssertUnwindSafe(|| {
                shared.help_until(|| shared.pending.load(Ordering::SeqCst) == 0)
            }))
        });
        match waited {
            Some(Err(payload)) => Err(payload),
            _ => result,
        }
    };

    let (final_width, repaid) = scope
        .shared
        .get()
        .map_or((width, false), |shared| shared.close());
    if final_width > width {
        span.record("regrown", final_width - width);
    }
    if registry.is_current() {
        tokens.release(final_width - 1 + usize::from(own_token || repaid));
    }
    let task_panic = scope.shared.get().and_then(|shared| shared.take_panic());
    match (result, task_panic) {
        (Err(payload), _) | (Ok(_), Some(payload)) => resume_unwind(payload),
        (Ok(value), None) => value,
    }
}

/// A parallel region: its width, and the tasks that run on it.
///
/// Made by [`scope`] or [`scope_with`] and passed to their closure, and to every
/// task spawned in it. Tasks may borrow anything that outlives the region.
///
/// # Examples
///
/// ```
/// let mut halves = [0u64; 2];
/// let data: Vec<u64> = (1..=1000).collect();
/// budget_core::scope(|s| {
///     let (lo, hi) = halves.split_at_mut(1);
///     let (a, b) = data.split_at(500);
///     s.spawn(move |_| lo[0] = a.iter().sum());
///     s.spawn(move |_| hi[0] = b.iter().sum());
/// });
/// assert_eq!(halves[0] + halves[1], 500_500);
/// ```
pub struct Scope<'scope> {
    registry: &'static Registry,
    requested: usize,
    initial_width: usize,
    /// Opened outside every region with no token free (see `Shared::owes_own`).
    overcommitted: bool,
    /// Made on the first task: a region that spawns nothing allocates nothing.
    shared: OnceLock<Arc<Shared>>,
    /// Invariant in 'scope, as rayon's Scope: tasks may borrow for exactly 'scope.
    marker: PhantomData<&'scope mut &'scope ()>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("requested", &self.requested)
            .field("width", &self.width())
            .finish_non_exhaustive()
    }
}

/// A raw pointer that may cross threads; see each use for why that is sound.
struct SendPtr<T>(*const T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: only ever dereferenced while the pointee is alive and is Sync (see uses).
unsafe impl<T> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn of(value: &T) -> Self {
        SendPtr(value)
    }

    /// A method, so closures capture the whole `SendPtr` and not its raw field.
    fn get(&self) -> *const T {
        self.0
    }
}

impl<'scope> Scope<'scope> {
    /// The number of cores this region may use right now, the calling thread
    /// included: always at least 1, never more than [`requested`](Scope::requested),
    /// and it only grows while the region is open.
    ///
    /// # Examples
    ///
    /// ```
    /// budget_core::scope(|s| assert!(s.width() >= 1 && s.width() <= s.requested()));
    /// ```
    pub fn width(&self) -> usize {
        self.shared
            .get()
            .map_or(self.initial_width, |shared| shared.width())
    }

    /// The width this region asked for: `max` of [`scope_with`] (or the budget's
    /// total for [`scope`]), capped at the total and at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// budget_core::scope_with(1, |s| assert_eq!(s.requested(), 1));
    /// ```
    pub fn requested(&self) -> usize {
        self.requested
    }

    /// Runs `f` while the region asks the budget for its full request even though it
    /// has no task queued, and calls `on_grow(new_width)` each time the region grows
    /// meanwhile. For integrations that run a region's work on threads of their own:
    /// `budget-rayon` opens a gated rayon pool this way.
    ///
    /// `on_grow` runs on the thread that released the tokens, with the budget's
    /// hand-off lock held: it must be quick, must not block, and must not enter a
    /// region or touch a [`Lease`](crate::Lease). A panic in it is caught and
    /// logged, never propagated.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let record = seen.clone();
    /// budget_core::scope(|s| {
    ///     let width = s.with_demand(move |w| record.store(w, Ordering::Relaxed), || s.width());
    ///     assert!(width >= 1);
    /// });
    /// ```
    pub fn with_demand<R>(
        &self,
        on_grow: impl Fn(usize) + Send + Sync + 'static,
        f: impl FnOnce() -> R,
    ) -> R {
        if self.initial_width >= self.requested && !self.overcommitted {
            return f(); // nothing to grow into
        }
        self.shared().with_demand(Arc::new(on_grow), f)
    }

    /// True when queued work could not run sooner than inline: the region has width
    /// 1 and no token is free to grow it. A hint, read without ordering: `join` and
    /// `for_each` check it again at their next call or chunk.
    fn alone(&self) -> bool {
        self.width() == 1 && !self.registry.tokens.may_grow()
    }

    fn shared(&self) -> &Arc<Shared> {
        self.shared.get_or_init(|| {
            Shared::new(
                self.registry,
                self.requested,
                self.initial_width,
                self.overcommitted,
            )
        })
    }

    /// Queues `f` to run on the region's threads; the region waits for it before it
    /// ends.
    ///
    /// `f` receives the scope and may spawn more tasks. A panic in `f` is kept and
    /// resumed by the [`scope`] call after all tasks have finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let count = AtomicUsize::new(0);
    /// budget_core::scope(|s| {
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
        let shared = self.shared();
        shared.pending.fetch_add(1, Ordering::SeqCst);
        let scope = SendPtr(self as *const Scope<'scope>);
        let body = Box::new(move |shared: &Shared| {
            // SAFETY: the scope outlives its tasks: `scope_with` waits for
            // `pending == 0` before `Scope` is dropped, and Scope is Sync.
            let scope = unsafe { &*scope.get() };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(scope))) {
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
    /// fn fib(s: &budget_core::Scope<'_>, n: u64) -> u64 {
    ///     if n < 12 {
    ///         return if n < 2 { n } else { fib(s, n - 1) + fib(s, n - 2) };
    ///     }
    ///     let (a, b) = s.join(|| fib(s, n - 1), || fib(s, n - 2));
    ///     a + b
    /// }
    /// assert_eq!(budget_core::scope(|s| fib(s, 20)), 6765);
    /// ```
    pub fn join<A, B, RA, RB>(&self, a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        if self.requested == 1 || self.alone() {
            // Queuing `b` could not get it run sooner: run both here, `b` even if
            // `a` panicked, as on the queued path.
            let result_a = catch_unwind(AssertUnwindSafe(a));
            let result_b = catch_unwind(AssertUnwindSafe(b));
            return match (result_a, result_b) {
                (Err(payload), _) | (Ok(_), Err(payload)) => resume_unwind(payload),
                (Ok(ra), Ok(rb)) => (ra, rb),
            };
        }
        let shared = self.shared();
        let mut result_b: Option<std::thread::Result<RB>> = None;
        let slot = SendPtr(&mut result_b as *mut Option<std::thread::Result<RB>>);
        let body = Box::new(move |_: &Shared| {
            let outcome = catch_unwind(AssertUnwindSafe(b));
            // SAFETY: `join` does not read or free `result_b` before this task is
            // done (it waits for `done`, set after the body returns) or claimed by
            // the joiner itself.
            unsafe { *(slot.get() as *mut Option<std::thread::Result<RB>>) = Some(outcome) };
        });
        let armed = AbortOnUnwind;
        // SAFETY: join waits below for the task to be done or runs it itself, on
        // every path (a's panic is caught first; anything else aborts via `armed`).
        let task = shared.push(unsafe { erase(body) });
        let result_a = catch_unwind(AssertUnwindSafe(a));
        match shared.claim(&task) {
            Some(body) => body(shared),
            None => shared.help_until(|| task.done.load(Ordering::SeqCst)),
        }
        std::mem::forget(armed);
        let result_b = result_b.expect("join's second closure ran");
        match (result_a, result_b) {
            (Err(payload), _) | (Ok(_), Err(payload)) => resume_unwind(payload),
            (Ok(ra), Ok(rb)) => (ra, rb),
        }
    }

    /// Calls `f` on every element of `items` (a `Range<usize>`, `&[T]` or
    /// `&mut [T]`), in chunks claimed dynamically by the region's threads, and
    /// returns when all are done.
    ///
    /// The input is cut into about eight chunks per requested core, so a region that
    /// grows while the loop runs puts its new threads to work at once.
    ///
    /// # Panics
    ///
    /// If `f` panics, the remaining chunks are skipped and the first panic is resumed
    /// here after every thread has left the loop.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut v = vec![0u32; 10_000];
    /// budget_core::scope(|s| s.for_each(&mut v[..], |x| *x += 1));
    /// assert!(v.iter().all(|&x| x == 1));
    /// ```
    pub fn for_each<I, F>(&self, items: I, f: F)
    where
        I: ForEachInput,
        F: Fn(I::Item) + Sync,
    {
        let source = items.into_source();
        let len = source.len();
        let chunk = len.div_ceil(self.requested * 8).max(1);
        let chunks = len.div_ceil(chunk);
        let helpers = (self.requested - 1).min(chunks.saturating_sub(1));
        // Chunks run inline while nobody else could take them (width 1, no token free);
        // the region looks again before each chunk and goes parallel once it can.
        let mut start = 0;
        while start < len && (helpers == 0 || self.alone()) {
            let end = (start + chunk).min(len);
            // SAFETY: each index below `len` is fetched once: `start` only moves up.
            (start..end).for_each(|i| f(unsafe { source.get(i) }));
            start = end;
        }
        if start >= len {
            return;
        }
        let helpers = helpers.min((len - start).div_ceil(chunk) - 1);
        if helpers == 0 {
            // SAFETY: as above; the indices from `start` on were not fetched yet.
            (start..len).for_each(|i| f(unsafe { source.get(i) }));
            return;
        }
        let cursor = AtomicUsize::new(start);
        let first_panic = parking_lot::Mutex::new(None);
        let drain = || {
            let outcome = catch_unwind(AssertUnwindSafe(|| loop {
                // Relaxed: the counter only hands out disjoint index ranges; the data
                // they cover is published by the join below (task `done`, SeqCst).
                let start = cursor.fetch_add(chunk, Ordering::Relaxed);
                if start >= len {
                    break;
                }
                for i in start..(start + chunk).min(len) {
                    // SAFETY: `fetch_add` hands each chunk, so each index, out once.
                    f(unsafe { source.get(i) });
                }
            }));
            if let Err(payload) = outcome {
                cursor.store(len, Ordering::Relaxed);
                first_panic.lock().get_or_insert(payload);
            }
        };
        let shared = self.shared();
        let drain_ref = SendPtr::of(&drain);
        let armed = AbortOnUnwind;
        let tasks: Vec<_> = (0..helpers)
            .map(|_| {
                let body = Box::new(move |_: &Shared| {
                    // SAFETY: for_each waits for every helper it did not cancel to be
                    // done before `drain` goes out of scope; `drain` is Sync (it
                    // captures Sync state only: F: Sync, Source: Sync, atomics, mutex).
                    let drain = unsafe { &*drain_ref.get() };
                    drain();
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
