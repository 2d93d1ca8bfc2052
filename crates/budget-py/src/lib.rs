//! The Python module `budget` (native part `budget._budget`; the Python package around
//! it is in `python/budget/`).
//!
//! - [`region`]: `with budget.region(max_threads=None) as r:`, a width from the
//!   process's budget for a block on any Python thread.
//! - [`limit`]: `with budget.limit(n):`, threadpoolctl's `threadpool_limits(n)` made
//!   safe from many threads at once.
//! - [`frames`]: the per-thread stack that owns both kinds of block's guards, so that
//!   blocks can exit in any order.
//! - [`info`]: the libraries found and `budget.stats()`.
//! - [`cap`]: the width cap set through threadpoolctl, and the Python regions' counters.
//!
//! Design notes: this crate's `README.md`.

use pyo3::prelude::*;

mod cap;
mod frames;
mod info;
mod limit;
mod region;

/// `budget._budget`: the classes and functions the `budget` package re-exports.
#[pymodule]
fn _budget(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<region::Region>()?;
    m.add_class::<limit::Limit>()?;
    m.add_function(wrap_pyfunction!(info::stats, m)?)?;
    m.add_function(wrap_pyfunction!(info::_libraries, m)?)?;
    m.add_function(wrap_pyfunction!(set_cap, m)?)?;
    m.add_function(wrap_pyfunction!(set_fork_cap, m)?)?;
    m.add_function(wrap_pyfunction!(depth, m)?)?;
    Ok(())
}

/// Caps the width of regions opened from now on at `n` (`None` lifts the cap): what
/// budget's threadpoolctl controller does for `threadpool_limits(n)`.
#[pyfunction]
#[pyo3(signature = (n))]
fn set_cap(n: Option<usize>) {
    match n {
        Some(n) => cap::set(n),
        None => cap::clear(),
    }
}

/// Caps regions at `n` in a forked child whose OpenMP runtime cannot run a team
/// (0 lifts it).
#[pyfunction]
fn set_fork_cap(n: usize) {
    cap::set_fork(n);
}

/// The number of blocks (regions and limits) open on the calling thread.
#[pyfunction]
fn depth() -> usize {
    frames::depth()
}
