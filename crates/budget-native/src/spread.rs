//! Narrow calls beside spinning workers: one thread per CPU while a pool's idle
//! workers busy-wait after a wide call.
//!
//! After a wide call, OpenBLAS's pthreads workers spin for ~0.1 s. Linux counts each
//! as a running task, so the threads of a loop that starts right after the call (its
//! QRs at width 1, say) are woken beside the thread that made the call, and on a
//! 2-core machine both run on one core while the spinner has the other: the load
//! balancer sees 2 tasks against 1 and moves nothing, because moving one gives 1
//! against 2. The loop then takes 2× as long, or not, as the wake-up falls
//! (`cargo bench -p budget-threads-native --bench after_wide`: ~10 or ~20 ms, the
//! same for a hand schedule with no budget at all). Pinned one per core, each thread
//! shares a core with at most one spinner, which yields it (0.3.21's spin loop calls
//! `sched_yield`): the neighbour costs 1.00× (`--bench spin`).
//!
//! So, for the spin window after a wide call of a spinning pool that yields (OpenBLAS
//! before 0.3.27), an `s.native` call narrower than that call ([`enter`]) pins its
//! thread to one CPU of the thread's own affinity mask that no other such call holds:
//! the CPU it runs on if free, else the first free one. With no CPU free it is left
//! alone (the scheduler spreads what exceeds the CPUs). When the closure ends, the
//! thread's mask is put back, unless something else changed it meanwhile. Calls as
//! wide as the spinning one run on its workers and are never pinned; outside a
//! window, the cost is one relaxed load.
//!
//! Only `s.native` pins, for its closure: a short call, where a `limit` guard or a
//! Python block may run anything (threads and processes created under a pin would
//! inherit its one-CPU mask). A thread or process the closure itself starts inherits
//! it too: do not start pools inside a narrow native call. In a forked child, the
//! forking thread's own pin is put back by its guard as anywhere else; the claims of
//! the parent's other threads are forgotten.
//!
//! Linux only (`sched_setaffinity`); elsewhere [`enter`] does nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The end of the current spin window, in `CLOCK_MONOTONIC` nanoseconds; 0: none.
///
/// Relaxed throughout this module: a window's end and width are hints that decide
/// whether one call is pinned; no data is published through them. The claims on CPUs
/// are taken by compare-and-swap, so a CPU has one holder whatever the ordering.
static SPIN_UNTIL: AtomicU64 = AtomicU64::new(0);
/// The width of the wide call whose workers spin.
static SPIN_WIDTH: AtomicUsize = AtomicUsize::new(0);

/// A pool's workers spin for `window` after a call of `width` threads that ends now.
pub(crate) fn spinning(width: usize, window: Duration) {
    let Some(now) = imp::now_ns() else { return };
    let until = now.saturating_add(window.as_nanos().min(u128::from(u64::MAX)) as u64);
    SPIN_WIDTH.store(width, Ordering::Relaxed);
    SPIN_UNTIL.store(until, Ordering::Relaxed);
}

/// Pins the calling thread for a call of `width` if a spin window is open and the
/// call is narrower than the spinning one; the mask comes back when the result drops.
pub(crate) fn enter(width: usize) -> Option<Pinned> {
    let until = SPIN_UNTIL.load(Ordering::Relaxed);
    if until == 0 || width >= SPIN_WIDTH.load(Ordering::Relaxed) {
        return None;
    }
    if imp::now_ns()? >= until {
        // The window has closed: the next calls need not read the clock.
        let _ = SPIN_UNTIL.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        return None;
    }
    imp::pin()
}

/// Forgets the window and every claim, in a forked child: its only thread is the
/// forking one, and OpenBLAS's workers do not exist in it.
#[cfg(unix)]
pub(crate) fn forget_in_child() {
    SPIN_UNTIL.store(0, Ordering::Relaxed);
    imp::forget_claims();
}

