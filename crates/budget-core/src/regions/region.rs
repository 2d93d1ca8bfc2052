//! The shared state of one region: its task queue, its width and the threads that
//! serve it. `Scope` (in `scope.rs`) is the typed API on top.
//!
//! A region holds `width` tokens: one for the thread that opened it, `width - 1` as
//! *slots* for helper threads. A worker runs the region's tasks only while it
//! occupies a slot (`active` counts them), and gives the slot back before it parks.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};

use crate::sync::plain::Mutex;
use crossbeam_deque::{Injector, Steal};

use crate::pool::registry::Registry;
use crate::regions::context;
use crate::regions::job::{self, StackJob};
use crate::regions::lanes::Lanes;
use crate::regions::lent::{Lent, Loan};
use crate::tokens::own::OwnToken;
// The shim: loom atomics under `--cfg budget_loom` (`region_loom_tests.rs`).
use crate::pool::registry::Visit;
use crate::regions::tree::{Member, Tree};
use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use crate::tokens::token::Grower;

#[cfg(all(test, budget_loom))]
#[path = "region_loom_tests.rs"]
mod loom_tests;

/// A queued task's body (`job::erase`): it receives the region that runs it.
pub(crate) type Body = job::Body<Region>;

/// A queued unit of work. Whoever `take`s the body runs (or drops) it; the others
/// find `None`. `done` is set after the body returned.
pub(crate) struct Task {
    body: Mutex<Option<Body>>,
    pub(crate) done: AtomicBool,
}

pub(crate) struct Region {
    pub(crate) registry: &'static Registry,
    me: Weak<Region>,
    requested: usize,
    /// Tokens held by the region, its own thread's included. Only grows.
    width: AtomicUsize,
    /// Made at the first queued task: most regions only `join`, and an injector
    /// allocates a block of about 1 KiB, which glibc's thread cache does not keep
    /// (freed on a worker, it took the allocator's arena lock against the next
    /// region's allocation on the opener).
    queue: std::sync::OnceLock<Box<Injector<Arc<Task>>>>,
    /// `join`s' second halves: in the deques of the threads that hold a lane of the
    /// region (`lanes.rs`), else lent by address through the table (`lent.rs`).
    lanes: Lanes,
    lent: std::sync::OnceLock<Lent>,
    /// The region's key for `lanes.rs`: the address of its `RegionState`.
    key: usize,
    /// What the opener held before it took lane 0 (its lane and its lent-table
    /// mask), put back at the region's end; touched by the opener only (the thread
    /// that runs the region's body).
    owner_held: crate::sync::plain::Mutex<Option<(crate::regions::lanes::Held, u32)>>,
    /// Tasks in `queue` whose body was not taken yet. Raised before the push, so it
    /// may briefly run ahead of the queue, never behind it.
    queued: AtomicUsize,
    /// Spawned tasks not finished yet.
    pub(crate) pending: AtomicUsize,
    /// Slots occupied by helper threads; at most `width - 1`.
    active: AtomicUsize,
    /// The first panic of a spawned task, rethrown by the scope.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// The tree of regions this one is nested in (its own, for a root). Threads
    /// waiting inside the region sleep on the tree's event.
    pub(crate) tree: Arc<Tree<Region>>,
    /// Posted on the tree's board (see `tree.rs`).
    pub(crate) on_board: AtomicBool,
    /// Set by `close`: a worker lingering in a slot (`linger`) leaves.
    closed: AtomicBool,
    /// The root of its tree: its idle slots help nested regions (`tree.rs`).
    is_root: bool,
    /// Registered with the budget as a grower (the grant fell short, or the
    /// region's own thread runs without a token).
    grower: bool,
    /// How the region's own thread is paid for (`own.rs`); authoritative once the
    /// region's shared state exists.
    pub(crate) own: OwnToken,
    /// Open `ScopeHooks::with_demand` calls: the region wants its full request even with
    /// no task queued (an integration, such as a rayon pool, runs its work).
    external_demand: AtomicUsize,
    /// Told the new width each time the region grows (under the growers lock).
    listeners: Mutex<Vec<Listener>>,
}

/// A callback told the region's new width when it grows.
pub(crate) type Listener = Arc<dyn Fn(usize) + Send + Sync>;

