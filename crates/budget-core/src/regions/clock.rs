//! A cheap tick counter, for two heuristics measured in what waking a sleeping thread
//! costs: whether a loop has run long enough that waking a helper pays
//! (`Scope::for_each`, see `tree.rs`), and how long a thread spins before it sleeps
//! or parks ([`spin_until`]: a joiner waiting for a stolen half, a worker lingering in
//! its slot, an idle worker of the pool).
//!
//! Not a clock for figures: ticks are only compared with multiples of
//! [`wake_ticks`], an estimate of what waking a helper costs. On x86-64 a tick is a
//! TSC cycle (`rdtsc`, about 13 ns to read on the 2-core VM of `BENCHMARKS.md`,
//! where `Instant::now` takes about 35 ns); on aarch64 a tick of the generic timer
//! (`cntvct_el0`, frequency from `cntfrq_el0`); elsewhere a nanosecond of
//! [`Instant`]. Ticks read on two cores may differ slightly (a thread can migrate
//! between two reads): [`since`] saturates at 0, which only means "not yet".

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// About what waking a parked thread costs until it runs: the futex wake on the
/// waker's side (a few hundred ns) plus the sleeper's way back onto a core (µs).
/// A loop that finishes sooner than this is done before a woken helper arrives.
const WAKE: Duration = Duration::from_micros(5);

/// The current tick count.
#[inline]
pub(crate) fn now() -> u64 {
    imp::now()
}

/// Ticks since `start` (a value of [`now`]), 0 if the counter went backwards.
#[inline]
pub(crate) fn since(start: u64) -> u64 {
    now().saturating_sub(start)
}

/// [`WAKE`] in ticks; measured once per process (or, in a race, once per thread
/// that got there first: the same figure).
///
/// An atomic, not a `OnceLock`: the measurement spins for 50 µs, and a process
/// forked while another thread measured got a `OnceLock` stuck "being initialized"
/// by a thread the child does not have, so the child's first `for_each` waited for
/// ever (1 of 600 children in `tests/jobserver.rs`'s fork test).
#[inline]
pub(crate) fn wake_ticks() -> u64 {
    static TICKS: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a plain number, the same whoever measured it; 0 means "not yet".
    match TICKS.load(Ordering::Relaxed) {
        0 => {
            let ticks = imp::ticks_in(WAKE).max(1);
            TICKS.store(ticks, Ordering::Relaxed);
            ticks
        }
        ticks => ticks,
    }
}

/// The tick count `wakes` × [`wake_ticks`] from now: a deadline for [`spin_until`].
#[inline]
pub(crate) fn after_wakes(wakes: u64) -> u64 {
    // No clock under loom and Miri (see `spin_until`): not even measured there.
    if cfg!(any(budget_loom, miri)) {
        return 0;
    }
    now().saturating_add(wake_ticks().saturating_mul(wakes))
}

/// Spins until `ready()` holds or the tick count passes `deadline` (a value of
/// [`now`], [`after_wakes`]), calling `pause` between looks: true if `ready()` held.
/// Always false under loom (a model has no clock) and Miri (whose clock is its own):
/// the caller sleeps at once there.
#[inline]
pub(crate) fn spin_until(deadline: u64, ready: impl Fn() -> bool, pause: impl Fn()) -> bool {
    if cfg!(any(budget_loom, miri)) {
        return false;
    }
    while now() < deadline {
        pause();
        if ready() {
            return true;
        }
    }
    false
}

/// Starts the clock's lazily made state (the tick base where there is no cycle
/// counter): called when a budget starts, before its threads, so that no thread is in
/// the middle of it if the process forks. ([`wake_ticks`] needs no priming: an
/// atomic, measured by the first loop that asks, 50 µs a lone process need not spend.)
pub(crate) fn prime() {
    let _ = now();
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod imp {
    use std::time::{Duration, Instant};

    #[inline]
    pub(super) fn now() -> u64 {
        // SAFETY: `rdtsc` exists on every x86-64 CPU and has no preconditions; it
        // only reads the time-stamp counter.
        #[allow(unused_unsafe)]
        unsafe {
            std::arch::x86_64::_rdtsc()
        }
    }

    /// The TSC's rate is not reported reliably (CPUID leaf 0x15 is often absent in
    /// virtual machines): count ticks over a short spin of `Instant` time instead.
    pub(super) fn ticks_in(d: Duration) -> u64 {
        let probe = Duration::from_micros(50);
        let (t0, c0) = (Instant::now(), now());
        while t0.elapsed() < probe {
            std::hint::spin_loop();
        }
        let (nanos, ticks) = (t0.elapsed().as_nanos().max(1), now().saturating_sub(c0));
        (u128::from(ticks) * d.as_nanos() / nanos) as u64
    }
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
mod imp {
    use std::time::Duration;

    #[inline]
    pub(super) fn now() -> u64 {
        let ticks: u64;
        // SAFETY: `cntvct_el0` (the virtual count of the generic timer) is readable
        // from user space on Linux; the instruction touches no memory.
        unsafe { std::arch::asm!("mrs {}, cntvct_el0", out(reg) ticks, options(nomem, nostack)) };
        ticks
    }

    pub(super) fn ticks_in(d: Duration) -> u64 {
        let hz: u64;
        // SAFETY: `cntfrq_el0`, the timer's frequency in Hz, is readable from user
        // space; the instruction touches no memory.
        unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
        (u128::from(hz) * d.as_nanos() / 1_000_000_000) as u64
    }
}

#[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    #[inline]
    pub(super) fn now() -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    pub(super) fn ticks_in(d: Duration) -> u64 {
        d.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// The counter moves forward, and [`wake_ticks`] is about [`WAKE`] of it: a
    /// spin of 20 × `WAKE` counts between 5 and 80 `wake_ticks` (wide bounds: the
    /// test is about units, not precision, on a loaded machine).
    #[test]
    #[cfg_attr(miri, ignore = "timing: Miri's clock is not the machine's")]
    fn ticks_measure_time() {
        let per_wake = wake_ticks();
        assert!(per_wake >= 1);
        let (t0, c0) = (Instant::now(), now());
        while t0.elapsed() < WAKE * 20 {
            std::hint::spin_loop();
        }
        let ticks = since(c0);
        let wakes = ticks / per_wake;
        assert!(
            (5..=80).contains(&wakes),
            "{ticks} ticks in 20 × WAKE, {per_wake} per WAKE"
        );
    }
}
