//! Process-wide thread counts (OpenBLAS on pthreads, BLIS, FlexiBLAS): one lock around
//! every set call, the pool grown once, and the pool's spinning threads counted as one
//! lease per library.
//!
//! Protocol, for each library, under the one lock [`POOLS`]:
//!
//! 1. **Enter** a call of width `w`: the first call in flight saves the library's count;
//!    the count is then set to the smallest width of the calls in flight, so no call in
//!    flight runs wider than its region was granted. On the first contact with an OpenBLAS pool, the pool is grown
//!    once to the budget's total (clamped by OpenBLAS to its `MAX_THREADS`), so later
//!    set calls never create threads.
//! 2. **Exit**: the count becomes the smallest width of the calls still in flight; the
//!    last call in flight restores the saved count exactly. After a call
//!    of width `c > 1` on a pool whose idle threads busy-wait (OpenBLAS), the library's
//!    lease is grown towards `c - 1` tokens and held until the spin window
//!    (`2^OPENBLAS_THREAD_TIMEOUT` cycles) has passed; a reaper thread tops it up from
//!    tokens freed meanwhile and drops it at the deadline. The spinning threads are
//!    counted once: not while the caller's region covers them ([`Call::covered`]),
//!    and a region's next call takes the lease's tokens over ([`Call::borrow`]).
//!
//! OpenBLAS 0.3.21–0.3.34 crash or hang when threads call `openblas_set_num_threads`
//! concurrently; every set call here happens with [`POOLS`] held, and BLAS code that
//! runs concurrently with a set call only reads the count.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::control::{Control, Entry};

struct PoolState {
    entry: Arc<Entry>,
    /// The widths of the calls of this library in flight through budget.
    widths: Vec<i64>,
    /// The count found when the first call in flight entered; restored by the last.
    saved: i64,
    /// The count budget set last.
    current: i64,
    /// The pool's spinning threads, counted against the budget until `spin_until`.
    lease: Option<budget_core::Lease>,
    /// How many tokens the lease should hold while the window lasts.
    spinning: usize,
    /// Of `spinning`, how many a region that made the last wide call still covers
    /// with its own tokens (not leased until it looks closed, see [`Cover`]).
    covered: usize,
    /// `regions_in_use()` when `covered` was set.
    cover_mark: usize,
    /// Lease tokens lent to calls in flight (they run on the spinning threads).
    lent: usize,
    spin_until: Option<Instant>,
}

/// A call of a process-wide library, as [`enter`] is asked for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    /// The width granted to the call.
    pub(crate) width: usize,
    /// How many of a spin lease's tokens the call may take over on top of `width`
    /// (its region's request beyond its width; 0 outside regions).
    pub(crate) borrow: usize,
    /// Tokens beyond its own thread that the caller's region holds, and goes on
    /// holding after the call: they cover that many spinning threads (0 outside
    /// regions).
    pub(crate) covered: usize,
}

/// A call in flight, as [`exit`] must be given it.
#[derive(Debug)]
pub(crate) struct Ticket {
    call: Call,
    /// The width entered in the pool's `widths` (`call.width + taken`).
    width: i64,
    /// The count the call runs at.
    pub(crate) used: usize,
    /// Lease tokens taken over.
    taken: usize,
}

/// Whether a region that covered spinning threads has closed, seen from the
/// outside: budget-core gives no hook at a region's end, so a cover counts as gone
/// once the tokens held by regions (all tokens in use less the spin leases) dropped
/// by at least the covered count since the call. Another region closing meanwhile
/// ends it early (the threads are then counted twice for the rest of the window, as
/// before); regions opening meanwhile delay it.
struct Cover;

impl Cover {
    /// Tokens held by regions and other leases now (`pools` is the locked state).
    fn regions_in_use(pools: &[PoolState]) -> usize {
        let leased: usize = pools
            .iter()
            .map(|p| p.lease.as_ref().map_or(0, |l| l.count()))
            .sum();
        budget_core::stats().in_use.saturating_sub(leased)
    }
}

/// The one process-wide lock around every process-wide set call. A std mutex: its
/// whole state is in the lock itself (no global table of parked threads), so the
/// `fork` handlers can hand it over to the child by releasing a guard.
static POOLS: Mutex<Vec<PoolState>> = Mutex::new(Vec::new());

/// Locks [`POOLS`]. The protocol's state stays consistent across a panic (none of
/// the code under the lock panics between two updates), so poisoning is ignored.
fn pools() -> MutexGuard<'static, Vec<PoolState>> {
    POOLS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often the reaper tops a spin lease up while a window lasts.
const TOP_UP: Duration = Duration::from_millis(2);

fn get(control: &Control) -> i64 {
    // SAFETY: resolved with the documented prototypes; the handle keeps them loaded;
    // getters have no preconditions.
    unsafe {
        match *control {
            Control::ProcessWideInt { get, .. } | Control::OpenBlasOpenMp { get, .. } => {
                i64::from(get())
            }
            Control::ProcessWideDim { get, .. } => get(),
            _ => 0,
        }
    }
}