impl Region {
    pub(crate) fn new(
        registry: &'static Registry,
        requested: usize,
        width: usize,
        own: OwnToken,
        tree: Option<Arc<Tree<Region>>>,
        key: usize,
    ) -> Arc<Self> {
        let grower = width < requested || own.owes();
        let shared = Arc::new_cyclic(|me| Region {
            registry,
            me: me.clone(),
            requested,
            width: AtomicUsize::new(width),
            queue: std::sync::OnceLock::new(),
            // A lane per thread that may lend at once (a region's threads hold its
            // tokens, so `requested` of them; more share lanes).
            lent: std::sync::OnceLock::new(),
            lanes: Lanes::new(requested.min(64)),
            key,
            owner_held: crate::sync::plain::Mutex::new(None),
            queued: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panic: Mutex::new(None),
            is_root: tree.is_none(),
            tree: tree.unwrap_or_else(|| Arc::new(Tree::new(me.clone()))),
            on_board: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            grower,
            own,
            external_demand: AtomicUsize::new(0),
            listeners: Mutex::new(Vec::new()),
        });
        if grower {
            registry.tokens.register(shared.clone());
        }
        shared
    }

    #[inline]
    pub(crate) fn width(&self) -> usize {
        self.width.load(Ordering::Relaxed)
    }

    /// Whether a grant could still reach the region (a hint: rebalance decides).
    #[inline]
    fn short(&self) -> bool {
        self.width() < self.requested || self.own.owes()
    }

    /// Queues a task and finds a thread for it: a free slot gets a worker; a region
    /// short of its request asks the budget for free tokens.
    pub(crate) fn push(&self, body: Body) -> Arc<Task> {
        let task = Arc::new(Task {
            body: Mutex::new(Some(body)),
            done: AtomicBool::new(false),
        });
        // SeqCst: the Dekker pair with a leaving worker (`serve`) and with a
        // releasing region (`Tokens::release` → `wants`).
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.queue
            .get_or_init(|| Box::new(Injector::new()))
            .push(task.clone());
        self.find_thread(true);
        task
    }

    /// After a task was queued (`task`) or a `join`'s half lent: a free slot gets a
    /// worker; a region short of its request asks the budget for free tokens; idle
    /// threads of the tree are told.
    #[inline]
    fn find_thread(&self, task: bool) {
        if self.try_reserve() {
            self.dispatch();
        } else {
            if self.grower && self.short() {
                self.registry.tokens.poke();
            }
            // No free slot: idle threads of the tree may help (see `tree.rs`), unless
            // the region asked for one core only. The root posts its tasks but not
            // its `join` halves: a half is run by its joiner if nobody steals it,
            // and posting the root at every `join` while its worker took it off the
            // board again cost a lock per `join`.
            if self.requested > 1 && (task || !self.is_root) {
                self.tree.post(self);
            }
        }
        // After the post: a waiter woken here sees it. No fence of its own: every
        // caller wrote what a waiter looks for with SeqCst (`queued`, the table's
        // loan), except a `join`'s lane push, which may go unseen (see `join`).
        self.tree.event.notify_after_seqcst();
    }

