//! [`Tree`]: the regions nested inside one outermost region, and how the threads that
//! hold the tree's tokens but have nothing to do help its nested regions.
//!
//! A region opened while the current thread runs the body or a task of region `P`
//! joins `P`'s tree; a region opened outside every region body and task starts a tree
//! of its own (its *root*). Every thread that runs in a tree holds a token of it:
//! the root's own thread and slots, the slots of regions that grew, or (nested
//! regions, width 1) the token of the task that opened them.
//!
//! Such a thread can be idle while a nested region is short of threads: waiting in
//! `help_until` (for a `join`'s other half, a `for_each`'s helpers, the end of a
//! scope), or a root slot whose worker left because the root's queue was empty. The
//! tree lets it help, as rayon's waiting workers steal nested work and oneTBB's
//! waiting threads join nested arenas:
//!
//! - A region that queues a task and has no free slot of its own *posts* itself on
//!   the tree's board (once: `on_board`), and reserves an idle slot of the root if
//!   there is one, sending a worker there. A region that asked for one core
//!   (`scope_with(1, ..)`) never posts: its tasks stay on its own thread. The root
//!   posts for its tasks, not for its `join` halves (a half nobody steals is run by
//!   its joiner; a root posted at every `join` while its worker took it off the
//!   board again paid a lock per `join`).
//! - A region that closes takes itself off the board (`unpost`): the board holds its
//!   state, which holds the tree.
//! - A thread waiting in `help_until` of any region of the tree, and a worker in a
//!   root slot whose queue is empty, run posted regions' tasks in place before they
//!   sleep or leave. (Only root slots: the root is open while any task of its tree
//!   runs, so the slot's token is held throughout; a nested region's slot could
//!   outlive its region, whose tokens are then back in the budget. A waiter is inside
//!   the region it waits in, so that region, and its token, outlive the help.)
//! - A region at width 1 with no free token runs its loops inline only while nobody
//!   of its tree can help (no waiter, no idle root slot): see `Scope::alone`. A
//!   `for_each` at width 1 first runs alone for about the cost of a wake
//!   (`clock.rs`): a helper woken for a shorter loop would arrive after its end.
//!
//! The argument (see also the crate's `README.md`):
//!
//! - **Never more threads running than tokens.** A helper runs the task in place,
//!   on the token it already holds and would otherwise leave unused while it sleeps or
//!   idles; no token moves, so conservation is untouched.
//! - **No lost work.** Posting is only a hint: a region always runs its own unclaimed
//!   tasks when it waits for them, so a missed or late helper costs parallelism, never
//!   progress.
//! - **No lost wake-up.** A poster writes `posted` (SeqCst) before it notifies the
//!   tree's event; a waiter announces itself in the event before it re-checks
//!   `posted` (the Event protocol). A leaving root worker decrements `active` before it
//!   reads `posted`, a poster writes `posted` before it tries to reserve a root slot
//!   (reading `active`): a Dekker pair, so one of them sees the other.
//! - **No deadlock.** Helping only runs a task on top of a waiting frame, as
//!   work-stealing fork-join does; the waiting frame resumes when that task returns.
//! - **O(1) per push.** Posting is one atomic load while the region is already on the
//!   board; finding the tree is one pointer read at region entry (the parent's root).

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use crate::regions::event::Event;
// The shim: loom's under `--cfg budget_loom`, as in `region.rs`. The board's lock is
// the shim's too: the critical section writes `posted`, a loom operation.
use crate::sync::{AtomicBool, AtomicUsize, Mutex, Ordering};

/// What the tree needs of a region (`region.rs` holds the one implementation): the
/// tree knows regions only through it, so the two files do not import each other.
pub(crate) trait Member: Send + Sync + Sized {
    /// Whether the region is posted on its tree's board.
    fn on_board(&self) -> &AtomicBool;
    /// The region's own `Arc`.
    fn arc(&self) -> Arc<Self>;
    /// Occupies a free helper slot of the region, if any.
    fn try_reserve(&self) -> bool;
    /// Sends a worker to a slot reserved with `try_reserve`.
    fn dispatch(&self);
    /// Whether the region has tasks nobody took yet.
    fn has_queued(&self) -> bool;
    /// Runs one of the region's tasks on this thread; false if none was found.
    fn run_one(&self) -> bool;
}

/// See the module docs.
pub(crate) struct Tree<R> {
    /// The outermost region; its idle slots are lent to nested regions.
    root: Weak<R>,
    /// Regions with queued tasks that had no free slot when they queued them.
    board: Mutex<VecDeque<Arc<R>>>,
    /// `board.len()`, readable without the lock.
    posted: AtomicUsize,
    /// Threads of the tree about to sleep or asleep in `help_until`.
    waiters: AtomicUsize,
    /// Where threads waiting inside any region of the tree sleep.
    pub(crate) event: Event,
}

impl<R: Member> Tree<R> {
    pub(crate) fn new(root: Weak<R>) -> Tree<R> {
        Tree {
            root,
            // Room for a few posted regions made with the tree, so that a `join`'s
            // first post does not allocate (`tests/alloc.rs`).
            board: Mutex::new(VecDeque::with_capacity(4)),
            posted: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            event: Event::new(),
        }
    }

