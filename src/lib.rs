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
//!
//! # Features
//!
//! The rayon (`budget-rayon`) and native OpenMP/BLAS (`budget-native`) parts will
//! plug in as the `rayon` and `native` features.

pub use budget_core::{
    available_cores, scope, scope_with, stats, BuildError, Builder, ForEachInput, Lease, Scope,
    Stats, ENV_NUM_THREADS, MAX_THREADS,
};
