//! rayon regions sized by the process-wide budget.
//!
//! Library authors replace "build my own rayon pool" with a budget region:
//!
//! ```
//! use budget_rayon::RayonExt;
//! use rayon::prelude::*;
//!
//! /// A library function that parallelises internally.
//! fn norm(v: &[f64]) -> f64 {
//!     budget_core::scope(|s| s.install(|| v.par_iter().map(|x| x * x).sum::<f64>())).sqrt()
//! }
//!
//! // Called from an application's own parallel region, it runs in place on the
//! // application's threads instead of starting a pool of its own.
//! let rows = vec![vec![3.0, 4.0]; 64];
//! let norms: Vec<f64> = budget_core::scope(|s| {
//!     s.install(|| rows.par_iter().map(|r| norm(r)).collect())
//! });
//! assert!(norms.iter().all(|&n| n == 5.0));
//! ```
//!
//! How it works, and the bound on threads, is in the docs of [`RayonExt::install`]
//! and of the `pool`, `gate` and `relay` modules (a gate holds a leased pool's extra
//! threads back until the budget hands the region more tokens; the relay makes a
//! rayon worker that waits for a leased pool block instead of running other jobs).

mod gate;
mod install;
mod pool;
mod relay;

pub use install::RayonExt;
pub use pool::{stats, RayonStats, IDLE_POOLS_PER_CAPACITY};
