//! [`Lanes`]: per-thread deques of a region's `join` halves, the fast path of
//! `join` (rayon's model, kept per region): a thread that holds a lane of the region
//! pushes its half at the back of its own deque with plain stores and pops it back,
//! and the region's other threads steal the oldest half from the front. A thread
//! without a lane of the region (a tree helper running one of its tasks, more
//! threads than lanes) lends through the region's table instead (`lent.rs`).
//!
//! Who holds which lane, recorded per thread (`HELD_KEY`, `HELD_INDEX`: the region's
//! key and the lane):
//!
//! - lane 0: the thread that opened the region, from its first `join` to the
//!   region's end ([`own`]; `Region::join` takes it, `RegionState`'s exit puts back
//!   what the thread held before: a region that never joins pays nothing);
//! - lanes 1..: a worker while it serves the region ([`Claim`], taken with a
//!   compare-and-swap per visit and given back when the worker leaves).
//!
//! A lane's deque is empty whenever its holder is not inside a `join` of the region:
//! every `join` takes its half back, or waits for the thief that took it, before it
//! returns. So a lane given back holds no half, and the next holder finds it empty.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crossbeam_deque::{Steal, Stealer, Worker};

use crate::regions::job::JobRef;

thread_local! {
    /// The lane this thread holds: the region's key (0 for none) and the lane's
    /// index. Two cells, not a pair: a 16-byte value copied right after its two
    /// 8-byte stores stalls the store buffer (region entry +4 ns).
    static HELD_KEY: Cell<usize> = const { Cell::new(0) };
    static HELD_INDEX: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread is registered with crossbeam's epoch collector, which a
    /// deque's pops and steals pin.
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Registers this thread with crossbeam's epoch collector, once: its first pin
/// allocates the thread's record (freed at thread exit). Done when the thread first
/// holds a lane, so that no `join` pays it (`tests/alloc.rs`).
#[inline]
fn register() {
    REGISTERED.with(|registered| {
        if !registered.replace(true) {
            drop(crossbeam_epoch::pin());
        }
    });
}

/// Makes this thread the holder of lane 0 of the region with `key` (the thread that
/// opened it, at its first `join`), and returns what it held before, for
/// [`put_back`] when the region ends.
#[inline]
pub(crate) fn own(key: usize) -> Held {
    register();
    hold(key, 0)
}

/// Puts back what [`own`] returned.
#[inline]
pub(crate) fn put_back(outer: Held) {
    HELD_KEY.with(|k| k.set(outer.key));
    HELD_INDEX.with(|i| i.set(outer.index));
}

/// What a thread held before it took a lane, put back when it leaves it.
#[derive(Clone, Copy)]
pub(crate) struct Held {
    key: usize,
    index: usize,
}

/// Records that this thread holds lane `index` of the region with `key`; returns
/// what it held.
#[inline]
fn hold(key: usize, index: usize) -> Held {
    Held {
        key: HELD_KEY.with(|k| k.replace(key)),
        index: HELD_INDEX.with(|i| i.replace(index)),
    }
}

/// See the module docs.
pub(crate) struct Lanes {
    lanes: Box<[Lane]>,
}

struct Lane {
    /// Held by a worker (lanes 1..; lane 0 is its region's own thread's).
    claimed: AtomicBool,
    /// Made by the holder on its first push; touched by the lane's holder only.
    worker: UnsafeCell<Option<Worker<JobRef>>>,
    /// The deque's other end, for thieves; set with `worker`.
    stealer: OnceLock<Stealer<JobRef>>,
}

// SAFETY: `worker` is touched only by the lane's holder, one thread at a time: lane 0
// by the region's own thread (`own`), the others by the worker whose `claimed` swap
// won, until it clears it (`Claim`); the hand-over between two holders is ordered
// by `claimed` (Release on give-back, Acquire on claim). `stealer` is `Sync`.
unsafe impl Sync for Lanes {}

/// A lane of the region held by this thread, for one `join`.
pub(crate) struct Mine<'a> {
    lane: &'a Lane,
}

impl Lanes {
    /// `count` lanes (at least 1: the region's own thread's).
    pub(crate) fn new(count: usize) -> Self {
        Lanes {
            lanes: (0..count.max(1))
                .map(|_| Lane {
                    claimed: AtomicBool::new(false),
                    worker: UnsafeCell::new(None),
                    stealer: OnceLock::new(),
                })
                .collect(),
        }
    }

