//! # budget: one parallelism budget for the whole process
//!
//! Numerical code nests parallel regions: an application's parallel loop calls a
//! library with its own thread pool, which calls BLAS, which starts OpenMP threads.
//! Each layer sizes itself to "all cores", and 16 cores become 256 busy threads.
//! `budget` hands out core *tokens* from one process-wide budget: a region takes
//! what is free when it starts (never waiting), nested regions shrink instead of
//! oversubscribing, and regions grow back when cores free up.
//!
//! # Examples
//!
//! A library function parallelises with `budget::scope`; called from an outer
//! region that already uses every core, it runs at width 1 instead of starting
//! more threads.
//!
//! ```
//! fn library_sum(data: &[u64]) -> u64 {
//!     use std::sync::atomic::{AtomicU64, Ordering};
//!     let sum = AtomicU64::new(0);
//!     budget::scope(|s| {
//!         s.for_each(data, |x| { sum.fetch_add(*x, Ordering::Relaxed); });
//!     });
//!     sum.into_inner()
//! }
//!
//! let data: Vec<u64> = (1..=100).collect();
//! let total = budget::scope(|s| {
//!     let (a, b) = s.join(|| library_sum(&data[..50]), || library_sum(&data[50..]));
//!     a + b
//! });
//! assert_eq!(total, 5050);
//! ```
//!
//! # Configuration
//!
//! - `BUDGET_NUM_THREADS=N` sets the budget's total (1 to 4096); a bad value prints
//!   one warning and the detected count is used.
//! - [`Builder`] sets it from code, before first use.
//! - Without either, the total is the affinity mask lowered to the cgroup CPU quota
//!   (as `std::thread::available_parallelism` counts), lowered to Slurm's
//!   `SLURM_CPUS_PER_TASK` when the job has no cpuset. [`detect()`] reports which
//!   source set it; `docs/clusters.md` covers Slurm, Kubernetes, Ray, Dask and Spark.
//!
//! # Features
//!
//! - `rayon` (default): [`rayon::RayonExt::install`] runs rayon code sized by the
//!   region (`use budget::prelude::*`), from the `budget-rayon` crate.
//! - `native` (default): [`native::NativeExt::native`] and [`native::limit`] set the
//!   thread count of the OpenMP and BLAS libraries loaded in the process to the
//!   region's width for a call, and restore it; [`native::libraries`] lists them.
//!   From the `budget-native` crate.

pub use budget_core::{
    available_cores, detect, scope, scope_with, static_env_marker, stats, user_thread_variable,
    BuildError, Builder, Detected, ForEachInput, Lease, RegionThread, Scope, Source, Stats,
    ENV_NUM_THREADS, ENV_STATIC_ENV, MAX_THREADS,
};

/// Sharing the budget with other processes: the outside budget this process joined
/// ([`joined`], [`Joined`]), the tokens it holds ([`held_tokens`]), the node budget's
/// files and members ([`node`]), giving make's tokens back before `_exit` or `exec`
/// ([`release_outside_tokens`]), and the variables that steer them.
pub use budget_core::{
    held_tokens, joined, node, release_outside_tokens, Joined, ENV_JOBSERVER, ENV_NODE,
    ENV_TOKEN_LOG, HANDSHAKE_ABI,
};

/// Hooks for integrations (code that runs a region's work on threads of its own):
/// [`ScopeHooks`](integration::ScopeHooks), [`RegionThread`], [`Lease`].
/// Applications do not need them.
pub use budget_core::integration;

/// Runs rayon code in a region that asks for every core: shorthand for
/// `budget::scope(|s| s.install(op))`.
///
/// Like [`scope`], it runs on the calling thread (as rayon's `in_place_scope`), takes
/// what the budget has free without waiting, and nested under another region it runs
/// at the width left to it. See [`RayonExt::install`](rayon::RayonExt::install).
///
/// # Examples
///
/// ```
/// use rayon::prelude::*;
///
/// let sum: u64 = budget::install(|| (1..=100u64).into_par_iter().sum());
/// assert_eq!(sum, 5050);
/// ```
#[cfg(feature = "rayon")]
pub fn install<R, OP>(op: OP) -> R
where
    OP: FnOnce() -> R + Send,
    R: Send,
{
    use budget_rayon::RayonExt;
    scope(|s| s.install(op))
}

/// rayon regions sized by the budget: [`RayonExt::install`](rayon::RayonExt::install).
///
/// # Examples
///
/// ```
/// use budget::prelude::*;
/// use rayon::prelude::*;
///
/// let v: Vec<u32> = budget::install(|| (0..100u32).into_par_iter().map(|x| x * 2).collect());
/// assert_eq!(v[99], 198);
/// ```
#[cfg(feature = "rayon")]
pub mod rayon {
    pub use budget_rayon::{stats, RayonExt, RayonStats, IDLE_POOLS_PER_CAPACITY};
}

/// OpenMP and BLAS libraries sized by the budget: [`libraries`](native::libraries),
/// [`limit`](native::limit), [`NativeExt::native`](native::NativeExt::native).
///
/// # Examples
///
/// ```
/// use budget::prelude::*;
///
/// println!("{}", budget::native::libraries());
/// budget::scope(|s| s.native(|| { /* BLAS / OpenMP calls run on s.width() threads */ }));
/// ```
#[cfg(feature = "native")]
pub mod native {
    pub use budget_native::{
        libraries, limit, limit_where, Family, Libraries, Library, Limit, NativeExt, SettingScope,
        ThreadingLayer,
    };
}

/// The extension traits, to bring `s.install(..)` and `s.native(..)` into scope:
/// `use budget::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "native")]
    pub use budget_native::NativeExt;
    #[cfg(feature = "rayon")]
    pub use budget_rayon::RayonExt;
}

/// The README's examples, compiled and run as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