    /// Threads of the tree waiting in `help_until` now (a hint, Relaxed: loops
    /// re-check it per chunk).
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.load(Ordering::Relaxed)
    }

    /// Whether any region is posted.
    pub(crate) fn has_posted(&self) -> bool {
        self.posted.load(Ordering::SeqCst) > 0
    }

    /// `region` queued a task and found no free slot of its own: post it, and send a
    /// worker to an idle slot of the root, if any.
    pub(crate) fn post(&self, region: &R) {
        let on_board = region.on_board();
        if !on_board.load(Ordering::SeqCst) && !on_board.swap(true, Ordering::SeqCst) {
            let mut board = self.board.lock();
            board.push_back(region.arc());
            // SeqCst: the Dekker pair with a leaving root worker (see the module docs).
            self.posted.store(board.len(), Ordering::SeqCst);
        }
        // SAFETY: `post` is called by a region that queues a task, so it is open;
        // the root is open while any region of its tree is (they run inside its
        // body or tasks), so its state is alive. No upgrade: no shared counter is
        // written on this path.
        let root = unsafe { &*self.root.as_ptr() };
        if !std::ptr::eq(root, region) && root.try_reserve() {
            root.dispatch();
        }
    }

    /// Runs one queued task of a posted region on this thread; false if none was
    /// found. Regions found empty leave the board.
    pub(crate) fn help_one(&self) -> bool {
        let rounds = self.posted.load(Ordering::SeqCst);
        for _ in 0..rounds {
            let region = {
                let mut board = self.board.lock();
                let region = board.pop_front();
                self.posted.store(board.len(), Ordering::SeqCst);
                region
            };
            let Some(region) = region else { return false };
            // Off the board, then look at its queue: a task push that saw it still on
            // the board queued before our store (SeqCst both), so the load below sees
            // that task. (A `join`'s lane push is not ordered so: a half missed here
            // is run by its joiner.)
            region.on_board().store(false, Ordering::SeqCst);
            if region.has_queued() {
                self.post_only(&region);
            }
            if region.run_one() {
                return true;
            }
        }
        false
    }

    fn post_only(&self, region: &Arc<R>) {
        if !region.on_board().swap(true, Ordering::SeqCst) {
            let mut board = self.board.lock();
            board.push_back(region.clone());
            self.posted.store(board.len(), Ordering::SeqCst);
        }
    }

    /// Takes a closing region off the board: the board holds its shared state, which
    /// holds the tree, so a region left there would keep both alive for good.
    pub(crate) fn unpost(&self, region: &R) {
        if region.on_board().swap(false, Ordering::SeqCst) {
            let mut board = self.board.lock();
            board.retain(|r| !std::ptr::eq(&**r, region));
            self.posted.store(board.len(), Ordering::SeqCst);
        }
    }

    /// Rewrites `posted` with SeqCst (the loom models' workaround, see
    /// `token/loom_tests.rs`).
    #[cfg(all(test, budget_loom))]
    pub(crate) fn prime(&self) {
        self.posted
            .store(self.posted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Counts the calling thread as idle (a waiter) while `f` runs.
    pub(crate) fn idle<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Undo<'a>(&'a AtomicUsize);
        impl Drop for Undo<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _undo = Undo(&self.waiters);
        f()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn until(condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A region posted on its tree's board (its pushes found no free slot) whose
    /// owner then ran the queued tasks itself does not stay on the board: the board
    /// holds the region's state, which holds the tree, a cycle that would leak both.
    #[test]
    fn closed_regions_leave_the_board() {
        // This test binary's budget: 2 tokens (no other unit test starts one).
        let _ = crate::pool::process::install(Some(2));
        assert_eq!(crate::stats().total, 2);
        let started = AtomicBool::new(false);
        let release = AtomicBool::new(false);
        let ran = AtomicUsize::new(0);
        let mut weak = None;
        let mut gone_at_close = false;
        crate::scope(|outer| {
            assert_eq!(outer.width(), 2);
            // The worker in the root's only slot is busy until released: nobody
            // helps, so nobody takes the nested region off the board but itself.
            outer.spawn(|_| {
                started.store(true, Ordering::SeqCst);
                until(|| release.load(Ordering::SeqCst));
            });
            until(|| started.load(Ordering::SeqCst));
            crate::scope(|inner| {
                assert_eq!(inner.width(), 1);
                for _ in 0..8 {
                    inner.spawn(|_| {
                        ran.fetch_add(1, Ordering::Relaxed);
                    });
                }
                weak = Some(Arc::downgrade(inner.shared_for_tests()));
            });
            let weak = weak.as_ref().expect("set in the region");
            gone_at_close = weak.upgrade().is_none();
            release.store(true, Ordering::SeqCst);
        });
        assert!(
            gone_at_close,
            "the closed region's state stayed on the board"
        );
        assert_eq!(ran.into_inner(), 8);
    }
}
