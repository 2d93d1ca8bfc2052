//! [`RegionState`]: a region's state from its entry to its exit, the one place a
//! region is entered. [`scope_with`](crate::scope_with) holds one for its
//! [`Scope`](crate::Scope) (which adds the tasks) and closes it; an integration that
//! cannot pass a closure (a `with` block of another language, a C caller) holds one
//! through its guard, [`integration::OpenRegion`](crate::integration::OpenRegion),
//! which closes it when dropped.
//!
//! At entry: the request (capped at the total; an outermost region on a foreign
//! rayon worker at its share), the region's own thread paid for (`own.rs`), `width =
//! 1 + what is free` taken without waiting, the region counted in `stats()` with its
//! narrowing cause, a `budget.region` tracing span, and the thread marked as inside a
//! region. At exit: the shared state closed (no grant after it), the span's
//! `regrown`, and exactly the tokens held given back (`final width - 1` plus the own
//! thread's share).

use std::any::Any;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::pool::process;
use crate::pool::registry::Registry;
use crate::regions::context;
use crate::regions::job::{self, Outliving};
use crate::regions::region::Region;
use crate::tokens::own::OwnToken;

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

/// A region entered without a closure: its tokens are taken at entry, with the rule
/// of [`scope_with`](crate::scope_with) (never waiting; nested regions shrink), and
/// given back when it is dropped. It has no tasks: for code that runs its own
/// threads at [`width`](OpenRegion::width) (a native library, a pool of another
/// language), or marks that its thread is inside a region.
///
/// Not `Send`: a region ends on the thread that entered it (it marks that thread).
/// Regions opened on one thread may end in any order (their tokens are unordered):
/// when the outermost one ends first, the thread's own token, if it held one, stays
/// held until the thread's last region ends, since the thread still runs inside one
/// (a thread that found no token free runs unpaid, as in any region).
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// use budget::integration::OpenRegion;
///
/// let total = budget::stats().total;
/// let outer = OpenRegion::enter(usize::MAX);
/// assert_eq!(outer.width(), total); // nothing else runs
/// assert_eq!(budget::stats().in_use, total);
/// let inner = OpenRegion::enter(usize::MAX);
/// assert_eq!(inner.width(), 1); // the outer one holds every token
/// drop(outer); // any order
/// assert_eq!(budget::stats().in_use, 1); // the thread, still inside `inner`
/// drop(inner);
/// assert_eq!(budget::stats().in_use, 0);
/// ```
///
/// It stays on its thread:
///
/// ```compile_fail,E0277
/// let open = budget_core::integration::OpenRegion::enter(2);
/// std::thread::spawn(move || drop(open));
/// ```
pub struct OpenRegion {
    state: RegionState,
}

/// A region's state from its entry to its exit, without a `Drop` of its own: the
/// one type `scope_with` (which closes it exactly once) and [`OpenRegion`] (which
/// closes it when dropped) are built on. Apart from the guard, as `lock_api`'s raw
/// lock is apart from its guard: a drop glue that only checked "closed already?"
/// was an out-of-line call on every region entry (+1 ns).
pub(crate) struct RegionState {
    registry: &'static Registry,
    requested: usize,
    /// The width taken at entry; the shared state's, which only grows, once it exists.
    initial_width: usize,
    /// How the region's own thread is paid for (`own.rs`), until the shared state
    /// exists; then `Region::own` is.
    own: OwnToken,
    /// Made on the first task (or a demand): a region that spawns nothing allocates
    /// nothing. Dropped by `close` (`ManuallyDrop`: the state has no drop glue, which
    /// was an out-of-line call at the end of every region).
    shared: ManuallyDrop<OnceLock<Arc<Region>>>,
    /// The outermost region of this region's tree (`tree.rs`); `None` when this is
    /// it, and for a region entered through the public [`enter`](OpenRegion::enter)
    /// (which could outlive the scope it was entered in). Set by `scope_with`, whose
    /// region runs inside the root's body or tasks, so the root outlives it.
    root: Option<Outliving<RegionState>>,
    /// The region's [`RegionId`](crate::integration::RegionId), 0 until asked for.
    id: AtomicUsize,
    /// The `budget.region` span, entered while the region is open; dropped by
    /// `close`, as `shared`.
    span: ManuallyDrop<tracing::Span>,
    /// `Sync` (a `Scope` is shared with its tasks) but not `Send`: the region marked
    /// its thread as inside a region, and unmarks it at exit.
    not_send: PhantomData<std::sync::MutexGuard<'static, ()>>,
}

