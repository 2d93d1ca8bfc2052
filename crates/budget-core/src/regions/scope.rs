//! Parallel regions: [`scope`], [`scope_with`] and the [`Scope`] handle with its
//! task API (`spawn`, `join`, `for_each`).

use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::pool::process;
use crate::pool::registry::Registry;
use crate::regions::clock;
use crate::regions::context;
use crate::regions::items::{sealed::Source, ForEachInput};
use crate::regions::job::{self, erase, AbortOnUnwind, Outliving};
use crate::regions::region::Region;
use crate::tokens::own::OwnToken;

/// Opens a parallel region that asks for every core in the budget.
///
/// The region starts at once with `width = 1 + min(total - 1, free)`: the calling
/// thread always counts, so a region that finds the cores busy runs at width 1
/// instead of waiting. Nested at any depth, on any thread, it therefore shrinks
/// rather than oversubscribes. A region that got less than it asked for grows back
/// when other regions release tokens while it still has queued tasks.
///
/// `f` runs on the calling thread, like rayon's `in_place_scope` (not `rayon::scope`,
/// which moves to a pool thread): the caller's thread is the region's own thread.
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
/// # use budget_core as budget;
/// let total = budget::stats().total;
/// budget::scope(|outer| {
///     assert_eq!(outer.width(), total); // nothing else is running
///     budget::scope(|inner| {
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

/// What an outermost region asks for: `max`, clamped to `1..=total`, and on a worker
/// of a rayon pool that is not budget's (a plain-rayon application's `par_iter`
/// calling a library that uses budget) at most its share of the cores,
/// `max(1, total / threads of that pool)`: every thread of that loop may open such a
/// region, and a region that took the tokens its siblings between two calls did not
/// hold left them to run unpaid (16 images: 40 of 64 regions overcommitted). A
/// worker of budget's own pools is inside a region already and never gets here.
#[inline]
fn foreign_share(max: usize, total: usize) -> usize {
    let max = max.clamp(1, total);
    match rayon_core::current_thread_index() {
        None => max,
        Some(_) => max.min((total / rayon_core::current_num_threads()).max(1)),
    }
}

/// Opens a parallel region that asks for at most `max` cores.
///
/// As [`scope`], with the request capped at `max` (and at the budget's total). A
/// `max` of 0 is taken as 1: a region always has its own thread. On a worker of a
/// rayon pool that is not budget's, an outermost region asks for at most its share,
/// `max(1, total / threads of that pool)` (see `foreign_share`).
///
/// # Panics
///
/// As [`scope`].
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// budget::scope_with(2, |s| {
///     assert!(s.width() <= 2);
///     assert_eq!(s.requested(), 2.min(budget::stats().total));
/// });
/// ```
pub fn scope_with<'scope, F, R>(max: usize, f: F) -> R
where
    F: FnOnce(&Scope<'scope>) -> R,
{
    let registry = process::global();
    let tokens = &registry.tokens;
    let nested = context::in_region();
    let requested = if nested {
        max.clamp(1, tokens.total())
    } else {
        foreign_share(max, tokens.total())
    };
    let own = OwnToken::take(nested, tokens);
    // Free tokens first; in a process sharing an outside budget, outside ones that
    // can be had at once (a region never waits: one non-blocking try per token).
    let width = 1 + tokens.take(requested - 1);
    tokens
        .counters
        .note_region(width < requested, own.overcommitted());
    if width < requested && (!nested || tokens.shares()) {
        // A cause other than the enclosing regions is possible (`Stats`).
        tokens.note_cause(nested);
    }
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
        own,
        shared: OnceLock::new(),
        root: root_of_parent(context::frame()),
        marker: PhantomData,
    };
    if scope.own.owes() {
        // Runs unpaid: register now, so the first token freed pays for this thread
        // (rare path: an outside thread that found every token taken).
        scope.shared();
    }
    let result = {
        let _in_region = context::enter();
        let result = {
            let _body = context::set_frame(scope.frame(false));
            catch_unwind(AssertUnwindSafe(|| f(&scope)))
        };
        // Tasks borrow from the caller's stack: wait for them even if `f` panicked.
        let waited = scope.shared.get().map(|shared| {
            catch_unwind(AssertUnwindSafe(|| {
                shared.help_until(|| shared.pending.load(Ordering::SeqCst) == 0)
            }))
        });
        match (waited, result) {
            // Waiting panicked (a forked child: see `help_until`); `f`'s own panic,
            // if any, is discarded.
            (Some(Err(payload)), Err(extra)) => {
                job::discard(extra);
                Err(payload)
            }
            (Some(Err(payload)), Ok(value)) => {
                drop(value);
                Err(payload)
            }
            (_, result) => result,
        }
    };

    let final_width = scope.shared.get().map_or(width, |shared| shared.close());
    // Final now: grants stopped at `close` (or never started: no shared state).
    let own = scope.own();
    if final_width > width {
        span.record("regrown", final_width - width);
    }
    if registry.is_current() {
        tokens.release(final_width - 1 + own.returned_at_exit());
    }
    let task_panic = scope.shared.get().and_then(|shared| shared.take_panic());
    match (result, task_panic) {
        (Err(payload), extra) => job::resume_first(payload, extra),
        (Ok(value), Some(payload)) => {
            drop(value);
            resume_unwind(payload)
        }
        (Ok(value), None) => value,
    }
}

