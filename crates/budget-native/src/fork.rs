//! `fork()`: budget-native's locks are taken around every fork, so a child never
//! inherits one held by a thread that does not exist in it; and in a forked child,
//! OpenMP code runs at width 1 where libgomp is loaded.
//!
//! - **Locks.** A `pthread_atfork` *prepare* handler takes the scan cache's lock and
//!   the process-wide pools' lock (in that order; no code path nests them
//!   otherwise), so the fork waits for a thread inside a native call's lock to leave
//!   it (a few set calls). The *parent* and *child* handlers release them.
//! - **libgomp.** libgomp does not re-create its thread pool in a forked child: once
//!   the parent ran a parallel region, a wider region in the child waits for threads
//!   that are gone (LLVM libomp and Intel libiomp5 re-initialise with atfork
//!   handlers). In a forked child with libgomp loaded, every per-thread OpenMP/MKL
//!   count and OpenBLAS-on-OpenMP is set to 1, whatever the width: narrower than
//!   granted, never hanging.
//!
//! The handlers are registered on the first `limit` or `s.native` call; a fork
//! before it has nothing of budget-native's to protect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

#[cfg(unix)]
use crate::{process_wide, scan};

/// Set in a forked child (by the child handler), never cleared: the process is a
/// fork of one that may have used libgomp.
static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// Registers the handlers once per process (a forked child inherits them).
pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(unix)]
        {
            // SAFETY: the handlers are `extern "C"` functions that never unwind (they
            // only take and release locks and store plain values).
            let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
            if rc != 0 {
                eprintln!(
                    "budget-native: pthread_atfork failed ({rc}); a child forked while \
                     another thread is in a native call may hang"
                );
            }
        }
    });
}

/// Whether this process is a forked child (of a process that used budget-native).
pub(crate) fn in_child() -> bool {
    // Relaxed: set by the child handler on the only thread the child has, before any
    // other thread exists in it.
    IN_CHILD.load(Ordering::Relaxed)
}

#[cfg(unix)]
extern "C" fn prepare() {
    scan::lock_for_fork();
    process_wide::lock_for_fork();
}

#[cfg(unix)]
extern "C" fn parent() {
    process_wide::unlock_after_fork();
    scan::unlock_after_fork();
}

#[cfg(unix)]
extern "C" fn child() {
    IN_CHILD.store(true, Ordering::Relaxed);
    crate::spread::forget_in_child();
    process_wide::unlock_after_fork();
    scan::unlock_after_fork();
}