impl OpenRegion {
    /// Enters a region of at most `max` cores (0 is taken as 1) on this thread: its
    /// own thread plus what is free, now. See [`scope_with`](crate::scope_with).
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// let open = budget::integration::OpenRegion::enter(2);
    /// assert!(open.width() >= 1 && open.width() <= open.requested());
    /// ```
    pub fn enter(max: usize) -> OpenRegion {
        let mut state = RegionState::enter_at(max, false);
        // Before the caller places it: an owed region's state then has a stale key,
        // which no thread holds a lane of. Harmless, as a public region has no tasks
        // and no `join` (its state exists only to have its owed token repaid).
        state.register();
        OpenRegion { state }
    }

    /// The cores this region may use now, its own thread included: at least 1, at
    /// most [`requested`](OpenRegion::requested); it only grows while the region is
    /// open (a grant while it has demand).
    ///
    /// # Examples
    ///
    /// ```
    /// let open = budget_core::integration::OpenRegion::enter(1);
    /// assert_eq!(open.width(), 1);
    /// ```
    #[inline]
    pub fn width(&self) -> usize {
        self.state.width()
    }

    /// The width asked for: `max`, capped at the budget's total, at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// let open = budget_core::integration::OpenRegion::enter(0);
    /// assert_eq!(open.requested(), 1);
    /// ```
    pub fn requested(&self) -> usize {
        self.state.requested()
    }

    /// Whether the region runs one thread more than the budget: its thread was outside
    /// every region and found no token free (its token is owed, and the first one
    /// released pays it).
    ///
    /// # Examples
    ///
    /// ```
    /// let open = budget_core::integration::OpenRegion::enter(1);
    /// assert!(!open.overcommitted()); // a token was free
    /// ```
    pub fn overcommitted(&self) -> bool {
        self.state.own().overcommitted()
    }
}

impl Drop for OpenRegion {
    /// The region's end: its tokens go back. A region without tasks has no panic to
    /// hand on.
    fn drop(&mut self) {
        // SAFETY: the one close of the state; a dropped guard does not use it again.
        if let Some(payload) = unsafe { self.state.close() } {
            job::discard(payload);
        }
    }
}

impl std::fmt::Debug for OpenRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenRegion")
            .field("requested", &self.requested())
            .field("width", &self.width())
            .finish_non_exhaustive()
    }
}

// The state has no drop glue (see its docs): a field that needs dropping must be
// dropped by `close`.
const _: () = assert!(!std::mem::needs_drop::<RegionState>());

impl RegionState {
    /// [`OpenRegion::enter`] for `scope_with`: the region joins the tree of the
    /// region whose frame is current, and has a lane mask of its own. The caller
    /// calls [`register`](RegionState::register) once the state is in place
    /// (returned straight into the caller's frame: no copy).
    #[inline(always)]
    pub(crate) fn enter_in_scope(max: usize) -> RegionState {
        Self::enter_at(max, true)
    }

    #[inline(always)]
    fn enter_at(max: usize, in_scope: bool) -> RegionState {
        let registry = process::global();
        let tokens = &registry.tokens;
        let nested = context::in_region();
        let requested = if nested {
            max.clamp(1, tokens.total())
        } else {
            foreign_share(max, tokens.total())
        };
        let own = OwnToken::take(nested, tokens);
        // Free tokens first; in a process sharing an outside budget, outside ones
        // that can be had at once (a region never waits: one non-blocking try per
        // token).
        let width = 1 + tokens.take(requested - 1);
        tokens
            .counters
            .note_region(width < requested, own.overcommitted());
        if width < requested && (!nested || tokens.shares()) {
            // A cause other than the enclosing regions is possible (`Stats`).
            tokens.note_cause(nested);
        }
        context::enter_region();
        RegionState {
            registry,
            requested,
            initial_width: width,
            own,
            shared: ManuallyDrop::new(OnceLock::new()),
            root: if in_scope {
                root_of_parent(context::frame())
            } else {
                None
            },
            id: AtomicUsize::new(0),
            // Made by `register`, once the state is in its place.
            span: ManuallyDrop::new(tracing::Span::none()),
            not_send: PhantomData,
        }
    }

