//! Python regions in a process that shares an outside budget (a node budget, make's
//! jobserver; `BUDGET_NODE`, `budget run`).
//!
//! Such a process holds one token of its own; its supplier thread brings more only
//! while a *registered* region wants them (`external/README.md` in budget-core).
//! Python regions take tokens with [`budget_core::Lease`], which never registers
//! demand, so on its own a Python region there would always run at width 1. So a
//! region that got less than it asked for, in a joined process, registers its
//! missing tokens through a budget-core region (`Scope::with_demand`) and waits a
//! bounded time ([`WAIT`]) for the supplier's hand-off; the region then ends, its
//! tokens go back to `free`, and the Python region's lease takes them at once
//! (before the supplier's linger of two ticks could give them back).
//!
//! The wait breaks "a region never waits to start" by at most [`WAIT`], and only in a
//! joined process whose region found too few tokens. A budget-core hook would remove
//! it: a lease that can register demand and be handed tokens as they arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use budget_core::integration::ScopeHooks;

/// The longest a region entry waits for outside tokens: five supplier ticks (2 ms),
/// room for the supplier thread to be scheduled on a loaded machine.
pub(crate) const WAIT: Duration = Duration::from_millis(10);

/// The first ask of a process waits longer: the supplier thread has just started.
const FIRST_WAIT: Duration = Duration::from_millis(50);

/// After a wait that brought nothing (the other processes hold the tokens), regions
/// take what is free without asking for this long, so that a loop of regions pays
/// the wait at most once per `BACKOFF` (≤ 5 %).
const BACKOFF: Duration = Duration::from_millis(200);

/// Nanoseconds since [`epoch`] before which regions do not ask (0: ask). Relaxed: a
/// hint; a race only costs one extra wait or one skipped ask.
static QUIET_UNTIL: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Whether this process joined an outside budget.
pub(crate) fn joined() -> bool {
    !matches!(budget_core::joined(), budget_core::Joined::Local)
}

/// Asks the outside budget for `missing` more tokens and leaves those that arrive
/// within [`WAIT`] free in this process (for the caller's lease to take at once).
/// Call it on a thread already marked as inside a region, so that the asking region
/// takes no token for the thread itself.
pub(crate) fn fetch(missing: usize) {
    if missing == 0 || !joined() || now_ns() < QUIET_UNTIL.load(Ordering::Relaxed) {
        return;
    }
    static ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let first = !ASKED.swap(true, Ordering::Relaxed);
    let deadline = Instant::now() + if first { FIRST_WAIT } else { WAIT };
    let got = budget_core::scope_with(1 + missing, |s| {
        s.with_demand(
            |_| {},
            || {
                while s.width() < s.requested() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(100));
                }
                s.width() - 1
            },
        )
    });
    if got == 0 {
        let until = now_ns().saturating_add(u64::try_from(BACKOFF.as_nanos()).unwrap_or(0));
        QUIET_UNTIL.store(until, Ordering::Relaxed);
    }
}