/// A parallel region: its width, and the tasks that run on it.
///
/// Made by [`scope`] or [`scope_with`] and passed to their closure, and to every
/// task spawned in it. Tasks may borrow anything that outlives the region.
///
/// # Borrow rules
///
/// A task may not borrow what the region outlives: a local of the region's closure
/// does not live long enough.
///
/// ```compile_fail,E0597
/// budget_core::scope(|s| {
///     let local = vec![1, 2, 3];
///     s.spawn(|_| assert_eq!(local.len(), 3));
/// });
/// ```
///
/// Tasks run on other threads: what they capture must be `Send` (`spawn`, `join`)...
///
/// ```compile_fail,E0277
/// let shared = std::rc::Rc::new(1);
/// budget_core::scope(|s| s.spawn(move |_| assert_eq!(*shared, 1)));
/// ```
///
/// ...and a `for_each` body, called from several threads at once, must be `Sync`.
///
/// ```compile_fail,E0277
/// let count = std::cell::Cell::new(0);
/// budget_core::scope(|s| s.for_each(0..4, |_| count.set(count.get() + 1)));
/// ```
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let mut halves = [0u64; 2];
/// let data: Vec<u64> = (1..=1000).collect();
/// budget::scope(|s| {
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
    /// How the region's own thread is paid for (`own.rs`), until the shared state
    /// exists; then `Region::own` is.
    own: OwnToken,
    /// Made on the first task: a region that spawns nothing allocates nothing.
    shared: OnceLock<Arc<Region>>,
    /// The outermost region of this region's tree (`tree.rs`); `None` when this is
    /// it. It outlives this region (this one runs inside its body or tasks).
    root: Option<Outliving<Scope<'static>>>,
    /// Invariant in 'scope, as rayon's Scope: tasks may borrow for exactly 'scope.
    marker: PhantomData<&'scope mut &'scope ()>,
}

