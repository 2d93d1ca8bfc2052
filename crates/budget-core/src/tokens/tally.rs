//! Per-thread tallies of region entries and of the tokens leases hold: counted with a
//! plain load and store on a slot only the current thread writes (no locked
//! instruction, no shared cache line on the hot path), summed over every slot when
//! `stats()` reads them.
//!
//! Slots live in an append-only, leaked list. A thread claims a free slot (or adds
//! one) on its first region and frees it when it exits; the next thread to claim it
//! keeps adding to the same totals, so counts are never lost and the list is bounded
//! by the most threads ever alive at once.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// What is tallied per region entry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Regions = 0,
    Narrowed = 1,
    Overcommit = 2,
    /// Narrowed while other processes held outside tokens it could not take.
    NarrowedByProcesses = 3,
    /// Narrowed while leases held tokens (and not by other processes).
    NarrowedByLeases = 4,
    /// Tokens held by leases: added when a lease takes, subtracted when it gives
    /// back, perhaps on another thread (wrapping: one slot may go "negative", the sum
    /// over all slots is exact).
    Leased = 5,
}

const KINDS: usize = 6;

struct Slot {
    counts: [AtomicU64; KINDS],
    /// Held by a live thread. Release on free, Acquire on claim: the next owner
    /// starts from the counts its predecessor wrote.
    owned: AtomicBool,
    next: *const Slot,
}

// SAFETY: `next` points to a leaked Slot that is never freed or written after it is
// published; everything else is atomic.
unsafe impl Sync for Slot {}

/// Head of the slot list (slots are never freed).
static HEAD: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());

/// Counts of threads whose slot could not be used (a region entered from another
/// thread-local destructor, after this thread's slot was released).
static LATE: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];

struct Owner(&'static Slot);

impl Drop for Owner {
    fn drop(&mut self) {
        // Later bumps of this exiting thread (from other thread-local destructors) go
        // to LATE: the slot may already belong to the next thread.
        let _ = FAST.try_with(|f| f.set(ptr::null()));
        self.0.owned.store(false, Ordering::Release);
    }
}

thread_local! {
    static MINE: Owner = Owner(claim());
    /// Cached `&'static Slot` to skip the lazy-init check of `MINE` on the hot path.
    static FAST: Cell<*const Slot> = const { Cell::new(ptr::null()) };
}

fn claim() -> &'static Slot {
    let mut at = HEAD.load(Ordering::Acquire);
    while !at.is_null() {
        // SAFETY: published slots are leaked, so `at` is valid for 'static.
        let slot = unsafe { &*at };
        if !slot.owned.load(Ordering::Relaxed)
            && slot
                .owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return slot;
        }
        at = slot.next.cast_mut();
    }
    let slot = Box::leak(Box::new(Slot {
        counts: std::array::from_fn(|_| AtomicU64::new(0)),
        owned: AtomicBool::new(true),
        next: ptr::null(),
    }));
    let mut head = HEAD.load(Ordering::Acquire);
    loop {
        slot.next = head;
        // Release: the slot's fields are written before readers can reach it.
        match HEAD.compare_exchange(head, slot, Ordering::Release, Ordering::Acquire) {
            Ok(_) => return slot,
            Err(seen) => head = seen,
        }
    }
}

/// Adds one to `kind` for the current thread.
#[inline]
pub(crate) fn bump(kind: Kind) {
    add(kind, 1);
}

/// Adds `n` (wrapping: a subtraction is the addition of its two's complement) to
/// `kind` for the current thread.
#[inline]
pub(crate) fn add(kind: Kind, n: u64) {
    let fast = FAST.try_with(Cell::get).unwrap_or(ptr::null());
    let slot = if fast.is_null() {
        match MINE.try_with(|owner| owner.0) {
            Ok(slot) => {
                let _ = FAST.try_with(|f| f.set(slot));
                slot
            }
            Err(_) => {
                LATE[kind as usize].fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
    } else {
        // SAFETY: FAST only ever holds a leaked slot owned by this thread.
        unsafe { &*fast }
    };
    // Only the owning thread writes its slot: load + store loses no count.
    let count = &slot.counts[kind as usize];
    count.store(
        count.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The total of `kind` over every thread, past and present.
pub(crate) fn sum(kind: Kind) -> u64 {
    let mut total = LATE[kind as usize].load(Ordering::Relaxed);
    let mut at = HEAD.load(Ordering::Acquire);
    while !at.is_null() {
        // SAFETY: published slots are leaked, so `at` is valid for 'static.
        let slot = unsafe { &*at };
        total = total.wrapping_add(slot.counts[kind as usize].load(Ordering::Relaxed));
        at = slot.next.cast_mut();
    }
    total
}