    /// Runs `a` on this thread while `b` is handed to the region's other threads
    /// (allocation-free: `b` stays on this stack), then runs `b` here too unless a
    /// thief took it, in which case it helps until `b` is done. `b` goes on this
    /// thread's deque of the region when it holds one (`lanes.rs`; the opener takes
    /// lane 0 at its first `join` from the body), else through the region's table
    /// (`lent.rs`). Returns both outcomes; no panic of `a` or `b` escapes.
    #[inline(always)]
    pub(crate) fn join<A, B, RA, RB>(
        &self,
        from_body: bool,
        a: A,
        b: B,
    ) -> (std::thread::Result<RA>, std::thread::Result<RB>)
    where
        A: FnOnce() -> RA,
        B: FnOnce() -> RB + Send,
        RB: Send,
    {
        /// Where `b` went.
        enum Out<'a> {
            Lane(crate::regions::lanes::Mine<'a>),
            Table(Loan),
        }
        let b = StackJob::new(b);
        // Armed before `b` is handed out: `find_thread` may start a thread (calling
        // the user's `thread_name`), and a panic must not unwind past `b` meanwhile.
        let armed = job::AbortOnUnwind;
        // SAFETY: `b` is neither moved nor dropped before it is taken back (and run
        // here) or done: every path below ends so, `a`'s panic is caught, and
        // anything else that could unwind meanwhile aborts (`armed`). A handed-out
        // `JobRef` runs once (popped or stolen; taken back or stolen).
        let mine = unsafe { b.as_job_ref() };
        let lane = match self.lanes.mine(self.key) {
            None if from_body => self.take_lane_zero(),
            lane => lane,
        };
        let out = match lane {
            Some(lane) => {
                // No fence after the push (rayon's deques have none either): on
                // x86 a full fence costs about a third of a `join`. Without it,
                // `find_thread`'s reads of the slots and sleepers may pass the
                // push, so a worker leaving its slot at that instant, a thread
                // falling asleep, a tree helper taking the region off the board, or
                // a grant racing this push (`grant` reads `has_queued` while we read
                // the old width) can miss this half. That costs parallelism for this
                // half only, never progress: its joiner pops it back and runs it
                // after `a`, and the next `join` sees the free slot or the token.
                // Every waiter's own condition (`done`, `pending`) is written with
                // SeqCst and a fenced notify, so no wait depends on seeing a push.
                lane.push(mine);
                Out::Lane(lane)
            }
            None => match self.table().lend(mine) {
                Some(loan) => Out::Table(loan),
                None => {
                    // The table's lane is full: run both here.
                    std::mem::forget(armed);
                    let result_a = catch_unwind(AssertUnwindSafe(a));
                    return (result_a, b.run_here());
                }
            },
        };
        self.find_thread(false);
        let result_a = catch_unwind(AssertUnwindSafe(a));
        let back = match out {
            Out::Table(loan) => self.table().take_back(loan),
            Out::Lane(lane) => loop {
                match lane.pop() {
                    Some(job) if job.is(&mine) => break true,
                    // Not expected: thieves take from the front, so once ours was
                    // stolen every older half was too, and newer ones were popped by
                    // their own `join`s. Were it to happen, the half is still this
                    // lane's, pushed by this thread below this frame: run it, and
                    // tell its waiter.
                    Some(older) => {
                        debug_assert!(false, "an older half left in a lane");
                        // SAFETY: popped once; its `join` waits for it below here.
                        unsafe { older.run() };
                        self.tree.event.notify();
                    }
                    None => break false,
                }
            },
        };
        let result_b = if back {
            b.run_here()
        } else {
            self.help_until(|| b.done());
            b.into_result()
        };
        std::mem::forget(armed);
        (result_a, result_b)
    }

    /// The region's table of loans, made on first use: most regions' joins go
    /// through their threads' deques, and a table is up to 32 KiB to zero.
    fn table(&self) -> &Lent {
        self.lent.get_or_init(|| Lent::new(self.requested.min(64)))
    }

