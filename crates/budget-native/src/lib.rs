//! OpenMP and BLAS calls sized by the process-wide budget (threadpoolctl, done right).
//!
//! Native libraries run their own threads: OpenBLAS, BLIS and MKL pools, OpenMP teams.
//! Called from a parallel loop, each sizes itself to "all cores" and the machine is
//! oversubscribed. This crate finds those libraries in the process and sets their
//! thread count to a budget region's width for each call, then restores it:
//!
//! - [`libraries`]: every OpenMP/BLAS library loaded now, found as threadpoolctl finds
//!   them (the loader's object list, file-name prefixes, `dlopen(RTLD_NOLOAD)`, symbols
//!   resolved through that library's own handle, including the `scipy_openblas*64_`
//!   naming of NumPy's OpenBLAS), with family, version, threading layer, thread count
//!   and whether its setting is [per-thread or process-wide](SettingScope).
//!   Prints as a small table.
//! - [`NativeExt::native`] (`s.native(|| ..)` inside a region) and [`limit`] (a guard for
//!   code outside regions): counts set for the duration, restored exactly afterwards,
//!   also on panic. Per-thread setters where they exist (OpenMP runtimes, MKL);
//!   process-wide ones (OpenBLAS on pthreads, BLIS, FlexiBLAS) under one lock, so the
//!   concurrent-`openblas_set_num_threads` crash of OpenBLAS 0.3.21–0.3.34 cannot
//!   happen through budget.
//!
//! With nothing loaded, every call is a cheap no-op; a library that matches a name but
//! lacks the expected symbols is listed as unsupported and left alone. Off Linux,
//! nothing is found and everything is a no-op.
//!
//! The design (what is per-thread, the lock, spinning workers, OpenMP spin-waiting and
//! the libgomp `fork` hazard) is in this crate's `README.md`.
//!
//! # Examples
//!
//! ```
//! use budget_native::NativeExt;
//!
//! println!("{}", budget_native::libraries());
//! budget_core::scope(|s| {
//!     s.native(|| {
//!         // BLAS / OpenMP calls here use at most s.width() threads
//!     })
//! });
//! ```

mod control;
mod dl;
mod envcap;
mod fork;
mod library;
mod limit;
mod process_wide;
mod scan;
mod spread;
mod stack;

pub use library::{Family, Libraries, Library, SettingScope, ThreadingLayer};
pub use limit::{limit, limit_where, Limit, NativeExt};

/// Every OpenMP and BLAS library loaded in the process now, in load order.
///
/// A library loaded after an earlier call is found by the next one (the loader's
/// object list is rescanned when it changed, and cached otherwise). Thread counts are
/// read now, as the calling thread sees them. A library whose expected symbols are
/// missing is listed with [`Library::unsupported`] set; it is never called.
///
/// # Examples
///
/// ```
/// let libs = budget_native::libraries();
/// for lib in &libs {
///     if !lib.is_supported() {
///         eprintln!("{} is not controlled: {:?}", lib.path.display(), lib.unsupported);
///     }
/// }
/// println!("{libs}");
/// ```
pub fn libraries() -> Libraries {
    Libraries(scan::entries().iter().map(|e| e.describe()).collect())
}
