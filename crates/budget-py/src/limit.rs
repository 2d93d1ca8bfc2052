//! `budget.limit(n)`: the [`Limit`] context manager.

use std::thread::ThreadId;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::frames;
use crate::region::{drop_open, exit, state, thread_count};

/// Every loaded BLAS and OpenMP library limited to `n` threads for a `with` block, as
/// `threadpoolctl.threadpool_limits(n)`, but safe from any number of threads at once:
/// per-thread settings on the calling thread, process-wide ones under one lock (the
/// smallest limit in flight wins), every count restored exactly at exit, also when
/// the block raises. Takes no tokens from the budget.
#[pyclass(module = "budget._budget", name = "Limit")]
pub(crate) struct Limit {
    /// `None`: `limit(None)`, a block that changes nothing (as threadpoolctl's).
    n: Option<usize>,
    /// The libraries it sets, by path (`None`: every loaded one).
    only: frames::Only,
    open: Option<(u64, ThreadId)>,
}

#[pymethods]
impl Limit {
    /// `libraries`: the paths of the libraries to set, as the loader gave them
    /// (`_libraries()`'s `path`); `None` sets every loaded one.
    #[new]
    #[pyo3(signature = (n, libraries=None))]
    fn new(n: &Bound<'_, PyAny>, libraries: Option<Vec<std::path::PathBuf>>) -> PyResult<Limit> {
        let n = if n.is_none() {
            None
        } else {
            Some(thread_count(n, "budget.limit", "n")?)
        };
        let only = libraries.map(std::sync::Arc::new);
        Ok(Limit {
            n,
            only,
            open: None,
        })
    }

    /// The thread count this block sets (at least 1; `None` for `limit(None)`).
    #[getter]
    fn width(&self) -> Option<usize> {
        self.n
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyResult<PyRefMut<'_, Self>> {
        if slf.open.is_some() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this budget.limit is already open: make a new budget.limit(n) for a nested block",
            ));
        }
        let Some(n) = slf.n else {
            return Ok(slf); // limit(None): nothing to set, nothing to restore
        };
        let only = slf.only.clone();
        let id = slf.py().detach(|| frames::open_limit(n, only));
        slf.open = Some((id, std::thread::current().id()));
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        if self.n.is_none() {
            return Ok(false); // limit(None) opened nothing
        }
        exit(py, &mut self.open, "budget.limit")?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = state(&self.open);
        let n = self.n.map_or_else(|| "None".to_owned(), |n| n.to_string());
        format!("<budget.limit n={n} ({state})>")
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        drop_open(&mut self.open);
    }
}
