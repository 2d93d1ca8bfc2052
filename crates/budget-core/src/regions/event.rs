//! A park/wake primitive that cannot lose a wake-up for a condition written by the
//! rules below. (One writer breaks them on purpose: a `join`'s push to its lane, whose
//! missed wake costs parallelism only, since its joiner runs the half itself; see
//! `Region::join`.)
//!
//! Threads that wait inside a region (for a `join`'s other half, or for the scope's
//! spawned tasks) sleep on their region's `Event`. The protocol, in steps:
//!
//! 1. The waiter checks its condition; if true it returns without locking.
//! 2. It takes the lock, announces itself (`sleepers += 1`, SeqCst), then re-checks
//!    the condition and only then waits on the condition variable.
//! 3. The notifier first makes the condition true (a SeqCst write), then loads
//!    `sleepers` (SeqCst). Zero: nobody can be between step 2's announcement and its
//!    wait, so it returns without locking. Non-zero: it takes the lock and notifies.
//!
//! Steps 2 and 3 form a Dekker pair: in the SeqCst order either the notifier sees the
//! announcement (and, by taking the lock, waits until the waiter is either asleep or
//! past its re-check) or the waiter's re-check sees the condition. The common case, a
//! notify with nobody asleep, costs one fence and one load; a notifier whose
//! condition write was itself SeqCst needs no fence (`Event::notify_after_seqcst`).

use crate::sync::{fence, AtomicUsize, Condvar, Mutex, Ordering};

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Event {
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cond: Condvar,
}

impl Event {
    pub(crate) fn new() -> Self {
        Event {
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cond: Condvar::new(),
        }
    }

    /// Blocks until `ready()` returns true. A wake-up is guaranteed for state of
    /// `ready` that the notifier writes with SeqCst (or before a SeqCst fence); other
    /// state it reads (a lane's deque) is a hint.
    pub(crate) fn wait_until(&self, mut ready: impl FnMut() -> bool) {
        if ready() {
            return;
        }
        let mut guard = self.lock.lock();
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        while !ready() {
            guard = self.cond.wait(guard);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
    }

    /// Wakes every waiter whose condition may have become true. Call it after the
    /// write that makes the condition true.
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        self.notify_after_seqcst();
    }

    /// [`notify`](Self::notify) for a caller whose condition write was itself
    /// SeqCst (a SeqCst store or read-modify-write): the SeqCst order then pairs it
    /// with the waiter's announcement, and the fence is not needed (on x86 it is
    /// most of a notify's cost).
    #[inline]
    pub(crate) fn notify_after_seqcst(&self) {
        if self.sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let _guard = self.lock.lock();
        self.cond.notify_all();
    }
}