fn set(control: &Control, n: i64) {
    // SAFETY: resolved with the documented prototypes; callers hold `POOLS`, so no two
    // set calls of any process-wide library ever run concurrently.
    unsafe {
        match *control {
            // Values come from `enter` (at least 1) or are a saved value put back as
            // read (BLIS keeps -1 for "never set", which means 1 thread).
            // OpenBLAS on OpenMP: `goto_set_num_threads`, which also sets the calling
            // thread's OpenMP count; only called with no call of it in flight.
            Control::ProcessWideInt { set, .. } | Control::OpenBlasOpenMp { set, .. } => {
                set(n.clamp(1, i64::from(i32::MAX)) as i32)
            }
            Control::ProcessWideDim { set, .. } => set(n),
            _ => {}
        }
    }
}

fn spin_window(control: &Control) -> Option<Duration> {
    match *control {
        Control::ProcessWideInt { spin, .. } => spin,
        _ => None,
    }
}

/// Sets `entry`'s count for `call`; returns its [`Ticket`] (the count it runs at is
/// `used`), which [`exit`] must be given.
///
/// # Blocking
///
/// Takes the process-wide lock for the duration of at most three set calls.
pub(crate) fn enter(entry: &Arc<Entry>, call: Call) -> Ticket {
    let width = call.width.max(1) as i64;
    let mut pools = pools();
    let index = match pools.iter().position(|p| Arc::ptr_eq(&p.entry, entry)) {
        Some(i) => i,
        None => {
            let found = get(&entry.control);
            if spin_window(&entry.control).is_some() {
                // Grow the pool once, under the lock, to the largest width any region
                // can get, and put the count back.
                let total = budget_core::stats().total as i64;
                if total > found {
                    set(&entry.control, total);
                    set(&entry.control, found);
                }
            }
            pools.push(PoolState {
                entry: Arc::clone(entry),
                widths: Vec::new(),
                saved: found,
                current: found,
                lease: None,
                spinning: 0,
                covered: 0,
                cover_mark: 0,
                lent: 0,
                spin_until: None,
            });
            pools.len() - 1
        }
    };
    let p = &mut pools[index];
    if let Control::OpenBlasOpenMp { .. } = p.entry.control {
        let used = enter_openblas_openmp(p, width);
        return Ticket {
            call,
            width: used as i64,
            used,
            taken: 0,
        };
    }
    if p.widths.is_empty() {
        p.saved = get(&p.entry.control);
        p.current = p.saved;
    }
    // The spinning threads are the ones this call will run on: take over the
    // lease's tokens rather than be narrowed by them.
    let taken = p.lease.as_ref().map_or(0, |l| {
        (l.count() - p.lent)
            .min(call.borrow)
            .min(p.spinning.saturating_sub(p.lent))
    });
    p.lent += taken;
    let width = width + taken as i64;
    p.widths.push(width);
    let target = p.widths.iter().copied().min().unwrap_or(width);
    if target != p.current {
        set(&p.entry.control, target);
        p.current = target;
    }
    Ticket {
        call,
        width,
        used: target as usize,
        taken,
    }
}

/// OpenBLAS built on OpenMP (Debian's 0.3.21): each call compares the caller's
/// `omp_get_max_threads()` with the library's one global count and, if they differ,
/// rewrites the global (and frees or allocates its per-thread buffers), then reads the
/// global again to split the work, and runs it on an OpenMP team of the caller's
/// count. Two callers with different counts race on that global: a call can split its
/// work for more threads than its team has, and its threads then wait for each other
/// for ever (seen with 16 threads of differing widths: every thread of the team in
/// `sched_yield` inside the level-3 driver); lowering the global while a call runs
/// frees buffers that call uses.
///
/// So, while a multi-threaded call is in flight through budget, the global is never
/// changed: every other call runs at that count `c` if its width allows (narrower than
/// granted), else at 1 (a caller whose OpenMP count is 1 runs single-threaded without
/// touching the global). With no multi-threaded call in flight, the global is set to
/// the call's width under the lock. Returns the width the caller's OpenMP count must
/// be set to; `widths` holds those above 1 in flight.
fn enter_openblas_openmp(p: &mut PoolState, width: i64) -> usize {
    if width == 1 {
        return 1;
    }
    let current = get(&p.entry.control);
    let used = if p.widths.is_empty() {
        if current != width {
            set(&p.entry.control, width);
        }
        get(&p.entry.control).max(1)
    } else if width >= current {
        current
    } else {
        1
    };
    if used > 1 {
        p.widths.push(used);
    }
    used as usize
}

