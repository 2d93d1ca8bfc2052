//! Process-wide thread counts (OpenBLAS on pthreads, BLIS, FlexiBLAS): one lock around
//! every set call, the pool grown once, and the smallest width in flight.
//!
//! Protocol, for each library, under the one lock [`POOLS`]:
//!
//! 1. **Enter** a call of width `w`: the first call in flight saves the library's count;
//!    the count is then set to the smallest width of the calls in flight, so no call in
//!    flight runs wider than its region was granted. On the first contact with an
//!    OpenBLAS pool, the pool is grown once to the budget's total (clamped by OpenBLAS
//!    to its `MAX_THREADS`), so later set calls never create threads.
//! 2. **Exit**: the count becomes the smallest width of the calls still in flight; the
//!    last call in flight restores the saved count exactly.
//!
//! OpenBLAS's pthreads workers busy-wait for a while after a multi-threaded call. They
//! hold no token of this process (a lease for them narrowed the next region of the
//! process, whose BLAS call runs on those very workers); in a process that shares an
//! outside budget, the call's tokens are kept from other processes until the workers
//! sleep (`budget_core::integration::hold_for_spinners`). See the README, "Spinning
//! workers".
//!
//! OpenBLAS 0.3.21–0.3.34 crash or hang when threads call `openblas_set_num_threads`
//! concurrently; every set call here happens with [`POOLS`] held, and BLAS code that
//! runs concurrently with a set call only reads the count.

#[cfg(unix)]
use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::control::{Control, Entry};

struct PoolState {
    entry: Arc<Entry>,
    /// The widths of the calls of this library in flight through budget.
    widths: Vec<i64>,
    /// The count found when the first call in flight entered; restored by the last.
    saved: i64,
    /// The count budget set last.
    current: i64,
}

/// A call in flight, as [`exit`] must be given it.
#[derive(Debug)]
pub(crate) struct Ticket {
    /// The width entered in the pool's `widths`.
    width: i64,
    /// The count the call runs at.
    pub(crate) used: usize,
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

/// Whether the library's pool is OpenBLAS's own pthreads pool, grown once on first
/// contact (its idle workers busy-wait for a while after a call).
fn grows_once(control: &Control) -> bool {
    matches!(*control, Control::ProcessWideInt { spin: Some(_), .. })
}

/// Sets `entry`'s count for a call of `width`; returns its [`Ticket`] (the count it runs at is
/// `used`), which [`exit`] must be given.
///
/// # Blocking
///
/// Takes the process-wide lock for the duration of at most three set calls.
pub(crate) fn enter(entry: &Arc<Entry>, width: usize) -> Ticket {
    let width = width.max(1) as i64;
    let mut pools = pools();
    let index = match pools.iter().position(|p| Arc::ptr_eq(&p.entry, entry)) {
        Some(i) => i,
        None => {
            let found = get(&entry.control);
            if grows_once(&entry.control) {
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
            });
            pools.len() - 1
        }
    };
    let p = &mut pools[index];
    if let Control::OpenBlasOpenMp { .. } = p.entry.control {
        let used = enter_openblas_openmp(p, width);
        return Ticket {
            width: used as i64,
            used,
        };
    }
    if p.widths.is_empty() {
        p.saved = get(&p.entry.control);
        p.current = p.saved;
    }
    p.widths.push(width);
    let target = p.widths.iter().copied().min().unwrap_or(width);
    if target != p.current {
        set(&p.entry.control, target);
        p.current = target;
    }
    Ticket {
        width,
        used: target as usize,
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
pub(crate) fn exit(entry: &Arc<Entry>, ticket: Ticket) {
    let mut pools = pools();
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
    let target = p.widths.iter().copied().min().unwrap_or(p.saved);
    if target != p.current {
        set(&p.entry.control, target);
        p.current = target;
    }
    if let (
        Control::ProcessWideInt {
            spin: Some(window), ..
        },
        2..,
    ) = (&p.entry.control, ticket.used)
    {
        budget_core::integration::hold_for_spinners(ticket.used, *window);
        if yields_while_spinning(p.entry.version.as_deref()) {
            crate::spread::spinning(ticket.used, *window);
        }
    }
}

/// Whether an OpenBLAS pool's idle workers call `sched_yield` while they spin (before
/// 0.3.27; from 0.3.27 on they spin on `nop`s and keep their core whatever runs
/// beside them, so pinning a neighbour beside one would only trap it there). An
/// unknown version is taken as yielding (Debian's and most distributions' builds).
fn yields_while_spinning(version: Option<&str>) -> bool {
    let Some(version) = version else {
        return true;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (major, minor, patch) < (0, 3, 27)
}

#[cfg(unix)]
type ForkGuard = MutexGuard<'static, Vec<PoolState>>;

#[cfg(unix)]
thread_local! {
    /// The locks held across a `fork` by the forking thread (which is also the only
    /// thread of the child).
    static HELD_FOR_FORK: RefCell<Option<ForkGuard>> = const { RefCell::new(None) };
}

#[cfg(unix)]
/// Takes the pools' lock for a `fork` (see the `fork` module).
pub(crate) fn lock_for_fork() {
    let guard = pools();
    HELD_FOR_FORK.with(|h| *h.borrow_mut() = Some(guard));
}

#[cfg(unix)]
/// Releases what [`lock_for_fork`] took, in the parent and in the child alike. Calls
/// in flight on the parent's other threads stay listed in the child: its counts can
/// only be narrower for it.
pub(crate) fn unlock_after_fork() {
    // Dropping the guard unlocks (a futex word; in the child no thread waits on it).
    drop(HELD_FOR_FORK.with(|h| h.borrow_mut().take()));
}

#[cfg(test)]
mod tests {
    use super::yields_while_spinning;

    #[test]
    fn openblas_before_0_3_27_yields_while_it_spins() {
        assert!(yields_while_spinning(Some("0.3.21")));
        assert!(yields_while_spinning(Some("0.3.26.dev")));
        assert!(yields_while_spinning(None));
        assert!(!yields_while_spinning(Some("0.3.27")));
        assert!(!yields_while_spinning(Some("0.3.31.188.0")));
        assert!(!yields_while_spinning(Some("0.4.0")));
    }
}