    /// On the region's opener (a `join` from its body), at its first `join`: takes
    /// lane 0 (and a lent-table mask of the region's own) until the region ends
    /// ([`Region::end_on_owner`]).
    #[cold]
    fn take_lane_zero(&self) -> Option<crate::regions::lanes::Mine<'_>> {
        let mut held = self.owner_held.lock();
        // Taken once: a nested region's end puts this lane back in `HELD`, so a
        // later `join` of the body finds it with `mine`.
        debug_assert!(held.is_none(), "lane 0 taken twice");
        if held.is_some() {
            return None;
        }
        *held = Some((
            crate::regions::lanes::own(self.key),
            crate::regions::lent::enter_region(),
        ));
        drop(held);
        self.lanes.mine(self.key)
    }

    /// At the region's end, on its opener: puts back what it held before it took
    /// lane 0, if it took it.
    pub(crate) fn end_on_owner(&self) {
        if let Some((lane, mask)) = self.owner_held.lock().take() {
            crate::regions::lanes::put_back(lane);
            crate::regions::lent::restore(mask);
        }
    }

    /// Takes the body of `task` if nobody has yet: the caller runs or drops it.
    pub(crate) fn claim(&self, task: &Task) -> Option<Body> {
        let body = task.body.lock().take();
        if body.is_some() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        body
    }

    fn pop(&self) -> Option<Arc<Task>> {
        let queue = self.queue.get()?;
        loop {
            match queue.steal() {
                Steal::Success(task) => return Some(task),
                Steal::Empty => return None,
                Steal::Retry => {}
            }
        }
    }

    /// Whether tasks wait in the queue or halves are lent or pushed (SeqCst: read in
    /// the tree's Dekker pairs; the fence orders the lanes' loads after the caller's
    /// SeqCst write).
    pub(crate) fn has_queued(&self) -> bool {
        if self.queued.load(Ordering::SeqCst) > 0 || self.lent.get().is_some_and(Lent::any) {
            return true;
        }
        crate::sync::fence(Ordering::SeqCst);
        self.lanes.any()
    }

    /// Whether a helper slot is free (a hint for `Scope::alone`).
    pub(crate) fn has_free_slot(&self) -> bool {
        self.active.load(Ordering::Relaxed) + 1 < self.width.load(Ordering::Relaxed)
    }

    /// Runs one queued task or lent half, if there is one; false if there was none.
    pub(crate) fn run_one(&self) -> bool {
        let from_table = || self.lent.get().and_then(Lent::steal);
        if let Some(job) = self.lanes.steal().or_else(from_table) {
            let armed = job::AbortOnUnwind;
            // SAFETY: a steal hands each half out once; its joiner keeps the job
            // alive until it is done (`join`). The job catches its own panics.
            unsafe { job.run() };
            std::mem::forget(armed);
            self.tree.event.notify();
            return true;
        }
        while let Some(task) = self.pop() {
            if let Some(body) = self.claim(&task) {
                // Bodies catch every panic of user code; one escaping here would
                // leave the region waiting forever (a dead worker) or ending early.
                let armed = job::AbortOnUnwind;
                body(self);
                std::mem::forget(armed);
                // SeqCst, then notify: the Event protocol's "condition first".
                task.done.store(true, Ordering::SeqCst);
                self.tree.event.notify();
                return true;
            }
        }
        false
    }

    /// Runs the region's tasks on this thread until `done()` holds; with none queued,
    /// helps the regions nested in its tree (`tree.rs`), and sleeps when there is
    /// nothing to run.
    ///
    /// # Panics
    ///
    /// In a child process forked while this region had tasks on other threads:
    /// those threads do not exist in the child, so waiting would hang forever.
    pub(crate) fn help_until(&self, done: impl Fn() -> bool) {
        loop {
            if done() {
                return;
            }
            if self.run_one() || self.tree.help_one() {
                continue;
            }
            if !self.registry.is_current() {
                panic!(
                    "budget: this process was forked while a parallel region had tasks running \
                     on other threads, and those threads do not exist in the child. Fork outside \
                     budget regions (or call exec right after fork)."
                );
            }
            // Look again for about what a wake costs before sleeping: the thief of a
            // `join`'s half, or the last task, usually finishes sooner than a futex
            // wake would bring this thread back. The thread holds the region's token
            // while it waits (except an opener whose token is owed, a rare thread
            // more than the budget anyway), so spinning oversubscribes nothing.
            let ready = || done() || self.has_queued() || self.tree.has_posted();
            if spin_until(ready) {
                continue;
            }
            self.tree.idle(|| self.tree.event.wait_until(ready));
        }
    }

    /// Records the first panic of a spawned task.
    /// Later payloads are discarded without letting a panicking `Drop` escape (it
    /// would unwind out of the task: kill a worker, or end the region early).
    pub(crate) fn store_panic(&self, payload: Box<dyn Any + Send>) {
        let extra = {
            let mut slot = self.panic.lock();
            match *slot {
                None => {
                    *slot = Some(payload);
                    None
                }
                Some(_) => Some(payload),
            }
        };
        if let Some(extra) = extra {
            job::discard(extra);
        }
    }

    pub(crate) fn take_panic(&self) -> Option<Box<dyn Any + Send>> {
        self.panic.lock().take()
    }

    /// Called by the scope at exit, after `pending` reached 0: no grant reaches the
    /// region after this. Returns the final width; `own` is final too.
    pub(crate) fn close(&self) -> usize {
        // A lingering worker leaves at once: the region's tokens go back now.
        self.closed.store(true, Ordering::Release);
        self.tree.unpost(self);
        if self.grower {
            let me: Arc<dyn Grower> = self.arc();
            self.registry.tokens.unregister(&me);
        }
        self.width.load(Ordering::SeqCst)
    }

    pub(crate) fn arc(&self) -> Arc<Region> {
        self.me
            .upgrade()
            .expect("a region's shared state is alive while it is used")
    }

    /// Occupies a free helper slot, if any.
    #[inline]
    pub(crate) fn try_reserve(&self) -> bool {
        let mut active = self.active.load(Ordering::SeqCst);
        loop {
            if active + 1 >= self.width.load(Ordering::SeqCst) {
                return false;
            }
            match self.active.compare_exchange_weak(
                active,
                active + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(seen) => active = seen,
            }
        }
    }

    pub(crate) fn dispatch(&self) {
        self.registry.dispatch(self.arc());
    }
}

