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
//! - [`node`]: regions in a process that shares a node budget or make's jobserver.
//!
//! Design notes: this crate's `README.md`.

use pyo3::prelude::*;

mod cap;
mod frames;
mod info;
mod limit;
mod node;
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
    m.add_function(wrap_pyfunction!(joined, m)?)?;
    m.add_function(wrap_pyfunction!(create_node, m)?)?;
    m.add_function(wrap_pyfunction!(release_outside_tokens, m)?)?;
    m.add("MAX_THREADS", budget_core::MAX_THREADS)?;
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

/// Gives back the jobserver tokens this process holds, before `os._exit` or an
/// `os.exec*` (which run no `atexit` handler): the package wraps those.
#[pyfunction]
fn release_outside_tokens() {
    budget_core::release_outside_tokens();
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

/// The outside budget this process shares, as a dict: `{"kind": "local"}`,
/// `{"kind": "node", "path": ..., "tokens": N}` or
/// `{"kind": "jobserver", "var": ..., "auth": ...}` or `{"kind": "copy", "tokens": N}`
/// (another copy of budget-core in this process started first); `held` is the tokens
/// it holds now.
#[pyfunction]
fn joined(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let (joined, held) = py.detach(|| (budget_core::joined(), budget_core::held_tokens()));
    let d = pyo3::types::PyDict::new(py);
    match joined {
        budget_core::Joined::Node { path, tokens } => {
            d.set_item("kind", "node")?;
            d.set_item("path", path.to_string_lossy().into_owned())?;
            d.set_item("tokens", tokens)?;
        }
        budget_core::Joined::Jobserver { var, auth } => {
            d.set_item("kind", "jobserver")?;
            d.set_item("var", var)?;
            d.set_item("auth", auth)?;
        }
        budget_core::Joined::Copy { total } => {
            d.set_item("kind", "copy")?;
            d.set_item("tokens", total)?;
        }
        _ => d.set_item("kind", "local")?,
    }
    d.set_item("held", held)?;
    Ok(d)
}

/// Makes a node budget file of `tokens` tokens (this process's total when `None`) at
/// `path` (in budget's node directory when `None`, named after this process) unless
/// one is there, and returns `(path, tokens it shares)`; see [`node::share`].
#[pyfunction]
#[pyo3(signature = (tokens=None, path=None, children_only=false))]
fn create_node(
    tokens: Option<&Bound<'_, PyAny>>,
    path: Option<std::path::PathBuf>,
    children_only: bool,
) -> PyResult<(String, usize)> {
    let (path, tokens) = node::share(tokens, path, children_only)?;
    Ok((path.to_string_lossy().into_owned(), tokens))
}