/// The root of the tree that the region running `frame` belongs to (`None` outside
/// every region: a new region is a root).
#[inline]
fn root_of_parent(frame: context::Frame) -> Option<Outliving<Scope<'static>>> {
    // SAFETY: a frame's scope is alive while the frame is current (`Frame`), and the
    // root of its tree outlives every region nested in it, so the region being
    // opened; only lifetime-independent fields are read through it (registry,
    // widths, the shared state).
    let parent = unsafe { Outliving::<Scope<'static>>::from_addr(frame.scope) }?;
    Some(parent.get().root.unwrap_or(parent))
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("requested", &self.requested)
            .field("width", &self.width())
            .finish_non_exhaustive()
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
    /// # use budget_core as budget;
    /// budget::scope(|s| assert!(s.width() >= 1 && s.width() <= s.requested()));
    /// ```
    #[inline]
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
    /// # use budget_core as budget;
    /// budget::scope_with(1, |s| assert_eq!(s.requested(), 1));
    /// ```
    pub fn requested(&self) -> usize {
        self.requested
    }

    /// `integration::ScopeHooks::with_demand`: see there.
    pub(crate) fn with_demand_hook<R>(
        &self,
        on_grow: impl Fn(usize) + Send + Sync + 'static,
        f: impl FnOnce() -> R,
    ) -> R {
        if self.initial_width >= self.requested && !self.own().owes() {
            return f(); // nothing to grow into
        }
        self.shared().with_demand(Arc::new(on_grow), f)
    }

    /// True when queued work could not run sooner than inline: the region has width
    /// 1 and no token is free to grow it. A hint, read without ordering: `join` and
    /// `for_each` check it again at their next call or chunk.
    fn alone(&self) -> bool {
        self.width() == 1 && !self.registry.tokens.may_grow() && !self.tree_can_help()
    }

    /// Whether an idle thread of this region's tree could run a queued task now: a
    /// waiter in `help_until`, or a free slot of the root (see `tree.rs`).
    fn tree_can_help(&self) -> bool {
        match self.root {
            None => self
                .shared
                .get()
                .is_some_and(|region| region.tree.waiting() > 0),
            Some(root) => {
                let root = root.get();
                match root.shared.get() {
                    None => root.initial_width > 1,
                    Some(region) => region.tree.waiting() > 0 || region.has_free_slot(),
                }
            }
        }
    }

    /// This region's frame: its body (`task == false`) or one of its tasks.
    #[inline]
    fn frame(&self, task: bool) -> context::Frame {
        context::Frame::of(self, task)
    }

    /// Whether the current thread runs this region's body directly: the thread that
    /// opened it, not inside one of its tasks (`spawn`, `join`'s and `for_each`'s
    /// closures) nor inside a region nested in it. See
    /// [`integration::ScopeHooks::runs_body`](crate::integration::ScopeHooks::runs_body).
    #[inline]
    pub(crate) fn runs_body_hook(&self) -> bool {
        context::frame() == self.frame(false)
    }

    /// How the region's own thread is paid for (`own.rs`): the shared state's once
    /// it exists (grants change it there), else the state taken at entry.
    #[inline]
    fn own(&self) -> &OwnToken {
        self.shared.get().map_or(&self.own, |shared| &shared.own)
    }

    #[cfg(test)]
    pub(crate) fn shared_for_tests(&self) -> &Arc<Region> {
        self.shared()
    }

    fn shared(&self) -> &Arc<Region> {
        self.shared.get_or_init(|| {
            let tree = self.root.map(|root| root.get().shared().tree.clone());
            Region::new(
                self.registry,
                self.requested,
                self.initial_width,
                self.own.snapshot(),
                tree,
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
        let shared = self.shared();
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
        let _task = context::set_frame(self.frame(true));
        if self.requested == 1 || self.alone() {
            // Queuing `b` could not get it run sooner: run both here, `b` even if
            // `a` panicked, as on the queued path.
            let result_a = catch_unwind(AssertUnwindSafe(a));
            let result_b = catch_unwind(AssertUnwindSafe(b));
            return both(result_a, result_b);
        }
        let frame = self.frame(true);
        let (result_a, result_b) = self.shared().join(a, move || {
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
        let source = items.into_source();
        let len = source.len();
        let chunk = len.div_ceil(self.requested * 8).max(1);
        let chunks = len.div_ceil(chunk);
        let helpers = (self.requested - 1).min(chunks.saturating_sub(1));
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
            while start < len && self.alone() {
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
        let shared = self.shared();
        // SAFETY: for_each waits for every helper it did not cancel to be done before
        // `drain` goes out of scope (on every path: `armed` aborts otherwise); `drain`
        // is Sync (it captures Sync state only: F: Sync, Source: Sync, atomics, mutex).
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