impl Visit for Region {
    /// A worker's visit: it arrives holding a reserved slot, runs tasks until the
    /// queue is empty (and, in a root slot, the tree's board: `tree.rs`), then gives
    /// the slot back before returning to park.
    fn serve(self: Arc<Self>) {
        let _in_region = context::enter();
        // A lane for this visit, if one is free: this worker's joins push there.
        let _lane = self.lanes.claim(self.key);
        loop {
            // Only the root's slots help the tree: the root stays open while any
            // region of its tree has a task running, so the slot's token is held for
            // as long as the helped task runs. (A slot of a nested region could
            // outlive that region, whose tokens are then back in the budget.)
            while self.run_one() || (self.is_root && self.tree.help_one()) {}
            // Look again for about what a wake costs (5 µs) before leaving: a `join`
            // that lends its next half within that time would otherwise pay for
            // waking a parked thread. The slot's token is the region's until the
            // region closes, so waiting in it oversubscribes nothing; a closing
            // region sends it away at once (`closed`).
            if self.linger() {
                continue;
            }
            // Leave first, then look once more (SeqCst both): a task pushed or posted
            // by a thread that saw every slot taken is seen here, or that thread saw
            // our slot free and dispatched a worker itself.
            self.active.fetch_sub(1, Ordering::SeqCst);
            let work = self.has_queued() || (self.is_root && self.tree.has_posted());
            if !work || !self.try_reserve() {
                return;
            }
        }
    }
}

/// Spins for about [`wake_ticks`](crate::regions::clock::wake_ticks) (a few hundred
/// ns between looks) until `ready()` holds: true if it did.
#[inline]
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let pause = || (0..32).for_each(|_| std::hint::spin_loop());
    crate::regions::clock::spin_until(crate::regions::clock::after_wakes(1), ready, pause)
}

impl Region {
    /// Waits in the slot, looking for work, for about
    /// [`wake_ticks`](crate::regions::clock::wake_ticks): true if work came. A
    /// closing region sends the worker away at once, its tokens going back (`closed`:
    /// Acquire pairs with `close`'s Release).
    fn linger(&self) -> bool {
        let closed = || self.closed.load(Ordering::Acquire);
        spin_until(|| closed() || self.has_queued() || (self.is_root && self.tree.has_posted()))
            && !closed()
    }

    /// Declares demand that is not in the task queue while `f` runs, telling
    /// `listener` each new width. See `ScopeHooks::with_demand`.
    pub(crate) fn with_demand<R>(&self, listener: Listener, f: impl FnOnce() -> R) -> R {
        struct Undo<'a>(&'a Region, &'a Listener);
        impl Drop for Undo<'_> {
            fn drop(&mut self) {
                let (shared, listener) = (self.0, self.1);
                shared
                    .listeners
                    .lock()
                    .retain(|l| !Arc::ptr_eq(l, listener));
                shared.external_demand.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.listeners.lock().push(listener.clone());
        // SeqCst, then poke: the demand side of the Dekker pair with `release`.
        self.external_demand.fetch_add(1, Ordering::SeqCst);
        let _undo = Undo(self, &listener);
        if self.grower && self.short() {
            self.registry.tokens.poke();
        }
        f()
    }
}

impl Grower for Region {
    fn wants(&self) -> usize {
        let own = usize::from(self.own.owes());
        if !self.has_queued() && self.external_demand.load(Ordering::SeqCst) == 0 {
            return own;
        }
        own + self
            .requested
            .saturating_sub(self.width.load(Ordering::SeqCst))
    }

    fn grant(&self, mut n: usize) {
        // The first token pays for the region's own thread (`own.rs`).
        if n > 0 && self.own.repay() {
            n -= 1;
            if n == 0 {
                return;
            }
        }
        let width = self.width.fetch_add(n, Ordering::SeqCst) + n;
        for listener in self.listeners.lock().iter() {
            // A listener runs on the releasing thread, deep inside `release`: its
            // panic must not unwind through the budget's hand-off (or into a `join`
            // that has a task queued). Report and go on.
            if catch_unwind(AssertUnwindSafe(|| listener(width))).is_err() {
                tracing::error!("budget: an on_grow callback of ScopeHooks::with_demand panicked");
            }
        }
        for _ in 0..n {
            if !self.has_queued() || !self.try_reserve() {
                break;
            }
            self.dispatch();
        }
    }
}

impl Member for Region {
    fn on_board(&self) -> &AtomicBool {
        &self.on_board
    }
    fn arc(&self) -> Arc<Region> {
        Region::arc(self)
    }
    fn try_reserve(&self) -> bool {
        Region::try_reserve(self)
    }
    fn dispatch(&self) {
        Region::dispatch(self)
    }
    fn has_queued(&self) -> bool {
        Region::has_queued(self)
    }
    fn run_one(&self) -> bool {
        Region::run_one(self)
    }
}