    /// Called right after entry, once the state is in its place: enters the region's
    /// tracing span, and registers a region whose own thread runs unpaid, so that
    /// the first token freed pays for it (rare: an outside thread that found every
    /// token taken; the state's address is its key).
    ///
    /// The span is made here, not at entry: a span made first and then moved into
    /// the state was a copy that stalled on its fresh stores (region entry +1.5 ns).
    /// If a subscriber panics making the span, the region is closed (its tokens go
    /// back, its thread is unmarked) before the panic goes on.
    #[inline(always)]
    pub(crate) fn register(&mut self) {
        if tracing::level_enabled!(tracing::Level::TRACE) {
            self.start_span();
        }
        if self.own.owes() {
            self.shared();
        }
    }

    /// See [`register`](RegionState::register).
    #[cold]
    #[inline(never)]
    fn start_span(&mut self) {
        let (requested, width) = (self.requested, self.initial_width);
        match catch_unwind(|| entered_span(requested, width)) {
            Ok(span) => *self.span = span,
            Err(payload) => {
                // SAFETY: the state's one close: the panic is resumed, and the frame
                // that owns the state (`scope_with`'s, `OpenRegion::enter`'s) unwinds
                // without using it (it has no drop glue; the guard is not made yet).
                if let Some(extra) = unsafe { self.close() } {
                    job::discard(extra);
                }
                resume_unwind(payload);
            }
        }
    }

    /// See [`OpenRegion::width`].
    #[inline]
    pub(crate) fn width(&self) -> usize {
        self.shared
            .get()
            .map_or(self.initial_width, |shared| shared.width())
    }

    /// See [`OpenRegion::requested`].
    #[inline]
    pub(crate) fn requested(&self) -> usize {
        self.requested
    }