    /// The lane this thread holds in the region with `key`, if any.
    #[inline]
    pub(crate) fn mine(&self, key: usize) -> Option<Mine<'_>> {
        let held = HELD_KEY.with(Cell::get);
        (held == key && key != 0).then(|| Mine {
            lane: &self.lanes[HELD_INDEX.with(Cell::get)],
        })
    }

    /// Claims a free lane (1..) for this thread while it serves the region with
    /// `key`; `None` when all are held.
    pub(crate) fn claim(&self, key: usize) -> Option<Claim<'_>> {
        let (index, lane) = self.lanes.iter().enumerate().skip(1).find(|(_, lane)| {
            !lane.claimed.load(Ordering::Relaxed)
                && lane
                    .claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })?;
        register();
        let outer = hold(key, index);
        Some(Claim { lane, outer })
    }

    /// Steals the oldest half of some lane, for this thread to run.
    pub(crate) fn steal(&self) -> Option<JobRef> {
        for lane in self.lanes.iter() {
            let Some(stealer) = lane.stealer.get() else {
                continue;
            };
            loop {
                match stealer.steal() {
                    Steal::Success(job) => return Some(job),
                    Steal::Empty => break,
                    Steal::Retry => {}
                }
            }
        }
        None
    }

    /// Whether a half waits in some lane. A hint: a push is not ordered with the
    /// pusher's later reads (no fence, see `Region::join`), so a thread that reads
    /// this just as a half is pushed may miss it; its joiner then runs it.
    pub(crate) fn any(&self) -> bool {
        self.lanes
            .iter()
            .any(|lane| lane.stealer.get().is_some_and(|s| !s.is_empty()))
    }
}

impl Mine<'_> {
    #[inline]
    fn worker(&self) -> &Worker<JobRef> {
        // SAFETY: this thread holds the lane (`Lanes::mine`), so it alone touches
        // `worker` (see the `Sync` impl); the deque is set once, here (a spare of
        // an ended region, or a new one).
        let slot = unsafe { &mut *self.lane.worker.get() };
        match slot {
            Some(worker) => worker,
            None => self.make(slot),
        }
    }

    /// The lane's first push: its deque (a spare of an ended region, or a new one).
    #[cold]
    #[inline(never)]
    fn make<'s>(&self, slot: &'s mut Option<Worker<JobRef>>) -> &'s Worker<JobRef> {
        let worker = spare::take();
        let _ = self.lane.stealer.set(worker.stealer());
        slot.insert(worker)
    }

    /// Pushes a half at the back of this thread's deque.
    #[inline]
    pub(crate) fn push(&self, job: JobRef) {
        self.worker().push(job);
    }

    /// Pops the newest half of this thread's deque: the caller's own if no thief
    /// took it, else an older one of this thread's (which the caller runs).
    #[inline]
    pub(crate) fn pop(&self) -> Option<JobRef> {
        self.worker().pop()
    }
}

impl Drop for Lanes {
    /// The region is gone, so nobody can push to or steal from its lanes: their
    /// deques (empty: see the module docs) go to the spares for the next region.
    fn drop(&mut self) {
        for lane in self.lanes.iter_mut() {
            if let Some(worker) = lane.worker.get_mut().take() {
                spare::give(worker);
            }
        }
    }
}

/// Deques of regions that ended, for the lanes of the next ones. A deque is two
/// allocations, one of them 1 KiB, which glibc's thread cache does not keep: made on
/// one thread and freed on another for every region, they took the allocator's
/// arena lock on both (a fifth of a short region's time in `benches/core.rs`).
mod spare {
    use std::sync::Mutex;

    use crossbeam_deque::Worker;

    use crate::regions::job::JobRef;

    /// Enough for the lanes of a few regions of a 64-core machine.
    const KEEP: usize = 256;

    static SPARE: Mutex<Vec<Worker<JobRef>>> = Mutex::new(Vec::new());

    /// A spare deque, or a new one. `try_lock`: a process forked while another
    /// thread held the lock must not wait for it (nor should a busy moment).
    pub(super) fn take() -> Worker<JobRef> {
        SPARE
            .try_lock()
            .ok()
            .and_then(|mut spare| spare.pop())
            .unwrap_or_else(Worker::new_lifo)
    }

    /// Keeps `worker` for a later lane, if it is empty and there is room.
    pub(super) fn give(worker: Worker<JobRef>) {
        debug_assert!(
            worker.is_empty(),
            "a lane's deque outlived its region with a half in it"
        );
        if let Ok(mut spare) = SPARE.try_lock() {
            if spare.len() < KEEP && worker.is_empty() {
                spare.push(worker);
            }
        }
    }
}

/// A lane held by a worker while it serves a region: given back, and the thread's
/// previous lane put back, on drop.
pub(crate) struct Claim<'a> {
    lane: &'a Lane,
    outer: Held,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        put_back(self.outer);
        // Release: the next holder's Acquire claim sees this holder's last use of the
        // deque (empty: see the module docs).
        self.lane.claimed.store(false, Ordering::Release);
    }
}