/// A thread pinned by [`enter`]: its original mask, restored on drop.
pub(crate) struct Pinned {
    _pin: imp::Pin,
}

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Which pinned call holds each CPU, by CPU number (`CPU_SETSIZE` of them): its
    /// ticket, 0 when none. A ticket, not a flag: a pin dropped after the claims were
    /// forgotten (in a forked child) must not free a CPU another pin holds since.
    static CLAIMED: [AtomicU64; libc::CPU_SETSIZE as usize] =
        [const { AtomicU64::new(0) }; libc::CPU_SETSIZE as usize];
    static TICKETS: AtomicU64 = AtomicU64::new(1);

    pub(super) struct Pin {
        cpu: usize,
        ticket: u64,
        mask: libc::cpu_set_t,
    }

    pub(super) fn now_ns() -> Option<u64> {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
        (rc == 0).then(|| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
    }

    fn claim(cpu: usize, ticket: u64) -> bool {
        CLAIMED[cpu]
            .compare_exchange(0, ticket, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn unclaim(cpu: usize, ticket: u64) {
        let _ = CLAIMED[cpu].compare_exchange(ticket, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The calling thread's mask, if it can be read.
    fn mask() -> Option<libc::cpu_set_t> {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `mask` is a writable cpu_set_t of `size` bytes; pid 0 is this thread.
        (unsafe { libc::sched_getaffinity(0, size, &mut mask) } == 0).then_some(mask)
    }

    pub(super) fn pin() -> Option<super::Pinned> {
        let mask = mask()?;
        // SAFETY: CPU_ISSET/CPU_COUNT read the set within its size.
        let allowed = |cpu: usize| unsafe { libc::CPU_ISSET(cpu, &mask) };
        // SAFETY: as above.
        if unsafe { libc::CPU_COUNT(&mask) } < 2 {
            return None; // already on one CPU: nothing to spread
        }
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: no preconditions; -1 on error.
        let here = unsafe { libc::sched_getcpu() };
        let cpus = CLAIMED.len();
        let cpu = usize::try_from(here)
            .ok()
            .filter(|&c| c < cpus && allowed(c) && claim(c, ticket))
            .or_else(|| (0..cpus).find(|&c| allowed(c) && claim(c, ticket)))?;
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes within the set: `cpu` < CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut one) };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `one` is a valid set of `size` bytes; pid 0 is this thread.
        if unsafe { libc::sched_setaffinity(0, size, &one) } != 0 {
            unclaim(cpu, ticket);
            return None;
        }
        Some(super::Pinned {
            _pin: Pin { cpu, ticket, mask },
        })
    }

    pub(super) fn forget_claims() {
        for c in &CLAIMED {
            c.store(0, Ordering::Relaxed);
        }
    }

    impl Drop for Pin {
        fn drop(&mut self) {
            // Put the mask back only if it is still the one CPU set here: code in the
            // call may have set its own (`os.sched_setaffinity`, an OpenMP binding).
            let still_ours = mask().is_some_and(|now| {
                // SAFETY: CPU_COUNT/CPU_ISSET read the set within its size.
                unsafe { libc::CPU_COUNT(&now) == 1 && libc::CPU_ISSET(self.cpu, &now) }
            });
            if still_ours {
                let size = std::mem::size_of::<libc::cpu_set_t>();
                // SAFETY: `mask` is the set read by `sched_getaffinity` for this very
                // thread (`Pinned` never leaves the thread that made it: `native`
                // holds it on its stack). A failure (a cpuset shrunk meanwhile) leaves
                // the thread on its one CPU, which the cpuset still allows.
                unsafe { libc::sched_setaffinity(0, size, &self.mask) };
            }
            unclaim(self.cpu, self.ticket);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) struct Pin;

    pub(super) fn now_ns() -> Option<u64> {
        None
    }

    pub(super) fn pin() -> Option<super::Pinned> {
        None
    }

    #[cfg(unix)]
    pub(super) fn forget_claims() {}
}
