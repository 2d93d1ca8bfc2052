//! What the current thread is doing, in two thread-locals:
//!
//! - **In a region or not** (a depth counter): inside a region the thread's running is
//!   already paid for by a token (as the thread that opened it, as a worker in one of
//!   its slots, or as a thread an integration marked with [`RegionThread`]), so a region
//!   it opens takes no token for the thread itself. A counter, not a saved flag, so
//!   that guards dropped in any order (an integration's guards can be) restore it.
//! - **The innermost frame** ([`Frame`]): which region's body, or which region's task,
//!   runs on this thread right now. Frames nest strictly (each is set and restored by
//!   one function call of budget), so a saved value restores them.
//!
//! And, rarely, **a token the thread keeps**: the outermost region of a thread holds
//! the thread's own token (`own.rs`). Regions entered without a closure
//! ([`OpenRegion`](crate::integration::OpenRegion), a Python `with` block) may end in
//! any order; when the outermost one ends while others opened after it are still
//! open, the thread is still inside a region, so its token stays with the thread
//! ([`keep_own_token`]) and goes back when the thread leaves its last region, or
//! when the thread ends. A bit of the depth counter says a token is kept, so the
//! check at every region's end is one compare of the value just written.

use std::cell::Cell;

use crate::pool::registry::Registry;

thread_local! {
    /// How many region guards are alive on this thread (inside a region when > 0),
    /// plus [`KEPT_BIT`] while the thread keeps a token.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The budget whose token this thread keeps (see the module docs); `None` almost
    /// always.
    static KEPT: Cell<Option<&'static Registry>> = const { Cell::new(None) };
    /// Releases a token still kept when the thread ends (registered by the first
    /// [`keep_own_token`] of the thread only: no cost for the others).
    static KEPT_AT_EXIT: KeptAtExit = const { KeptAtExit };
    /// The innermost region body or task running on this thread.
    static FRAME: Cell<Frame> = const { Cell::new(Frame::NONE) };
}

/// Set in `DEPTH` while the thread keeps a token: the count of guards is the rest.
const KEPT_BIT: usize = 1 << (usize::BITS - 1);

/// Whether the current thread is inside a region.
#[inline]
pub(crate) fn in_region() -> bool {
    // The count, without `KEPT_BIT`: shifted out.
    DEPTH.with(Cell::get) << 1 != 0
}

/// Whether another region guard than the caller's own is alive on this thread.
#[inline]
pub(crate) fn others_open() -> bool {
    DEPTH.with(Cell::get) & !KEPT_BIT > 1
}

/// Keeps the thread's own token, held by an outermost region that ends while
/// regions opened after it on this thread are still open: it goes back when the
/// thread leaves its last region ([`leave_region`], a guard's drop), or when the
/// thread ends.
pub(crate) fn keep_own_token(registry: &'static Registry) {
    // The thread is ending (its thread-locals are being destroyed: a region dropped
    // by another thread-local's destructor): give the token back now.
    if KEPT_AT_EXIT.try_with(|_| {}).is_err() {
        if registry.is_current() {
            registry.tokens.release(1);
        }
        return;
    }
    KEPT.with(|kept| {
        // Only an outermost region holds the thread's token, and while one is kept
        // the thread is inside a region, so every region it opens is nested.
        debug_assert!(kept.get().is_none(), "a thread keeps one token at most");
        kept.set(Some(registry));
    });
    DEPTH.with(|d| d.set(d.get() | KEPT_BIT));
}

/// See `KEPT_AT_EXIT`.
struct KeptAtExit;

impl Drop for KeptAtExit {
    fn drop(&mut self) {
        // `KEPT` is a `const` cell without a destructor: readable here. (`try_with`
        // all the same: a thread-local read must not panic in a destructor.)
        let _ = KEPT.try_with(|kept| {
            if let Some(registry) = kept.take() {
                if registry.is_current() {
                    registry.tokens.release(1);
                }
            }
        });
    }
}

/// One guard fewer; when the last goes and a token is kept, the token goes back.
#[inline]
fn leave() {
    let depth = DEPTH.with(|d| {
        let depth = d.get() - 1;
        d.set(depth);
        depth
    });
    if depth == KEPT_BIT {
        release_kept();
    }
}

/// Out of line: a rare path, off the hot one of every region's end.
#[cold]
#[inline(never)]
fn release_kept() {
    DEPTH.with(|d| d.set(0));
    if let Some(registry) = KEPT.with(Cell::take) {
        // A forked child's copy of the parent's budget takes nothing back.
        if registry.is_current() {
            registry.tokens.release(1);
        }
    }
}

/// Marks the current thread as inside a region until the guard drops (on unwind too).
#[inline]
pub(crate) fn enter() -> Guard {
    DEPTH.with(|d| d.set(d.get() + 1));
    Guard {
        _not_send: std::marker::PhantomData,
    }
}