/// Ends a call that [`enter`] started.
///
/// The spinning threads of a wide call are counted once: the caller's region covers
/// `call.covered` of them while it is open, the lease keeps the tokens the call took
/// over, and the lease grows now only for the rest (all of them outside regions).
pub(crate) fn exit(entry: &Arc<Entry>, ticket: Ticket) {
    let mut pools = pools();
    let regions_in_use = Cover::regions_in_use(&pools);
    let Some(p) = pools.iter_mut().find(|p| Arc::ptr_eq(&p.entry, entry)) else {
        return;
    };
    if let Some(i) = p.widths.iter().position(|&w| w == ticket.width) {
        p.widths.swap_remove(i);
    }
    if let Control::OpenBlasOpenMp { .. } = p.entry.control {
        // Nothing to set: the caller's OpenMP count is restored by its guard, and the
        // library re-syncs its own count at the next call.
        return;
    }
    // Saturating: in a forked child the lent count was reset under a call in flight.
    p.lent = p.lent.saturating_sub(ticket.taken);
    let target = p.widths.iter().copied().min().unwrap_or(p.saved);
    if target != p.current {
        set(&p.entry.control, target);
        p.current = target;
    }
    let used = ticket.used;
    if let Some(window) = spin_window(&p.entry.control).filter(|_| used > 1) {
        p.spinning = p.spinning.max(used - 1);
        let covered = ticket.call.covered.min(used - 1);
        if covered > 0 {
            p.covered = p.covered.max(covered);
            p.cover_mark = regions_in_use;
        }
        p.spin_until = Some(Instant::now() + window);
        let lease = p
            .lease
            .get_or_insert_with(|| budget_core::Lease::try_new(0));
        let now = p.spinning.saturating_sub(p.covered);
        lease.try_grow(now.saturating_sub(lease.count()));
        drop(pools);
        wake_reaper();
    }
}

/// Tokens held now by the spin leases of all process-wide pools.
pub(crate) fn leased() -> usize {
    pools()
        .iter()
        .map(|p| p.lease.as_ref().map_or(0, |l| l.count()))
        .sum()
}

/// The reaper thread, started on first use (and again in a forked child, where the
/// parent's does not exist).
static REAPER: Mutex<Option<Thread>> = Mutex::new(None);

fn reaper_slot() -> MutexGuard<'static, Option<Thread>> {
    REAPER.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wake_reaper() {
    let mut slot = reaper_slot();
    let reaper = slot.get_or_insert_with(|| {
        std::thread::Builder::new()
            .name("budget-native-reaper".into())
            .spawn(reap)
            .expect("budget-native: cannot start the thread that returns spin leases")
            .thread()
            .clone()
    });
    reaper.unpark();
}

type ForkGuards = (
    MutexGuard<'static, Vec<PoolState>>,
    MutexGuard<'static, Option<Thread>>,
);

thread_local! {
    /// The locks held across a `fork` by the forking thread (which is also the only
    /// thread of the child).
    static HELD_FOR_FORK: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
}

/// Takes the pools' lock and the reaper's slot for a `fork` (see the `fork` module).
pub(crate) fn lock_for_fork() {
    let guards = (pools(), reaper_slot());
    HELD_FOR_FORK.with(|h| *h.borrow_mut() = Some(guards));
}

/// Releases what [`lock_for_fork`] took. In the `child`, the spin leases and the
/// reaper are forgotten first: their threads (OpenBLAS's workers, the reaper) do not
/// exist there, and the leases held the parent's tokens. Calls in flight on the
/// parent's other threads stay listed: the child's counts can only be narrower for it.
pub(crate) fn unlock_after_fork(child: bool) {
    let Some((mut pools, mut reaper)) = HELD_FOR_FORK.with(|h| h.borrow_mut().take()) else {
        return;
    };
    if child {
        for p in pools.iter_mut() {
            // A lease of the parent's registry returns nothing in the child.
            p.lease = None;
            p.spinning = 0;
            p.covered = 0;
            p.lent = 0;
            p.spin_until = None;
        }
        *reaper = None;
    }
    // Dropping the guards unlocks (a futex word; in the child no thread waits on it).
    drop(reaper);
    drop(pools);
}

fn reap() {
    loop {
        let next = {
            let mut pools = pools();
            let regions_in_use = Cover::regions_in_use(&pools);
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for p in pools.iter_mut() {
                let Some(until) = p.spin_until else { continue };
                if now >= until {
                    // Return the tokens, except those lent to calls in flight (their
                    // exit opens a new window).
                    if let Some(lease) = p.lease.as_mut() {
                        lease.shrink(lease.count() - p.lent);
                    }
                    p.spinning = 0;
                    p.covered = 0;
                    p.spin_until = None;
                } else {
                    if p.covered > 0 && regions_in_use + p.covered <= p.cover_mark {
                        p.covered = 0; // the covering region looks closed
                    }
                    if p.widths.is_empty() {
                        if let Some(lease) = p.lease.as_mut() {
                            let want = p.spinning.saturating_sub(p.covered);
                            lease.try_grow(want.saturating_sub(lease.count()));
                        }
                    }
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
            }
            next
        };
        match next {
            None => std::thread::park(),
            Some(t) => {
                std::thread::park_timeout(t.saturating_duration_since(Instant::now()).min(TOP_UP))
            }
        }
    }
}