    /// Runs `f` while the region asks for its full request with no task queued,
    /// telling `on_grow` each new width (`ScopeHooks::with_demand`).
    pub(crate) fn with_demand<R>(
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
    #[inline]
    pub(crate) fn alone(&self) -> bool {
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
    pub(crate) fn frame(&self, task: bool) -> context::Frame {
        context::Frame::of(self, task)
    }

    /// The region's id: numbered on first ask, from a process-wide counter (a region
    /// nobody asks costs one zero stored at entry). Kept here, not in the shared
    /// state: budget-rayon asks it at every `install`, which would otherwise make
    /// the shared state (four allocations) for a region that has no tasks.
    pub(crate) fn id(&self) -> std::num::NonZeroUsize {
        // Relaxed both: a number, no data published with it; the compare-exchange
        // keeps the first number given if two threads ask at once.
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let mut id = self.id.load(Ordering::Relaxed);
        if id == 0 {
            let fresh = NEXT.fetch_add(1, Ordering::Relaxed);
            id = match self
                .id
                .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => fresh,
                Err(first) => first,
            };
        }
        std::num::NonZeroUsize::new(id).expect("region ids start at 1 and do not wrap")
    }

    /// How the region's own thread is paid for (`own.rs`): the shared state's once
    /// it exists (grants change it there), else the state taken at entry.
    #[inline]
    fn own(&self) -> &OwnToken {
        self.shared.get().map_or(&self.own, |shared| &shared.own)
    }

    /// The region's shared state (task queue, slots, growth), made on first use.
    #[inline]
    pub(crate) fn shared(&self) -> &Arc<Region> {
        self.shared.get_or_init(|| {
            let tree = self.root.map(|root| root.get().shared().tree.clone());
            Region::new(
                self.registry,
                self.requested,
                self.initial_width,
                self.own.snapshot(),
                tree,
                // The key of its lanes: this state's address, as its frames have it.
                std::ptr::from_ref(self) as usize,
            )
        })
    }

    /// Waits for the region's tasks (running queued ones here meanwhile); `None` when
    /// it never had any. `Err` when waiting panicked (a forked child: `help_until`).
    #[inline]
    pub(crate) fn wait_for_tasks(&self) -> Option<std::thread::Result<()>> {
        self.shared.get().map(|shared| {
            catch_unwind(AssertUnwindSafe(|| {
                shared.help_until(|| shared.pending.load(Ordering::SeqCst) == 0)
            }))
        })
    }

    /// Ends the region after its tasks: no grant reaches it after this, and every
    /// token it holds goes back; the state's shared part and span are dropped.
    /// Returns the first panic of its tasks, if any. (By reference, not by value: a
    /// move of the state is a copy that stalls on its fresh stores.)
    ///
    /// # Safety
    ///
    /// Called at most once per state, which is not used after it (`scope_with` and
    /// [`OpenRegion`]'s drop each call it once, last). If it unwinds (it should not:
    /// see `Leave`), the shared part and span are leaked, never dropped twice.
    #[inline(always)]
    pub(crate) unsafe fn close(&mut self) -> Option<Box<dyn Any + Send>> {
        /// Unmarks the thread and exits the span, also if giving the tokens back
        /// panics (a grant may start a thread, calling the user's `thread_name`).
        struct Leave<'a>(&'a tracing::Span);
        impl Drop for Leave<'_> {
            #[inline]
            fn drop(&mut self) {
                context::leave_region();
                self.0.with_subscriber(|(id, dispatch)| dispatch.exit(id));
            }
        }
        let leave = Leave(&self.span);
        let final_width = self.shared.get().map_or(self.initial_width, |shared| {
            shared.end_on_owner();
            shared.close()
        });
        // Final now: grants stopped at `close` (or never started: no shared state).
        let own = self.own();
        if final_width > self.initial_width {
            self.span
                .record("regrown", final_width - self.initial_width);
        }
        let mut own_back = own.returned_at_exit();
        if own_back == 1 && context::others_open() {
            // Regions opened after this one on this thread are still open (an
            // `OpenRegion` may end in any order): the thread's token stays with it.
            context::keep_own_token(self.registry);
            own_back = 0;
        }
        if self.registry.is_current() {
            self.registry.tokens.release(final_width - 1 + own_back);
        }
        let panic = self.shared.get().and_then(|shared| shared.take_panic());
        drop(leave);
        // SAFETY: the one close of this state (the caller's contract), which is not
        // used after: each field is dropped once, here.
        unsafe {
            ManuallyDrop::drop(&mut self.shared);
            ManuallyDrop::drop(&mut self.span);
        }
        panic
    }
}

/// The `budget.region` span, entered for the region's life and exited in
/// `close` (a `Span`, not its guard: the guard is not `Sync`, and a `Scope` is
/// shared with its tasks). Out of line: only a subscriber that wants it pays.
#[cold]
#[inline(never)]
fn entered_span(requested: usize, width: usize) -> tracing::Span {
    let span = tracing::trace_span!(
        "budget.region",
        requested,
        width,
        regrown = tracing::field::Empty
    );
    span.with_subscriber(|(id, dispatch)| dispatch.enter(id));
    span
}

/// The root of the tree that the region running `frame` belongs to (`None` outside
/// every region: a new region is a root).
#[inline]
fn root_of_parent(frame: context::Frame) -> Option<Outliving<RegionState>> {
    // SAFETY: a frame names the `RegionState` of a `scope_with` region, alive while
    // the frame is current (`Frame`: frames are set only by `scope_with` and its
    // tasks); the root of its tree outlives every region nested in it, so the one
    // `scope_with` is opening.
    let parent = unsafe { Outliving::<RegionState>::from_addr(frame.scope) }?;
    Some(parent.get().root.unwrap_or(parent))
}