/// Marks the current thread as inside a region until [`leave_region`]: for a
/// region's state that is not `Send` itself (`RegionState`), which calls both.
#[inline]
pub(crate) fn enter_region() {
    DEPTH.with(|d| d.set(d.get() + 1));
}

/// Undoes one [`enter_region`], on the thread that called it.
#[inline]
pub(crate) fn leave_region() {
    leave();
}

/// Leaves what [`enter`] entered, on the thread that entered it (not `Send`).
#[derive(Debug)]
pub(crate) struct Guard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        leave();
    }
}

/// The innermost region activity on a thread: the body of the region at `scope`
/// (`task == false`), or a task of it (`task == true`); `scope` is null outside every
/// region's body and task.
///
/// `scope` is the address of the region's `RegionState` (the state its `Scope` holds;
/// 0 for none), alive while the frame is current: a frame is set only by
/// `scope_with` and its tasks, while that region's body or one of its tasks runs, and
/// the region outlives both. An address, not a pointer, so that a task body can carry
/// its frame to the thread that runs it; `open.rs` reads it back as a `RegionState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) scope: usize,
    pub(crate) task: bool,
}

impl Frame {
    pub(crate) const NONE: Frame = Frame {
        scope: 0,
        task: false,
    };

    /// The frame of the region whose state is `region` (a `RegionState`: generic only
    /// so that this module imports none): its body, or a task of it.
    #[inline]
    pub(crate) fn of<T>(region: &T, task: bool) -> Frame {
        Frame {
            scope: std::ptr::from_ref(region) as usize,
            task,
        }
    }
}

/// The current thread's innermost frame.
#[inline]
pub(crate) fn frame() -> Frame {
    FRAME.with(Cell::get)
}

/// Makes `frame` the current one until the returned guard drops.
#[inline]
pub(crate) fn set_frame(frame: Frame) -> FrameGuard {
    FrameGuard {
        previous: FRAME.with(|f| f.replace(frame)),
    }
}

/// Restores the previous frame on drop (frames nest strictly: see the module docs).
#[derive(Debug)]
pub(crate) struct FrameGuard {
    previous: Frame,
}

impl FrameGuard {
    /// The frame that was current before, restored on drop.
    #[inline]
    pub(crate) fn previous(&self) -> Frame {
        self.previous
    }
}

impl Drop for FrameGuard {
    #[inline]
    fn drop(&mut self) {
        FRAME.with(|f| f.set(self.previous));
    }
}

/// Marks the current thread as working inside a region, for threads that an
/// integration runs on a region's tokens (a rayon pool's workers): regions opened on
/// it take no token for the thread itself, as on budget's own workers.
///
/// Use it only on threads whose running is already paid for by tokens, for example a
/// pool that is only ever given work by a region holding a token per thread. Guards
/// may be dropped in any order.
///
/// # Examples
///
/// ```
/// # use budget_core as budget;
/// let _marked = budget::integration::RegionThread::enter();
/// // A region opened here takes no token for this thread.
/// budget::scope(|s| assert!(s.width() >= 1));
/// assert_eq!(budget::stats().in_use, 0);
/// ```
#[derive(Debug)]
#[must_use = "the thread is marked only while the guard lives"]
pub struct RegionThread {
    _guard: Guard,
}

impl RegionThread {
    /// Marks the current thread until the returned guard is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// use budget::integration::RegionThread;
    ///
    /// let outer = RegionThread::enter();
    /// let inner = RegionThread::enter();
    /// drop(outer); // any order: the thread stays marked while a guard lives
    /// drop(inner);
    /// ```
    pub fn enter() -> RegionThread {
        RegionThread { _guard: enter() }
    }

    /// Marks the current thread for the rest of its life: for the start handler of a
    /// dedicated pool thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # use budget_core as budget;
    /// std::thread::spawn(|| {
    ///     budget::integration::RegionThread::mark_for_life();
    ///     budget::scope(|s| assert!(s.width() >= 1)); // takes no token for this thread
    /// })
    /// .join()
    /// .unwrap();
    /// ```
    pub fn mark_for_life() {
        DEPTH.with(|d| d.set(d.get() + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_dropped_out_of_order_restore_the_state() {
        assert!(!in_region());
        let first = enter();
        let second = enter();
        drop(first);
        assert!(in_region(), "the second guard still lives");
        drop(second);
        assert!(!in_region(), "both guards dropped: outside again");
    }

    #[test]
    fn frames_restore_when_nested() {
        let a = Frame {
            scope: 8,
            task: false,
        };
        let b = Frame { task: true, ..a };
        let ga = set_frame(a);
        {
            let _gb = set_frame(b);
            assert_eq!(frame(), b);
        }
        assert_eq!(frame(), a);
        drop(ga);
        assert_eq!(frame(), Frame::NONE);
    }
}
